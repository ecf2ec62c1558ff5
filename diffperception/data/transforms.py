"""Training and evaluation transforms, a torch view of a dataset, and batch collation.

The transforms follow the text-free diffusion-features paper's released code and the paper
(METHODS §1.6); none needs torchvision:

- ``"code"`` (the training default): ``random_crop_arr``: resize so the short side is a random
  integer in ``[S, ceil(S * 1.25)]`` (PIL images: BOX halvings, then BICUBIC, as the code does;
  arrays: antialiased bicubic), a random ``S x S`` crop, then a horizontal flip with p = 0.5;
- ``"paper"``: resize the short side to ``S``, centre crop, flip with p = 0.5 (S001 §4: "we
  resize all inputs to this size and use center-crop and flipping");
- ``"none"`` (evaluation): resize the short side to ``S`` and centre crop.

Randomness is drawn from ``numpy.random.default_rng([seed, epoch, index])``: an image's
augmentation depends only on these three numbers, so a run is the same with any number of data
workers, and a resumed run sees the same crops as an uninterrupted one.

Example:
    >>> view = TransformedImages(load_image_dataset("digits"), size=32, augment="code", seed=0)
    >>> view.set_epoch(3)
    >>> batch = collate_images([view[0], view[1]])
    >>> batch["pixel_values"].shape, batch["labels"]        # (2, 3, 32, 32), tensor([..])
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATIONS", "image_to_tensor", "resize_short_side", "transform_image",
           "TransformedImages", "collate_images"]

AUGMENTATIONS = ("code", "paper", "none")
#: ``random_crop_arr``'s ``min_crop_frac = 0.8``: the short side reaches S / 0.8 = 1.25 S.
_MIN_CROP_FRAC = 0.8


def image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image, or a ``(3, H, W)`` / ``(H, W, 3)`` array in [0, 1], as ``(3, H, W)`` float32.

    Raises:
        TypeError: Something else.
        ValueError: An array of another shape.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if isinstance(image, (list, np.ndarray, torch.Tensor)):
        x = torch.as_tensor(np.asarray(image, dtype=np.float32))
        if x.ndim == 3 and x.shape[0] != 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)  # (3, H, W)
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"An image array must be (3, H, W) or (H, W, 3); got "
                             f"{tuple(x.shape)}.")
        return x.contiguous()
    raise TypeError(f"An image must be a PIL image or an array, got {type(image).__name__}.")


def _resize_pil(image: Any, short: int) -> Any:
    """``random_crop_arr``'s resize: BOX halvings while the image is over twice as big, then
    BICUBIC to a short side of ``short``."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * short:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = short / min(image.size)
    size = tuple(round(s * scale) for s in image.size)
    return image.resize(size, resample=Image.BICUBIC)


def resize_short_side(image: Any, short: int) -> torch.Tensor:
    """Resizes so that the shorter side is ``short`` pixels, keeping the aspect ratio.

    Args:
        image: A PIL image or an image array (see ``image_to_tensor``).
        short: The new short side.

    Returns:
        ``(3, H', W')`` float32 in [0, 1] with ``min(H', W') == short``.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return image_to_tensor(_resize_pil(image, short))
    x = image_to_tensor(image)  # (3, H, W)
    h, w = x.shape[-2:]
    if min(h, w) == short:
        return x
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)
    return x[0].clamp_(0.0, 1.0)  # (3, H', W')


def _crop(x: torch.Tensor, size: int, top: int, left: int) -> torch.Tensor:
    return x[:, top: top + size, left: left + size]


def transform_image(image: Any, size: int, augment: str, rng: np.random.Generator | None = None
                    ) -> torch.Tensor:
    """One image through the ``augment`` transform (see the module docstring).

    Args:
        image: A PIL image or an image array in [0, 1].
        size: The output side ``S``.
        augment: ``"code"``, ``"paper"`` or ``"none"``.
        rng: The random generator (needed by ``"code"`` and ``"paper"``).

    Returns:
        ``(3, S, S)`` float32 in [0, 1].

    Raises:
        ValueError: An unknown ``augment``, or a random transform without ``rng``.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment = {augment!r} is invalid: one of {list(AUGMENTATIONS)}.")
    if augment != "none" and rng is None:
        raise ValueError(f"The {augment!r} augmentation needs a random generator (rng).")
    if augment == "code":
        high = math.ceil(size / _MIN_CROP_FRAC)
        x = resize_short_side(image, int(rng.integers(size, high + 1)))  # short side in [S, 1.25 S]
        top = int(rng.integers(0, x.shape[1] - size + 1))
        left = int(rng.integers(0, x.shape[2] - size + 1))
    else:
        x = resize_short_side(image, size)
        top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
    x = _crop(x, size, top, left)  # (3, S, S)
    if augment != "none" and rng.random() < 0.5:
        x = x.flip(-1)
    return x.contiguous()


class TransformedImages(torch.utils.data.Dataset):
    """A ``datasets.Dataset`` with ``image`` and ``label`` columns as torch samples.

    Args:
        dataset: The image-classification split (``load_image_dataset``).
        size: The output side ``S`` (the backbone's input size).
        augment: ``"code"``, ``"paper"`` or ``"none"``.
        seed: Seed of the augmentations.

    Raises:
        ValueError: An unknown ``augment`` or a size below 1.
    """

    def __init__(self, dataset: Any, size: int, augment: str = "none", seed: int = 0) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment = {augment!r} is invalid: one of {list(AUGMENTATIONS)}.")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size = {size!r} is invalid: a positive integer.")
        self.dataset, self.size, self.augment, self.seed = dataset, size, augment, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentations of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        rng = None if self.augment == "none" else np.random.default_rng(
            [self.seed, self.epoch, int(index)])
        pixels = transform_image(row["image"], self.size, self.augment, rng)  # (3, S, S)
        return {"pixel_values": pixels, "labels": int(row["label"]), "index": int(index)}


def collate_images(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks samples into a batch.

    Args:
        samples: Dicts with ``pixel_values`` ``(3, S, S)`` or ``features`` ``{tap: tensor}``,
            plus ``labels`` and ``index`` integers.

    Returns:
        ``{"pixel_values": (B, 3, S, S)}`` or ``{"features": {tap: (B, ...)}}``, with
        ``"labels": (B,)`` and ``"index": (B,)`` int64 tensors.
    """
    batch: dict[str, Any] = {
        "labels": torch.tensor([s["labels"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }
    if "features" in samples[0]:
        batch["features"] = {name: torch.stack([s["features"][name] for s in samples])
                             for name in samples[0]["features"]}
    else:
        batch["pixel_values"] = torch.stack([s["pixel_values"] for s in samples])
    return batch
