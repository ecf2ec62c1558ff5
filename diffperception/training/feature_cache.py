"""A frozen backbone's features on disk: safetensors shards keyed by image and backbone config.

A cache folder holds the features of one backbone configuration (``fingerprint.json``: the
backbone, features and preprocess sections of the task config, the base model's revision and the
size and time of its weight files). Each ``shard-<digest>.safetensors`` holds, for a few hundred
images, one tensor per tap ``(n, ...)`` and the images' keys in its metadata (``"keys"``, a JSON
list). A shard is written to a temporary name and renamed, so a killed run leaves only complete
shards; filling again computes only the keys no shard holds, so nothing is lost or computed twice.
Several processes fill one cache together: process ``r`` of ``w`` takes every ``w``-th missing key
(``share``).

Example:
    >>> cache = FeatureCache.for_model(model, "~/.cache/diffperception/features")
    >>> cache.fill(cache.missing(keys), load_image, lambda x: model.backbone(x), batch_size=32)
    >>> cache.read(keys[0])                 # {tap: tensor}, one image's features
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["FeatureCache", "backbone_fingerprint", "content_key", "default_cache_root",
           "CachedFeatures", "is_cacheable", "share"]

CACHE_FORMAT = 1
#: Heads whose trainable layers feed back into the trunk, so its features change as they train.
TRUNK_TRAINING_HEADS = frozenset({"diffeed"})
FINGERPRINT_NAME = "fingerprint.json"
SHARD_GLOB = "shard-*.safetensors"


def default_cache_root() -> Path:
    """``$DIFFPERCEPTION_CACHE/features``, else ``$HF_HOME/diffperception/features``."""
    if os.environ.get("DIFFPERCEPTION_CACHE"):
        return Path(os.environ["DIFFPERCEPTION_CACHE"]).expanduser() / "features"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "diffperception" / "features"


def content_key(pixels: torch.Tensor) -> str:
    """The key of an image: a SHA-256 of its shape and float32 bytes (32 hex digits)."""
    data = pixels.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:32]


def _weight_files(folder: Path) -> list[list[Any]]:
    files = sorted(p for ext in ("*.safetensors", "*.bin") for p in folder.rglob(ext))
    return [[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


def backbone_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What a task model's backbone features depend on (the cache key).

    Args:
        model: A task model (``DiffusionPerceptionModel``).

    Returns:
        A JSON-able dict: the config's ``backbone``, ``features`` and ``preprocess`` sections,
        the resolved revision and the weight files (path, size, modification time).
    """
    config = model.config.to_dict()
    source = model.source
    return {"cache_format": CACHE_FORMAT,
            **{k: config[k] for k in ("backbone", "features", "preprocess")},
            "source_revision": source.revision,
            "weight_files": _weight_files(Path(source.folder))}


def is_cacheable(model: nn.Module) -> tuple[bool, str]:
    """Whether the backbone gives the same features for the same image on every call.

    Returns:
        ``(True, "")`` or ``(False, why not)``: a head whose parameters act inside the trunk
        (DifFeed's feedback layers; a head says so with ``trains_through_trunk = True``), random
        noise, or a prompt that is not constant.
    """
    features = model.config.features
    head = model.config.head.type if model.config.head is not None else None
    if getattr(model.head, "trains_through_trunk", False) or head in TRUNK_TRAINING_HEADS:
        return False, (f"the {head!r} head changes the trunk's features while it trains "
                       "(feedback into the trunk)")
    if getattr(model.head, "takes_images", False):
        return False, f"the {head!r} head reads the images too (an image expert)"
    if features.noise.kind == "random":
        return False, ("the noise is random (features.noise.kind = 'random'): each call draws "
                       "new noise; use 'fixed' noise to cache features")
    if not features.prompt.is_constant:
        return False, f"the prompt ({features.prompt.kind!r}) changes from image to image"
    return True, ""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """One backbone configuration's features, one safetensors shard per few hundred images.

    Args:
        folder: The cache folder (created).
        fingerprint: What the features depend on; stored in ``fingerprint.json`` and checked
            against what a folder already holds.

    Raises:
        ValueError: The folder holds features of another fingerprint (naming the keys that
            differ).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        path = self.folder / FINGERPRINT_NAME
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != self.fingerprint:
                keys = sorted(k for k in set(stored) | set(self.fingerprint)
                              if stored.get(k) != self.fingerprint.get(k))
                raise ValueError(f"{self.folder} holds features of another backbone "
                                 f"configuration (differing: {keys}); use another folder.")
        else:
            _atomic_write_text(path, json.dumps(self.fingerprint, indent=2, sort_keys=True))
        self._handles: dict[Path, Any] = {}
        self._index: dict[str, tuple[Path, int]] | None = None

    @classmethod
    def for_model(cls, model: nn.Module, root: str | os.PathLike | None = None
                  ) -> "FeatureCache":
        """The cache of a task model's backbone under ``root`` (``default_cache_root()``)."""
        fingerprint = backbone_fingerprint(model)
        root = Path(root).expanduser() if root is not None else default_cache_root()
        return cls(root / _digest(fingerprint)[:16], fingerprint)

    # ------------------------------------------------------------------------- the index

    def shards(self) -> list[Path]:
        """The complete shards, sorted by name."""
        return sorted(self.folder.glob(SHARD_GLOB))

    def index(self, *, refresh: bool = False) -> dict[str, tuple[Path, int]]:
        """``{key: (shard, row)}`` over all shards (the first shard wins a repeated key)."""
        if self._index is None or refresh:
            from safetensors import safe_open

            index: dict[str, tuple[Path, int]] = {}
            for shard in self.shards():
                with safe_open(str(shard), framework="pt") as handle:
                    keys = json.loads(handle.metadata()["keys"])
                for row, key in enumerate(keys):
                    index.setdefault(key, (shard, row))
            self._index = index
        return self._index

    def key_counts(self) -> dict[str, int]:
        """How many shards hold each key (1 for every key of a sound cache)."""
        from safetensors import safe_open

        counts: dict[str, int] = {}
        for shard in self.shards():
            with safe_open(str(shard), framework="pt") as handle:
                for key in json.loads(handle.metadata()["keys"]):
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys no shard holds, in first-seen order, without repeats."""
        index = self.index(refresh=True)
        return [k for k in dict.fromkeys(keys) if k not in index]

    # ------------------------------------------------------------------------- writing

    def write_shard(self, keys: Sequence[str], tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> Path:
        """Writes one shard atomically (temporary name, then rename).

        Args:
            keys: The images' keys, one per row.
            tensors: ``{tap: (len(keys), ...)}``.
            metadata: More string metadata (e.g. the images' labels).

        Raises:
            ValueError: A tensor whose first dimension is not ``len(keys)``.
        """
        from safetensors.torch import save_file

        bad = {n: tuple(t.shape) for n, t in tensors.items() if t.shape[0] != len(keys)}
        if bad:
            raise ValueError(f"Tensors {bad} do not have one row per key ({len(keys)} keys).")
        path = self.folder / f"shard-{_digest(list(keys))[:20]}.safetensors"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(tmp),
                  metadata={**(metadata or {}), "keys": json.dumps(list(keys))})
        os.replace(tmp, path)
        self._index = None
        return path

    def fill(self, keys: Sequence[str], load: Callable[[str], torch.Tensor],
             compute: Callable[[torch.Tensor], dict[str, torch.Tensor]], *, batch_size: int = 32,
             shard_size: int = 512, progress: bool = True,
             metadata: Callable[[Sequence[str]], dict[str, str]] | None = None) -> int:
        """Computes and stores the features of ``keys`` (see ``share`` for a process's keys).

        Args:
            keys: The keys to compute (usually ``share(cache.missing(all_keys), ...)``).
            load: ``key -> (3, S, S)`` image tensor.
            compute: ``(B, 3, S, S) -> {tap: (B, ...)}`` (the frozen backbone, without grad).
            batch_size: Images per backbone call.
            shard_size: Images per shard (what a kill can cost, at most).
            progress: Show a progress bar.
            metadata: ``keys -> {name: text}`` stored in each shard.

        Returns:
            The number of images computed.

        Raises:
            ValueError: ``batch_size`` or ``shard_size`` below 1.
        """
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be "
                             "at least 1.")
        from tqdm.auto import tqdm

        keys = list(keys)
        bar = tqdm(total=len(keys), desc="caching features", unit="img", disable=not progress)
        for start in range(0, len(keys), shard_size):
            shard_keys = keys[start: start + shard_size]
            parts: dict[str, list[torch.Tensor]] = {}
            for lo in range(0, len(shard_keys), batch_size):
                images = torch.stack([load(k) for k in shard_keys[lo: lo + batch_size]])
                with torch.no_grad():
                    for name, value in compute(images).items():  # (b, ...)
                        parts.setdefault(name, []).append(value.detach().to("cpu"))
                bar.update(images.shape[0])
            self.write_shard(shard_keys, {n: torch.cat(v) for n, v in parts.items()},
                             metadata(shard_keys) if metadata else None)
        bar.close()
        return len(keys)

    # ------------------------------------------------------------------------- reading

    def read(self, key: str) -> dict[str, torch.Tensor]:
        """One image's features ``{tap: tensor}`` (without the batch dimension).

        Raises:
            KeyError: No shard holds ``key``.
        """
        from safetensors import safe_open

        index = self.index()
        if key not in index:
            raise KeyError(f"No features cached for {key!r} in {self.folder}.")
        shard, row = index[key]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        handle = self._handles[shard]
        return {name: handle.get_slice(name)[row: row + 1][0] for name in handle.keys()}

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers open their own files
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def share(keys: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Process ``rank``'s part of ``keys``: every ``world_size``-th key from ``rank``.

    All processes must list the missing keys before any of them writes a shard (a barrier
    between ``missing`` and ``fill``), so that the parts are disjoint and cover every key.

    Raises:
        ValueError: ``rank`` outside ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size}).")
    return list(keys)[rank::world_size]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class CachedFeatures(torch.utils.data.Dataset):
    """A split as cached features: sample ``i`` is ``{"features", "labels", "index"}``.

    Args:
        cache: The filled cache.
        keys: The key of each image of the split.
        labels: The label of each image.

    Raises:
        ValueError: ``keys`` and ``labels`` of different lengths, or keys the cache lacks.
    """

    def __init__(self, cache: FeatureCache, keys: Sequence[str], labels: Sequence[int]) -> None:
        if len(keys) != len(labels):
            raise ValueError(f"{len(keys)} keys but {len(labels)} labels.")
        lacking = cache.missing(keys)
        if lacking:
            raise ValueError(f"The cache {cache.folder} lacks {len(lacking)} of the images "
                             f"(e.g. {lacking[:3]}); fill it first.")
        self.cache, self.keys, self.labels = cache, list(keys), [int(x) for x in labels]

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs (no augmentation)."""

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"features": self.cache.read(self.keys[index]), "labels": self.labels[index],
                "index": int(index)}
