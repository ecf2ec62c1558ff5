"""Quality checks for the default model: zero-shot accuracy and linear probes.

``zero_shot_accuracy`` is the diffusion-classifier approach: for every image
and every class caption, the mean squared noise-prediction error over a few
timesteps and seeded noises (the same noise for all captions); the caption with
the lowest error is the prediction. ``probe_check`` fits logistic-regression
probes on U-Net features captured with forward hooks under the null prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import CLASS_NAMES, caption_for
from .build import encode_prompts

# Chosen on 200 train-split images (never on the test split): single timesteps 600-800
# separate the classes best for the shipped model; three of them take ~1 min on 2 cores.
ZERO_SHOT_TIMESTEPS: tuple[int, ...] = (600, 700, 800)


def _noised(scheduler, images: torch.Tensor, t: int,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x_t, noise) for images in [0, 1] at timestep t with seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)
    x0 = images * 2.0 - 1.0
    ts = torch.full((images.shape[0],), int(t), dtype=torch.long)
    return scheduler.add_noise(x0, noise, ts), noise


@torch.no_grad()
def zero_shot_errors(
    unet, text_encoder, tokenizer, scheduler, images: np.ndarray,
    timesteps: Sequence[int] = ZERO_SHOT_TIMESTEPS, seeds: int = 1, batch_size: int = 128,
) -> np.ndarray:
    """Mean noise-prediction error of every image under every class caption.

    Args:
        unet: The ``UNet2DConditionModel`` (epsilon prediction).
        text_encoder: The ``CLIPTextModel``.
        tokenizer: The ``CLIPTokenizer``.
        scheduler: The ``DDPMScheduler`` (its ``add_noise`` makes x_t).
        images: Float array (N, 3, H, W) in [0, 1].
        timesteps: Timesteps to average over.
        seeds: Number of seeded noises per timestep.
        batch_size: Approximate U-Net batch size (images x 10 captions).

    Returns:
        Array (N, 10) of mean squared errors; row-wise argmin is the prediction.
    """
    device = next(unet.parameters()).device
    n_cls = len(CLASS_NAMES)
    cond = encode_prompts(tokenizer, text_encoder, [caption_for(c) for c in range(n_cls)])
    cond = cond.to(device)
    images_t = torch.as_tensor(np.asarray(images, dtype=np.float32))
    errors = torch.zeros(len(images_t), n_cls)
    chunk = max(1, batch_size // n_cls)
    for si in range(seeds):
        for t in timesteps:
            xt, noise = _noised(scheduler, images_t, t, seed=1000 * si + int(t))
            for s in range(0, len(images_t), chunk):
                x = xt[s:s + chunk].repeat_interleave(n_cls, 0).to(device)
                b = x.shape[0] // n_cls
                ts = torch.full((x.shape[0],), int(t), dtype=torch.long, device=device)
                pred = unet(x, ts, cond.repeat(b, 1, 1)).sample.float().cpu()
                eps = noise[s:s + chunk].repeat_interleave(n_cls, 0)
                errors[s:s + b] += (pred - eps).pow(2).mean(dim=(1, 2, 3)).view(b, n_cls)
    return (errors / (seeds * len(timesteps))).numpy()


def zero_shot_accuracy(
    unet, text_encoder, tokenizer, scheduler, images: np.ndarray, labels: np.ndarray,
    timesteps: Sequence[int] = ZERO_SHOT_TIMESTEPS, seeds: int = 1, batch_size: int = 128,
) -> float:
    """Zero-shot classification accuracy of the diffusion classifier.

    Args:
        unet: The ``UNet2DConditionModel``.
        text_encoder: The ``CLIPTextModel``.
        tokenizer: The ``CLIPTokenizer``.
        scheduler: The ``DDPMScheduler``.
        images: Float array (N, 3, H, W) in [0, 1].
        labels: Int array (N,) of digit labels.
        timesteps: Timesteps to average the error over.
        seeds: Number of seeded noises per timestep.
        batch_size: Approximate U-Net batch size.

    Returns:
        Fraction of images whose lowest-error caption is their own class.
    """
    err = zero_shot_errors(unet, text_encoder, tokenizer, scheduler, images,
                           timesteps, seeds, batch_size)
    return float((err.argmin(axis=1) == np.asarray(labels)).mean())


@torch.no_grad()
def hooked_features(
    unet, text_encoder, tokenizer, scheduler, images: np.ndarray,
    taps: Sequence[str] = ("mid_block", "up_blocks.1"), t: int = 50,
    seed: int = 0, pool: int = 2, batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Captures U-Net module outputs under the null prompt with forward hooks.

    Args:
        unet: The ``UNet2DConditionModel``.
        text_encoder: The ``CLIPTextModel``.
        tokenizer: The ``CLIPTokenizer``.
        scheduler: The ``DDPMScheduler``.
        images: Float array (N, 3, H, W) in [0, 1].
        taps: Dotted module names inside the U-Net.
        t: Timestep at which the images are noised (seeded noise).
        seed: Noise seed.
        pool: Side of the adaptive average pool applied before flattening.
        batch_size: U-Net batch size.

    Returns:
        Dict tap -> float32 array (N, C * pool * pool).
    """
    device = next(unet.parameters()).device
    null = encode_prompts(tokenizer, text_encoder, [""]).to(device)
    images_t = torch.as_tensor(np.asarray(images, dtype=np.float32))
    xt, _ = _noised(scheduler, images_t, t, seed)
    store: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    modules = dict(unet.named_modules())

    def hook_for(tap: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            store[tap].append(F.adaptive_avg_pool2d(out.float(), pool).flatten(1).cpu())
        return hook

    handles = [modules[tap].register_forward_hook(hook_for(tap)) for tap in taps]
    try:
        for s in range(0, len(xt), batch_size):
            x = xt[s:s + batch_size].to(device)
            ts = torch.full((x.shape[0],), int(t), dtype=torch.long, device=device)
            unet(x, ts, null.expand(x.shape[0], -1, -1))
    finally:
        for h in handles:
            h.remove()
    return {tap: torch.cat(v).numpy() for tap, v in store.items()}


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray,
                   test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy of a standardised logistic-regression linear probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(train_x.reshape(len(train_x), -1), train_y)
    return float(clf.score(test_x.reshape(len(test_x), -1), test_y))


def probe_check(
    unet, text_encoder, tokenizer, scheduler, data: dict[str, np.ndarray],
    taps: Sequence[str] = ("mid_block", "up_blocks.1"), timesteps: Sequence[int] = (50, 200),
    seed: int = 0,
) -> dict[str, float]:
    """Linear-probe accuracies of hooked U-Net features (fit on train, scored on test).

    Args:
        unet: The ``UNet2DConditionModel``.
        text_encoder: The ``CLIPTextModel``.
        tokenizer: The ``CLIPTokenizer``.
        scheduler: The ``DDPMScheduler``.
        data: Output of :func:`load_digits_split`.
        taps: Dotted module names to hook.
        timesteps: Noise levels to probe at.
        seed: Noise seed.

    Returns:
        Dict ``"<tap>@t=<t>"`` -> test accuracy.
    """
    results: dict[str, float] = {}
    for t in timesteps:
        feats = {
            split: hooked_features(unet, text_encoder, tokenizer, scheduler,
                                   data[f"{split}_images"], taps, t, seed)
            for split in ("train", "test")
        }
        for tap in taps:
            results[f"{tap}@t={t}"] = probe_accuracy(
                feats["train"][tap], data["train_labels"], feats["test"][tap], data["test_labels"]
            )
    return results


def quality_report(parts: dict[str, Any], data: dict[str, np.ndarray], seed: int = 0,
                   zero_shot_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zero-shot accuracy plus probes of trained vs. random-weight U-Net vs. pixels.

    Args:
        parts: Dict with ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        data: Output of :func:`load_digits_split`.
        seed: Seed of the random-weight U-Net and of the noises.
        zero_shot_kwargs: Extra keyword arguments for :func:`zero_shot_accuracy`.

    Returns:
        Dict with ``zero_shot``, ``zero_shot_settings``, ``probe_trained``,
        ``probe_random`` and ``probe_pixels``.
    """
    from .build import build_unet

    zs = {"timesteps": ZERO_SHOT_TIMESTEPS, "seeds": 1, **(zero_shot_kwargs or {})}
    common = (parts["text_encoder"], parts["tokenizer"], parts["scheduler"])
    zero_shot = zero_shot_accuracy(parts["unet"], *common, data["test_images"],
                                   data["test_labels"], **zs)
    random_unet = build_unet(seed).eval()
    return {
        "zero_shot": zero_shot,
        "zero_shot_settings": zs,
        "probe_trained": probe_check(parts["unet"], *common, data, seed=seed),
        "probe_random": probe_check(random_unet, *common, data, seed=seed),
        "probe_pixels": probe_accuracy(data["train_images"][:, 0], data["train_labels"],
                                       data["test_images"][:, 0], data["test_labels"]),
    }
