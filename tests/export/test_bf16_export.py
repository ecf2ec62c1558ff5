"""bf16 TorchScript and .pt2 exports: bf16 weights with channels-last convolutions inside, float32
in and out; parity against eager with the bf16 tolerance, and against the fp32 model's features
(the error the precision costs) with the same tolerance and a cosine >= 0.999."""

from __future__ import annotations

import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.export import export, get_exporter
from diffperception.export.parity import TOLERANCES

TAPS = ["up_ft.1", "mid_block"]


@pytest.fixture(scope="module")
def model(tiny_repos):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=TAPS, timesteps=[261], size=(64, 64))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_bf16_program_runs_bf16_inside_and_float32_outside(model, fmt, tmp_path):
    result = export(model, fmt, tmp_path / f"m{get_exporter(fmt).suffix}", batch=2, precision="bf16")
    assert result.precision == "bf16" and result.metadata["diffperception.precision"] == "bf16"
    assert all(entry["max_rel"] <= TOLERANCES["bf16"] for entry in result.parity.values())
    assert result.contract["inputs"][0]["dtype"] == "float32"
    assert all(o["dtype"] == "float32" for o in result.contract["outputs"])
    assert next(model.backbone.network.parameters()).dtype == torch.float32  # model untouched
    program = get_exporter(fmt).load(result.path)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = dict(program(images))
        fp32 = model(images)
    for tap in TAPS:
        assert got[tap].dtype == torch.float32
        rel = ((got[tap] - fp32[tap]).abs().max() / fp32[tap].abs().max()).item()
        cos = torch.nn.functional.cosine_similarity(got[tap].flatten(1), fp32[tap].flatten(1)).min()
        assert 1e-4 < rel <= TOLERANCES["bf16"]  # computed in bf16 (not fp32), within tolerance
        assert cos >= 0.999
    weights = [t for t in (program.state_dict().values() if fmt == "pt2" else []) if t.is_floating_point()]
    assert all(t.dtype == torch.bfloat16 for t in weights)


def test_bf16_is_refused_where_the_format_has_no_bf16(model, tmp_path):
    with pytest.raises(ValueError, match="bf16"):
        export(model, "onnx", tmp_path / "m.onnx", precision="bf16")


def test_a_bf16_model_exports_with_the_bf16_precision_only(tiny_repos, tmp_path):
    low = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=TAPS, timesteps=[261], size=(64, 64), dtype="bfloat16",
        memory_format="channels_last")
    with pytest.raises(ValueError, match="precision='bf16'"):
        export(low, "pt2", tmp_path / "m.pt2")
    result = export(low, "pt2", tmp_path / "m.pt2", precision="bf16")
    assert all(entry["max_rel"] <= TOLERANCES["bf16"] for entry in result.parity.values())
