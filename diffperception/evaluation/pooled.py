"""Pooled backbone features of a whole split, for kNN and for the (tap, timestep) sweep.

A ``DiffusionBackbone`` returns ``{tap: (B, C, h, w)}`` for one timestep and
``{tap: (B, T, C, h, w)}`` for several; here every image of a split goes through it once, each
map is average-pooled to ``p x p`` (``torch.nn.functional.adaptive_avg_pool2d``) and flattened,
giving ``{tap: (N, T, C * p * p)}``.

``shared_noise_seed`` makes every timestep of a multi-timestep pass use the noise a backbone
built for that timestep alone draws with that seed (``fixed`` noise: one draw
``(1, C, h, w)`` shared by the images of a batch). A grid cell of one batched pass then equals
the backbone built for that single (tap, t).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .splits import image_batches

__all__ = ["pooled_features", "single_timestep_noise"]


def single_timestep_noise(backbone: Any, images: Any, seed: int) -> torch.Tensor:
    """The fixed noise a one-timestep backbone with ``seed`` adds, for a batch of ``images``.

    Args:
        backbone: A ``DiffusionBackbone``.
        images: The batch as the backbone takes it.
        seed: Seed of the fixed noise.

    Returns:
        ``(B, C, h, w)`` noise (one draw, expanded over the batch) on the backbone's device, in
        its dtype; the backbone adds it at every timestep.
    """
    from ..features.noise import fixed_noise

    x = backbone.prepare_images(images)  # (B, 3, H, W) at the network's input size
    factor = backbone.vae_factor
    shape = (backbone.vae_latent_channels, x.shape[-2] // factor, x.shape[-1] // factor)
    eps = fixed_noise(seed, 1, 1, shape, dtype=x.dtype)[0, 0]  # (1, C, h, w)
    return eps.to(x.device).expand(x.shape[0], *shape)


def _check_maps(backbone: Any) -> None:
    flat = [name for name, info in backbone.feature_info.items() if info.layout != "map"]
    if flat:
        raise ValueError(f"Taps {flat} are not (B, C, h, w) maps; pooled features take map taps "
                         "(module outputs such as 'mid_block' or 'up_blocks.1').")


@torch.no_grad()
def pooled_features(backbone: Any, dataset: Any, *, pool: int = 2, batch_size: int = 64,
                    shared_noise_seed: int | None = None, desc: str = "features",
                    progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Average-pooled activations of every image of a split.

    Args:
        backbone: A ``DiffusionBackbone`` with map taps.
        dataset: A ``datasets.Dataset`` with ``image`` and ``label`` columns.
        pool: Side ``p`` of the adaptive average pool.
        batch_size: Images per backbone call.
        shared_noise_seed: When given, every timestep adds the noise a single-timestep backbone
            with this seed adds (module docstring); None uses the backbone's own noise.
        desc: Label of the progress bar.
        progress: Show a tqdm progress bar.

    Returns:
        ``({tap: (N, T, C * p * p)} float32 arrays, (N,) int64 labels)``.

    Raises:
        ValueError: ``pool < 1``, or a tap that is not a map (attention probabilities, tokens).
    """
    from tqdm import tqdm

    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool = {pool!r} is invalid: a positive integer.")
    _check_maps(backbone)
    multi = len(backbone.features.timesteps) > 1
    chunks: dict[str, list[np.ndarray]] = {}
    labels = []
    total = -(-len(dataset) // batch_size)
    for images, batch_labels in tqdm(image_batches(dataset, batch_size), total=total, desc=desc,
                                     unit="batch", leave=False, disable=not progress):
        noise = (single_timestep_noise(backbone, images, shared_noise_seed)
                 if shared_noise_seed is not None else None)
        feats = backbone(images, noise=noise)
        for name, value in feats.items():
            value = value if multi else value.unsqueeze(1)  # (B, T, C, h, w)
            b, t = value.shape[:2]
            pooled = F.adaptive_avg_pool2d(value.flatten(0, 1).float(), pool)  # (B*T, C, p, p)
            chunks.setdefault(name, []).append(pooled.reshape(b, t, -1).cpu().numpy())
        labels.append(batch_labels)
    return {name: np.concatenate(c) for name, c in chunks.items()}, np.concatenate(labels)
