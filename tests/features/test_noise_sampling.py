"""Variance-reduced noise ensembles (antithetic pairs, scrambled Sobol points) and per-image seeds.

References: the draws are checked against their definitions (pairs sum to zero; each coordinate of
a 2^m-point Sobol ensemble has one draw in each of the 2^m equal-probability slices of the normal
law); the features against diffusers' own full U-Net with forward hooks, fed noise built in the
test from ``torch.randn`` as the scheme says.
"""

from __future__ import annotations

import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.config import NoiseConfig, TaskConfig
from diffperception.features.noise import fixed_noise, noise_draws, per_image_noise
from testing_utils.reference import hook_full_unet

TAP = "up_ft.1"


def test_independent_draws_are_the_seeded_normal_stream_of_before():
    # The default must not change the features of existing models: the same stream as
    # torch.randn((T, E, 1, C, h, w)) from a generator seeded with the seed.
    expected = torch.randn((2, 3, 1, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    assert torch.equal(fixed_noise(11, 2, 3, (4, 8, 8)), expected)


def test_antithetic_draws_are_negated_pairs_of_seeded_normals():
    eps = fixed_noise(5, 2, 6, (4, 8, 8), sampling="antithetic")  # (T, E, 1, C, h, w)
    assert eps.shape == (2, 6, 1, 4, 8, 8)
    assert torch.equal(eps[:, 0::2], -eps[:, 1::2])
    half = torch.randn((2, 3, 1, 4 * 8 * 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(eps[:, 0::2].reshape(2, 3, -1), half.reshape(2, 3, -1))
    with pytest.raises(ValueError, match="even"):
        noise_draws(1, 3, (4,), sampling="antithetic")


def test_sobol_draws_stratify_every_coordinate():
    eps = fixed_noise(2, 1, 8, (3, 16, 16), sampling="sobol")[0, :, 0].reshape(8, -1).double()
    slices = (torch.special.ndtr(eps) * 8).floor()  # which of the 8 equal-probability slices
    assert torch.equal(slices.sort(dim=0).values, torch.arange(8.0)[:, None].expand(8, eps.shape[1]))
    # independent draws do not stratify (almost surely some coordinate has two in one slice)
    plain = fixed_noise(2, 1, 8, (3, 16, 16))[0, :, 0].reshape(8, -1).double()
    plain_slices = (torch.special.ndtr(plain) * 8).floor()
    assert not torch.equal(plain_slices.sort(dim=0).values, slices.sort(dim=0).values)
    # longer than one Sobol engine's dimension limit: blocks, still stratified, seeded
    long = fixed_noise(3, 1, 4, (4, 96, 96), sampling="sobol")
    assert torch.equal(long, fixed_noise(3, 1, 4, (4, 96, 96), sampling="sobol"))
    quarters = (torch.special.ndtr(long[0, :, 0].reshape(4, -1).double()) * 4).floor()
    assert torch.equal(quarters.sort(dim=0).values, torch.arange(4.0)[:, None].expand_as(quarters))


def test_config_validates_the_sampling():
    assert NoiseConfig(ensemble=4, sampling="antithetic").validate() is None
    for bad, match in [(dict(ensemble=3, sampling="antithetic"), "even"),
                       (dict(ensemble=1, sampling="sobol"), "ensemble >= 2"),
                       (dict(kind="none", sampling="sobol"), "ensemble >= 2"),
                       (dict(ensemble=4, sampling="halton"), "one of")]:
        with pytest.raises(ValueError, match=match):
            NoiseConfig(**bad).validate()


def _reference(pipe, images, eps, t):
    """Mean over draws of hooked full-U-Net features; ``eps`` ``(E, B, C, h, w)``."""
    latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    embeds, _ = pipe.encode_prompt("", "cpu", 1, False)
    abar = pipe.scheduler.alphas_cumprod[t]
    store, handles = hook_full_unet(pipe.unet, [TAP])
    draws = []
    with torch.no_grad():
        for e in range(eps.shape[0]):
            z = abar.sqrt() * latent + (1 - abar).sqrt() * eps[e]
            pipe.unet(z, torch.full((z.shape[0],), t), encoder_hidden_states=embeds.expand(z.shape[0], -1, -1))
            draws.append(store[TAP].clone())
    for handle in handles:
        handle.remove()
    return torch.stack(draws).mean(0)


@pytest.mark.parametrize("sampling", ["antithetic", "sobol"])
def test_variance_reduced_ensemble_matches_full_forward_hooks(tiny_repos, reference_pipes, sampling):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=[TAP], timesteps=[261], ensemble=4, sampling=sampling, seed=9)
    assert TaskConfig.from_dict(model.config.to_dict()).features.noise.sampling == sampling
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if sampling == "antithetic":  # written from the definition: seeded normals, then negated
        half = torch.randn((1, 2, 1, 4 * 8 * 8), generator=torch.Generator().manual_seed(9))
        eps = torch.cat([half, -half], dim=2).reshape(4, 1, 4, 8, 8)
    else:
        eps = fixed_noise(9, 1, 4, (4, 8, 8), sampling="sobol")[0]  # (E, 1, C, h, w)
    eps = eps.expand(4, 2, 4, 8, 8)  # fixed noise is shared by the images of a batch
    with torch.no_grad():
        ours = model(images)[TAP]
        special = model.specialize((64, 64))(images)[TAP]
    ref = _reference(reference_pipes["sd1"], images, eps, 261)
    assert (ours - ref).abs().max() <= 1e-5
    assert (special - ref).abs().max() <= 1e-5


def test_per_image_seeds_do_not_depend_on_the_batch(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=[TAP], timesteps=[261], ensemble=2, sampling="antithetic")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    noise = per_image_noise([10, 11, 12], 1, 2, (4, 8, 8), sampling="antithetic")  # (T, E, B, ...)
    assert noise.shape == (1, 2, 3, 4, 8, 8)
    with torch.no_grad():
        batch = model(images, noise=noise)[TAP]
        alone = model(images[2:], noise=per_image_noise([12], 1, 2, (4, 8, 8), sampling="antithetic"))[TAP]
        other = model(images[2:], noise=per_image_noise([13], 1, 2, (4, 8, 8), sampling="antithetic"))[TAP]
    assert (batch[2:] - alone).abs().max() <= 1e-5
    assert (alone - other).abs().max() > 1e-3  # another seed, other features: the check can fail
    with pytest.raises(ValueError, match="integers"):
        per_image_noise([1.5], 1, 2, (4, 8, 8))
