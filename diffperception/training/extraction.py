"""Bulk feature extraction into safetensors shards, resumable and spread over processes.

The machinery of the training loop's feature cache (``FeatureCache``), keyed by what the user
names: an image file's path relative to the folder it was found in, or a dataset row's
``<split>/<index>``. Under ``accelerate launch`` (or ``torchrun``) every process computes its share of the keys
no shard holds yet (on a CPU-only machine ``accelerate launch --multi_gpu --num_processes N``
starts N CPU processes; ``--cpu`` alone runs one, as accelerate's simple launcher does); the main process then writes ``index.json`` (``{key: [shard, row]}``) after
checking that every key is stored exactly once.

Example:
    >>> items = file_items([Path("photos/")])
    >>> extract_shards(model, items, "feats/", batch_size=16)   # again after a kill: the rest
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data import load_image_dataset, transform_image
from .arguments import cpu_only
from .feature_cache import FeatureCache, backbone_fingerprint, share

__all__ = ["file_items", "dataset_items", "extract_shards", "INDEX_NAME", "IMAGE_SUFFIXES"]

INDEX_NAME = "index.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: An item: ``(key, load)`` where ``load()`` gives a PIL image or an image array in [0, 1].
Item = tuple[str, Callable[[], Any]]


def file_items(paths: Sequence[Path], open_image: Callable[[Path], Any] | None = None
               ) -> list[Item]:
    """Items of image files; a folder stands for the images under it (sorted, recursive).

    Args:
        paths: Files and folders.
        open_image: ``path -> PIL image`` (default ``PIL.Image.open``).

    Returns:
        ``[(key, load)]``: a file's key is its path as given; a file found in a folder is keyed
        ``<folder name>/<path relative to the folder>``.

    Raises:
        FileNotFoundError: A path that does not exist, or a folder without images.
    """
    if open_image is None:
        from PIL import Image

        open_image = Image.open
    items: list[Item] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            items += [(f"{path.name}/{p.relative_to(path).as_posix()}",
                       lambda p=p: open_image(p)) for p in found]
        elif path.is_file():
            items.append((path.as_posix(), lambda p=path: open_image(p)))
        else:
            raise FileNotFoundError(f"Image file or folder not found: {path}")
    return items


def dataset_items(source: str | os.PathLike, split: str) -> tuple[list[Item], list[int]]:
    """Items of a dataset split (``load_image_dataset``), keyed ``<split>/<index>``.

    Returns:
        ``(items, labels)``.
    """
    dataset = load_image_dataset(source, split)
    items = [(f"{split}/{i:08d}", lambda i=i: dataset[i]["image"]) for i in range(len(dataset))]
    return items, [int(x) for x in dataset["label"]]


def _square_size(model: nn.Module) -> int:
    size = model.config.preprocess.size or list(model.backbone.native_size)
    if size[0] != size[1]:
        raise ValueError(f"Sharded extraction makes square centre crops; the size {size} is not "
                         "square (use --size SxS).")
    return int(size[0])


def _shard_metadata(keys: Sequence[str], label_of: dict[str, int] | None, state: Any
                    ) -> dict[str, str]:
    metadata = {"process": f"{state.process_index}/{state.num_processes}"}
    if label_of is not None:
        metadata["labels"] = json.dumps([label_of[k] for k in keys])
    return metadata


def _write_index(cache: FeatureCache, keys: Sequence[str]) -> dict[str, Any]:
    counts = cache.key_counts()
    repeated = sorted(k for k, n in counts.items() if n > 1)
    lacking = [k for k in keys if k not in counts]
    if repeated or lacking:
        raise RuntimeError(f"{cache.folder}: keys stored twice {repeated[:5]}, keys missing "
                           f"{lacking[:5]}; delete the shards holding them and run again.")
    index = {k: [shard.name, row] for k, (shard, row) in cache.index(refresh=True).items()}
    tmp = cache.folder / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(index, indent=0, sort_keys=True))
    os.replace(tmp, cache.folder / INDEX_NAME)
    return index


def extract_shards(model: nn.Module, items: Sequence[Item], out_dir: str | os.PathLike, *,
                   batch_size: int = 32, shard_size: int = 256,
                   labels: Sequence[int] | None = None, progress: bool = True) -> dict[str, Any]:
    """Extracts the features of ``items`` into ``out_dir``, skipping what is already there.

    Run it in every process of ``accelerate launch``: each computes its share on its device.

    Args:
        model: A task model whose backbone gives the features (a feature extractor).
        items: ``[(key, load)]`` (``file_items``, ``dataset_items``).
        out_dir: The shard folder (holds ``fingerprint.json``, ``shard-*.safetensors``,
            ``index.json``).
        batch_size: Images per backbone call.
        shard_size: Images per shard (what a kill can cost, at most).
        labels: A label per item, stored in the shards' metadata (with ``process``:
            ``"<rank>/<processes>"`` of the process that wrote the shard).
        progress: Show a progress bar on the main process.

    Returns:
        ``{key: [shard name, row]}`` for every key in the folder.

    Raises:
        ValueError: ``out_dir`` holds features of another configuration, or a non-square size.
        RuntimeError: A key stored twice or missing at the end.
    """
    from accelerate import PartialState

    state = PartialState(cpu=cpu_only())
    size = _square_size(model)
    model.to(state.device).eval()
    cache = FeatureCache(out_dir, backbone_fingerprint(model))
    loads = dict(items)
    label_of = dict(zip(loads, labels)) if labels is not None else None
    todo = cache.missing(loads)
    state.wait_for_everyone()  # all processes list the same missing keys before any writes
    backbone = model.backbone
    cache.fill(share(todo, state.process_index, state.num_processes),
               lambda key: transform_image(loads[key](), size, "none"),
               lambda x: backbone(x.to(state.device)), batch_size=batch_size,
               shard_size=shard_size, progress=progress and state.is_local_main_process,
               metadata=lambda keys: _shard_metadata(keys, label_of, state))
    state.wait_for_everyone()
    index = _write_index(cache, list(loads)) if state.is_main_process else {}
    state.wait_for_everyone()
    return index
