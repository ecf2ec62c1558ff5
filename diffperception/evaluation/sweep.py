"""Which tap and timestep for my data? A linear probe per (tap, timestep) of a grid.

One ``DiffusionBackbone`` is built with every tap and every timestep of the grid, so each batch of
images goes through the trunk once (the ``T`` timesteps are stacked along the batch, and the
trunk stops after the deepest tap); its ``{tap: (B, T, C, h, w)}`` output is average-pooled to
``p x p`` and cached on disk (safetensors, one file per split, keyed by the model, the grid, the
pooling, the seed and the data). Every timestep adds the same noise draw: the one a backbone built
for that timestep alone draws with the same seed, so a cell of the grid equals the backbone built
for that single (tap, t). Then a probe (:func:`~diffperception.evaluation.probe.linear_probe`) is
fit per cell on the train split and scored on the test split.

Example:
    >>> from diffperception.evaluation import load_split, run_sweep
    >>> result = run_sweep("diffperception:default", load_split("digits", "train"),
    ...                    load_split("digits", "test"), taps=["mid_block", "up_blocks.0"],
    ...                    timesteps=[50, 200])
    >>> print(result.table())
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .pooled import pooled_features
from .probe import PROBE_C, PROBE_MAX_ITER, linear_probe
from .splits import dataset_identity

__all__ = ["SweepResult", "sweep_backbone", "sweep_features", "run_sweep", "write_sweep",
           "CACHE_FORMAT"]

#: Bumped when the cached tensors' meaning changes (old files are then ignored).
CACHE_FORMAT = 1


@dataclass
class SweepResult:
    """Probe accuracy per (tap, timestep).

    Attributes:
        model: The diffusers model (repo id, folder or source alias).
        taps: Rows of the grid.
        timesteps: Columns of the grid.
        accuracy: ``(len(taps), len(timesteps))`` test accuracies in [0, 1].
        num_train: Train images.
        num_test: Test images.
        pool: Side of the average pool.
        seed: Seed of the noise.
        feature_dims: Probe input size per tap (``C * pool * pool``).
        cache: Per split, the cache file and whether it was ``"reused"`` or ``"written"``.
        seconds: Wall time of ``"features"`` and ``"probes"``.
    """

    model: str
    taps: list[str]
    timesteps: list[int]
    accuracy: np.ndarray
    num_train: int
    num_test: int
    pool: int
    seed: int
    feature_dims: dict[str, int] = field(default_factory=dict)
    cache: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def best(self) -> tuple[str, int, float]:
        """``(tap, timestep, accuracy)`` of the best cell (the first one on ties)."""
        i, j = np.unravel_index(int(np.argmax(self.accuracy)), self.accuracy.shape)
        return self.taps[i], self.timesteps[j], float(self.accuracy[i, j])

    def table(self) -> str:
        """A markdown table of test accuracy (%), taps as rows and timesteps as columns."""
        head = "| tap | " + " | ".join(f"t={t}" for t in self.timesteps) + " |"
        rule = "|---|" + "---|" * len(self.timesteps)
        rows = [f"| {tap} | " + " | ".join(f"{100 * a:.1f}" for a in self.accuracy[i]) + " |"
                for i, tap in enumerate(self.taps)]
        return "\n".join([head, rule, *rows])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, with ``{tap: {timestep: accuracy}}`` and the best cell."""
        tap, t, acc = self.best()
        return {
            "model": self.model, "taps": self.taps, "timesteps": self.timesteps,
            "accuracy": {tap_: {str(t_): float(self.accuracy[i, j])
                                for j, t_ in enumerate(self.timesteps)}
                         for i, tap_ in enumerate(self.taps)},
            "best": {"tap": tap, "timestep": t, "accuracy": acc},
            "num_train": self.num_train, "num_test": self.num_test, "pool": self.pool,
            "seed": self.seed, "probe": {"C": PROBE_C, "max_iter": PROBE_MAX_ITER,
                                         "solver": "StandardScaler + LogisticRegression (lbfgs)"},
            "feature_dims": self.feature_dims, "cache": self.cache, "seconds": self.seconds,
        }


def sweep_backbone(model: str | os.PathLike, *, taps: Sequence[str], timesteps: Sequence[int],
                   seed: int = 0, device: str | torch.device | None = None, **options: Any):
    """One backbone with every tap and timestep of the grid (fixed noise, null prompt).

    Args:
        model: Diffusers repo id, folder or source alias (``"diffperception:default"``).
        taps: The grid's taps.
        timesteps: The grid's timesteps.
        seed: Seed of the fixed noise.
        device: Where to run (default: CUDA when available, else CPU).
        **options: More ``DiffusionBackbone.from_diffusers`` options (``dtype``, ``size``...).

    Returns:
        A ``DiffusionBackbone`` on ``device``.

    Raises:
        ValueError: An unknown tap, a bad timestep, or duplicates in either list.
    """
    from ..features.backbone import DiffusionBackbone

    for name, values in (("taps", list(taps)), ("timesteps", list(timesteps))):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name} = {values} is invalid: a non-empty list without duplicates.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = DiffusionBackbone.from_diffusers(model, taps=list(taps), timesteps=list(timesteps),
                                                noise="fixed", seed=seed, **options)
    return backbone.to(device)


def _weights_signature(folder: Path) -> list:
    """Names, sizes and modification times of a local folder's weight files."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _cache_key(backbone: Any, dataset: Any, pool: int, seed: int) -> dict[str, Any]:
    source = backbone.source
    return {
        "format": CACHE_FORMAT, "repo_id": str(source.repo_id), "revision": source.revision,
        # a local folder has no revision: its weight files' sizes and times stand in
        "weights": None if source.revision else _weights_signature(Path(source.folder)),
        "taps": [t.name for t in backbone.taps], "timesteps": list(backbone.features.timesteps),
        "dtype": backbone.backbone_config.dtype, "size": backbone.preprocess.size,
        "pool": pool, "seed": seed, "data": dataset_identity(dataset),
    }


def _load_cache(path: Path, key_text: str) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("key") != key_text:
            return None
    return load_file(str(path))


def sweep_features(backbone: Any, dataset: Any, *, split: str, pool: int = 2,
                   batch_size: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Pooled features of every (tap, timestep) for a split, from the cache when it has them.

    Args:
        backbone: The grid's backbone (:func:`sweep_backbone`).
        dataset: The split (``datasets.Dataset`` with ``image`` and ``label``).
        split: The split's name (cache file name, progress label).
        pool: Side of the average pool.
        batch_size: Images per backbone call (each makes ``T`` trunk samples).
        seed: Seed of the noise every timestep shares (module docstring).
        cache_dir: Where the cache files live; None caches nothing.
        progress: Show a progress bar.

    Returns:
        ``({tap: (N, T, C * pool * pool)}, (N,) labels, {"file": ..., "status": ...})``.
    """
    from safetensors.torch import save_file

    key = _cache_key(backbone, dataset, pool, seed)
    key_text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{split}-{digest}.safetensors" if cache_dir is not None else None
    cached = _load_cache(path, key_text) if path is not None else None
    if cached is not None:
        labels = cached.pop("__labels__").numpy()
        return {k: v.numpy() for k, v in cached.items()}, labels, {"file": str(path),
                                                                  "status": "reused"}
    feats, labels = pooled_features(backbone, dataset, pool=pool, batch_size=batch_size,
                                    shared_noise_seed=seed, desc=f"features: {split} split",
                                    progress=progress)
    if path is None:
        return feats, labels, {"file": "", "status": "not cached"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v) for k, v in feats.items()}
    tensors["__labels__"] = torch.from_numpy(labels)
    partial = path.with_suffix(".partial")  # a killed run leaves no half-written cache file
    save_file(tensors, str(partial), metadata={"key": key_text})
    partial.replace(path)
    return feats, labels, {"file": str(path), "status": "written"}


def _fit_grid(train: dict[str, np.ndarray], train_y: np.ndarray, test: dict[str, np.ndarray],
              test_y: np.ndarray, taps: Sequence[str], num_timesteps: int, n_jobs: int
              ) -> np.ndarray:
    """A probe per (tap, timestep index), fitted in parallel with joblib: ``(taps, T)``."""
    from joblib import Parallel, delayed

    cells = [(tap, i) for tap in taps for i in range(num_timesteps)]
    scores = Parallel(n_jobs=n_jobs)(
        delayed(linear_probe)(train[tap][:, i], train_y, test[tap][:, i], test_y)
        for tap, i in cells)
    return np.asarray(scores, dtype=np.float64).reshape(len(taps), num_timesteps)


def run_sweep(model: str | os.PathLike, train: Any, test: Any, *, taps: Sequence[str],
              timesteps: Sequence[int], pool: int = 2, batch_size: int = 64, seed: int = 0,
              cache_dir: str | os.PathLike | None = None, device: str | None = None,
              n_jobs: int = 1, progress: bool = True, **options: Any) -> SweepResult:
    """Probe accuracy for every (tap, timestep) of a grid (module docstring).

    Args:
        model: Diffusers repo id, folder or ``"diffperception:default"``.
        train: Train split (``datasets.Dataset``, ``image`` and ``label``).
        test: Test split.
        taps: The grid's taps (map taps: module outputs).
        timesteps: The grid's timesteps.
        pool: Side of the average pool before the probe.
        batch_size: Images per backbone call.
        seed: Seed of the noise.
        cache_dir: Feature cache folder (None: no cache).
        device: Where the backbone runs (default: CUDA when available).
        n_jobs: Probes fitted in parallel (joblib).
        progress: Show progress bars.
        **options: More ``DiffusionBackbone.from_diffusers`` options.

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: Unknown taps, bad timesteps, a non-map tap, or fewer than two classes.
        FileNotFoundError: No such model.
    """
    backbone = sweep_backbone(model, taps=taps, timesteps=timesteps, seed=seed, device=device,
                              **options)
    kw = dict(pool=pool, batch_size=batch_size, seed=seed, cache_dir=cache_dir, progress=progress)
    start = time.perf_counter()
    train_feats, train_y, train_cache = sweep_features(backbone, train, split="train", **kw)
    test_feats, test_y, test_cache = sweep_features(backbone, test, split="test", **kw)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = _fit_grid(train_feats, train_y, test_feats, test_y, list(taps), len(timesteps),
                         n_jobs)
    return SweepResult(
        model=str(model), taps=list(taps), timesteps=[int(t) for t in timesteps],
        accuracy=accuracy, num_train=len(train_y), num_test=len(test_y), pool=pool, seed=seed,
        feature_dims={tap: int(train_feats[tap].shape[-1]) for tap in taps},
        cache={"train": train_cache, "test": test_cache},
        seconds={"features": round(features_s, 2),
                 "probes": round(time.perf_counter() - start, 2)})


def write_sweep(result: SweepResult, out_dir: str | os.PathLike, *,
                extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes ``sweep.json``, ``sweep.md`` (the table) and ``sweep_heatmap.png`` into ``out_dir``.

    Args:
        result: The sweep.
        out_dir: Folder (created if needed).
        extra: More JSON fields (e.g. the command line, the data source).

    Returns:
        ``{"json": ..., "table": ..., "heatmap": ...}`` paths.
    """
    from .plots import save_accuracy_heatmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tap, t, acc = result.best()
    title = (f"{result.model}: linear-probe test accuracy (%)\n{result.num_train} train / "
             f"{result.num_test} test images, pool {result.pool}; best {tap} at t={t}: "
             f"{100 * acc:.1f}%")
    heatmap = save_accuracy_heatmap(result.accuracy, result.taps, result.timesteps,
                                    out / "sweep_heatmap.png", title=title)
    table = out / "sweep.md"
    table.write_text(result.table() + "\n")
    path = out / "sweep.json"
    path.write_text(json.dumps({**(extra or {}), **result.to_dict()}, indent=2) + "\n")
    return {"json": path, "table": table, "heatmap": heatmap}
