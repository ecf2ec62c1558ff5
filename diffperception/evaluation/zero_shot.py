"""Zero-shot image-text matching by noise-prediction error (the diffusion-classifier rule).

For each image and each caption, noise the image at several timesteps with seeded noise (the
same noise for every caption), let the diffusion network predict the noise under that caption,
and average the squared error; the caption with the lowest error is the match.

What is ours and what is a library's:

- the noise prediction is the product's: a ``DiffusionPerceptionForFeatureExtraction`` tapping
  ``conv_out`` (the network's output) with one prompt per image, fed explicit noise;
- the accuracy of the matches is ``torchmetrics``' (:func:`~diffperception.evaluation.metrics.accuracy`);
- by hand: drawing the seeded noise, pairing every image with every caption, and the squared
  error per (image, caption) pair. ``torchmetrics.MeanSquaredError`` reduces over the whole
  batch, not per pair, and the noise layout must stay fixed so that the figures reproduce.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..features.noise import predicted_noise
from ..modeling import DiffusionPerceptionForFeatureExtraction
from .metrics import accuracy
from .probe import _check_images, _check_positive

__all__ = ["NOISE_PREDICTION_TAP", "NOISE_SEED", "noise_prediction_model", "caption_errors",
           "zero_shot_accuracy"]

NOISE_PREDICTION_TAP = "conv_out"
# Noise draw s is seeded with NOISE_SEED + s (the seeds behind the README's zero-shot figures).
NOISE_SEED = 1000


def noise_prediction_model(source: str | os.PathLike, *, timesteps: Sequence[int],
                           captions: Sequence[str], **options: Any
                           ) -> DiffusionPerceptionForFeatureExtraction:
    """A feature extractor that returns the network's noise prediction under per-image prompts.

    Args:
        source: Hub repo id or local folder of a text-conditioned diffusers model.
        timesteps: Timesteps (scheduler indices, ``0 <= t < num_train_timesteps``) the error is
            averaged over.
        captions: The captions to be scored (they become the model's per-image prompt texts).
        **options: Further ``DiffusionPerceptionForFeatureExtraction.from_diffusers`` options
            (``revision``, ``dtype``, ``local_files_only``, ...).

    Returns:
        The model, tapping ``conv_out`` at ``timesteps``.

    Raises:
        ValueError: No timesteps or captions, or what ``from_diffusers`` raises.
        FileNotFoundError: Missing repo or folder.
    """
    if not timesteps:
        raise ValueError("timesteps is empty; give at least one timestep to average over.")
    captions = _check_captions(captions)
    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        source, taps=[NOISE_PREDICTION_TAP], timesteps=list(timesteps), prompt=captions, **options)


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be a list of strings, one per class.")
    if not captions:
        raise ValueError("captions is empty; give at least one caption.")
    return list(captions)


def _check_scorer(model: torch.nn.Module) -> None:
    features = model.config.features
    if NOISE_PREDICTION_TAP not in features.taps:
        raise ValueError(f"The model taps {features.taps}; zero-shot scoring needs the noise "
                         f"prediction: build it with noise_prediction_model(...) or "
                         f"taps=['{NOISE_PREDICTION_TAP}'].")
    if features.noise.ensemble != 1:
        raise ValueError(f"The model averages {features.noise.ensemble} noise draws per timestep; "
                         "build it with ensemble=1 and set seeds= here instead.")


def _as_noise(model: torch.nn.Module, pred: torch.Tensor, x: torch.Tensor, eps: torch.Tensor
              ) -> torch.Tensor:
    """The noise ``pred`` (``(b*K, T, C, h, w)``) stands for, by the scheduler's prediction type.

    ``v`` and ``sample`` outputs are converted with the noisy latent ``z_t`` rebuilt from the
    image's ``z_0`` (the backbone's own encoding) and the same noise ``eps`` ``(T, 1, b*K, ...)``.
    """
    backbone = model.backbone
    if backbone.prediction_type == "epsilon":
        return pred
    z0 = backbone.encode(backbone.prepare_images(x)).float()  # (b*K, C, h, w)
    t = torch.tensor(model.config.features.timesteps)
    abar = backbone.alphas_cumprod.cpu()[t].float().view(1, -1, 1, 1, 1)  # (1, T, 1, 1, 1)
    noise = eps[:, 0].transpose(0, 1).float()  # (b*K, T, C, h, w)
    z_t = abar.sqrt() * z0.cpu().unsqueeze(1) + (1 - abar).sqrt() * noise
    return predicted_noise(pred.float().cpu(), z_t, abar, backbone.prediction_type)


def _latent_shape(model: torch.nn.Module, images: np.ndarray) -> tuple[int, int, int]:
    backbone = model.backbone
    height, width = model.config.preprocess.size or images.shape[-2:]
    return (backbone.vae_latent_channels, int(height) // backbone.vae_factor,
            int(width) // backbone.vae_factor)


@torch.no_grad()
def caption_errors(model: torch.nn.Module, images: Any, captions: Sequence[str], *,
                   seeds: int = 1, batch_size: int = 16, latent_shape: Sequence[int] | None = None,
                   desc: str = "zero-shot", progress: bool = True) -> np.ndarray:
    """Mean squared noise-prediction error of every image under every caption.

    Noise: draw ``s`` is ``torch.randn((T, 1, N, *latent_shape))`` from a CPU generator seeded
    with ``NOISE_SEED + s``; image ``i`` gets slice ``[:, :, i]`` under every caption, so the
    result does not depend on ``batch_size``. The error of a pair is the mean over timesteps
    and latent elements of ``(prediction - noise) ** 2``, then averaged over draws.

    Args:
        model: A model from :func:`noise_prediction_model` (a
            ``DiffusionPerceptionForFeatureExtraction`` tapping ``conv_out`` with per-image
            prompts, ``ensemble=1``). A ``v_prediction`` or ``sample`` network's output is turned
            into the noise it stands for, as diffusers' schedulers read it.
        images: ``(N, 3, H, W)`` float in [0, 1] (numpy or torch).
        captions: ``K`` captions.
        seeds: Noise draws per timestep.
        batch_size: Images per forward (each forward holds ``batch_size * K`` samples per timestep).
        latent_shape: ``(C, h, w)`` of the network's input for these images. Default: the
            backbone's latent channels and the (preprocessed) image size over the VAE factor.
        desc: Label of the progress bar.
        progress: Whether to show a progress bar (tqdm).

    Returns:
        ``(N, K)`` float64 errors; the row-wise argmin is the matched caption.

    Raises:
        TypeError: ``images`` or ``captions`` of the wrong type.
        ValueError: Bad shapes or counts, a model without the ``conv_out`` tap or with an
            ensemble, or noise not shaped like the latent.

    Example:
        >>> model = noise_prediction_model(path, timesteps=[50, 200], captions=captions)
        >>> errors = caption_errors(model, images, captions)  # (N, K)
        >>> matched = errors.argmin(axis=1)
    """
    from tqdm import tqdm

    images, captions = _check_images(images), _check_captions(captions)
    _check_positive(seeds=seeds, batch_size=batch_size)
    _check_scorer(model)
    shape = _latent_shape(model, images) if latent_shape is None else tuple(int(s) for s in latent_shape)
    timesteps = model.config.features.timesteps
    n, k = len(images), len(captions)
    errors = np.zeros((n, k))
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(NOISE_SEED + seed)
        eps_all = torch.randn(len(timesteps), 1, n, *shape, generator=gen)  # (T, 1, N, C, h, w)
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc=f"{desc} (noise {seed + 1}/{seeds})", unit="batch",
                          leave=False, disable=not progress):
            x = torch.from_numpy(images[start: start + batch_size])
            b = x.shape[0]
            eps = eps_all[:, :, start: start + b].repeat_interleave(k, dim=2)  # (T, 1, b*K, C, h, w)
            prompts = [c for _ in range(b) for c in captions]
            pred = model(x.repeat_interleave(k, 0), noise=eps, prompt=prompts)[NOISE_PREDICTION_TAP]
            if len(timesteps) == 1:
                pred = pred.unsqueeze(1)  # (b*K, T, C, h, w)
            pred = _as_noise(model, pred[:, :, : shape[0]], x.repeat_interleave(k, 0), eps)
            target = eps[:, 0].transpose(0, 1).to(pred)  # (b*K, T, C, h, w)
            err = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3, 4)).cpu()  # (b*K,)
            errors[start: start + b] += err.view(b, k).numpy()
    return errors / seeds


def zero_shot_accuracy(source: str | os.PathLike, images: Any, labels: Any,
                       captions: Sequence[str], *, timesteps: Sequence[int], seeds: int = 1,
                       batch_size: int = 16, latent_shape: Sequence[int] | None = None,
                       progress: bool = True, **options: Any) -> float:
    """Zero-shot classification accuracy: each image's lowest-error caption against its label.

    Args:
        source: Hub repo id or local folder of a text-conditioned model.
        images: ``(N, 3, H, W)`` float in [0, 1].
        labels: ``(N,)`` class indices into ``captions``.
        captions: One caption per class, ``K`` in all.
        timesteps: Timesteps the error is averaged over (scheduler indices).
        seeds: Noise draws per timestep.
        batch_size: Images per forward.
        latent_shape: See :func:`caption_errors`.
        progress: Whether to show a progress bar.
        **options: Further ``from_diffusers`` options (see :func:`noise_prediction_model`).

    Returns:
        Accuracy in ``[0, 1]`` (chance: ``1 / K``).

    Raises:
        TypeError: See :func:`caption_errors`.
        ValueError: See :func:`caption_errors`; labels not one integer in ``[0, K)`` per image.
        FileNotFoundError: Missing repo or folder.

    Example:
        >>> zero_shot_accuracy(DEFAULT_MODEL_PATH, images, labels, captions,
        ...                    timesteps=[600, 700, 800])
        0.93
    """
    images, captions, labels = _check_images(images), _check_captions(captions), np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be (N,) with N = {len(images)} (one per image), got shape "
                         f"{labels.shape}.")
    in_range = labels.min() >= 0 and labels.max() < len(captions)
    if not np.issubdtype(labels.dtype, np.integer) or not in_range:
        raise ValueError(f"labels must be integer indices into the {len(captions)} captions, "
                         f"got values in [{labels.min()}, {labels.max()}].")
    model = noise_prediction_model(source, timesteps=timesteps, captions=captions, **options)
    errors = caption_errors(model, images, captions, seeds=seeds, batch_size=batch_size,
                            latent_shape=latent_shape, progress=progress)
    return accuracy(-errors, labels, num_classes=len(captions))  # lowest error = highest score
