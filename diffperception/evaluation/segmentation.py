"""Semantic-segmentation evaluation: mIoU and pixel accuracy (torchmetrics), and the ``ade20k``
benchmark (``diffperception evaluate MODEL --benchmark ade20k --data ADEChallengeData2016
--split validation``).

mIoU as mmseg counts it: intersections and unions of each class summed over the whole split, the
IoU of each class, then the mean over the classes that occur (in the labels or the predictions);
``ignore_index`` pixels are left out (torchmetrics' ``MulticlassJaccardIndex``, macro average).
Each image is run at its own size (the model resizes it to ``preprocess.size`` and upsamples the
logits back), one image at a time.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from .benchmarks import Benchmark, BenchmarkResult, register_benchmark

__all__ = ["SegmentationMeter", "ADE20K"]


class SegmentationMeter:
    """Accumulates mIoU and pixel accuracy over a split.

    Args:
        num_labels: Number of classes.
        ignore_index: Label of pixels left out.
    """

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.iou = MulticlassJaccardIndex(num_classes=num_labels, ignore_index=ignore_index,
                                          average="macro")
        self.accuracy = MulticlassAccuracy(num_classes=num_labels, ignore_index=ignore_index,
                                           average="micro")

    def update(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds ``(B, H, W)`` predicted class indices against ``(B, H, W)`` labels."""
        predicted, labels = predicted.long().cpu(), labels.long().cpu()
        self.iou.update(predicted, labels)
        self.accuracy.update(predicted, labels)

    def compute(self) -> dict[str, float]:
        """``{"mean_iou": ..., "pixel_accuracy": ...}`` (fractions)."""
        return {"mean_iou": float(self.iou.compute()),
                "pixel_accuracy": float(self.accuracy.compute())}


def evaluate_segmentation(model: Any, samples: Iterable[Any], *, progress: bool = True,
                          total: int | None = None) -> SegmentationMeter:
    """Runs a segmentation model over ``samples`` (objects with ``load() -> (image, labels)``)."""
    from tqdm.auto import tqdm

    meter = SegmentationMeter(len(model.config.labels), model.ignore_index)
    device = next(model.parameters()).device
    for sample in tqdm(samples, total=total, disable=not progress, desc="images"):
        image, labels = sample.load()
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)
        with torch.no_grad():
            logits = model(x).logits  # (1, K, H, W)
        meter.update(logits.argmax(1), torch.from_numpy(labels)[None])
    return meter


@register_benchmark("ade20k")
class ADE20K(Benchmark):
    """ADE20K scene parsing, 150 classes (``--data`` the ``ADEChallengeData2016`` folder)."""

    task_type = "image-segmentation"
    description = "ADE20K (ADEChallengeData2016): mIoU and pixel accuracy over 150 classes"

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 1,
            seed: int = 0, progress: bool = True, limit: int | None = None,
            **options: Any) -> BenchmarkResult:
        """mIoU of a ``DiffusionPerceptionForSemanticSegmentation`` with 150 labels.

        Raises:
            ValueError: Another model kind, another number of labels, or unknown options.
        """
        from ..data.ade20k import load_ade20k
        from ..modeling import DiffusionPerceptionForSemanticSegmentation

        if options:
            raise ValueError(f"The 'ade20k' benchmark takes the option limit, not "
                             f"{sorted(options)}.")
        if not isinstance(model, DiffusionPerceptionForSemanticSegmentation):
            raise ValueError(f"The 'ade20k' benchmark evaluates a "
                             f"DiffusionPerceptionForSemanticSegmentation, not a "
                             f"{type(model).__name__}.")
        if len(model.config.labels) != 150:
            raise ValueError(f"The model has {len(model.config.labels)} labels; ADE20K has 150 "
                             "(train it with the gdf-sd15-ade20k preset's labels).")
        samples = load_ade20k(data, "validation" if split == "test" else split)
        if limit is not None:
            samples = samples[: int(limit)]
        meter = evaluate_segmentation(model, samples, progress=progress, total=len(samples))
        return BenchmarkResult(
            benchmark=self.name, split=split, num_samples=len(samples), metrics=meter.compute(),
            metric_names={"mean_iou": "mIoU", "pixel_accuracy": "Pixel accuracy"},
            dataset_name="ADE20K", details={"ignore_index": model.ignore_index,
                                            "classes": 150})
