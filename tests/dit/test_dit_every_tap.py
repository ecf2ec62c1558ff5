"""Every tap ``list_taps`` lists for the tiny DiTs builds, runs, has the shape ``feature_info``
announces (image tokens as maps on the real 4 x 3 grid of 64 x 48 px images), and the specialised module gives the same
values (taps on modules that specialisation turns into constants are left out of that part)."""

from __future__ import annotations

import re

import pytest
import torch

from diffperception import DiffusionBackbone, list_taps

SIZE = (64, 48)
# the time / text embeddings and the K / V of PixArt's cross-attention become constants
_CONSTANT = re.compile(r"^(time_text_embed|context_embedder|caption_projection|adaln_single)|attn2\.to_[kv]$")


def _constant(tap: str) -> bool:
    path, _, kind = tap.partition(":")
    return bool(_CONSTANT.search(path)) or (kind == "in" and path.endswith((".linear", ".silu")))


@pytest.mark.parametrize("kind", ["pixart", "sd3", "flux"])
def test_every_listed_tap_runs_with_its_announced_shape(dit_repos, request, kind):
    folder = request.getfixturevalue("flux_repo") if kind == "flux" else dit_repos[kind]
    taps = list_taps(folder, include_kinds=True)
    backbone = DiffusionBackbone.from_diffusers(folder, taps=taps, timesteps=[250], prompt="a cat")
    images = torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone(images)
    for name in taps:
        info, value = backbone.feature_info[name], out[name]
        assert value.shape[0] == 2, name
        if value.ndim == 1:  # FLUX's float timesteps entering time_text_embed (per-sample scalars)
            continue
        if info.layout == "map":
            assert value.shape[1:] == (info.channels, SIZE[0] // info.stride, SIZE[1] // info.stride), name
            assert info.stride in (8, 16), name  # the latent (8 px), or the 2x2-patch token grid
        elif info.layout == "tokens":
            assert value.ndim in (2, 3) and value.shape[-1] == info.channels, name  # tokens or vectors
        else:
            assert value.ndim == 4 and value.shape[1] == info.channels, name
    kept = [t for t in taps if not _constant(t)]
    special_backbone = DiffusionBackbone.from_diffusers(folder, taps=kept, timesteps=[250], prompt="a cat")
    with torch.no_grad():
        special = special_backbone.specialize(size=SIZE)(images)
    for name in kept:
        torch.testing.assert_close(special[name], out[name], atol=3e-5, rtol=1e-4, msg=name)
