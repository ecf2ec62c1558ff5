"""DiT feature models saved and loaded back (trunk only, meta build, strict load)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForFeatureExtraction

SIZE = (64, 48)


@pytest.mark.parametrize("kind,tap", [("pixart", "transformer_blocks.1"), ("sd3", "transformer_blocks.0:adaln")])
def test_round_trip_is_bit_identical_and_saves_only_the_trunk(dit_repos, kind, tap, tmp_path):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        dit_repos[kind], taps=[tap], timesteps=[261], prompt="a cat", size=SIZE)
    images = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(images)[tap], loaded(images)[tap])
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    last = int(tap.split(".")[1].split(":")[0])
    assert not any(k.startswith(f"backbone.transformer.transformer_blocks.{last + 1}.") for k in keys)
    assert not any("proj_out" in k or "text_encoder" in k for k in keys)
