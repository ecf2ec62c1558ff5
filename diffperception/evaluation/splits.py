"""Evaluation splits: loading (through ``diffperception.data``), subsetting, and batches of images.

``diffperception.data.load_image_dataset`` owns the formats; here only what an evaluation adds:
a seeded subset of ``limit`` images, an identity for cache keys, and batches that count every
image (the last one may be short; nothing is dropped).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

__all__ = ["load_split", "split_labels", "split_class_names", "image_batches", "dataset_identity"]


def load_split(source: str | os.PathLike, split: str, *, limit: int | None = None,
               seed: int = 0) -> Any:
    """One split of an image-classification data set, optionally a seeded subset.

    Args:
        source: ``"digits"``, an image folder or a folder written by ``save_to_disk``
            (see ``diffperception.data.load_image_dataset``).
        split: ``"train"``, ``"test"``, ...
        limit: Keep ``limit`` images drawn with ``seed``, class-balanced (classes take turns,
            so every class is present when ``limit`` is at least the number of classes), in
            their original order; None keeps every image.
        seed: Seed of the subset.

    Returns:
        A ``datasets.Dataset`` with ``image`` and ``label`` columns.

    Raises:
        FileNotFoundError: No such folder.
        ValueError: An unknown split, a data set without image and label columns, or
            ``limit < 1``.
    """
    from ..data import load_image_dataset

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit = {limit!r} is invalid: a positive number of images, or None.")
    dataset = load_image_dataset(source, split)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(_balanced_subset(split_labels(dataset), limit, seed).tolist())
    return dataset


def _balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``limit`` sorted indices: a seeded shuffle in which the classes take turns."""
    order = np.random.default_rng(seed).permutation(len(labels))
    turn = np.empty(len(labels), dtype=np.int64)  # rank of each image within its class
    for label in np.unique(labels):
        members = order[labels[order] == label]
        turn[members] = np.arange(len(members))
    position = np.empty(len(labels), dtype=np.int64)
    position[order] = np.arange(len(labels))
    chosen = np.lexsort((position, turn))[:limit]  # by turn, then by shuffled position
    return np.sort(chosen)


def split_labels(dataset: Any) -> np.ndarray:
    """The ``label`` column as an ``(N,)`` int64 array."""
    return np.asarray(dataset["label"], dtype=np.int64)


def split_class_names(dataset: Any) -> list[str]:
    """The class names of the ``label`` column (index order)."""
    from ..data import class_names

    return class_names(dataset)


def dataset_identity(dataset: Any) -> str:
    """A string that changes when the split's content or selection changes (its fingerprint)."""
    return f"{getattr(dataset, '_fingerprint', None)}:{len(dataset)}"


def image_batches(dataset: Any, batch_size: int) -> Iterator[tuple[Any, np.ndarray]]:
    """Every image of ``dataset`` in order, ``batch_size`` at a time (the last batch may be short).

    Args:
        dataset: A ``datasets.Dataset`` with ``image`` and ``label`` columns.
        batch_size: Images per batch.

    Yields:
        ``(images, labels)``: images as a ``(b, 3, H, W)`` float32 array in [0, 1] (array
        columns) or a list of RGB PIL images (image columns), labels ``(b,)`` int64.

    Raises:
        ValueError: ``batch_size < 1``.
    """
    import datasets

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} is invalid: a positive integer.")
    is_pil = isinstance(dataset.features["image"], datasets.Image)
    table = dataset if is_pil else dataset.with_format("numpy")
    for start in range(0, len(dataset), batch_size):
        rows = table[start: start + batch_size]
        labels = np.asarray(rows["label"], dtype=np.int64)
        if is_pil:
            yield [image.convert("RGB") for image in rows["image"]], labels
        else:
            yield np.ascontiguousarray(rows["image"], dtype=np.float32), labels
