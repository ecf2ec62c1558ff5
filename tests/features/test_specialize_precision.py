"""Specialisation shares the backbone's weights (no second copy), leaves the backbone intact, and
keeps parity in every precision: fp32, bf16 (channels-last) and fp16 where the CPU runs it.

The reference is diffusers' own full U-Net (fp32) with forward hooks on the tapped module, fed
the same noisy latent; each precision has its tolerance on max |error| / max |reference|.
"""

from __future__ import annotations

import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.features.specialize import shared_copy, to_precision
from testing_utils.reference import hook_full_unet

TAP = "up_ft.1"
# max |error| / max |fp32 reference| per precision (the benchmark's PARITY_RTOL values)
TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 3e-2}


def _model(folder, dtype="float32", memory_format="contiguous"):
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        folder, taps=[TAP, "mid_block"], timesteps=[261], seed=4, dtype=dtype,
        memory_format=memory_format)


def _reference(pipe, images):
    """fp32 hooked full forward with the fixed seeded noise (shared by the batch)."""
    latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    eps = torch.randn((1, 1, 1, 4, 8, 8), generator=torch.Generator().manual_seed(4))[0, 0]
    abar = pipe.scheduler.alphas_cumprod[261]
    embeds, _ = pipe.encode_prompt("", "cpu", 1, False)
    store, handles = hook_full_unet(pipe.unet, [TAP, "mid_block"])
    with torch.no_grad():
        z = abar.sqrt() * latent + (1 - abar).sqrt() * eps
        pipe.unet(z, torch.full((z.shape[0],), 261), encoder_hidden_states=embeds.expand(z.shape[0], -1, -1))
    out = {k: v.clone() for k, v in store.items()}
    for handle in handles:
        handle.remove()
    return out


def _errors(out, ref):
    rel = max(((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
    cos = min(torch.nn.functional.cosine_similarity(out[k].float().flatten(1), ref[k].flatten(1)).min().item()
              for k in ref)
    return rel, cos


def _images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_specialised_module_shares_the_weights_and_leaves_the_backbone_intact(tiny_repos):
    model = _model(tiny_repos["sd1"])
    images = _images()
    with torch.no_grad():
        before = model(images)
        special = model.specialize((64, 64))
    ours = {id(p.untyped_storage()): p for p in model.backbone.network.parameters()}
    theirs = list(special.unet.parameters()) + list(special.vae.parameters())
    mine = {p.untyped_storage().data_ptr() for p in list(model.backbone.network.parameters())
            + list(model.backbone.vae.parameters())}
    new_bytes = sum(p.numel() * p.element_size() for p in theirs if p.untyped_storage().data_ptr() not in mine)
    total = sum(p.numel() * p.element_size() for p in theirs)
    assert ours and total > 0 and new_bytes == 0  # not one parameter byte was copied
    # the backbone keeps what specialisation drops in the copy (K / V projections, time MLP)
    attn = model.backbone.network.up_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert attn.to_k is not None and model.backbone.network.time_embedding is not None
    assert special.unet.time_embedding is None
    with torch.no_grad():
        after = model(images)
        got = special(images)
    for k in before:
        assert torch.equal(before[k], after[k])
        assert (got[k] - before[k]).abs().max() <= 1e-5


def test_shared_copy_conversion_does_not_reach_the_original():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    copy = shared_copy(net)
    assert copy[0].weight.data_ptr() == net[0].weight.data_ptr()
    copy.to(torch.bfloat16).to(memory_format=torch.channels_last)
    assert net[0].weight.dtype == torch.float32 and net[0].weight.is_contiguous()
    assert copy[0].weight.dtype == torch.bfloat16
    assert copy[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype,memory_format", [("float32", "contiguous"), ("float32", "channels_last"),
                                                 ("bfloat16", "channels_last"), ("bfloat16", "contiguous"),
                                                 ("float16", "channels_last")])
def test_eager_and_specialised_parity_in_every_precision(tiny_repos, reference_pipes, dtype, memory_format):
    model = _model(tiny_repos["sd1"], dtype, memory_format)
    if memory_format == "channels_last":
        conv = model.backbone.network.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == getattr(torch, dtype)
    images = _images()
    ref = _reference(reference_pipes["sd1"], images)
    try:
        with torch.no_grad():
            eager = model(images)
            module = model.specialize((64, 64))
            special = module(images.to(getattr(torch, dtype)))
            # float32 images, as users and the end-to-end benchmark pass them, give the same
            from_float32 = module(images)
    except RuntimeError as err:  # fp16 kernels missing on this CPU
        if dtype == "float16" and "Half" in str(err):
            pytest.skip(f"fp16 is not implemented on this CPU: {err}")
        raise
    for out in (eager, special, from_float32):
        assert all(v.dtype == getattr(torch, dtype) for v in out.values())
        rel, cos = _errors(out, ref)
        assert rel <= TOLERANCE[dtype], rel
        assert cos >= 0.999 if dtype != "float32" else rel <= 1e-5
    if dtype == "float32":
        return
    # the low precision is what the tolerance absorbs: the error is above fp32 rounding
    assert _errors(eager, ref)[0] > 1e-4


def test_to_precision_gives_a_bf16_channels_last_copy(tiny_repos, reference_pipes):
    model = _model(tiny_repos["sd1"])
    special = model.specialize((64, 64))
    low = to_precision(special, torch.bfloat16)
    assert special.unet.conv_in.weight.dtype == torch.float32
    assert low.unet.conv_in.weight.dtype == torch.bfloat16
    assert low.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    images = _images()
    with torch.no_grad():
        rel, cos = _errors(low(images.bfloat16()), _reference(reference_pipes["sd1"], images))
        still = special(images)
    assert rel <= TOLERANCE["bfloat16"] and cos >= 0.999
    assert _errors(still, _reference(reference_pipes["sd1"], images))[0] <= 1e-5


def test_channels_last_survives_save_and_load(tiny_repos, tmp_path):
    model = _model(tiny_repos["sd1"], "bfloat16", "channels_last")
    model.save_pretrained(tmp_path / "saved")
    loaded = DiffusionPerceptionForFeatureExtraction.from_pretrained(tmp_path / "saved")
    assert loaded.config.backbone.memory_format == "channels_last"
    weight = loaded.backbone.network.conv_in.weight
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    images = _images()
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert all(torch.equal(a[k], b[k]) for k in a)
