"""Semantic-segmentation metrics: per-class IoU and mIoU over class subsets, by torchmetrics.

IoU of class c = |pred = c and target = c| / |pred = c or target = c| over every pixel of a
split (accumulated, not averaged per image), pixels labelled ``ignore_index`` left out
(torchmetrics' ``MulticlassJaccardIndex(average="none")``). A class absent from both the
predictions and the targets has no IoU (NaN) and is left out of the means, as mmsegmentation's
``nanmean`` does; a class predicted but never present counts with IoU 0.

For open-vocabulary segmentation (METHODS.md §3.9, §5) the mean is also taken over named
subsets, e.g. the seen (training) and unseen classes, and their harmonic mean (hIoU, the
zero-shot segmentation literature's summary of the two).

Example:
    >>> meter = SegmentationMeter(num_classes=11, ignore_index=255,
    ...                           subsets={"seen": range(8), "unseen": [8, 9, 10]})
    >>> meter.update(logits.argmax(1), masks)     # (B, H, W) each, any number of times
    >>> meter.compute()["miou_unseen"]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

__all__ = ["SegmentationMeter", "mean_iou"]


class SegmentationMeter:
    """Accumulates per-pixel predictions over batches; computes IoU per class and mIoUs.

    Args:
        num_classes: Number of classes ``K`` (labels ``0..K-1``).
        ignore_index: Label value of pixels left out (255 by default), or None.
        subsets: ``{name: class indices}``; ``compute()`` adds ``miou_<name>`` for each, and
            ``hiou`` when both ``"seen"`` and ``"unseen"`` are given.

    Raises:
        ValueError: ``num_classes < 1``, an ``ignore_index`` inside ``[0, K)``, or a subset with
            an index outside ``[0, K)`` or no index.
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255,
                 subsets: Mapping[str, Iterable[int]] | None = None) -> None:
        from torchmetrics.classification import MulticlassJaccardIndex

        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes = {num_classes!r} is invalid: a positive integer.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index = {ignore_index} is a class index (0..{num_classes - 1}"
                             "); use a value outside the classes, e.g. 255.")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.subsets = {name: sorted(int(c) for c in classes)
                        for name, classes in (subsets or {}).items()}
        for name, classes in self.subsets.items():
            if not classes or classes[0] < 0 or classes[-1] >= num_classes:
                raise ValueError(f"subsets[{name!r}] = {classes} is invalid: class indices in "
                                 f"[0, {num_classes}), at least one.")
        self._iou = MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index,
                                           zero_division=float("nan"))
        self.num_pixels = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch.

        Args:
            preds: ``(B, H, W)`` predicted class indices, or ``(B, K, H, W)`` scores (argmax).
            target: ``(B, H, W)`` true class indices, ``ignore_index`` for pixels left out.

        Raises:
            TypeError: Not tensors.
            ValueError: Shapes differ, or a label outside ``[0, K)`` that is not ``ignore_index``.
        """
        if not isinstance(preds, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError("preds and target must be torch tensors.")
        if preds.is_floating_point() and preds.dim() == 4:
            preds = preds.argmax(1)
        if preds.shape != target.shape or target.dim() != 3 or target.is_floating_point():
            raise ValueError(f"preds and target must be (B, H, W) integer maps of one shape (or "
                             f"preds (B, K, H, W) scores), got {tuple(preds.shape)} and "
                             f"{target.dtype} {tuple(target.shape)}.")
        valid = target != self.ignore_index if self.ignore_index is not None \
            else torch.ones_like(target, dtype=torch.bool)
        bad = target[valid & ((target < 0) | (target >= self.num_classes))]
        if bad.numel():
            raise ValueError(f"target holds {sorted(set(bad.tolist()))[:10]}, outside [0, "
                             f"{self.num_classes}) and not the ignore_index {self.ignore_index}.")
        self._iou.update(preds.detach().cpu().long(), target.detach().cpu().long())
        self.num_pixels += int(valid.sum())

    def per_class_iou(self) -> list[float]:
        """IoU of each class (NaN for a class neither predicted nor present)."""
        return [float(x) for x in self._iou.compute()]

    def compute(self) -> dict[str, float]:
        """``{"miou": ..., "miou_<subset>": ..., "hiou": ...}``; NaN where no class counts.

        Raises:
            RuntimeError: Nothing was added.
        """
        if self.num_pixels == 0:
            raise RuntimeError("No labelled pixel was added: call update() with some batches "
                               "(pixels equal to ignore_index do not count).")
        iou = self.per_class_iou()
        out = {"miou": _nanmean(iou)}
        for name, classes in self.subsets.items():
            out[f"miou_{name}"] = _nanmean([iou[c] for c in classes])
        if "seen" in self.subsets and "unseen" in self.subsets:
            seen, unseen = out["miou_seen"], out["miou_unseen"]
            out["hiou"] = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0
        return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def mean_iou(preds: Any, target: Any, num_classes: int, *, ignore_index: int | None = 255,
             subsets: Mapping[str, Iterable[int]] | None = None) -> dict[str, float]:
    """mIoU (and subset mIoUs) of one set of predictions: :class:`SegmentationMeter` in one call.

    Args:
        preds: ``(B, H, W)`` class indices or ``(B, K, H, W)`` scores.
        target: ``(B, H, W)`` class indices.
        num_classes, ignore_index, subsets: As for :class:`SegmentationMeter`.

    Returns:
        As :meth:`SegmentationMeter.compute`.
    """
    meter = SegmentationMeter(num_classes, ignore_index=ignore_index, subsets=subsets)
    meter.update(torch.as_tensor(preds), torch.as_tensor(target))
    return meter.compute()
