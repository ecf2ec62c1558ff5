"""Noising the clean latent: ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``.

The batch handed to the trunk is laid out as ``(T, E, B)`` flattened: timesteps outermost, then
noise draws (ensemble), then images. Fixed noise is shared by all images of a batch (as DIFT
does), so it does not depend on the batch size and becomes a constant when specialised.
"""

from __future__ import annotations

from typing import Callable

import torch

#: Offset between the seed of the diffusion noise and that of a fixed posterior sample.
POSTERIOR_SEED_OFFSET = 7919

__all__ = ["predicted_noise", "posterior_noise", "fixed_noise", "add_noise", "check_noise", "ddim_invert", "flatten_batch", "reduce_draws"]


def fixed_noise(seed: int, num_timesteps: int, ensemble: int, latent_shape: tuple[int, ...],
                *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded noise ``(T, E, 1, C, h, w)``, identical on every call and every device."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (num_timesteps, ensemble, 1, *latent_shape)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


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
