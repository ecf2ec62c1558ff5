"""What a config says is what loading builds: dtypes survive save / load with identical outputs."""

from __future__ import annotations

import pytest
import torch

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageClassification


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
@pytest.mark.parametrize("kind,prompt", [("sd1", "a cat"), ("sdxl", ""), ("pixel", "")])
def test_dtype_round_trip(tiny_repos, tmp_path, dtype, torch_dtype, kind, prompt):
    model = DiffusionPerceptionForImageClassification.from_diffusers(
        tiny_repos[kind], taps=["mid_block"], labels=["a", "b"], dtype=dtype, prompt=prompt)
    assert all(p.dtype == torch_dtype for p in model.backbone.network.parameters())
    model.save_pretrained(tmp_path / "m")
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "m")
    assert loaded.config.backbone.dtype == dtype
    assert {k: v.dtype for k, v in loaded.state_dict().items()} == {
        k: v.dtype for k, v in model.state_dict().items()}
    size = 32 if kind == "pixel" else 64
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images).logits, loaded(images).logits)
