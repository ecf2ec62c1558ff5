"""The image-text matching benchmarks by name (``diffperception evaluate --benchmark NAME``).

``comvg``, ``winoground``, ``refcocog``, ``vqav2`` read their own layouts
(:mod:`diffperception.data.matching`); ``digit-pairs`` builds the offline Winoground-style swap
test from scikit-learn digits (:mod:`diffperception.default_model.pairs`). Each ``run`` calls
``model.score(images, texts) -> (num_images, num_texts)`` (an image-text matching model, or any
object with that method such as :class:`~diffperception.evaluation.matching.NoiseErrorMatcher`)
on ``(N, 3, S, S)`` float images in [0, 1]; the metrics are those of
:mod:`diffperception.evaluation.matching` (ties count as wrong). Protocols: METHODS.md §2.7.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..data import matching as layouts
from .benchmarks import Benchmark, BenchmarkResult, register_benchmark
from .matching import (comvg_accuracy, recall_at_k, score_table, score_winoground_examples,
                       winoground_scores)

__all__ = ["ComVGBenchmark", "DigitPairsBenchmark", "RefCOCOgBenchmark", "VQAv2Benchmark",
           "WinogroundBenchmark", "default_image_size"]

#: The released code resizes every image to 512x512 (``custom_datasets.py``).
RELEASED_IMAGE_SIZE = 512


def default_image_size(model: Any) -> int | tuple[int, int]:
    """The model's preprocessing size (``config.preprocess.size``), else 512."""
    size = getattr(getattr(getattr(model, "config", None), "preprocess", None), "size", None)
    return tuple(int(s) for s in size) if size else RELEASED_IMAGE_SIZE


def _images(paths: Sequence[os.PathLike], size: Any) -> torch.Tensor:
    return torch.from_numpy(np.stack([layouts.load_rgb(p, size) for p in paths]))  # (N, 3, H, W)


def _limited(records: list, limit: int | None) -> list:
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit = {limit!r} is invalid: an integer >= 1.")
    return records if limit is None else records[: int(limit)]


def _table(matcher: Any, images: Any, texts: Sequence[str]) -> np.ndarray:
    with torch.no_grad():
        return score_table(matcher, images, texts)


@register_benchmark("comvg")
class ComVGBenchmark(Benchmark):
    """ComVG: a sentence against its image and a negative image (subject / object / predicate)."""

    task_type = "image-text-matching"
    description = "ComVG accuracy per negative type (ties wrong), row-weighted and per-type means"

    def run(self, model: Any, data: str | os.PathLike, split: str = "test", *,
            batch_size: int = 32, seed: int = 0, progress: bool = True, limit: int | None = None,
            image_size: int | None = None, images_dir: str | None = None,
            csv_name: str | None = None, neg_type: str = "all") -> BenchmarkResult:
        from tqdm.auto import tqdm

        rows = _limited(layouts.load_comvg(data, split, csv_name=csv_name, images_dir=images_dir,
                                           neg_type=neg_type), limit)
        size = image_size or default_image_size(model)
        pos, neg = np.zeros(len(rows)), np.zeros(len(rows))
        for i, row in enumerate(tqdm(rows, desc="comvg", disable=not progress)):
            table = _table(model, _images([row.positive_image, row.negative_image], size),
                           [row.sentence])  # (2, 1)
            pos[i], neg[i] = table[0, 0], table[1, 0]
        acc = comvg_accuracy(pos, neg, [r.type for r in rows])
        metrics = {k: acc[k] for k in ("subject", "object", "predicate", "accuracy",
                                       "mean_per_type") if not np.isnan(acc[k])}
        names = {"subject": "Subject accuracy", "object": "Object accuracy",
                 "predicate": "Predicate accuracy", "accuracy": "Accuracy (all rows)",
                 "mean_per_type": "Mean of the per-type accuracies"}
        return BenchmarkResult(self.name, split, len(rows), metrics, names,
                               {"counts": acc["counts"], "ties": acc["ties"],
                                "ties_counted_as": "wrong", "image_size": size},
                               dataset_name="ComVG")


@register_benchmark("winoground")
class WinogroundBenchmark(Benchmark):
    """Winoground: text / image / group scores of two images against two captions."""

    task_type = "image-text-matching"
    description = "Winoground text / image / group scores (ties wrong), per tag"

    def run(self, model: Any, data: str | os.PathLike, split: str = "test", *,
            batch_size: int = 32, seed: int = 0, progress: bool = True, limit: int | None = None,
            image_size: int | None = None) -> BenchmarkResult:
        examples = _limited(layouts.load_winoground(data), limit)
        size = image_size or default_image_size(model)
        records = [{"image_0": ex.image_0, "image_1": ex.image_1, "caption_0": ex.caption_0,
                    "caption_1": ex.caption_1} for ex in examples]
        with torch.no_grad():
            scores = score_winoground_examples(model, records, progress=progress,
                                               load_image=lambda p: layouts.load_rgb(p, size))
        per_tag = {tag: winoground_scores(scores[[e.tag == tag for e in examples]])
                   for tag in sorted({e.tag for e in examples})}
        return _winoground_result(self.name, split, scores, "Winoground",
                                  {"per_tag": per_tag, "image_size": size})


def _winoground_result(name: str, split: str, scores: np.ndarray, dataset: str,
                       details: dict[str, Any]) -> BenchmarkResult:
    metrics = winoground_scores(scores)
    names = {"text_score": "Text score", "image_score": "Image score",
             "group_score": "Group score"}
    return BenchmarkResult(name, split, len(scores), metrics, names,
                           {**details, "ties_counted_as": "wrong",
                            "scores": np.round(scores, 6).tolist()}, dataset_name=dataset)


@register_benchmark("digit-pairs")
class DigitPairsBenchmark(Benchmark):
    """Offline Winoground-style swaps on digit pairs ("a three to the left of a five" against
    "a five to the left of a three", the same two drawings swapped)."""

    task_type = "image-text-matching"
    description = "digit-pair swaps: text / image / group scores (data: digit-pairs)"

    def run(self, model: Any, data: str | os.PathLike = "digit-pairs", split: str = "test", *,
            batch_size: int = 32, seed: int = 0, progress: bool = True,
            num_examples: int = 200) -> BenchmarkResult:
        from ..data import DIGIT_PAIRS, digit_pair_swaps

        if str(data) != DIGIT_PAIRS:
            raise ValueError(f"The digit-pairs benchmark builds its data; pass --data "
                             f"{DIGIT_PAIRS}, not {data!r}.")
        examples = digit_pair_swaps(num_examples, split=split, seed=seed)
        with torch.no_grad():
            scores = score_winoground_examples(model, examples, progress=progress)
        return _winoground_result(self.name, split, scores, "digit-pairs",
                                  {"num_examples": num_examples, "seed": seed})


@register_benchmark("refcocog")
class RefCOCOgBenchmark(Benchmark):
    """RefCOCOg (Google split): an image against its expression and the next 9 refs' ones."""

    task_type = "image-text-matching"
    description = "RefCOCOg R@1 / R@5 over 10 expressions per image (ties wrong)"

    def run(self, model: Any, data: str | os.PathLike, split: str = "val", *,
            batch_size: int = 32, seed: int = 0, progress: bool = True, limit: int | None = None,
            image_size: int | None = None, images_dir: str | None = None,
            group_size: int = 10) -> BenchmarkResult:
        from tqdm.auto import tqdm

        groups = _limited(layouts.load_refcocog(data, split, group_size=group_size,
                                                images_dir=images_dir), limit)
        size = image_size or default_image_size(model)
        scores = np.stack([_table(model, _images([g.image], size), g.texts)[0]
                           for g in tqdm(groups, desc="refcocog", disable=not progress)])
        recall = recall_at_k(scores, 0, (1, 5))
        return BenchmarkResult(self.name, split, len(groups),
                               {"recall@1": recall[1], "recall@5": recall[5]},
                               {"recall@1": "R@1", "recall@5": "R@5"},
                               {"group_size": group_size, "ties_counted_as": "wrong",
                                "image_size": size}, dataset_name="RefCOCOg")


@register_benchmark("vqav2")
class VQAv2Benchmark(Benchmark):
    """VQAv2 as matching: "other" questions rank 10 answers, yes/no questions rank 10 images."""

    task_type = "image-text-matching"
    description = "VQAv2-as-matching R@1 / R@5 for binary, other and all questions (ties wrong)"

    def run(self, model: Any, data: str | os.PathLike, split: str = "val", *,
            batch_size: int = 32, seed: int = 0, progress: bool = True, limit: int | None = None,
            image_size: int | None = None, images_dir: str | None = None,
            num_candidates: int = 10) -> BenchmarkResult:
        from tqdm.auto import tqdm

        items = layouts.load_vqav2_matching(data, split, num_candidates=num_candidates,
                                            limit=limit, seed=seed, images_dir=images_dir)
        size = image_size or default_image_size(model)
        rows = {"binary": [], "other": []}
        for item in tqdm(items, desc="vqav2", disable=not progress):
            table = _table(model, _images(item.images, size), item.texts)
            rows[item.kind].append(table[0] if item.kind == "other" else table[:, 0])
        metrics, counts = {}, {}
        for kind, kind_rows in (*rows.items(), ("all", rows["binary"] + rows["other"])):
            counts[kind] = len(kind_rows)
            if kind_rows:
                for k, value in recall_at_k(np.stack(kind_rows), 0, (1, 5)).items():
                    metrics[f"{kind}_recall@{k}"] = value
        names = {key: f"{key.split('_')[0].capitalize()} R@{key[-1]}" for key in metrics}
        return BenchmarkResult(self.name, split, len(items), metrics, names,
                               {"counts": counts, "num_candidates": num_candidates,
                                "ties_counted_as": "wrong", "seed": seed, "image_size": size},
                               dataset_name="VQAv2")
