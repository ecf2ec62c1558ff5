"""Semantic-correspondence evaluation: PCK@alpha and the keypoint-pair benchmarks.

PCK (percentage of correct keypoints): a predicted target point is correct when its distance to
the true one is at most ``alpha * max(H, W)`` of the target image (``img`` threshold) or
``alpha * max(w, h)`` of the target object's box (``bbox`` threshold; METHODS.md §4.4: GDF
``correspondence_utils.py:160-167``, DIFT ``eval_spair.py``; ``<=`` as both). Two averages:
**per point** (every keypoint of the split pooled; GDF's number) and **per image** (the mean over
pairs of each pair's accuracy; DIFT reports both). torchmetrics has no PCK, so it is counted here.

Benchmarks (``diffperception evaluate ... --benchmark NAME``):

- ``spair71k``: SPair-71k in its own layout (``--data`` the ``SPair-71k`` folder).
- ``pf-willow``: PF-WILLOW (``--data`` the folder holding ``test_pairs.csv``).
- ``warped-photos``, ``stereo``, ``warped-digits``: offline stand-ins with exact ground truth
  (``diffperception.data.correspondence``); ``--data`` is not read (pass ``builtin``).

A feature-extraction model (such as the ``dift-sd21`` preset) is evaluated through a
``DiffusionPerceptionForSemanticCorrespondence`` sharing its backbone (``as_correspondence_model``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .benchmarks import Benchmark, BenchmarkResult, register_benchmark

__all__ = ["PCKMeter", "pck_correct", "rescale_points", "as_correspondence_model",
           "evaluate_correspondence", "SPair71k", "PFWillow", "WarpedPhotos", "StereoPair",
           "WarpedDigits"]

THRESHOLDS = ("img", "bbox")


def rescale_points(points: Any, from_hw: Sequence[float], to_hw: Sequence[float]) -> np.ndarray:
    """``(x, y)`` points of an ``from_hw`` grid or image expressed in ``to_hw`` pixels
    (``x * W_to / W_from``, ``y * H_to / H_from``), e.g. from a 128x128 feature grid or the
    network's 512x512 input back to the original target size."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points * np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])


def pck_correct(predicted: Any, truth: Any, threshold: float) -> np.ndarray:
    """``(K,)`` booleans: Euclidean distance ``<= threshold`` (pixels)."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted points {predicted.shape} and true points {truth.shape} differ "
                         "in shape.")
    return np.linalg.norm(predicted - truth, axis=1) <= threshold


def _threshold(kind: str, alpha: float, image_hw: Sequence[int], bbox: Any) -> float | None:
    if kind == "img":
        return alpha * max(image_hw)
    if bbox is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return alpha * max(x2 - x1, y2 - y1)


@dataclass
class PCKMeter:
    """Accumulates PCK over pairs: per point, per image, per category.

    Args:
        alphas: Thresholds as fractions (0.1 for PCK@0.1; 0.05, 0.01 also common).

    Example:
        >>> meter = PCKMeter(alphas=(0.1,))
        >>> meter.add(pred, truth, image_hw=(375, 500), bbox=[10, 20, 210, 320], category="cat")
        >>> meter.compute()["pck@0.1_bbox"]
    """

    alphas: Sequence[float] = (0.1,)
    # (metric key, category) -> list of per-pair (correct, total)
    _counts: dict = field(default_factory=lambda: defaultdict(list), init=False, repr=False)

    def add(self, predicted: Any, truth: Any, *, image_hw: Sequence[int], bbox: Any = None,
            category: str = "") -> None:
        """Adds one pair.

        Args:
            predicted, truth: ``(K, 2)`` ``(x, y)`` target points in original-image pixels.
            image_hw: ``(H, W)`` of the target image (the ``img`` threshold).
            bbox: ``[x1, y1, x2, y2]`` of the target object, or None (no ``bbox`` metric).
            category: The pair's category.
        """
        for alpha in self.alphas:
            for kind in THRESHOLDS:
                threshold = _threshold(kind, alpha, image_hw, bbox)
                if threshold is None:
                    continue
                correct = pck_correct(predicted, truth, threshold)
                key = f"pck@{alpha:g}_{kind}"
                self._counts[(key, category)].append((int(correct.sum()), len(correct)))

    @staticmethod
    def _averages(entries: list[tuple[int, int]]) -> tuple[float, float]:
        right = sum(c for c, _ in entries)
        total = sum(n for _, n in entries)
        per_point = right / total if total else float("nan")
        per_image = [c / n for c, n in entries if n]
        return per_point, float(np.mean(per_image)) if per_image else float("nan")

    def compute(self) -> dict[str, float]:
        """``{"pck@0.1_img": per point, "pck@0.1_img_per_image": per image, ...}`` pooled
        over every category (pairs without keypoints count in neither average)."""
        pooled: dict[str, list] = defaultdict(list)
        for (key, _), entries in self._counts.items():
            pooled[key] += entries
        out = {}
        for key in sorted(pooled):
            out[key], out[f"{key}_per_image"] = self._averages(pooled[key])
        return out

    def per_category(self) -> dict[str, dict[str, float]]:
        """``{category: {metric: value}}`` with the same keys as ``compute``."""
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (key, category), entries in sorted(self._counts.items()):
            out[category][key], out[category][f"{key}_per_image"] = self._averages(entries)
        return dict(out)

    def category_mean(self) -> dict[str, float]:
        """The mean over categories of each per-category metric."""
        per = self.per_category()
        keys = sorted({k for values in per.values() for k in values})
        return {k: float(np.mean([v[k] for v in per.values() if k in v])) for k in keys}


def as_correspondence_model(model: Any) -> Any:
    """``model`` if it is a correspondence model; a feature extractor (such as the ``dift-sd21``
    preset) becomes one with the same backbone (shared, not copied) and the parameter-free
    ``correspondence`` head on all its taps.

    Raises:
        ValueError: Any other kind of task model.
    """
    from ..modeling import (
        DiffusionPerceptionForFeatureExtraction,
        DiffusionPerceptionForSemanticCorrespondence,
    )

    if isinstance(model, DiffusionPerceptionForSemanticCorrespondence):
        return model
    if not isinstance(model, DiffusionPerceptionForFeatureExtraction):
        raise ValueError(f"A correspondence benchmark evaluates a "
                         f"DiffusionPerceptionForSemanticCorrespondence or a feature extractor, "
                         f"not a {type(model).__name__}.")
    return DiffusionPerceptionForSemanticCorrespondence.from_feature_extractor(model)


def evaluate_correspondence(model: Any, pairs: Iterable[Any], *, alphas: Sequence[float] = (0.1,),
                            window: int | None = None, resolution: str | None = None,
                            category_prompt: str | None = None, progress: bool = True,
                            total: int | None = None) -> PCKMeter:
    """Matches every pair's source keypoints and accumulates PCK.

    Args:
        model: A correspondence model or a feature extractor (see ``as_correspondence_model``).
        pairs: ``CorrespondencePair`` s (``diffperception.data.correspondence``).
        alphas: PCK thresholds.
        window, resolution: Matching options (see ``DiffusionPerceptionForSemanticCorrespondence``).
        category_prompt: A format string such as DIFT's ``"a photo of a {category}"`` passed as the
            prompt of both images (models built with per-image prompts only); None: the model's.
        progress: Show a tqdm bar.
        total: Number of pairs, for the bar.

    Returns:
        The filled ``PCKMeter``.
    """
    from tqdm.auto import tqdm

    model = as_correspondence_model(model)
    meter = PCKMeter(alphas=tuple(alphas))
    for pair in tqdm(pairs, total=total, disable=not progress, desc="pairs"):
        if len(pair.source_points) == 0:
            continue
        source, target = pair.images()
        prompt = category_prompt.format(category=pair.category) if category_prompt else None
        out = model.match(source, target, pair.source_points, prompt=prompt, window=window,
                          resolution=resolution, value_range=(0, 255))
        meter.add(out.points.cpu().numpy(), pair.target_points, image_hw=target.shape[:2],
                  bbox=pair.target_bbox, category=pair.category)
    return meter


_NAMES = {"img": "image", "bbox": "bounding box"}


class _PairBenchmark(Benchmark):
    """Shared run / format of the keypoint-pair benchmarks."""

    task_type = "keypoint-matching"

    def pairs(self, data: str | os.PathLike, split: str, seed: int, **options: Any) -> list:
        raise NotImplementedError

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 32,
            seed: int = 0, progress: bool = True, alphas: Sequence[float] = (0.1,),
            window: int | None = None, resolution: str | None = None,
            category_prompt: str | None = None, limit: int | None = None,
            **options: Any) -> BenchmarkResult:
        """PCK of ``model`` on the pairs of ``split`` (``limit``: the first N pairs only).

        Options (``--benchmark-option key=value``): ``alphas`` (list), ``window``,
        ``resolution``, ``category_prompt``, ``limit`` and the benchmark's own.
        """
        if isinstance(alphas, (int, float)):
            alphas = [alphas]
        pairs = self.pairs(data, split, seed, **options)
        if limit is not None:
            pairs = pairs[: int(limit)]
        meter = evaluate_correspondence(model, pairs, alphas=alphas, window=window,
                                        resolution=resolution, category_prompt=category_prompt,
                                        progress=progress, total=len(pairs))
        metrics = meter.compute()
        names = {}
        for key in metrics:
            alpha, kind = key[len("pck@"):].split("_")[:2]
            names[key] = (f"PCK@{alpha} ({_NAMES[kind]} threshold, "
                          f"{'per image' if key.endswith('per_image') else 'per point'})")
        return BenchmarkResult(
            benchmark=self.name, split=split, num_samples=len(pairs), metrics=metrics,
            metric_names=names, dataset_name=self.dataset_name,
            details={"per_category": meter.per_category(), "category_mean": meter.category_mean(),
                     "num_keypoints": int(sum(len(p.source_points) for p in pairs)),
                     "settings": {"alphas": list(alphas), "window": window,
                                  "resolution": resolution, "category_prompt": category_prompt,
                                  **options}})

    dataset_name: str = ""


@register_benchmark("spair71k")
class SPair71k(_PairBenchmark):
    """SPair-71k (``--data`` the ``SPair-71k`` folder; splits test / val / train)."""

    description = "SPair-71k keypoint pairs: PCK per point and per image, img and bbox thresholds"
    dataset_name = "SPair-71k"

    def pairs(self, data, split, seed, **options):
        from ..data.correspondence import load_spair71k

        _no_options(self.name, options)
        return load_spair71k(data, split)


@register_benchmark("pf-willow")
class PFWillow(_PairBenchmark):
    """PF-WILLOW (``--data`` the folder of ``test_pairs.csv``; split test)."""

    description = "PF-WILLOW keypoint pairs (bbox = keypoint extent)"
    dataset_name = "PF-WILLOW"

    def pairs(self, data, split, seed, **options):
        from ..data.correspondence import load_pf_willow

        _no_options(self.name, options)
        return load_pf_willow(data, split)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"The {name!r} benchmark takes no options {sorted(options)}; it takes "
                         "alphas, window, resolution, category_prompt, limit.")


def _offline_split(name: str, split: str) -> None:
    if split != "test":
        raise ValueError(f"The {name!r} benchmark has one split, 'test', not {split!r}.")


@register_benchmark("warped-photos")
class WarpedPhotos(_PairBenchmark):
    """Sample photos under random affine / thin-plate warps (``num_pairs``, ``warp``, ``size``,
    ``strength``, ``grid``)."""

    description = "offline: scikit-image / scikit-learn photos under random warps, exact matches"
    dataset_name = "warped sample photos"

    def pairs(self, data, split, seed, num_pairs: int = 12, warp: str = "affine",
              size: int = 256, strength: float = 1.0, grid: int = 6):
        from ..data.correspondence import warped_photo_pairs

        _offline_split(self.name, split)
        return warped_photo_pairs(int(num_pairs), warp=warp, size=int(size),
                                  strength=float(strength), grid=int(grid), seed=seed)


@register_benchmark("stereo")
class StereoPair(_PairBenchmark):
    """scikit-image's motorcycle stereo pair, matches from its disparity (``size``, ``grid``,
    ``crops``, ``crop_size``)."""

    description = "offline: the Middlebury motorcycle stereo pair shipped with scikit-image"
    dataset_name = "Middlebury motorcycle (scikit-image)"

    def pairs(self, data, split, seed, size: int | None = None, grid: int = 10, crops: int = 0,
              crop_size: int = 160):
        from ..data.correspondence import stereo_pairs

        _offline_split(self.name, split)
        return stereo_pairs(size=None if size is None else int(size), grid=int(grid),
                            crops=int(crops), crop_size=int(crop_size), seed=seed)


@register_benchmark("warped-digits")
class WarpedDigits(_PairBenchmark):
    """Held-out digits at 32 px under random affine warps (``num_pairs``, ``strength``,
    ``max_points``)."""

    description = "offline: held-out scikit-learn digits under random affine warps"
    dataset_name = "warped digits (scikit-learn)"

    def pairs(self, data, split, seed, num_pairs: int = 100, strength: float = 1.0,
              max_points: int = 8):
        from ..data.correspondence import warped_digit_pairs

        _offline_split(self.name, split)
        return warped_digit_pairs(int(num_pairs), strength=float(strength),
                                  max_points=int(max_points), seed=seed)
