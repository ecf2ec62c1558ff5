"""Evaluation benchmarks by name: what ``diffperception evaluate --benchmark NAME`` runs.

A benchmark is a class registered with ``@register_benchmark(name)``. It reads one benchmark's
own file layout (``--data``), runs a task model over a split and returns a
``BenchmarkResult``: the metrics (fractions in [0, 1] unless the metric says otherwise), the
card's ``model-index`` entries and any details (per category, per type) for the JSON file.

Benchmarks of the method modules (retrieval, matching, correspondence, segmentation) register
here; the classification protocol (top-1 / top-5 / kNN) is the default of ``evaluate`` for
image classifiers.

Example:
    >>> @register_benchmark("spair71k")
    ... class SPair71k(Benchmark):
    ...     task_type = "keypoint-matching"
    ...     def run(self, model, data, split, **options): ...
    >>> list_benchmarks()
    ['spair71k', ...]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..registry import Registry

__all__ = ["Benchmark", "BenchmarkResult", "get_benchmark", "list_benchmarks",
           "register_benchmark", "write_benchmark_result"]

BENCHMARKS: Registry[type["Benchmark"]] = Registry("benchmark", "--benchmark")


@dataclass
class BenchmarkResult:
    """What a benchmark run measured.

    Attributes:
        benchmark: The registered name.
        split: The split evaluated.
        num_samples: Queries / images / pairs counted (every one of the split).
        metrics: ``{metric_type: value}`` (e.g. ``{"pck@0.1_bbox": 0.61}``).
        metric_names: ``{metric_type: human-readable name}`` for the card.
        details: More JSON data (per category, per type, settings).
        dataset_name: The data set's name for the card.
    """

    benchmark: str
    split: str
    num_samples: int
    metrics: dict[str, float]
    metric_names: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "split": self.split,
                "num_samples": self.num_samples, "metrics": dict(self.metrics),
                "details": self.details}


class Benchmark:
    """Base of the benchmarks.

    Attributes:
        name: The registered name.
        task_type: The model card's task type (``"image-classification"``, ...).
        description: One line for ``diffperception evaluate --help``.
    """

    name: ClassVar[str] = ""
    task_type: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        """Benchmark-specific ``argparse`` options (none by default); their values reach
        ``run`` as keyword arguments when set."""

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 32,
            seed: int = 0, progress: bool = True, **options: Any) -> BenchmarkResult:
        """Evaluates ``model`` on ``split`` of the benchmark at ``data``.

        Raises:
            FileNotFoundError: ``data`` does not hold the benchmark's layout.
            ValueError: The model is not of a task the benchmark evaluates.
        """
        raise NotImplementedError

    def format(self, result: BenchmarkResult) -> str:
        """The printed summary (one metric per line by default)."""
        lines = [f"{self.name}, {result.split} split, {result.num_samples} samples"]
        for key, value in result.metrics.items():
            lines.append(f"{result.metric_names.get(key, key)}: {100 * value:.2f}%")
        return "\n".join(lines)


def register_benchmark(name: str) -> Callable[[type[Benchmark]], type[Benchmark]]:
    """Class decorator registering a benchmark under ``name``.

    Raises:
        ValueError: Another class is already registered under ``name``.
    """
    return BENCHMARKS.register(name)


def list_benchmarks(filter: str = "") -> list[str]:  # noqa: A002 - timm's name
    """Names of the registered benchmarks, sorted."""
    _import_benchmarks()
    return BENCHMARKS.names(filter)


def get_benchmark(name: str) -> Benchmark:
    """A fresh instance of the benchmark registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (with the closest names).
    """
    _import_benchmarks()
    return BENCHMARKS.get(name)()


#: Modules whose import registers benchmarks (the method modules add theirs here).
BENCHMARK_MODULES: list[str] = [
    "diffperception.evaluation.sbir",
    "diffperception.evaluation.open_vocabulary",
    "diffperception.evaluation.matching_benchmarks",
    "diffperception.evaluation.correspondence",
    "diffperception.evaluation.ade20k",
]


def _import_benchmarks() -> None:
    import importlib

    for module in BENCHMARK_MODULES:
        importlib.import_module(module)


def card_entries(result: BenchmarkResult, task_type: str, dataset_type: str) -> list[dict]:
    """The result as ``EvalResult`` fields for a card's ``model-index``."""
    common = dict(task_type=task_type, dataset_type=dataset_type,
                  dataset_name=result.dataset_name or result.benchmark,
                  dataset_split=result.split)
    return [dict(common, metric_type=key, metric_name=result.metric_names.get(key, key),
                 metric_value=round(float(value), 6)) for key, value in result.metrics.items()]


def write_benchmark_result(result: BenchmarkResult, out_dir: str | os.PathLike, *,
                           task_type: str, source: str | os.PathLike, model_id: str,
                           extra: dict[str, Any] | None = None) -> Path:
    """Writes ``eval_<benchmark>_<split>.json`` into ``out_dir``; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"model": str(model_id), "data": str(source), **(extra or {}), **result.to_dict(),
            "card_metrics": card_entries(result, task_type, result.benchmark)}
    path = out / f"eval_{result.benchmark}_{result.split}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
