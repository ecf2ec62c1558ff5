"""Tests of the deployment kit in ``export/`` (CPU only; TensorRT tests skip without it)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the kit is the top-level export/ folder; make it importable under plain `pytest`
    sys.path.insert(0, str(REPO))

from export import build_engine as be  # noqa: E402
from export import run as run_mod  # noqa: E402
from export.contract import (  # noqa: E402
    contract_from_sidecar,
    load_contract,
    load_sidecar,
    parse_contract,
    prepare_batch,
    preprocess_image,
    read_onnx_metadata,
)
from export.run import OnnxRunner, TensorRTRunner, load_runner  # noqa: E402

KIT = REPO / "export"
SIZE = 8
RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
BIAS = RNG.normal(size=(4,)).astype(np.float32)
TAPS = {"up_blocks_1": "up_blocks.1", "down_blocks_0": "down_blocks.0"}


def _metadata(contract: dict, value_range=(-1.0, 1.0), crop: str = "center") -> dict[str, str]:
    return {
        "diffperception.contract": json.dumps(contract),
        "diffperception.preprocess": json.dumps(
            {"size": [SIZE, SIZE], "resize": "bicubic", "crop": crop, "range": list(value_range)}),
        "diffperception.outputs": json.dumps(list(TAPS.values())),
        "diffperception.timesteps": json.dumps([100]),
        "diffperception.noise_seed": "0",
        "diffperception.source_repo": "tiny/test-unet",
        "diffperception.source_revision": "abc123",
        "diffperception.version": "0.1.0",
        "diffperception.precision": "fp32",
    }


def make_image_model(path: Path, *, batch=1, batch_range=(1, 1, 1), dtype="float32", value_range=(0.0, 1.0),
                     crop: str = "center", drop: tuple[str, ...] = ()) -> Path:
    """Tiny conv graph: images -> Conv3x3 + Relu ("up_blocks.1") -> AvgPool2 ("down_blocks.0")."""
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.FLOAT16
    dim0 = batch if isinstance(batch, int) else "batch"
    nodes, src = [], "images"
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["images"], ["x32"], to=TensorProto.FLOAT))
        src = "x32"
    nodes += [helper.make_node("Conv", [src, "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["conv"], ["relu"]),
              helper.make_node("AveragePool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2])]
    for name, out in (("up_blocks_1", "relu"), ("down_blocks_0", "pool")):
        nodes.append(helper.make_node("Cast", [out], [name], to=elem))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", elem, [dim0, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("up_blocks_1", elem, [dim0, 4, SIZE, SIZE]),
         helper.make_tensor_value_info("down_blocks_0", elem, [dim0, 4, SIZE // 2, SIZE // 2])],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    lo, opt, hi = batch_range
    contract = {
        "inputs": [{"name": "images", "shape": [dim0, 3, SIZE, SIZE], "dtype": dtype,
                    "range": list(value_range), "layout": "NCHW"}],
        "outputs": [{"name": "up_blocks_1", "key": "up_blocks.1", "shape": [dim0, 4, SIZE, SIZE], "dtype": dtype},
                    {"name": "down_blocks_0", "key": "down_blocks.0",
                     "shape": [dim0, 4, SIZE // 2, SIZE // 2], "dtype": dtype}],
        "batch": {"min": lo, "opt": opt, "max": hi},
    }
    meta = {k: v for k, v in _metadata(contract, value_range, crop).items() if k not in drop}
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def make_latent_model(path: Path) -> Path:
    """Latent graph: latents [batch, 4, 8, 8] -> 2 * latents ("mid_block")."""
    shape = ["batch", 4, SIZE, SIZE]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["latents", "two"], ["mid_block"])], "latent",
        [helper.make_tensor_value_info("latents", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("mid_block", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    contract = {"inputs": [{"name": "latents", "shape": shape, "dtype": "float32", "range": None, "layout": "NCHW"}],
                "outputs": [{"name": "mid_block", "key": "mid_block", "shape": shape, "dtype": "float32"}],
                "batch": {"min": 1, "opt": 2, "max": 4}}
    meta = _metadata(contract)
    del meta["diffperception.preprocess"]
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    """Numpy reference of the tiny conv graph."""
    x = x.astype(np.float64)
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, 4, h, w)) + BIAS[None, :, None, None]
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + w], WEIGHT[:, :, i, j])
    relu = np.maximum(out, 0)
    return {"up_blocks.1": relu, "down_blocks.0": relu.reshape(n, 4, h // 2, 2, w // 2, 2).mean(axis=(3, 5))}


def write_png(path: Path, size=(20, 12), seed: int = 1) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def manual_preprocess(path: Path, value_range=(0.0, 1.0), crop: str = "center") -> np.ndarray:
    """Independent Pillow computation of the documented preprocessing."""
    image = Image.open(path).convert("RGB")
    if crop == "center":
        scale = SIZE / min(image.size)
        new = (max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - SIZE) // 2, (new[1] - SIZE) // 2
        image = image.crop((left, top, left + SIZE, top + SIZE))
    else:
        image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    array = np.asarray(image).astype(np.float32).transpose(2, 0, 1) / 255.0
    return array * (value_range[1] - value_range[0]) + value_range[0]


@pytest.fixture
def static_model(tmp_path: Path) -> Path:
    return make_image_model(tmp_path / "static.onnx")


@pytest.fixture
def dynamic_model(tmp_path: Path) -> Path:
    return make_image_model(tmp_path / "dynamic.onnx", batch="batch", batch_range=(1, 2, 4), value_range=(-1.0, 1.0))


# --- contract and runner ------------------------------------------------------------------


def test_contract_read_from_onnx_metadata(dynamic_model: Path) -> None:
    expected = {p.key: p.value for p in onnx.load(str(dynamic_model)).metadata_props}
    assert read_onnx_metadata(dynamic_model) == expected
    contract = load_contract(dynamic_model)
    assert contract.input.name == "images" and contract.dynamic_batch
    assert (contract.batch_min, contract.batch_opt, contract.batch_max) == (1, 2, 4)
    assert [o.key for o in contract.outputs] == ["up_blocks.1", "down_blocks.0"]
    assert contract.metadata["diffperception.source_repo"] == "tiny/test-unet"
    assert contract.preprocess.size == (SIZE, SIZE) and contract.input.range == (-1.0, 1.0)


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_onnx_runner_matches_onnxruntime_and_numpy(kind: str, tmp_path: Path) -> None:
    if kind == "static":
        path, x = make_image_model(tmp_path / "m.onnx"), RNG.random((1, 3, SIZE, SIZE), dtype=np.float32)
    else:
        path = make_image_model(tmp_path / "m.onnx", batch="batch", batch_range=(1, 2, 4))
        x = RNG.random((3, 3, SIZE, SIZE), dtype=np.float32)
    runner = OnnxRunner(path, threads=2)
    out = runner(x)
    assert list(out) == ["up_blocks.1", "down_blocks.0"]
    direct = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    for value, raw, (tap, ref) in zip(out.values(), direct, reference(x).items()):
        assert value.dtype == np.float32 and value.shape == ref.shape
        np.testing.assert_allclose(value, raw, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-4, err_msg=tap)
    options = runner.session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 2


@pytest.mark.parametrize(("crop", "value_range", "size"),
                         [("center", (-1.0, 1.0), (20, 12)), ("center", (0.0, 1.0), (9, 31)),
                          ("none", (-1.0, 1.0), (20, 12))])
def test_preprocessing_matches_manual_pillow(tmp_path: Path, crop: str, value_range, size) -> None:
    path = make_image_model(tmp_path / "m.onnx", value_range=value_range, crop=crop)
    image = write_png(tmp_path / "a.png", size=size)
    contract = load_contract(path)
    got = preprocess_image(Image.open(image), contract.preprocess, contract.input.range)
    assert got.shape == (3, SIZE, SIZE) and got.dtype == np.float32
    np.testing.assert_allclose(got, manual_preprocess(image, value_range, crop), atol=1e-6)
    assert got.min() >= value_range[0] and got.max() <= value_range[1]


def test_run_images_batches_and_matches_reference(tmp_path: Path, static_model: Path, dynamic_model: Path) -> None:
    images = [write_png(tmp_path / f"{i}.png", size=(16 + i, 12), seed=i) for i in range(5)]
    for model, value_range in ((static_model, (0.0, 1.0)), (dynamic_model, (-1.0, 1.0))):
        out = OnnxRunner(model).run_images(images)  # batch-1 model: 5 chunks; dynamic [1, 4]: 4 + 1
        expected = reference(np.stack([manual_preprocess(p, value_range) for p in images]))
        for tap, ref in expected.items():
            np.testing.assert_allclose(out[tap], ref, rtol=1e-4, atol=1e-4)
    pixels = np.asarray(Image.open(images[0]))
    from_array = OnnxRunner(static_model).run_images([pixels])
    np.testing.assert_allclose(from_array["up_blocks.1"], OnnxRunner(static_model).run_images(images[0])["up_blocks.1"])


def test_run_images_pads_to_min_batch(tmp_path: Path) -> None:
    model = make_image_model(tmp_path / "m.onnx", batch="batch", batch_range=(2, 2, 4))
    x = RNG.random((5, 3, SIZE, SIZE), dtype=np.float32)
    out = OnnxRunner(model).run_images(list(x))
    assert out["up_blocks.1"].shape == (5, 4, SIZE, SIZE)
    np.testing.assert_allclose(out["up_blocks.1"], reference(x)["up_blocks.1"], rtol=1e-4, atol=1e-4)


def test_fp16_graph_casts_inputs_and_outputs(tmp_path: Path) -> None:
    model = make_image_model(tmp_path / "h.onnx", batch="batch", batch_range=(1, 1, 2), dtype="float16")
    x = RNG.random((2, 3, SIZE, SIZE), dtype=np.float32)
    out = OnnxRunner(model)(x)
    assert all(v.dtype == np.float32 for v in out.values())
    ref = reference(x.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(out["up_blocks.1"], ref["up_blocks.1"], rtol=1e-2, atol=1e-2)


def test_latent_graph_takes_npy_and_arrays(tmp_path: Path) -> None:
    model = make_latent_model(tmp_path / "lat.onnx")
    latents = RNG.normal(size=(3, 4, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "a.npy", latents[0])
    np.save(tmp_path / "b.npy", latents[1:])
    runner = load_runner(model)
    out = runner.run_images([tmp_path / "a.npy", tmp_path / "b.npy"])
    np.testing.assert_allclose(out["mid_block"], 2 * latents)
    np.testing.assert_allclose(runner(latents[:2])["mid_block"], 2 * latents[:2])
    with pytest.raises(ValueError, match="takes latents"):
        runner.run_images([write_png(tmp_path / "x.png")])


# --- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["diffperception.contract", "diffperception.preprocess"])
def test_missing_metadata_key_is_a_clear_error(tmp_path: Path, drop: str) -> None:
    model = make_image_model(tmp_path / "m.onnx", drop=(drop,))
    with pytest.raises(ValueError, match="not exported by diffperception.*incompatible version"):
        OnnxRunner(model)
    with pytest.raises(ValueError, match=drop):
        load_contract(model)


def test_malformed_contract_values(static_model: Path) -> None:
    meta = read_onnx_metadata(static_model)
    contract = json.loads(meta["diffperception.contract"])
    cases = [("{not json", "not valid JSON"),
             (json.dumps({**contract, "batch": {"min": 2, "opt": 1, "max": 4}}), "min <= opt <= max"),
             (json.dumps({**contract, "inputs": [{**contract["inputs"][0], "dtype": "int8"}]}), "dtype"),
             (json.dumps({**contract, "inputs": [{**contract["inputs"][0], "name": "x"}]}), "'images' or 'latents'")]
    for text, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_contract({**meta, "diffperception.contract": text}, "m.onnx")


def test_corrupted_or_non_onnx_file(tmp_path: Path, static_model: Path) -> None:
    data = static_model.read_bytes()
    files = {"text.onnx": b"this is not an onnx model\n", "empty.onnx": b"", "truncated.onnx": data[: len(data) // 2]}
    files["png.onnx"] = write_png(tmp_path / "x.png").read_bytes()
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=rf"The file .*{name} is not a valid ONNX model.*export it again"):
            load_runner(tmp_path / name)


def test_graph_onnxruntime_cannot_load(tmp_path: Path, static_model: Path) -> None:
    model = onnx.load(str(static_model))
    model.graph.node[0].op_type = "NotAnOperator"
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(ValueError, match="ONNX Runtime cannot load .*broken.onnx.*export it again"):
        OnnxRunner(tmp_path / "broken.onnx")


def test_missing_files(tmp_path: Path, static_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_runner(tmp_path / "nope.onnx")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        OnnxRunner(static_model).run_images([tmp_path / "missing.png"])
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="Unknown model type"):
        load_runner(tmp_path / "model.bin")


def test_bad_arrays(tmp_path: Path, static_model: Path, dynamic_model: Path) -> None:
    latent = load_runner(make_latent_model(tmp_path / "lat.onnx"))
    with pytest.raises(ValueError, match=r"Wrong spatial size \(16, 16\).*\(8, 8\)"):
        latent(np.zeros((1, 4, 16, 16), np.float32))
    np.save(tmp_path / "small.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="Wrong spatial size .* in .*small.npy"):
        latent.run_images([tmp_path / "small.npy"])
    with pytest.raises(ValueError, match="Wrong channel count 3.*4 channels"):
        latent(np.zeros((1, 3, SIZE, SIZE), np.float32))
    dynamic = OnnxRunner(dynamic_model)
    with pytest.raises(ValueError, match=r"Batch size 5 is outside the model's range \[1, 4\]"):
        dynamic(np.zeros((5, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match=r"Batch size 2 is outside the model's range \[1, 1\]"):
        OnnxRunner(static_model)(np.zeros((2, 3, SIZE, SIZE), np.float32))
    bad = np.zeros((3, 3, SIZE, SIZE), np.float32)
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[1\]"):
        dynamic(bad)
    with pytest.raises(ValueError, match="Expected a numeric"):
        prepare_batch([np.zeros((SIZE, SIZE), np.float32)], dynamic.contract)


def test_provider_errors(static_model: Path) -> None:
    with pytest.raises(ValueError, match="provider"):
        OnnxRunner(static_model, provider="tpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            OnnxRunner(static_model, provider="cuda")


# --- the kit runs without torch / diffusers ------------------------------------------------

PRELUDE = textwrap.dedent("""
    import runpy, sys
    attempts = []
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers"):
                attempts.append(name)
                raise ImportError("blocked in this test: " + name)
            return None
    sys.meta_path.insert(0, _Block())
    for _name in [m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers")]:
        del sys.modules[_name]
    sys.argv = {argv!r}
    try:
        runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
    finally:
        assert not attempts, attempts
""")


def _run_blocked(module: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = PRELUDE.format(argv=argv, module=module)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_runs_without_torch_or_diffusers(tmp_path: Path, dynamic_model: Path) -> None:
    images = [str(write_png(tmp_path / f"{i}.png", seed=i)) for i in range(3)]
    out = tmp_path / "out.npz"
    proc = _run_blocked("export.run", ["export.run", str(dynamic_model), *images, "--threads", "1", "--out", str(out)],
                        REPO)
    assert proc.returncode == 0, proc.stderr
    assert "up_blocks.1: shape=(3, 4, 8, 8) dtype=float32 mean=" in proc.stdout
    assert "down_blocks.0: shape=(3, 4, 4, 4) dtype=float32" in proc.stdout
    assert "source_repo: tiny/test-unet" in proc.stdout
    saved = np.load(out)
    assert sorted(saved.files) == ["down_blocks.0", "up_blocks.1"]
    direct = OnnxRunner(dynamic_model).run_images(images)
    np.testing.assert_allclose(saved["up_blocks.1"], direct["up_blocks.1"], rtol=1e-5, atol=1e-6)


def test_copied_kit_runs_standalone_and_reports_errors(tmp_path: Path, static_model: Path) -> None:
    shutil.copytree(KIT, tmp_path / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    image = str(write_png(tmp_path / "a.png"))
    proc = _run_blocked("kit.run", ["kit.run", str(static_model), image], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "up_blocks.1: shape=(1, 4, 8, 8)" in proc.stdout
    proc = _run_blocked("kit.run", ["kit.run", str(static_model), str(tmp_path / "gone.png")], tmp_path)
    assert proc.returncode == 2 and "error: Input file not found" in proc.stderr and "gone.png" in proc.stderr


def test_kit_sources_import_nothing_forbidden() -> None:
    forbidden = {"torch", "diffusers", "transformers", "onnx", "export", "diffperception"}
    for source in KIT.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{source.name}:{node.lineno} imports {roots & forbidden}"


# --- build_engine: pure logic -------------------------------------------------------------


def test_precision_flags() -> None:
    assert be.select_precision_flags("fp32") == ([], [])
    assert be.select_precision_flags("fp16") == (["FP16"], [])
    assert be.select_precision_flags("bf16")[0] == ["BF16"]
    flags, notes = be.select_precision_flags("fp16", platform_has_fast_fp16=False)
    assert flags == ["FP16"] and "no fast fp16" in notes[0]
    with pytest.raises(ValueError, match="precision"):
        be.select_precision_flags("int8")


def test_profile_from_contract_and_requested_range(static_model: Path, dynamic_model: Path) -> None:
    dynamic = load_contract(dynamic_model)
    assert be.compute_profile(dynamic) == {"input": "images", "dynamic": True, "min": [1, 3, 8, 8],
                                           "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}
    profile = be.compute_profile(dynamic, min_batch=2, opt_batch=8, max_batch=16)
    assert (profile["min"][0], profile["opt"][0], profile["max"][0]) == (2, 8, 16)
    assert be.compute_profile(dynamic, max_batch=1)["opt"] == [1, 3, 8, 8]  # opt clamped into the range
    for kwargs in ({"min_batch": 4, "opt_batch": 2}, {"min_batch": 0}, {"opt_batch": 9, "max_batch": 8}):
        with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
            be.compute_profile(dynamic, **kwargs)
    static = load_contract(static_model)
    assert be.compute_profile(static)["dynamic"] is False
    assert be.compute_profile(static, max_batch=1)["max"] == [1, 3, 8, 8]
    with pytest.raises(ValueError, match="static batch of 1.*re-export the ONNX file with a batch range"):
        be.compute_profile(static, max_batch=8)


def test_build_engine_rejects_bad_range_before_tensorrt(static_model: Path) -> None:
    with pytest.raises(ValueError, match="static batch"):
        be.build_engine(static_model, min_batch=1, max_batch=4)
    with pytest.raises(ValueError, match="precision"):
        be.build_engine(static_model, precision="int4")


def test_sidecar_content_and_roundtrip(tmp_path: Path, dynamic_model: Path) -> None:
    contract = load_contract(dynamic_model)
    profile = be.compute_profile(contract, max_batch=8)
    sidecar = be.make_sidecar(dynamic_model, contract, precision="fp16", profile=profile, tensorrt_version="10.3.0",
                              gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    assert sidecar["onnx_sha256"] == hashlib.sha256(dynamic_model.read_bytes()).hexdigest()
    assert sidecar["profile"] == {"min": 1, "opt": 2, "max": 8}
    assert sidecar["contract"] == json.loads(read_onnx_metadata(dynamic_model)["diffperception.contract"])
    assert set(sidecar["metadata"]) == {k for k in read_onnx_metadata(dynamic_model) if k.startswith("diffperception.")}
    assert {"tensorrt_version", "gpu_name", "compute_capability", "precision", "built_at"} <= set(sidecar)
    engine = tmp_path / "m.engine"
    be.sidecar_path(engine).write_text(json.dumps(sidecar))
    restored = contract_from_sidecar(load_sidecar(engine), str(engine))
    assert (restored.batch_min, restored.batch_max) == (1, 8) and restored.outputs == contract.outputs
    with pytest.raises(FileNotFoundError, match="python -m export.build_engine"):
        load_sidecar(tmp_path / "other.engine")


def test_check_engine_compatible_messages() -> None:
    sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
               "onnx_file": "unet.onnx"}
    here = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    be.check_engine_compatible(sidecar, **here)
    for field, other, label in (("gpu_name", "NVIDIA A100-SXM4-40GB", "GPU name"),
                                ("compute_capability", "8.0", "compute capability"),
                                ("tensorrt_version", "10.7.0", "TensorRT version")):
        with pytest.raises(RuntimeError) as info:
            be.check_engine_compatible(sidecar, **{**here, field: other})
        message = str(info.value)
        assert label in message and field in message and other in message and str(sidecar[field]) in message
        assert "python -m export.build_engine unet.onnx" in message
    with pytest.raises(RuntimeError, match="python -m export.build_engine model.onnx"):
        be.check_engine_compatible({}, **here)


def test_explicit_batch_flag_only_before_tensorrt_10() -> None:
    assert be.needs_explicit_batch_flag("8.6.1") and not be.needs_explicit_batch_flag("10.3.0")


def test_tensorrt_runner_checks_sidecar_before_deserializing(tmp_path: Path, dynamic_model: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    contract = load_contract(dynamic_model)
    env = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    sidecar = be.make_sidecar(dynamic_model, contract, precision="fp16", profile=be.compute_profile(contract), **env)
    be.sidecar_path(engine).write_text(json.dumps(sidecar))
    monkeypatch.setattr(run_mod, "gpu_environment", lambda device=0: {**env, "compute_capability": "8.9"})
    monkeypatch.setattr(run_mod, "import_tensorrt", lambda: pytest.fail("tensorrt used before the sidecar check"))
    with pytest.raises(RuntimeError, match="compute capability.*'9.0'.*'8.9'.*rebuild the engine"):
        load_runner(engine)


def test_without_tensorrt_the_error_says_what_to_install(dynamic_model: Path) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match=r"pip install 'diffperception\[gpu\]'"):
        be.build_engine(dynamic_model, max_batch=2)


# --- real TensorRT (skipped without tensorrt + a CUDA device) ------------------------------


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_build_and_run_matches_onnxruntime(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    try:
        cudart = be.import_cudart()
        if be.cuda_call(cudart.cudaGetDeviceCount()) < 1:
            pytest.skip("no CUDA device")
    except RuntimeError as exc:
        pytest.skip(f"no CUDA: {exc}")
    model = make_image_model(tmp_path / "m.onnx", batch="batch", batch_range=(1, 2, 4))
    engine = be.build_engine(model, precision="fp32", max_batch=4, workspace_gib=0.5,
                             timing_cache=tmp_path / "timing.cache")
    assert engine.is_file() and (tmp_path / "timing.cache").is_file()
    runner = TensorRTRunner(engine)
    x = RNG.random((3, 3, SIZE, SIZE), dtype=np.float32)
    expected = OnnxRunner(model)(x)
    for tap, value in runner(x).items():
        np.testing.assert_allclose(value, expected[tap], rtol=1e-3, atol=1e-3)
    runner.close()
