"""Exporters (TorchScript, torch.export, ONNX, TensorRT) on the tiny models, checked against eager PyTorch.

Exports are the slow part (seconds each on 2 cores), so each export runs once (module-scoped
fixtures) and several tests read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.deploy.contract import load_contract, prepare_batch, read_onnx_metadata
from diffperception.deploy.run import OnnxRunner
from diffperception.export import ExportResult, to_onnx, to_pt2, to_tensorrt, to_torchscript
from diffperception.export.cli import export_model
from diffperception.export.contract import build_contract, sanitize_output_names
from diffperception.export.options import normalize_batch, parse_size
from diffperception.export.graph import eager_outputs, example_input, prepare_export
from diffperception.export.parity import TOLERANCES, check_parity, compare_outputs
from diffperception.export.pt2 import load_pt2_metadata
from diffperception.export.torchscript import load_torchscript_metadata

REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)
ATTN = "up_blocks.1.attentions.0.transformer_blocks.0.attn1:attn"


@pytest.fixture(scope="module")
def sd1_model(tiny_repos) -> DiffusionPerceptionForFeatureExtraction:
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["up_ft.1"], size=SIZE)


@pytest.fixture(scope="module")
def sd1_two_taps(tiny_repos) -> DiffusionPerceptionForFeatureExtraction:
    """Two timesteps (outputs (B, T, C, h, w)), an attention tap (a name that needs sanitising)."""
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["up_ft.1", ATTN], timesteps=(101, 261), size=SIZE, prompt="a photo")


@pytest.fixture(scope="module")
def onnx_static(sd1_model, tmp_path_factory) -> ExportResult:
    return to_onnx(sd1_model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def onnx_fp16_dynamic(sd1_two_taps, tmp_path_factory) -> ExportResult:
    """fp16, a dynamic batch range, the resize in the graph and forced external data, in one export."""
    return to_onnx(sd1_two_taps, tmp_path_factory.mktemp("onnx16") / "model.onnx", fp16=True,
                   batch_range=(1, 2, 3), include_resize=(80, 72), external_data=True)


def _assert_within_tolerance(result: ExportResult, precision: str, taps: list[str]) -> None:
    assert list(result.parity) == taps
    for tap, entry in result.parity.items():
        assert entry["tolerance"] == TOLERANCES[precision]
        assert 0 <= entry["max_rel"] <= entry["tolerance"], (tap, entry)
        assert np.isfinite(entry["max_abs"])


# --- ONNX fp32 ------------------------------------------------------------------------------


def test_onnx_fp32_matches_eager_with_a_single_image_input(onnx_static: ExportResult, sd1_model) -> None:
    _assert_within_tolerance(onnx_static, "fp32", ["up_ft.1"])
    model = onnx.load(str(onnx_static.path))
    assert [i.name for i in model.graph.input] == ["images"]  # no timestep, text or noise input
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *SIZE]
    assert [o.name for o in model.graph.output] == ["up_ft_1"]
    assert {op.domain or "": op.version for op in model.opset_import}[""] >= 17
    assert onnx_static.files == [onnx_static.path] and onnx_static.size_bytes == onnx_static.path.stat().st_size
    # independent of the exporter's own check: onnxruntime vs the UNspecialised model's forward
    x = example_input(onnx_static.contract, 1, seed=7)
    with torch.no_grad():
        expected = sd1_model(x)["up_ft.1"].numpy()
    got = OnnxRunner(onnx_static.path)(x.numpy())["up_ft.1"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_onnx_metadata_round_trips(onnx_static: ExportResult, sd1_model) -> None:
    stored = {p.key: p.value for p in onnx.load(str(onnx_static.path)).metadata_props}
    assert stored == onnx_static.metadata == read_onnx_metadata(onnx_static.path)
    contract = load_contract(onnx_static.path)  # the deployment kit's parser accepts it
    assert contract.to_dict() == onnx_static.contract
    assert contract.input.name == "images" and contract.input.range == (0.0, 1.0)
    assert [(o.name, o.key, o.shape) for o in contract.outputs] == [("up_ft_1", "up_ft.1", (1, 32, 8, 8))]
    assert (contract.batch_min, contract.batch_max) == (1, 1)
    config = sd1_model.config
    assert json.loads(stored["diffperception.outputs"]) == ["up_ft.1"]
    assert "diffperception.taps" not in stored
    assert json.loads(stored["diffperception.timesteps"]) == config.features.timesteps == [261]
    assert stored["diffperception.noise_seed"] == str(config.features.noise.seed)
    # a local base is published by its folder name only, never its path
    assert stored["diffperception.source_repo"] == "local:" + Path(config.backbone.repo_id).name
    assert stored["diffperception.source_revision"] == str(config.backbone.revision or "unknown")
    assert stored["diffperception.precision"] == "fp32"
    preprocess = json.loads(stored["diffperception.preprocess"])
    assert preprocess["size"] == list(SIZE) and preprocess["model_range"] == [-1.0, 1.0]
    assert (preprocess["resize"], preprocess["crop"], preprocess["in_graph"]) == ("bicubic", "center", ["scale"])


KIT_PRELUDE = textwrap.dedent("""
    import runpy, sys
    attempts = []
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "diffusers", "diffperception"):
                attempts.append(name)
                raise ImportError("blocked in this test: " + name)
            return None
    sys.meta_path.insert(0, _Block())
    sys.argv = {argv!r}
    try:
        runpy.run_module("export.run", run_name="__main__", alter_sys=True)
    finally:
        assert not attempts, attempts
""")


def test_kit_runs_the_exported_file_without_torch(onnx_static: ExportResult, sd1_model, tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, size=(90, 100, 3), dtype=np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(pixels, "RGB").save(image)
    out = tmp_path / "features.npz"
    argv = ["export.run", str(onnx_static.path), str(image), "--threads", "1", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", KIT_PRELUDE.format(argv=argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up_ft.1: shape=(1, 32, 8, 8) dtype=float32" in proc.stdout
    batch = prepare_batch([image], load_contract(onnx_static.path))  # the kit's resize + crop, (1, 3, 64, 64)
    with torch.no_grad():
        expected = sd1_model(torch.from_numpy(batch))["up_ft.1"].numpy()
    got = np.load(out)["up_ft.1"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# --- ONNX fp16, dynamic batch, resize in the graph, external data ----------------------------


def test_onnx_fp16_dynamic_resize_and_external_data(onnx_fp16_dynamic: ExportResult) -> None:
    result = onnx_fp16_dynamic
    _assert_within_tolerance(result, "fp16", ["up_ft.1", ATTN])
    path, data = result.path, result.path.with_name("model.onnx.data")
    assert result.files == [path, data] and result.size_bytes == path.stat().st_size + data.stat().st_size
    stored = onnx.load(str(path), load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    entries = [{e.key: e.value for e in t.external_data} for t in external]
    assert external and all(e["location"] == "model.onnx.data" for e in entries)
    assert data.stat().st_size == max(int(e["offset"]) + int(e["length"]) for e in entries)
    assert not [t for t in stored.graph.initializer if t.raw_data and len(t.raw_data) > 1024]
    contract = load_contract(path)
    assert contract.input.shape == ("batch", 3, 80, 72) and contract.input.dtype == "float16"
    assert (contract.batch_min, contract.batch_opt, contract.batch_max) == (1, 2, 3)
    assert [o.name for o in contract.outputs] == ["up_ft_1", "up_blocks_1_attentions_0_transformer_blocks_0_attn1_attn"]
    assert contract.outputs[0].shape == ("batch", 2, 32, 8, 8)  # (B, T, C, h, w) for two timesteps
    assert contract.preprocess.in_graph == ("resize", "scale") and contract.preprocess.model_size == SIZE
    assert contract.metadata["diffperception.precision"] == "fp16"
    runner = OnnxRunner(path)
    assert runner.session.get_inputs()[0].type == "tensor(float16)"
    assert runner(np.zeros((3, 3, 80, 72), np.float32))["up_ft.1"].shape == (3, 2, 32, 8, 8)


# --- TorchScript and torch.export ----------------------------------------------------------


def test_torchscript_matches_eager(sd1_model, tmp_path: Path) -> None:
    result = to_torchscript(sd1_model, tmp_path / "model.pt")
    _assert_within_tolerance(result, "fp32", ["up_ft.1"])
    stored = load_torchscript_metadata(result.path)
    assert stored["contract"] == result.contract and stored["metadata"] == result.metadata
    x = example_input(result.contract, 1, seed=11)
    with torch.no_grad():
        got, expected = torch.jit.load(str(result.path))(x), sd1_model(x)  # vs the unspecialised forward
    torch.testing.assert_close(got["up_ft.1"], expected["up_ft.1"], rtol=1e-4, atol=1e-5)


def test_pt2_latent_input_dynamic_batch(sd1_model, tmp_path: Path) -> None:
    special = sd1_model.specialize(SIZE, latent_input=True)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = special(latents)["up_ft.1"]
    result = to_pt2(special, tmp_path / "model.pt2", latent_input=True, batch_range=(1, 2, 3))
    _assert_within_tolerance(result, "fp32", ["up_ft.1"])  # checked at batches 1 and 3
    assert result.contract["inputs"][0]["name"] == "latents"
    assert result.contract["inputs"][0]["shape"] == ["batch", 4, 8, 8]
    assert load_pt2_metadata(result.path)["contract"] == result.contract
    with torch.no_grad():
        after = special(latents)["up_ft.1"]  # the eager module still works after torch.export
    torch.testing.assert_close(after, before, rtol=0, atol=0)


# --- parity, contract and options -----------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_prepared(sd1_model):
    return prepare_export(sd1_model)


def test_parity_failure_is_an_error(sd1_prepared) -> None:
    prepared = sd1_prepared

    def off_by_a_bit(inputs: torch.Tensor) -> dict:
        return {tap: value * 1.001 for tap, value in eager_outputs(prepared, inputs).items()}

    with pytest.raises(RuntimeError, match=r"The parity check failed for model.onnx \(fp32.*up_ft.1: max_abs="):
        check_parity(off_by_a_bit, prepared, precision="fp32", artifact="model.onnx")
    report = check_parity(off_by_a_bit, prepared, precision="fp16", artifact="model.onnx")
    assert 5e-4 < report["up_ft.1"]["max_rel"] < 2e-3
    ref = {"a": torch.ones(2, 3), "b": torch.ones(2)}
    errors = compare_outputs({"a": np.ones((2, 2)), "b": np.array([1.0, np.nan])}, ref, 1e-4)
    assert "shape" in errors["a"]["problem"] and np.isnan(errors["b"]["max_abs"])
    with pytest.raises(RuntimeError, match="missing from the artifact"):
        check_parity(lambda x: {}, prepared, precision="fp32", artifact="m")


def test_contract_names_and_batches(sd1_prepared) -> None:
    assert sanitize_output_names(["up_blocks.1:attn", "up_ft.1", "up_ft_1", "images", "1x"]) == [
        "up_blocks_1_attn", "up_ft_1", "up_ft_1_2", "out_images", "out_1x"]
    assert normalize_batch(4) == (4, 4, 4) and normalize_batch(1, (1, 4, 8)) == (1, 4, 8)
    for bad in ((0, None), (1, (4, 2, 8)), (1, (1, 2)), (1.5, None)):
        with pytest.raises(ValueError, match="batch"):
            normalize_batch(*bad)
    special = sd1_prepared.special
    contract = build_contract(special, batch_range=(2, 2, 2))
    assert contract.input.shape == (2, 3, 64, 64) and (contract.batch_min, contract.batch_max) == (2, 2)
    assert contract.to_dict()["batch"] == {"min": 2, "opt": 2, "max": 2}
    with pytest.raises(ValueError, match="dtype"):
        build_contract(special, dtype="bfloat16")


def test_bad_options_are_clear_errors(sd1_model, sd1_prepared, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Cannot export a Linear"):
        to_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset"):
        to_onnx(sd1_model, tmp_path / "m.onnx", opset=16)
    with pytest.raises(ValueError, match="include_resize\\) applies to image inputs"):
        to_pt2(sd1_model, tmp_path / "m.pt2", latent_input=True, include_resize=(80, 80))
    with pytest.raises(ValueError, match="runs at size"):
        to_torchscript(sd1_prepared.special, tmp_path / "m.pt", size=(128, 128))
    with pytest.raises(ValueError, match="is a folder"):
        to_torchscript(sd1_model, tmp_path)
    with pytest.raises(ValueError, match="The onnx exporter writes precision fp32/fp16, not 'bf16'"):
        export_model(sd1_model, "onnx", tmp_path, precision="bf16")
    with pytest.raises(ValueError, match="fp16 is a precision of the onnx / tensorrt exporters"):
        export_model(sd1_model, "pt2", tmp_path, precision="fp16")
    with pytest.raises(ValueError, match="takes no opset.*opset is an option of the onnx, tensorrt exporters"):
        export_model(sd1_model, "torchscript", tmp_path, opset=18)
    with pytest.raises(ValueError, match="Unknown export format 'tflite'; choose one of"):
        export_model(sd1_model, "tflite", tmp_path)
    assert parse_size("512x384") == (512, 384) and parse_size("96") == (96, 96)
    for bad in ("0x4", "4x4x4", "ax4", ""):
        with pytest.raises(ValueError, match="HxW"):
            parse_size(bad)


# --- TensorRT (the build needs tensorrt + CUDA; only argument checks run here) ---------------


def test_tensorrt_checks_arguments_before_building(onnx_static: ExportResult, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        to_tensorrt(onnx_static.path, tmp_path / "m.engine", precision="int8")
    with pytest.raises(ValueError, match="an ONNX file already fixes them"):
        to_tensorrt(onnx_static.path, tmp_path / "m.engine", size=(64, 64))
    with pytest.raises(FileNotFoundError, match="gone.onnx"):
        to_tensorrt(tmp_path / "gone.onnx", tmp_path / "m.engine")
    with pytest.raises(ValueError, match="static batch of 1"):
        to_tensorrt(onnx_static.path, tmp_path / "m.engine", batch_range=(1, 2, 4))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="TensorRT is not available"):
            to_tensorrt(onnx_static.path, tmp_path / "m.engine")


def test_tensorrt_flow_with_a_stand_in_builder(onnx_static: ExportResult, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything but TensorRT: the ONNX file's contract and profile, the sidecar, parity against the ONNX file."""
    from diffperception.deploy import build_engine as be
    from diffperception.export import tensorrt as trt_export
    from diffperception.export.onnx import onnx_runner

    built = {}

    def stand_in_build(onnx_path, engine_path, *, precision, min_batch, opt_batch, max_batch, **_):
        contract = load_contract(onnx_path)
        profile = be.compute_profile(contract, min_batch, opt_batch, max_batch)
        Path(engine_path).write_bytes(b"stand-in engine")
        sidecar = be.make_sidecar(onnx_path, contract, precision=precision, profile=profile,
                                  tensorrt_version="10.0.0", gpu_name="stand-in GPU", compute_capability="9.0")
        be.sidecar_path(engine_path).write_text(json.dumps(sidecar))
        built.update(onnx=Path(onnx_path), batches=(min_batch, opt_batch, max_batch))
        return Path(engine_path)

    def off_by_half_a_percent(self, path):  # the "engine": the ONNX file's outputs, 0.5 % too large
        run = onnx_runner(built["onnx"])
        return lambda x: {key: value * 1.005 for key, value in run(x).items()}

    monkeypatch.setattr(be, "build_engine", stand_in_build)
    monkeypatch.setattr(trt_export.TensorRTExporter, "runner", off_by_half_a_percent)
    result = to_tensorrt(onnx_static.path, tmp_path / "m.engine", precision="fp16")
    assert built == {"onnx": onnx_static.path, "batches": (1, 1, 1)}
    assert result.files == [tmp_path / "m.engine", tmp_path / "m.engine.json"]
    assert result.contract == onnx_static.contract and result.metadata["diffperception.precision"] == "fp16"
    assert 4e-3 < result.parity["up_ft.1"]["max_rel"] < 6e-3 and result.parity["up_ft.1"]["tolerance"] == 1e-2
    with pytest.raises(RuntimeError, match=r"The parity check failed for .*m32.engine \(fp32"):
        to_tensorrt(onnx_static.path, tmp_path / "m32.engine", precision="fp32")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnx(sd1_model, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    result = to_tensorrt(sd1_model, tmp_path / "model.engine", precision="fp32", batch_range=(1, 2, 2),
                         workspace_gib=1, timing_cache=tmp_path / "timing.cache")
    _assert_within_tolerance(result, "fp32", ["up_ft.1"])
    assert (tmp_path / "model.engine.json").is_file() and (tmp_path / "model.onnx").is_file()


# --- CLI ------------------------------------------------------------------------------------


def test_cli_exports_a_saved_model(tiny_repos, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    try:
        from diffperception import AutoDiffusionPerception  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"AutoDiffusionPerception is not importable yet ({exc})")
    from diffperception.cli import main

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["pixel"], taps=["mid_block"],
                                                                   size=(32, 32))
    model.save_pretrained(tmp_path / "saved")
    code = main(["export", str(tmp_path / "saved"), "--format", "torchscript", "--out", str(tmp_path / "build"),
                 "--batch", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "build" / "model.pt").is_file()
    assert "specialising the model" in captured.err and "parity check" in captured.err
    assert "format:      torchscript (fp32)" in captured.out and "mid_block" in captured.out
    stored = load_torchscript_metadata(tmp_path / "build" / "model.pt")
    assert stored["contract"]["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert main(["export", "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "Pass either MODEL" in capsys.readouterr().err
