"""The exporter registry and its one flow, named outputs (``logits``), the shared contract schema,
the lazy package imports and the export packages' error-message style."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.deploy.contract import (
    CONTRACT_KEY,
    LEGACY_OUTPUTS_KEY,
    OUTPUTS_KEY,
    PREPROCESS_KEY,
    load_contract,
    parse_contract,
)
from diffperception.deploy.run import OnnxRunner
from diffperception.export import (
    Exporter,
    ExportOptions,
    export,
    list_exporters,
    load_metadata,
    register_exporter,
    to_onnx,
    to_pt2,
    to_tensorrt,
    to_torchscript,
)
from diffperception.export import registry
from diffperception.export.contract import build_contract, build_metadata
from diffperception.export.graph import example_input

REPO = Path(__file__).resolve().parents[2]
SIZE = (64, 64)
LABELS = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def special(tiny_repos) -> nn.Module:
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["up_ft.1"], size=SIZE)
    return model.specialize(SIZE)


class PooledClassifier(nn.Module):
    """A task model's specialised module whose output is ``{"logits": (B, num_labels)}``:
    the tiny feature extractor, global average pooling and a seeded Linear layer."""

    def __init__(self, features: nn.Module, labels: list[str]) -> None:
        super().__init__()
        self.features = features
        self.size, self.latent_input = features.size, features.latent_input
        self.source_config = {**features.source_config, "architecture": "PooledClassifier", "labels": labels}
        with torch.no_grad():
            channels = features(torch.zeros(1, 3, *features.size))["up_ft.1"].shape[1]
        self.head = nn.Linear(channels, len(labels))
        with torch.no_grad():
            weights = torch.randn(len(labels), channels + 1, generator=torch.Generator().manual_seed(4))
            self.head.weight.copy_(weights[:, :-1])
            self.head.bias.copy_(weights[:, -1])

    @property
    def noise(self) -> torch.Tensor:
        return self.features.noise

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)["up_ft.1"]  # (B, C, h, w)
        return {"logits": self.head(feats.mean(dim=(2, 3)))}  # (B, num_labels)


# --- named outputs ----------------------------------------------------------------------------


def test_onnx_export_of_a_classifier_names_its_output_logits(special, tmp_path: Path) -> None:
    classifier = PooledClassifier(special, LABELS).eval()
    result = to_onnx(classifier, tmp_path / "classifier.onnx", batch_range=(1, 2, 3))
    assert list(result.parity) == ["logits"] and result.parity["logits"]["max_rel"] <= 1e-4
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == ["logits"]
    contract = load_contract(result.path)
    assert contract.output_keys == ["logits"] and contract.outputs[0].shape == ("batch", len(LABELS))
    assert json.loads(contract.metadata["diffperception.labels"]) == LABELS
    assert json.loads(result.metadata[OUTPUTS_KEY]) == ["logits"]
    # independent of the exporter's own check: onnxruntime against the eager wrapper, batch 3
    x = example_input(contract, 3, seed=21)
    with torch.no_grad():
        expected = classifier(x)["logits"].numpy()
    got = OnnxRunner(result.path)(x.numpy())["logits"]
    assert got.shape == (3, len(LABELS))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


# --- registry and flow ------------------------------------------------------------------------


def test_builtin_exporters_are_registered_with_suffix_and_precisions() -> None:
    assert list_exporters() == ["onnx", "pt2", "tensorrt", "torchscript"]
    table = {name: (registry.get_exporter(name).suffix, registry.get_exporter(name).precisions)
             for name in list_exporters()}
    assert table == {"onnx": (".onnx", ("fp32", "fp16")), "pt2": (".pt2", ("fp32", "bf16")),
                     "tensorrt": (".engine", ("fp32", "fp16", "bf16")), "torchscript": (".pt", ("fp32", "bf16"))}
    with pytest.raises(ValueError, match="already registered"):
        register_exporter("onnx", suffix=".x")(type("Other", (Exporter,), {}))
    with pytest.raises(ValueError, match="Unknown precisions"):
        register_exporter("int8_thing", suffix=".x", precisions=("int8",))


def test_a_new_exporter_is_one_class_and_goes_through_the_flow(special, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    calls: list[str] = []

    @register_exporter("scaled", suffix=".scaled", precisions=("fp32",))
    class ScaledExporter(Exporter):
        """Writes a scale factor; its "artifact" is the eager module times that factor."""

        def validate(self, options: ExportOptions) -> None:
            calls.append("validate")

        def write(self, prepared, path, *, precision, progress, scale: float = 1.0):
            calls.append("write")
            metadata = build_metadata(prepared.special, prepared.contract, precision)
            path.write_text(json.dumps({"scale": scale, "metadata": metadata}))
            return [path], metadata

        def runner(self, path):
            scale = json.loads(Path(path).read_text())["scale"]
            return lambda x: {key: value * scale for key, value in special(x).items()}

        def load_metadata(self, path):
            return json.loads(Path(path).read_text())["metadata"]

    assert "scaled" in list_exporters()
    result = export(special, "scaled", tmp_path / "m.scaled", batch_range=(1, 1, 2), scale=1.0)
    assert calls == ["validate", "write"] and result.format == "scaled"
    assert result.parity["up_ft.1"]["max_abs"] == 0.0 and result.contract["batch"] == {"min": 1, "opt": 1, "max": 2}
    assert load_metadata(result.path) == result.metadata
    with pytest.raises(RuntimeError, match="The parity check failed for .*m2.scaled"):
        export(special, "scaled", tmp_path / "m2.scaled", scale=1.01)
    with pytest.raises(ValueError, match="The pt2 exporter takes no scale.*option of the scaled exporters"):
        export(special, "pt2", tmp_path / "m.pt2", scale=2.0)


def test_the_option_block_is_declared_once() -> None:
    common = list(ExportOptions.names())
    assert common == ["size", "batch", "batch_range", "latent_input", "include_resize", "precision", "check",
                      "progress"]
    for func, own in ((to_torchscript, []), (to_pt2, []), (to_onnx, ["opset", "external_data"]),
                      (to_tensorrt, ["opset", "workspace_gib", "timing_cache"])):
        parameters = inspect.signature(func).parameters
        assert set(common + own) <= set(parameters), func.__name__
        assert all(parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in common + own)
    assert "opset" not in inspect.signature(to_pt2).parameters
    assert inspect.signature(to_tensorrt).parameters["precision"].default == "fp16"
    for bad in ({"batch": 0}, {"batch_range": (4, 2, 8)}, {"size": (64,)}, {"include_resize": (8, 8),
                                                                            "latent_input": True}):
        with pytest.raises(ValueError):
            ExportOptions(**bad)


# --- one schema -------------------------------------------------------------------------------


def test_writer_builds_the_kits_contract_and_the_kit_reads_it_back(special) -> None:
    contract = build_contract(special, batch_range=(1, 2, 4), input_size=(80, 72))
    metadata = build_metadata(special, contract.with_dtype("float16"), "fp16")
    parsed = parse_contract(metadata, "m.onnx")
    assert dataclasses.replace(parsed, source="<memory>") == dataclasses.replace(
        contract.with_dtype("float16"), metadata=parsed.metadata)
    assert parsed.input.shape == ("batch", 3, 80, 72) and parsed.preprocess.model_size == SIZE
    assert parsed.preprocess.in_graph == ("resize", "scale") and parsed.output_keys == ["up_ft.1"]
    assert {CONTRACT_KEY, PREPROCESS_KEY, OUTPUTS_KEY} <= set(metadata) and LEGACY_OUTPUTS_KEY not in metadata
    assert parsed.metadata["diffperception.precision"] == "fp16"
    assert "diffperception.labels" not in metadata  # a feature extractor has no labels


def test_kit_still_reads_the_old_tap_spelling(special) -> None:
    metadata = build_metadata(special, build_contract(special))
    old = json.loads(metadata[CONTRACT_KEY])
    for entry in old["outputs"]:
        entry["tap"] = entry.pop("key")
    legacy = {k: v for k, v in metadata.items() if k != OUTPUTS_KEY}
    legacy.update({CONTRACT_KEY: json.dumps(old), LEGACY_OUTPUTS_KEY: json.dumps(["up_ft.1"])})
    contract = parse_contract(legacy, "old.onnx")
    assert contract.output_keys == ["up_ft.1"] and LEGACY_OUTPUTS_KEY not in contract.metadata
    assert json.loads(contract.to_metadata()[OUTPUTS_KEY]) == ["up_ft.1"]


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_library_spells_no_schema_key_itself(special) -> None:
    """Metadata keys and the contract's field names come from the kit's schema module only."""
    written = set(build_metadata(special, build_contract(special)))
    contract_fields = set(build_contract(special).to_dict()) | {"tap", "key", "taps"}
    assert "diffperception.timesteps" in written and "outputs" in contract_fields
    for source in sorted((REPO / "diffperception" / "export").glob("*.py")):
        for line, text in _string_constants(source):
            assert text not in written | contract_fields, f"{source.name}:{line} spells the schema's {text!r}"


# --- lazy imports -----------------------------------------------------------------------------


def test_package_imports_are_lazy_and_the_kit_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import diffperception, diffperception.deploy, diffperception.export\n"
        "from diffperception.deploy.run import main\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "assert set(diffperception.__all__) <= set(dir(diffperception)), diffperception.__all__\n"
        "assert 'DiffusionPerceptionForFeatureExtraction' in dir(diffperception)\n"
        "assert diffperception.DiffusionPerceptionForFeatureExtraction.__name__ == "
        "'DiffusionPerceptionForFeatureExtraction'\n"
        "assert 'torch' in sys.modules\n"
        "try:\n    diffperception.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO.parent, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


# --- one error-message style ------------------------------------------------------------------


def _message_pieces(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message_pieces(node.left) + _message_pieces(node.right)
    if isinstance(node, ast.JoinedStr):
        return list(node.values)
    return [node]


def test_error_messages_are_capitalised_sentences() -> None:
    sources = sorted((REPO / "diffperception" / "export").glob("*.py")) + sorted((REPO / "export").glob("*.py"))
    bad = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
            if name == "AttributeError" or name.startswith("_"):
                continue  # Python's own wording (hasattr() / dir()); private errors are wrapped in public ones
            pieces = _message_pieces(node.exc.args[0])
            first, last = pieces[0], pieces[-1]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value[:1].isupper():
                bad.append(f"{source.name}:{node.lineno} starts {first.value[:30]!r}")
            if isinstance(last, ast.Constant) and isinstance(last.value, str) and not last.value.rstrip().endswith(
                    (".", ".)", "`.")):
                bad.append(f"{source.name}:{node.lineno} ends {last.value[-30:]!r}")
    assert not bad, "\n".join(bad)


# --- the kit's Pillow preprocessing and the library's torch preprocessing ----------------------


@pytest.mark.parametrize(("shape", "size", "resize", "crop"), [
    ((90, 100, 3), (64, 64), "bicubic", "center"), ((200, 130, 3), (64, 48), "bicubic", "center"),
    ((70, 150, 3), (48, 64), "bilinear", "center"), ((50, 40, 3), (32, 32), "bilinear", "none"),
    ((33, 65, 3), (16, 32), "nearest", "center")])
def test_kit_and_library_preprocess_an_image_alike(shape, size, resize: str, crop: str) -> None:
    """Same resize, crop and offsets: only rounding to uint8 and bicubic overshoot may differ."""
    from diffperception.config import PreprocessConfig
    from diffperception.deploy.contract import resize_and_crop as kit_resize_and_crop
    from diffperception.features.preprocess import resize_and_crop

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    kit = kit_resize_and_crop(Image.fromarray(pixels, "RGB"), size, resize, crop)
    kit_array = np.asarray(kit, dtype=np.float32).transpose(2, 0, 1) / 255  # (3, H, W)
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255  # (1, 3, h, w)
    library = resize_and_crop(images, PreprocessConfig(size=list(size), resize=resize, crop=crop))[0].numpy()
    assert library.shape == kit_array.shape == (3, *size)
    difference = np.abs(library - kit_array)
    assert difference.mean() < 2.5e-3 and difference.max() < 0.05, (difference.mean(), difference.max())
