"""Training semantic segmentation models on the shared loop: images with per-pixel masks.

A split is a ``datasets.Dataset`` with an ``image`` column and a ``mask`` column (``(H, W)``
integer class indices, a PIL image in mode ``L`` / ``I`` or an array; ``ignore_index`` pixels are
left out). Image and mask get the same geometry: the short side resized to ``S`` (bicubic for the
image, nearest for the mask), then a centre crop; with ``augment`` other than ``"none"`` a random
short side in ``[S, 1.25 S]``, a random crop and a horizontal flip, drawn from
``(seed, epoch, index)`` as the classification transforms are.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import TransformedImages, resize_short_side
from .task import StepOutput, TrainingTask, input_size, register_training_task

__all__ = ["SegmentationTask", "SegmentedImages", "mask_to_tensor"]


def mask_to_tensor(mask: Any) -> torch.Tensor:
    """A mask (PIL image or array) as ``(H, W)`` int64 class indices.

    Raises:
        ValueError: A mask that is not two-dimensional.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"A mask must be (H, W) class indices; got shape {array.shape}.")
    return torch.from_numpy(array.astype(np.int64))


def _resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


class SegmentedImages(TransformedImages):
    """A split with ``image`` and ``mask`` columns as ``{"pixel_values" (3, S, S),
    "labels" (S, S), "index"}`` samples (``TransformedImages`` with a mask that follows the image).

    Args:
        dataset: The split.
        size: The output side ``S`` in pixels.
        augment: ``"none"`` (resize + centre crop) or a random crop + flip (``"code"`` /
            ``"paper"``, the same here).
        seed: Seed of the augmentations.

    Raises:
        ValueError: An unknown ``augment``, or a split without ``image`` and ``mask`` columns.
    """

    def __init__(self, dataset: Any, size: int, augment: str = "none", seed: int = 0) -> None:
        super().__init__(dataset, int(size), augment, seed)
        columns = set(getattr(dataset, "column_names", []) or [])
        if not {"image", "mask"} <= columns:
            raise ValueError(f"A segmentation split needs 'image' and 'mask' columns; this one "
                             f"has {sorted(columns)}.")

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        size = self.size
        rng = None if self.augment == "none" else np.random.default_rng(
            [self.seed, self.epoch, int(index)])
        short = size if rng is None else int(rng.integers(size, math.ceil(size / 0.8) + 1))
        image = resize_short_side(row["image"], short)  # (3, H', W')
        mask = _resize_mask(mask_to_tensor(row["mask"]), tuple(image.shape[-2:]))  # (H', W')
        h, w = image.shape[-2:]
        if rng is None:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        image = image[:, top: top + size, left: left + size]
        mask = mask[top: top + size, left: left + size]
        if rng is not None and rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"pixel_values": image.contiguous(), "labels": mask.contiguous(),
                "index": int(index)}


@register_training_task("DiffusionPerceptionForSemanticSegmentation")
class SegmentationTask(TrainingTask):
    """Per-pixel cross-entropy (``ignore_index`` left out); the metric is each image's pixel
    accuracy over its labelled pixels."""

    name = "semantic segmentation"
    metrics = ("pixel_accuracy",)

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        columns = set(getattr(dataset, "column_names", []) or [])
        if not {"image", "mask"} <= columns:
            raise ValueError(f"The {name} data has columns {sorted(columns)}; a segmentation "
                             "model trains on 'image' and 'mask' columns.")
        super().check_data(model, dataset, name)

    def view(self, model: nn.Module, dataset: Any, *, augment: str, seed: int, train: bool
             ) -> torch.utils.data.Dataset:
        return SegmentedImages(dataset, input_size(model), augment if train else "none", seed)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
                "labels": torch.stack([s["labels"] for s in samples]),
                "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["pixel_values"], labels=batch["labels"])
        labels = batch["labels"]
        valid = labels != model.ignore_index
        right = ((out.logits.argmax(1) == labels) & valid).flatten(1).sum(1)
        accuracy = right.float() / valid.flatten(1).sum(1).clamp(min=1).float()
        return StepOutput(out.loss, {"pixel_accuracy": accuracy})
