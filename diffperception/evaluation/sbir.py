"""Zero-shot sketch-based image retrieval benchmarks: ``sketchy``, ``tuberlin``, ``quickdraw``
and the offline ``digits-sketch`` (``diffperception evaluate --benchmark NAME``).

Protocol (METHODS.md §3.9): the unseen classes' sketches are the queries, their photos the
gallery; both go through the same model, whose output's ``embeddings`` ``(B, D)`` are compared
by cosine similarity; ``evaluation.retrieval.retrieval_metrics`` gives mAP@all, mAP@200 (query
mean; and the released code's class mean with VOC interpolation), P@100 and P@200. The
literature quotes Sketchy split 1 and TU-Berlin as mAP@all / P@100, Sketchy split 2 as mAP@200 /
P@200 (Yelamarthi et al. 2018), QuickDraw as mAP@all / P@200; every metric is reported for every
benchmark and ``details["conventional"]`` names the quoted pair.

A model is anything whose call ``model(images)`` (images as ``image_batches`` yields them: a
``(B, 3, H, W)`` array in [0, 1] or a list of PIL images) returns an object with an
``embeddings`` tensor (``DiffusionPerceptionForImageRetrieval``, or the baselines here:
:class:`PooledFeatureEmbedder` around a feature extractor, :class:`PixelEmbedder`).

Example:
    >>> from diffperception.evaluation import get_benchmark
    >>> result = get_benchmark("digits-sketch").run(model, "digits-sketch", "test")
    >>> result.metrics["map@all"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .benchmarks import Benchmark, BenchmarkResult, register_benchmark
from .retrieval import retrieval_metrics
from .splits import _balanced_subset, image_batches

__all__ = ["EmbeddingOutput", "PooledFeatureEmbedder", "PixelEmbedder", "embed_dataset",
           "evaluate_retrieval", "retrieval_against_baselines", "SBIRBenchmark", "METRIC_NAMES"]

METRIC_NAMES = {
    "map@all": "mAP@all", "map@200": "mAP@200", "p@100": "P@100", "p@200": "P@200",
    "map@all_class_voc": "mAP@all (class mean, VOC AP: the released code)",
    "map@200_class_voc": "mAP@200 (class mean, VOC AP: the released code)",
}


@dataclass
class EmbeddingOutput(ModelOutput):
    """Output of the embedding baselines.

    Attributes:
        embeddings: ``(B, D)`` L2-normalised embeddings.
    """

    embeddings: torch.Tensor | None = None


class PooledFeatureEmbedder(torch.nn.Module):
    """A feature extractor's taps, average-pooled, concatenated and L2-normalised.

    The retrieval baseline without a trained head (a plain pooled feature, as the probes use).

    Args:
        extractor: A module returning ``{tap: (B, C, h, w)}`` (e.g.
            ``DiffusionPerceptionForFeatureExtraction``).
        pool: Side ``p`` of the adaptive average pool: ``D = sum(C) * p * p``.
    """

    def __init__(self, extractor: torch.nn.Module, pool: int = 1) -> None:
        super().__init__()
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool = {pool!r} is invalid: a positive integer.")
        self.extractor, self.pool = extractor, pool

    def forward(self, images: Any) -> EmbeddingOutput:
        feats = self.extractor(images)
        pooled = [F.adaptive_avg_pool2d(feats[name].float(), self.pool).flatten(1)
                  for name in sorted(feats)]  # each (B, C * p * p)
        return EmbeddingOutput(embeddings=F.normalize(torch.cat(pooled, dim=1), dim=1))


class PixelEmbedder(torch.nn.Module):
    """Raw pixels as the embedding: resized to ``size`` (antialiased bilinear), flattened,
    centred per image and L2-normalised (the pixel baseline)."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: Any) -> EmbeddingOutput:
        if isinstance(images, (list, tuple)):
            images = np.stack([np.asarray(image.convert("RGB").resize((self.size, self.size)),
                                          dtype=np.float32).transpose(2, 0, 1) / 255.0
                               for image in images])
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))  # (B, 3, H, W)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                          align_corners=False).flatten(1)
        return EmbeddingOutput(embeddings=F.normalize(x - x.mean(1, keepdim=True), dim=1))


def _embeddings(output: Any) -> torch.Tensor:
    value = getattr(output, "embeddings", None)
    if value is None and isinstance(output, dict):
        value = output.get("embeddings")
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        raise ValueError(f"A retrieval benchmark needs a model whose output has (B, D) "
                         f"'embeddings' (DiffusionPerceptionForImageRetrieval, or "
                         f"evaluation.sbir.PooledFeatureEmbedder around a feature extractor); "
                         f"got {type(output).__name__}.")
    return value


@torch.no_grad()
def embed_dataset(model: Any, dataset: Any, *, batch_size: int = 32, progress: bool = True,
                  desc: str = "embeddings") -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings of every image of a split: ``((N, D) float32, (N,) int64 labels)``.

    Raises:
        ValueError: The model's output has no ``(B, D)`` ``embeddings``.
    """
    from tqdm import tqdm

    if hasattr(model, "eval"):
        model.eval()
    chunks, labels = [], []
    total = -(-len(dataset) // batch_size)
    for images, batch_labels in tqdm(image_batches(dataset, batch_size), total=total, desc=desc,
                                     unit="batch", leave=False, disable=not progress):
        chunks.append(_embeddings(model(images)).detach().float().cpu())
        labels.append(batch_labels)
    return torch.cat(chunks), np.concatenate(labels)


def _limit(dataset: Any, limit: int | None, seed: int) -> Any:
    if limit is None or limit >= len(dataset):
        return dataset
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit = {limit!r} is invalid: a positive number of images, or None.")
    labels = np.asarray(dataset["label"], dtype=np.int64)
    return dataset.select(_balanced_subset(labels, limit, seed).tolist())


def evaluate_retrieval(model: Any, dataset: Any, *, batch_size: int = 32, seed: int = 0,
                       limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Sketch queries against the photo gallery of one split (module docstring).

    Args:
        model: A model whose output has ``embeddings``.
        dataset: A split with ``image``, ``label`` and ``domain`` (0 photo, 1 sketch) columns.
        batch_size: Images per model call.
        seed: Seed of the torch RNG while embedding (random-noise models) and of ``limit``.
        limit: At most this many queries and this many gallery photos (class-balanced, seeded).
        progress: Show progress bars.

    Returns:
        ``{"metrics": {...}, "num_queries": Q, "num_gallery": G}``.

    Raises:
        ValueError: No sketch or no photo, or a model without ``embeddings``.
    """
    domains = np.asarray(dataset["domain"])
    if not (domains == 1).any() or not (domains == 0).any():
        raise ValueError("The split needs sketches (domain 1, the queries) and photos (domain "
                         "0, the gallery).")
    queries = _limit(dataset.select(np.flatnonzero(domains == 1).tolist()), limit, seed)
    gallery = _limit(dataset.select(np.flatnonzero(domains == 0).tolist()), limit, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        q, q_labels = embed_dataset(model, queries, batch_size=batch_size, progress=progress,
                                    desc="sketches")
        g, g_labels = embed_dataset(model, gallery, batch_size=batch_size, progress=progress,
                                    desc="photos")
    return {"metrics": retrieval_metrics(q, q_labels, g, g_labels),
            "num_queries": len(q), "num_gallery": len(g)}


def retrieval_against_baselines(folder: str | os.PathLike, dataset: Any, *, taps: list[str],
                                timesteps: list[int], pool: int = 1, seed: int = 0,
                                batch_size: int = 64, limit: int | None = None,
                                progress: bool = True) -> dict[str, Any]:
    """Retrieval with plain pooled features of a diffusion model, of its random-weight twin
    (``evaluation.random_weight_copy``) and of raw pixels: the floor a trained head must beat.

    Features: fixed noise seeded with ``seed``, null prompt ``""``, ``pool x pool`` average
    pool of the taps (:class:`PooledFeatureEmbedder`); pixels: :class:`PixelEmbedder` at the
    images' size.

    Args:
        folder: Local diffusers folder (e.g. ``default_model.DEFAULT_MODEL_PATH``).
        dataset: A split with ``image``, ``label``, ``domain`` (e.g. ``digits-sketch`` test).
        taps, timesteps: What to extract; one run per timestep.
        pool, seed, batch_size, limit, progress: See :func:`evaluate_retrieval`.

    Returns:
        ``{"trained": {t: metrics}, "random": {t: metrics}, "pixels": metrics}``.
    """
    import tempfile
    from pathlib import Path

    from ..modeling import DiffusionPerceptionForFeatureExtraction
    from .baselines import random_weight_copy

    def run(model: Any) -> dict[str, float]:
        return evaluate_retrieval(model, dataset, batch_size=batch_size, seed=seed, limit=limit,
                                  progress=progress)["metrics"]

    out: dict[str, Any] = {"trained": {}, "random": {}}
    with tempfile.TemporaryDirectory() as tmp:
        random_folder = random_weight_copy(folder, Path(tmp) / "random", seed=seed)
        for kind, source in (("trained", folder), ("random", random_folder)):
            for t in timesteps:
                extractor = DiffusionPerceptionForFeatureExtraction.from_diffusers(
                    source, taps=list(taps), timesteps=[t], noise="fixed", seed=seed, prompt="")
                out[kind][t] = run(PooledFeatureEmbedder(extractor.eval(), pool))
    size = int(np.asarray(dataset[0]["image"]).shape[-1])
    out["pixels"] = run(PixelEmbedder(size))
    return out


class SBIRBenchmark(Benchmark):
    """Base of the ZS-SBIR benchmarks: load the split, then :func:`evaluate_retrieval`."""

    task_type = "image-retrieval"
    conventional: ClassVar[dict[str, list[str]]] = {}

    def load(self, data: str | os.PathLike, split: str) -> Any:
        raise NotImplementedError

    def run(self, model: Any, data: str | os.PathLike, split: str, *, batch_size: int = 32,
            seed: int = 0, progress: bool = True, limit: int | None = None,
            **options: Any) -> BenchmarkResult:
        """Evaluates ``model`` on the unseen classes of ``split`` (see the module docstring).

        Raises:
            FileNotFoundError: ``data`` does not hold the benchmark's layout.
            ValueError: An unknown split or option, or a model without ``embeddings``.
        """
        if options:
            raise ValueError(f"{self.name} takes the option 'limit', not {sorted(options)}.")
        dataset = self.load(data, split)
        out = evaluate_retrieval(model, dataset, batch_size=batch_size, seed=seed, limit=limit,
                                 progress=progress)
        details = {"num_queries": out["num_queries"], "num_gallery": out["num_gallery"],
                   "classes": list(dataset.features["label"].names), "limit": limit,
                   "similarity": "cosine of the L2-normalised embeddings",
                   "conventional": self.conventional.get(split, [])}
        return BenchmarkResult(self.name, split, out["num_queries"], out["metrics"],
                               dict(METRIC_NAMES), details, dataset_name=self.name)


def _sbir_loader(benchmark: str):
    def load(self, data: str | os.PathLike, split: str) -> Any:
        from ..data.sbir import load_sbir_dataset

        return load_sbir_dataset(data, benchmark, split)

    return load


@register_benchmark("sketchy")
class Sketchy(SBIRBenchmark):
    """Sketchy (extended): ``--split split1`` (25 unseen) or ``split2`` (21 unseen, default)."""

    description = "ZS-SBIR on Sketchy-extended, split1 (25 unseen) or split2 (21, default)"
    conventional = {"split1": ["map@all", "p@100"], "split2": ["map@200", "p@200"],
                    "test": ["map@200", "p@200"]}
    load = _sbir_loader("sketchy")


@register_benchmark("tuberlin")
class TUBerlin(SBIRBenchmark):
    """TU-Berlin (extended): 30 unseen classes."""

    description = "ZS-SBIR on TU-Berlin-extended (30 unseen classes)"
    conventional = {"test": ["map@all", "p@100"]}
    load = _sbir_loader("tuberlin")


@register_benchmark("quickdraw")
class QuickDraw(SBIRBenchmark):
    """QuickDraw-extended: 30 unseen classes (file lists) or ``--split extended25``."""

    description = "ZS-SBIR on QuickDraw-extended (30 unseen; extended25: Doodle2Search's 25)"
    conventional = {"test": ["map@all", "p@200"], "extended25": ["map@all", "p@200"]}
    load = _sbir_loader("quickdraw")


@register_benchmark("digits-sketch")
class DigitsSketch(SBIRBenchmark):
    """The offline stand-in: digit photos vs their skeleton drawings, unseen digits 7-9
    (``--data digits-sketch``; ``--split test_seen`` for the seen digits' held-out images)."""

    description = "offline ZS-SBIR stand-in: digits 7-9 (unseen) sketches vs photos"
    conventional = {"test": ["map@all", "p@100"]}

    def load(self, data: str | os.PathLike, split: str) -> Any:
        from ..data import load_image_dataset
        from ..data.standins import DIGITS_SKETCH

        if str(data) != DIGITS_SKETCH:
            dataset = load_image_dataset(data, split)  # a saved copy (save_to_disk)
            if "domain" not in dataset.column_names:
                raise ValueError(f"{data} ({split}) has no 'domain' column (0 photo, 1 sketch).")
            return dataset
        return load_image_dataset(DIGITS_SKETCH, split)
