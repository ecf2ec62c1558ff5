"""Noising the clean latent: ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``.

The batch handed to the trunk is laid out as ``(T, E, B)`` flattened: timesteps outermost, then
noise draws (ensemble), then images. Fixed noise is shared by all images of a batch (as DIFT
does), so it does not depend on the batch size and becomes a constant when specialised.

An ensemble averages the features of E noise draws (DIFT: E = 8). How the draws are made
(``NoiseConfig.sampling``, :func:`noise_draws`) decides how close the E-draw mean comes to the
mean over all noise:

- ``"independent"``: i.i.d. standard normal draws (the default; what DIFT does);
- ``"antithetic"``: pairs ``(eps, -eps)`` (antithetic variates): the part of the feature that is
  odd in the noise cancels exactly within a pair, so for features close to linear in ``eps``
  (small noise, early timesteps) the error falls much faster than ``1 / sqrt(E)``;
- ``"sobol"``: randomised quasi-Monte Carlo: points of a scrambled Sobol sequence
  (``torch.quasirandom.SobolEngine``) mapped through the inverse normal CDF, so that every
  coordinate of ``eps`` is stratified over the E draws (each of the E equal-probability slices of
  the normal distribution receives one draw when E is a power of 2). Sobol points have at most
  ``SobolEngine.MAXDIM`` coordinates; longer noise vectors use independently scrambled blocks
  ("padding"), which keeps the per-coordinate stratification.

Every draw is still marginally standard normal, so the ensemble mean stays an unbiased estimate of
the same expected feature; only its variance changes. ``per_image_noise`` gives each image the
noise of its own seed, so an image's features do not depend on which batch it is in.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..config import NOISE_SAMPLINGS

#: Offset between the seed of the diffusion noise and that of a fixed posterior sample.
POSTERIOR_SEED_OFFSET = 7919

__all__ = ["predicted_noise", "posterior_noise", "fixed_noise", "per_image_noise", "noise_draws",
           "add_noise", "check_noise", "ddim_invert", "flatten_batch", "reduce_draws",
           "NOISE_SAMPLINGS"]


def _sobol_normal(num: int, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(num, dim)`` standard-normal quasi-random draws: scrambled Sobol blocks -> ndtri."""
    from torch.quasirandom import SobolEngine

    blocks = []
    for start in range(0, dim, SobolEngine.MAXDIM):
        width = min(SobolEngine.MAXDIM, dim - start)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        u = SobolEngine(width, scramble=True, seed=seed).draw(num, dtype=torch.float64)
        blocks.append(u)
    u = torch.cat(blocks, dim=1)
    # Scrambled points never hit 0 or 1 exactly in practice; clamp so ndtri stays finite.
    tiny = torch.finfo(torch.float64).eps
    return torch.special.ndtri(u.clamp(tiny, 1 - tiny)).float()


def noise_draws(num_timesteps: int, ensemble: int, sample_shape: Sequence[int], *,
                sampling: str = "independent", generator: torch.Generator | None = None,
                ) -> torch.Tensor:
    """Standard-normal noise ``(T, E, *sample_shape)`` (float32, CPU) made as ``sampling`` says.

    Args:
        num_timesteps: T; each timestep gets its own draws.
        ensemble: E, the draws averaged per timestep.
        sample_shape: Shape of one draw, e.g. ``(1, C, h, w)`` or ``(B, C, h, w)``.
        sampling: ``"independent"``, ``"antithetic"`` (draw ``2k`` is ``eps_k``, draw
            ``2k + 1`` is ``-eps_k``) or ``"sobol"`` (see the module docstring).
        generator: Seeded CPU generator (None: the global RNG).

    Raises:
        ValueError: An unknown sampling, or ``"antithetic"`` with an odd ensemble.
    """
    if sampling not in NOISE_SAMPLINGS:
        raise ValueError(f"sampling {sampling!r} is not one of {NOISE_SAMPLINGS}.")
    shape = (num_timesteps, ensemble, *sample_shape)
    if sampling == "independent":
        return torch.randn(shape, generator=generator, dtype=torch.float32)
    dim = math.prod(sample_shape)
    if sampling == "antithetic":
        if ensemble % 2:
            raise ValueError(f"Antithetic draws come in pairs; the ensemble must be even, not {ensemble}.")
        half = torch.randn((num_timesteps, ensemble // 2, 1, dim), generator=generator,
                           dtype=torch.float32)
        return torch.cat([half, -half], dim=2).reshape(shape)  # (T, E/2, 2, dim) -> pairs adjacent
    points = [_sobol_normal(ensemble, dim, generator) for _ in range(num_timesteps)]
    return torch.stack(points).reshape(shape)


def fixed_noise(seed: int, num_timesteps: int, ensemble: int, latent_shape: tuple[int, ...],
                *, dtype: torch.dtype = torch.float32, sampling: str = "independent") -> torch.Tensor:
    """Seeded noise ``(T, E, 1, C, h, w)``, identical on every call and every device.

    Args:
        seed: Seed of the draws.
        num_timesteps, ensemble: T and E.
        latent_shape: ``(C, h, w)``.
        dtype: Dtype of the result (drawn in float32).
        sampling: How the E draws are made (:func:`noise_draws`).
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    eps = noise_draws(num_timesteps, ensemble, (1, *latent_shape), sampling=sampling,
                      generator=generator)
    return eps.to(dtype)


def per_image_noise(seeds: Sequence[int], num_timesteps: int, ensemble: int,
                    latent_shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32,
                    sampling: str = "independent") -> torch.Tensor:
    """Noise ``(T, E, B, C, h, w)`` where image ``b`` gets the fixed noise of seed ``seeds[b]``.

    An image's noise (hence its features) depends on its own seed only, not on the batch it is
    in or its position there: pass a stable id per image (a data set index) and features are
    reproducible across batchings and runs. Use it as ``backbone(images, noise=...)``.

    Raises:
        ValueError: No seeds, or a seed that is not an integer.
    """
    if len(seeds) == 0 or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers (one per image), got {seeds!r}.")
    parts = [fixed_noise(s, num_timesteps, ensemble, latent_shape, dtype=dtype, sampling=sampling)
             for s in seeds]
    return torch.cat(parts, dim=2)


def posterior_noise(seed: int, latent_shape: tuple[int, ...], *,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded noise ``(1, C, h, w)`` of a fixed VAE posterior sample, shared by a batch.

    Drawn from its own generator (seed ``seed + POSTERIOR_SEED_OFFSET``), so it is independent of
    the diffusion noise of the same seed.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed) + POSTERIOR_SEED_OFFSET)
    return torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32).to(dtype)


def predicted_noise(output: torch.Tensor, sample: torch.Tensor, abar: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """The noise ``eps`` a network output stands for, as diffusers' schedulers read it.

    Args:
        output: The network's output for ``sample`` ``(N, C, h, w)``.
        sample: The noisy input ``z_t``.
        abar: ``abar_t`` per sample, broadcastable (``(N, 1, 1, 1)`` or a scalar).
        prediction_type: ``"epsilon"`` (output is eps), ``"v_prediction"`` (output is
            ``v = sqrt(abar) eps - sqrt(1 - abar) z_0``) or ``"sample"`` (output is ``z_0``).

    Raises:
        ValueError: Another prediction type.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return abar.sqrt() * output + (1 - abar).sqrt() * sample
    if prediction_type == "sample":
        return (sample - abar.sqrt() * output) / (1 - abar).sqrt()
    raise ValueError(f"prediction_type {prediction_type!r} is not one of 'epsilon', "
                     "'v_prediction', 'sample'.")


def check_noise(noise: torch.Tensor, num_timesteps: int, ensemble: int,
                latent: torch.Tensor) -> torch.Tensor:
    """Validates user noise and brings it to ``(T, E, B, C, h, w)``.

    Accepted shapes: ``(B, C, h, w)`` (same noise for every timestep and draw),
    ``(E, B, C, h, w)`` and ``(T, E, B, C, h, w)``.
    """
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}.")
    batch_shape = tuple(latent.shape)
    shapes = {4: batch_shape, 5: (ensemble, *batch_shape), 6: (num_timesteps, ensemble, *batch_shape)}
    if noise.ndim not in shapes or tuple(noise.shape) != shapes[noise.ndim]:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)}; it must match the latent: {batch_shape} "
            f"(B, C, h, w), or {shapes[5]} (E, B, C, h, w), or {shapes[6]} (T, E, B, C, h, w)."
        )
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf values.")
    while noise.ndim < 6:
        noise = noise.unsqueeze(0)
    return noise.expand(num_timesteps, ensemble, *batch_shape).to(latent)


def add_noise(latent: torch.Tensor, noise: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Noisy latents ``(T, E, B, C, h, w)``.

    Args:
        latent: Clean latent ``(B, C, h, w)``.
        noise: ``(T, E, B or 1, C, h, w)``.
        alphas: ``abar_t`` per timestep ``(T,)`` (DDPM: ``sqrt(abar) z_0 + sqrt(1 - abar) eps``),
            or ``(signal, noise)`` coefficients per timestep ``(T, 2)`` (``signal z_0 + noise
            eps``; flow matching: ``(1 - sigma_t, sigma_t)``).
    """
    if alphas.ndim == 2:
        c = alphas.to(latent.dtype).view(-1, 2, 1, 1, 1, 1, 1)  # (T, 2, 1, 1, 1, 1, 1)
        return c[:, 0] * latent.unsqueeze(0).unsqueeze(0) + c[:, 1] * noise
    a = alphas.to(latent.dtype).view(-1, 1, 1, 1, 1, 1)  # (T, 1, 1, 1, 1, 1)
    return a.sqrt() * latent.unsqueeze(0).unsqueeze(0) + (1 - a).sqrt() * noise


def flatten_batch(x: torch.Tensor) -> torch.Tensor:
    """``(T, E, B, ...)`` -> ``(T*E*B, ...)``."""
    return x.reshape(-1, *x.shape[3:])


def reduce_draws(x: torch.Tensor, num_timesteps: int, ensemble: int, batch: int) -> torch.Tensor:
    """``(T*E*B, ...)`` -> mean over the E noise draws: ``(B, ...)`` for one timestep, else
    ``(B, T, ...)``."""
    x = x.reshape(num_timesteps, ensemble, batch, *x.shape[1:]).mean(dim=1)  # (T, B, ...)
    return x[0] if num_timesteps == 1 else x.transpose(0, 1)


@torch.no_grad()
def ddim_invert(latent: torch.Tensor, timestep: int, steps: int, alphas_cumprod: torch.Tensor,
                predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Deterministic DDIM inversion of the clean latent to ``timestep``.

    Walks ``steps`` equal steps from t = 0 (the clean latent, abar = 1) to ``timestep``, each
    step ``x' = sqrt(abar') x0_hat + sqrt(1 - abar') eps(x, t)`` with
    ``x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar)``.

    Args:
        latent: Clean latent ``(B, C, h, w)``.
        timestep: Target timestep.
        steps: Number of inversion steps.
        alphas_cumprod: The scheduler's ``abar`` table.
        predict_noise: ``(x (B, C, h, w), t (B,)) -> eps`` with the full network (an output of
            another prediction type converted by ``predicted_noise``).

    Returns:
        The inverted latent at ``timestep`` ``(B, C, h, w)``.
    """
    grid = torch.linspace(0, timestep, steps + 1).round().long().tolist()
    x = latent
    abar_prev = torch.tensor(1.0, dtype=torch.float64)
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        t_batch = torch.full((x.shape[0],), t_cur, dtype=torch.long, device=x.device)
        eps = predict_noise(x, t_batch)
        a_cur = abar_prev.to(x.dtype)
        a_next = alphas_cumprod[t_next].to(x.dtype)
        x0_hat = (x - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
        x = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        abar_prev = alphas_cumprod[t_next]
    return x
