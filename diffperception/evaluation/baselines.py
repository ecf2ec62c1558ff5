"""Probing a diffusion model against its baselines: the same network with random weights, and
raw pixels.

Both sides go through the same product API (``DiffusionPerceptionForFeatureExtraction``) and the
same probe (:func:`~diffperception.evaluation.probe.probe_grid`), so the only difference between
"trained" and "random" is the weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..modeling import DiffusionPerceptionForFeatureExtraction
from .probe import linear_probe, probe_grid

__all__ = ["ProbeComparison", "random_weight_copy", "probe_against_baselines"]


def random_weight_copy(folder: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> Path:
    """Copies a diffusers folder with its U-Net freshly initialised (seeded).

    Everything but ``unet/`` (and the model card) is copied as is; the U-Net is built from its
    own ``config.json`` by its diffusers class after ``torch.manual_seed(seed)``.

    Args:
        folder: Local diffusers folder with a ``unet/`` component.
        out: Target folder (must not exist).
        seed: Seed of the initialisation.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        FileNotFoundError: ``folder`` has no ``unet/config.json``.
        FileExistsError: ``out`` exists.
        ValueError: The U-Net class is not a diffusers class.
    """
    import diffusers

    folder, out = Path(folder), Path(out)
    config_path = folder / "unet" / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: random_weight_copy needs a local "
                                "diffusers folder with a unet/ component.")
    config = json.loads(config_path.read_text())
    name = config.get("_class_name", "UNet2DConditionModel")
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unet/config.json names {name!r}, which is not a diffusers model class.")
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("unet", "README.md"))
    torch.manual_seed(seed)
    cls.from_config(config).save_pretrained(str(out / "unet"))
    return out


@dataclass
class ProbeComparison:
    """Test accuracies of the same probe on three kinds of features.

    Attributes:
        trained: ``{tap: {timestep: accuracy}}`` on the model's features.
        random: The same for the same architecture with seeded random weights.
        pixels: Accuracy on the raw pixels.
    """

    trained: dict[str, dict[int, float]]
    random: dict[str, dict[int, float]]
    pixels: float


def probe_against_baselines(folder: str | os.PathLike, train_images: np.ndarray,
                            train_labels: np.ndarray, test_images: np.ndarray,
                            test_labels: np.ndarray, *, taps: Sequence[str],
                            timesteps: Sequence[int], seed: int = 0,
                            pixels: tuple[np.ndarray, np.ndarray] | None = None,
                            progress: bool = True, **probe_options: Any) -> ProbeComparison:
    """Linear probes per (tap, timestep) on a model, on its random-weight twin, and on pixels.

    Features: fixed noise seeded with ``seed`` (shared by all images), null prompt ``""``,
    2x2 average pool (see :func:`~diffperception.evaluation.probe.probe_features`).

    Args:
        folder: Local diffusers folder of the model.
        train_images: ``(N, 3, H, W)`` in [0, 1].
        train_labels: ``(N,)`` class labels.
        test_images: ``(M, 3, H, W)`` in [0, 1].
        test_labels: ``(M,)`` class labels.
        taps: Tap names (see ``diffperception.list_taps``).
        timesteps: Timesteps (scheduler indices) to probe at.
        seed: Seed of the feature noise and of the random weights.
        pixels: ``(train, test)`` pixel arrays for the pixel probe (default: the images).
        progress: Whether to show progress bars.
        **probe_options: ``pool``, ``batch_size``, ``C``, ``max_iter`` (see
            :func:`~diffperception.evaluation.probe.probe_grid`).

    Returns:
        A :class:`ProbeComparison`.

    Raises:
        ValueError, TypeError: Bad taps, timesteps, images or labels.
        FileNotFoundError: ``folder`` is not a local diffusers folder with a U-Net.
    """
    options = dict(taps=list(taps), timesteps=list(timesteps), noise="fixed", seed=seed, prompt="")
    splits = (train_images, train_labels, test_images, test_labels)
    trained = probe_grid(DiffusionPerceptionForFeatureExtraction.from_diffusers(folder, **options),
                         *splits, desc="trained model", progress=progress, **probe_options)
    with tempfile.TemporaryDirectory() as tmp:
        random_folder = random_weight_copy(folder, Path(tmp) / "random", seed=seed)
        random_model = DiffusionPerceptionForFeatureExtraction.from_diffusers(random_folder, **options)
        random = probe_grid(random_model, *splits, desc="random weights", progress=progress,
                            **probe_options)
    solver = {key: probe_options[key] for key in ("C", "max_iter") if key in probe_options}
    train_pixels, test_pixels = pixels if pixels is not None else (train_images, test_images)
    return ProbeComparison(trained=trained, random=random,
                           pixels=linear_probe(train_pixels, train_labels, test_pixels, test_labels,
                                               **solver))
