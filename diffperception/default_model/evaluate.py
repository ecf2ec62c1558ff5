"""Quality checks for the default model: zero-shot accuracy and linear probes.

Both run through the public API (``diffperception.evaluation``):

- ``zero_shot_accuracy`` is the diffusion-classifier rule: for every image and every class
  caption, the mean squared noise-prediction error over a few timesteps with seeded noise (the
  same noise for every caption); the caption with the lowest error is the prediction.
- ``probe_check`` fits standardised logistic-regression probes on features of the feature
  extractor (fixed seeded noise, null prompt, 2x2 average pool), next to the same architecture
  with random weights and to raw pixels.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..evaluation import probe_against_baselines
from ..evaluation import zero_shot_accuracy as _zero_shot_accuracy
from . import CLASS_NAMES, caption_for

# Chosen on 200 train-split images (never on the test split): single timesteps 600-800
# separate the classes best for the shipped model; three of them take ~1 min on 2 cores.
ZERO_SHOT_TIMESTEPS: tuple[int, ...] = (600, 700, 800)
PROBE_TAPS: tuple[str, ...] = ("mid_block", "up_blocks.1")
PROBE_TIMESTEPS: tuple[int, ...] = (50, 200)


def zero_shot_accuracy(folder: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       timesteps: Sequence[int] = ZERO_SHOT_TIMESTEPS, seeds: int = 1,
                       batch_size: int = 16) -> float:
    """Zero-shot classification accuracy of the diffusion classifier on the ten digit captions.

    Args:
        folder: Model folder (diffusers layout).
        images: Float array (N, 3, 32, 32) in [0, 1].
        labels: Int array (N,) of digit labels.
        timesteps: Timesteps (scheduler indices) to average the error over.
        seeds: Number of seeded noises per timestep.
        batch_size: Images per forward (times ten captions).

    Returns:
        Fraction of images whose lowest-error caption is their own class.

    Raises:
        ValueError: Bad images, labels or timesteps.
    """
    captions = [caption_for(c) for c in range(len(CLASS_NAMES))]
    return _zero_shot_accuracy(folder, images, labels, captions, timesteps=timesteps, seeds=seeds,
                               batch_size=batch_size)


def probe_check(folder: str | os.PathLike, data: dict[str, np.ndarray],
                taps: Sequence[str] = PROBE_TAPS, timesteps: Sequence[int] = PROBE_TIMESTEPS,
                seed: int = 0) -> dict[str, Any]:
    """Linear-probe accuracies of the model, its random-weight twin and raw pixels.

    Args:
        folder: Model folder (diffusers layout).
        data: Output of :func:`load_digits_split`.
        taps: Tap names to probe.
        timesteps: Noise levels to probe at.
        seed: Seed of the feature noise and of the random weights.

    Returns:
        Dict with ``probe_trained`` and ``probe_random`` (``"<tap>@t=<t>"`` -> test accuracy)
        and ``probe_pixels`` (raw 32x32 gray pixels).
    """
    result = probe_against_baselines(
        folder, data["train_images"], data["train_labels"], data["test_images"],
        data["test_labels"], taps=taps, timesteps=timesteps, seed=seed,
        pixels=(data["train_images"][:, 0], data["test_images"][:, 0]))
    by_key = {kind: {f"{tap}@t={t}": grid[tap][t] for t in timesteps for tap in taps}
              for kind, grid in (("probe_trained", result.trained), ("probe_random", result.random))}
    return {**by_key, "probe_pixels": result.pixels}


def quality_report(folder: str | os.PathLike, data: dict[str, np.ndarray], seed: int = 0,
                   zero_shot_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zero-shot accuracy plus probes of trained vs. random-weight U-Net vs. pixels.

    Args:
        folder: Model folder (diffusers layout).
        data: Output of :func:`load_digits_split`.
        seed: Seed of the random-weight U-Net and of the probe features' noise.
        zero_shot_kwargs: Extra keyword arguments for :func:`zero_shot_accuracy`.

    Returns:
        Dict with ``zero_shot``, ``zero_shot_settings``, ``probe_trained``,
        ``probe_random`` and ``probe_pixels``.
    """
    zs = {"timesteps": ZERO_SHOT_TIMESTEPS, "seeds": 1, **(zero_shot_kwargs or {})}
    zero_shot = zero_shot_accuracy(folder, data["test_images"], data["test_labels"], **zs)
    return {"zero_shot": zero_shot, "zero_shot_settings": zs,
            **probe_check(folder, data, seed=seed)}
