"""Image-classification data through Hugging Face ``datasets``, and offline stand-ins.

``load_image_dataset(source, split)`` returns a ``datasets.Dataset`` with an ``image`` column
(PIL images, or float arrays ``(3, H, W)`` in [0, 1]) and a ``label`` column
(``datasets.ClassLabel``, so ``dataset.features["label"].names`` are the class names):

- ``"digits"``: the shipped default model's scikit-learn digits split (32 px, offline);
- ``"digits-sketch"``, ``"digits-canvas"``: offline stand-ins for zero-shot sketch-based image
  retrieval and open-vocabulary segmentation (``data.standins``);
- ``"digit-pairs"``: two of those digits side by side (32 px, offline, seeded: 20000 train and
  2000 test images), labelled with their relational caption (``"a three to the left of a
  five"``, 90 classes) and with ``left`` / ``right`` digit columns; ``digit_pair_swaps`` gives
  its Winoground-style swap examples (``diffperception.default_model.pairs``);
- a folder in ``imagefolder`` layout (``<root>/<split>/<class>/<image>`` or ``<root>/<class>/...``);
- a dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` that has image and
  label columns;
- a few-shot data set in CoOp's layout (a folder with ``split_zhou_<Name>.json``;
  ``data.fewshot_splits``).

``few_shot`` and ``label_fraction`` take seeded, class-balanced subsets (k images per class; 1% /
10% of the labels). ``TransformedImages`` and ``collate_images`` (``data.transforms``) turn a split
into seeded, augmented torch batches.

Example:
    >>> train = load_image_dataset("digits", "train")
    >>> train.features["label"].names[:3]
    ['zero', 'one', 'two']
    >>> five = few_shot(train, 5, seed=0)          # 50 images, 5 per class
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .transforms import (AUGMENTATIONS, TransformedImages, collate_images, image_to_tensor,
                         resize_short_side, transform_image)

__all__ = ["load_image_dataset", "few_shot", "label_fraction", "class_names", "DIGITS",
           "DIGIT_PAIRS", "digit_pair_swaps",
           "AUGMENTATIONS", "TransformedImages", "collate_images", "image_to_tensor",
           "resize_short_side", "transform_image"]

DIGITS = "digits"
DIGIT_PAIRS = "digit-pairs"


def _digits(split: str):
    import datasets

    from ..default_model import CLASS_NAMES, load_digits_split

    data = load_digits_split()
    if split not in ("train", "test"):
        raise ValueError(f"The digits data set has splits 'train' and 'test', not {split!r}.")
    images, labels = data[f"{split}_images"], data[f"{split}_labels"]  # (N, 3, 32, 32) in [0, 1]
    features = datasets.Features({
        "image": datasets.Array3D(shape=tuple(images.shape[1:]), dtype="float32"),
        "label": datasets.ClassLabel(names=list(CLASS_NAMES)),
    })
    return datasets.Dataset.from_dict(
        {"image": images.astype(np.float32), "label": labels.astype(np.int64)}, features=features)


def _digit_pairs(split: str):
    import datasets

    from ..default_model.pairs import PAIR_CAPTIONS, load_digit_pairs

    data = load_digit_pairs(split)  # ValueError for an unknown split
    images = data["images"]  # (N, 3, 32, 32) in [0, 1]
    features = datasets.Features({
        "image": datasets.Array3D(shape=tuple(images.shape[1:]), dtype="float32"),
        "label": datasets.ClassLabel(names=list(PAIR_CAPTIONS)),
        "left": datasets.Value("int64"), "right": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict({"image": images, "label": data["labels"],
                                       "left": data["left"], "right": data["right"]},
                                      features=features)


def digit_pair_swaps(num_examples: int = 200, *, split: str = "test", seed: int = 0
                     ) -> list[dict[str, Any]]:
    """Winoground-style swap examples of the digit pairs (see
    ``diffperception.default_model.pairs.digit_pair_swaps``): ``image_0`` / ``image_1`` are
    ``(3, 32, 32)`` float32 arrays, caption ``i`` describes image ``i``."""
    from ..default_model.pairs import digit_pair_swaps as _swaps

    return _swaps(num_examples, split=split, seed=seed)


def load_image_dataset(source: str | os.PathLike, split: str = "train") -> Any:
    """An image-classification split as a ``datasets.Dataset`` (see the module docstring).

    Args:
        source: ``"digits"``, ``"digit-pairs"``, ``"digits-sketch"``, ``"digits-canvas"``, an
            image folder, or a folder written by ``save_to_disk``.
        split: The split (``"train"``, ``"test"``, ``"validation"``...).

    Raises:
        FileNotFoundError: No such folder.
        ValueError: An unknown split, or a dataset without image and label columns.
    """
    import datasets

    if str(source) == DIGITS:
        return _digits(split)
    if str(source) == DIGIT_PAIRS:
        return _digit_pairs(split)
    from .standins import STANDINS

    if str(source) in STANDINS:
        return STANDINS[str(source)](split)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass 'digits', an image folder "
                                "(<root>/<class>/<image>) or a folder written by save_to_disk.")
    from .fewshot_splits import find_coop_split_file, load_coop_split

    if find_coop_split_file(root) is not None:
        return load_coop_split(root, split)
    if (root / "dataset_dict.json").is_file() or (root / "dataset_info.json").is_file():
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{root} has splits {list(loaded)}, not {split!r}.")
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(root))
        if split not in loaded:
            raise ValueError(f"{root} has splits {list(loaded)}, not {split!r} (an image folder "
                             "without split folders has only 'train').")
        loaded = loaded[split]
    missing = [c for c in ("image", "label") if c not in loaded.column_names]
    if missing or not isinstance(loaded.features["label"], datasets.ClassLabel):
        raise ValueError(f"{root} ({split}) needs an 'image' column and a ClassLabel 'label' "
                         f"column; it has {loaded.features}.")
    return loaded


def class_names(dataset: Any) -> list[str]:
    """The class names of a dataset's ``label`` column."""
    return list(dataset.features["label"].names)


def few_shot(dataset: Any, shots: int, *, seed: int = 0) -> Any:
    """``shots`` images of every class, drawn with ``seed`` (class-balanced).

    Raises:
        ValueError: ``shots`` below 1, or a class with fewer images.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots = {shots!r} is invalid: an integer >= 1.")
    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(f"Class {label} has {len(members)} images, fewer than shots={shots}.")
        keep.extend(rng.choice(members, shots, replace=False).tolist())
    return dataset.select(sorted(keep))


def label_fraction(dataset: Any, fraction: float, *, seed: int = 0) -> Any:
    """A class-balanced ``fraction`` of the images (at least one per class), drawn with ``seed``.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"fraction = {fraction!r} is invalid: a number in (0, 1].")
    labels = np.asarray(dataset["label"])
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(members))))
        keep.extend(rng.choice(members, count, replace=False).tolist())
    return dataset.select(sorted(keep))
