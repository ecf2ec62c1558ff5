"""Every tap ``list_taps`` lists gives what a hook on the full diffusers model gives, with
ensembles, several timesteps and batches, and specialised; anything else is refused by name."""

from __future__ import annotations

import pytest
import torch
from testing_utils.reference import hook_full_unet

from diffperception import DiffusionBackbone, list_taps

SIZES = {"sd1": 64, "sdxl": 64, "pixel": 32}


def _inputs(kind, batch=2, ensemble=2):
    gen = torch.Generator().manual_seed(0)
    size = SIZES[kind]
    images = torch.rand(batch, 3, size, size, generator=gen)
    shape = (3, 32, 32) if kind == "pixel" else (4, 8, 8)
    return images, torch.randn(ensemble, batch, *shape, generator=gen)


def _conditioning(pipe, kind, images):
    if kind == "pixel":
        return images * 2 - 1, {}
    latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    b, (h, w) = images.shape[0], images.shape[-2:]
    if kind == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt("", device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype)
        return latent, {"encoder_hidden_states": embeds.expand(b, -1, -1),
                        "added_cond_kwargs": {"text_embeds": pooled.expand(b, -1),
                                              "time_ids": time_ids.expand(b, -1)}}
    return latent, {"encoder_hidden_states": pipe.encode_prompt("", "cpu", 1, False)[0].expand(b, -1, -1)}


@pytest.mark.parametrize("kind", ["sd1", "sdxl", "pixel"])
def test_every_listed_tap_matches_the_full_forward(tiny_repos, reference_pipes, kind):
    taps = [t for t in list_taps(tiny_repos[kind], include_kinds=True) if not t.endswith(":logits")]
    timesteps = [100, 700]
    backbone = DiffusionBackbone.from_diffusers(tiny_repos[kind], taps=taps, timesteps=timesteps,
                                                ensemble=2)
    images, eps = _inputs(kind)
    pipe = reference_pipes[kind]
    with torch.no_grad():
        ours = backbone(images, noise=eps)
        latent, cond = _conditioning(pipe, kind, images)
        store, handles = hook_full_unet(pipe.unet, taps)
        abar = pipe.scheduler.alphas_cumprod
        per_t = []
        for t in timesteps:
            draws = []
            for e in range(eps.shape[0]):
                pipe.unet(abar[t].sqrt() * latent + (1 - abar[t]).sqrt() * eps[e],
                          torch.full((2,), t), **cond)
                draws.append({n: store[n].expand(2, *store[n].shape[1:]).float() for n in taps})
            per_t.append({n: torch.stack([d[n] for d in draws]).mean(0) for n in taps})
        for h in handles:
            h.remove()
    bad = [n for n in taps
           if (ours[n] - torch.stack([p[n] for p in per_t], 1)).abs().max() > 1e-4]
    assert not bad, bad[:10]
    keep = _specializable(backbone, taps)
    special_taps = [n for n in taps if n in keep]
    special = DiffusionBackbone.from_diffusers(tiny_repos[kind], taps=special_taps,
                                               timesteps=timesteps, ensemble=2, seed=5)
    with torch.no_grad():
        eager, frozen = special(images), special.specialize((SIZES[kind],) * 2)(images)
    bad = [n for n in special_taps if (eager[n] - frozen[n]).abs().max() > 1e-4]
    assert not bad, bad[:10]


def _specializable(backbone, taps):
    """The taps specialisation keeps; the others must be refused by name."""
    try:
        backbone.specialize((SIZES["pixel"] if backbone.vae is None else 64,) * 2)
        return set(taps)
    except ValueError as err:
        refused = {n for n in taps if repr(n) in str(err)}
        assert refused, err
        allowed = ("to_k", "to_v", "time_proj", "time_embedding", "add_embedding",
                   "add_time_proj", "time_emb_proj:in", "encoder_hid_proj")
        assert all(any(a in n for a in allowed) for n in refused), sorted(refused)[:10]
        return set(taps) - refused


@pytest.mark.parametrize("tap,message", [
    ("down_blocks", "container that is never called"),
    ("down_blocks.2.resnets", "container that is never called"),
    ("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out", "container"),
    ("time_proj:in", "gives torch.int64 values"),
    ("add_time_proj", "gives 12 rows for 2 samples"),
])
def test_taps_that_are_not_activations_are_refused_by_name(tiny_repos, tap, message):
    assert tap not in list_taps(tiny_repos["sdxl"], include_kinds=True)
    with pytest.raises(ValueError, match=message):
        DiffusionBackbone.from_diffusers(tiny_repos["sdxl"], taps=[tap])


def test_a_backbone_lists_its_kept_taps(tiny_repos):
    backbone = DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["mid_block"])
    names = list_taps(backbone, include_kinds=True)
    assert "mid_block" in names and "up_blocks.0" not in names and "time_proj:in" not in names
