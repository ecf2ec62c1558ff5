"""Open-vocabulary protocols: segmentation mIoU on seen / unseen classes (``digits-canvas``)
and few-shot top-1 on CoOp splits (``coop-fewshot``), METHODS.md §3.9.

Both hand the split's class names to a model that takes new labels without retraining (a
``set_labels(names)`` method, as the text-classifier models have) when its own labels differ;
a closed-vocabulary model must already have the split's labels.

Example:
    >>> get_benchmark("digits-canvas").run(model, "digits-canvas", "test").metrics["miou_unseen"]
    >>> get_benchmark("coop-fewshot").run(model, "/data/oxford_pets", "test").metrics["top1"]
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from .benchmarks import Benchmark, BenchmarkResult, register_benchmark
from .segmentation import SegmentationMeter
from .splits import image_batches

__all__ = ["adopt_labels", "evaluate_segmentation", "DigitsCanvas", "CoOpFewShot"]


def adopt_labels(model: Any, names: Sequence[str]) -> bool:
    """Gives ``model`` the class names ``names`` when its labels differ.

    Returns:
        True when the labels were changed (``model.set_labels``), False when they already were
        ``names``.

    Raises:
        ValueError: The labels differ and the model cannot take new ones (no ``set_labels``, or
            one that refuses with a ``TypeError``: a classifier trained per class).
    """
    names = list(names)
    current = list(getattr(model.config, "labels", None) or [])
    if current == names:
        return False
    message = (f"The model's labels {current} are not the split's classes {names}, and it "
               "cannot take new ones: evaluate an open-vocabulary model (a text classifier), "
               "or one trained with these labels.")
    set_labels = getattr(model, "set_labels", None)
    if set_labels is None:
        raise ValueError(message)
    try:
        set_labels(names)
    except TypeError as err:
        raise ValueError(f"{message} ({err})") from err
    return True


@torch.no_grad()
def evaluate_segmentation(model: Any, dataset: Any, *, num_classes: int, ignore_index: int = 255,
                          subsets: dict[str, Sequence[int]] | None = None, batch_size: int = 16,
                          seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """mIoU of a segmentation model on every image of a split.

    Args:
        model: ``model(images).logits`` is ``(B, K, H, W)`` at the masks' size.
        dataset: ``image`` and ``mask`` (``(H, W)`` class indices) columns.
        num_classes: ``K``.
        ignore_index: Mask value left out.
        subsets: ``{name: class indices}`` for ``miou_<name>`` (``seen`` / ``unseen`` add hIoU).
        batch_size: Images per forward.
        seed: Seed of the torch RNG (random-noise models).
        progress: Show a progress bar.

    Returns:
        ``{"metrics": {...}, "per_class_iou": [...], "num_images": N}``.

    Raises:
        ValueError: Logits of the wrong shape, or masks outside the classes.
    """
    from tqdm import tqdm

    meter = SegmentationMeter(num_classes, ignore_index=ignore_index, subsets=subsets)
    if hasattr(model, "eval"):
        model.eval()
    if "mask" not in dataset.column_names:
        raise ValueError(f"A segmentation split needs 'image' and 'mask' columns; it has "
                         f"{dataset.column_names}.")
    dataset = dataset.select_columns(["image", "mask"]).rename_column("mask", "label")
    total = -(-len(dataset) // batch_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for images, masks in tqdm(image_batches(dataset, batch_size), total=total,
                                  desc="segment", unit="batch", leave=False,
                                  disable=not progress):
            logits = model(images).logits
            masks = torch.from_numpy(masks)  # (B, H, W)
            if logits.dim() != 4 or logits.shape[1] != num_classes or \
                    tuple(logits.shape[-2:]) != tuple(masks.shape[-2:]):
                raise ValueError(f"The model's logits are {tuple(logits.shape)}; the masks need "
                                 f"(B, {num_classes}, {masks.shape[-2]}, {masks.shape[-1]}).")
            meter.update(logits.argmax(1).cpu(), masks)
    return {"metrics": meter.compute(), "per_class_iou": meter.per_class_iou(),
            "num_images": len(dataset)}


@register_benchmark("digits-canvas")
class DigitsCanvas(Benchmark):
    """Open-vocabulary segmentation stand-in: digit canvases, trained on background + 0-6,
    tested with all eleven class names (unseen: 7-9). ``--data digits-canvas`` (or a saved
    copy); mIoU, mIoU seen / unseen, hIoU."""

    task_type = "image-segmentation"
    description = "offline open-vocabulary segmentation stand-in: mIoU on seen / unseen digits"

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 16,
            seed: int = 0, progress: bool = True, limit: int | None = None,
            **options: Any) -> BenchmarkResult:
        """Evaluates ``model`` on ``split`` (``test`` by default) of the canvases.

        Raises:
            ValueError: An unknown option or split, or a model that cannot take the split's
                class names.
        """
        import datasets

        from ..data.standins import DIGITS_CANVAS, digits_canvas, segmentation_info

        if options:
            raise ValueError(f"{self.name} takes the option 'limit', not {sorted(options)}.")
        dataset = digits_canvas(split) if str(data) == DIGITS_CANVAS \
            else datasets.load_from_disk(str(data))
        if limit is not None:
            dataset = dataset.select(range(min(int(limit), len(dataset))))
        info = segmentation_info(dataset)
        changed = adopt_labels(model, info.labels)
        subsets = {"seen": list(info.seen)}
        if info.unseen:
            subsets["unseen"] = list(info.unseen)
        out = evaluate_segmentation(model, dataset, num_classes=len(info.labels),
                                    ignore_index=info.ignore_index, subsets=subsets,
                                    batch_size=batch_size, seed=seed, progress=progress)
        names = {"miou": "mIoU", "miou_seen": "mIoU (seen classes)",
                 "miou_unseen": "mIoU (unseen classes)", "hiou": "hIoU (seen / unseen)"}
        details = {"per_class_iou": dict(zip(info.labels, out["per_class_iou"])),
                   "seen": [info.labels[i] for i in info.seen],
                   "unseen": [info.labels[i] for i in info.unseen],
                   "labels_set_on_model": changed}
        return BenchmarkResult(self.name, split, out["num_images"], out["metrics"], names,
                               details, dataset_name=self.name)


@register_benchmark("coop-fewshot")
class CoOpFewShot(Benchmark):
    """Few-shot classification on a CoOp-layout data set (``split_zhou_*.json``): top-1 / top-5
    on its complete test split (S000 §4.1). The model is trained on the k-shot subset
    (``diffperception train --shots 16``)."""

    task_type = "image-classification"
    description = "top-1 on the test split of a CoOp-layout data set (split_zhou_*.json)"

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 32,
            seed: int = 0, progress: bool = True, **options: Any) -> BenchmarkResult:
        """Evaluates the classifier on ``split`` of the data set at ``data``.

        Raises:
            FileNotFoundError: No CoOp split file under ``data``.
            ValueError: An unknown option, or a model that does not know the classes.
        """
        from ..data.fewshot_splits import load_coop_split
        from .classification import evaluate_classifier

        if options:
            raise ValueError(f"{self.name} takes no options, got {sorted(options)}.")
        dataset = load_coop_split(data, split)
        names = list(dataset.features["label"].names)
        known = set(getattr(model.config, "labels", None) or [])
        # a classifier that knows every class is scored by name; others take the names
        changed = False if set(names) <= known else adopt_labels(model, names)
        result = evaluate_classifier(model, dataset, batch_size=batch_size, seed=seed,
                                     progress=progress)
        return BenchmarkResult(
            self.name, split, result.num_images, {"top1": result.top1, "top5": result.top5},
            {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy"},
            {"classes": names, "labels_set_on_model": changed}, dataset_name=str(data))
