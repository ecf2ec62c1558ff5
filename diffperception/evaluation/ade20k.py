"""The ``ade20k`` benchmark: ``diffperception evaluate MODEL --benchmark ade20k --data
ADEChallengeData2016 --split validation`` (seed 003's segmentation protocol, METHODS.md §4.4).

mIoU as mmseg counts it (``evaluation.segmentation.SegmentationMeter``: intersections and unions
of each class summed over the split, classes that occur neither in the labels nor in the
predictions left out of the mean) and pixel accuracy (torchmetrics), ``ignore_index`` pixels left
out. Each image is run at its own size (the model resizes it to ``preprocess.size`` and upsamples
the logits back), one image at a time; no sliding window.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from .benchmarks import Benchmark, BenchmarkResult, register_benchmark
from .segmentation import SegmentationMeter

__all__ = ["ADE20K", "evaluate_scene_parsing"]

NUM_CLASSES = 150


def evaluate_scene_parsing(model: Any, samples: Iterable[Any], *, progress: bool = True,
                           total: int | None = None) -> dict[str, float]:
    """``{"miou", "pixel_accuracy"}`` of a segmentation model over ``samples`` (objects with
    ``load() -> (image (H, W, 3) uint8, labels (H, W))``)."""
    from torchmetrics.classification import MulticlassAccuracy
    from tqdm.auto import tqdm

    num_classes = len(model.config.labels)
    meter = SegmentationMeter(num_classes, ignore_index=model.ignore_index)
    accuracy = MulticlassAccuracy(num_classes=num_classes, ignore_index=model.ignore_index,
                                  average="micro")
    device = next(model.parameters()).device
    for sample in tqdm(samples, total=total, disable=not progress, desc="images"):
        image, labels = sample.load()
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)
        with torch.no_grad():
            predicted = model(x).logits.argmax(1).cpu()  # (1, H, W)
        target = torch.from_numpy(labels)[None]
        meter.update(predicted, target)
        accuracy.update(predicted, target)
    return {"miou": meter.compute()["miou"], "pixel_accuracy": float(accuracy.compute())}


@register_benchmark("ade20k")
class ADE20K(Benchmark):
    """ADE20K scene parsing, 150 classes (``--data`` the ``ADEChallengeData2016`` folder)."""

    task_type = "image-segmentation"
    description = "ADE20K (ADEChallengeData2016): mIoU and pixel accuracy over 150 classes"

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 1,
            seed: int = 0, progress: bool = True, limit: int | None = None,
            **options: Any) -> BenchmarkResult:
        """mIoU of a ``DiffusionPerceptionForSemanticSegmentation`` with 150 labels on
        ``split`` (``validation``; ``test`` means validation: the test images have no labels).

        Raises:
            ValueError: Another model kind, another number of labels, or unknown options.
            FileNotFoundError: ``data`` is not the ADE20K layout.
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
        if len(model.config.labels) != NUM_CLASSES:
            raise ValueError(f"The model has {len(model.config.labels)} labels; ADE20K has "
                             f"{NUM_CLASSES} (use the gdf-sd15-ade20k preset's labels).")
        samples = load_ade20k(data, "validation" if split == "test" else split)
        if limit is not None:
            samples = samples[: int(limit)]
        metrics = evaluate_scene_parsing(model, samples, progress=progress, total=len(samples))
        return BenchmarkResult(
            benchmark=self.name, split=split, num_samples=len(samples), metrics=metrics,
            metric_names={"miou": "mIoU", "pixel_accuracy": "Pixel accuracy"},
            dataset_name="ADE20K", details={"ignore_index": model.ignore_index,
                                            "classes": NUM_CLASSES})
