"""Offline stand-ins for the zero-shot retrieval and open-vocabulary segmentation benchmarks.

Built from scikit-learn's 1,797 8x8 digits (METHODS.md §5) with the shipped default model's
split (``default_model.load_digits_split``: two thirds train, one third test, stratified,
``random_state=0``), so the test images are ones the shipped diffusion model never saw.
Everything is deterministic for a given ``seed``. Both are ``datasets.Dataset`` objects,
loadable by name through ``diffperception.data.load_image_dataset``.

``"digits-sketch"`` (zero-shot sketch-based image retrieval, Sketchy-like):

- photo: the digit as the shipped model saw it in training (bicubic 8 -> 32 px, white on black,
  3 channels in [0, 1]);
- sketch: a line drawing of the same kind of digit, black on white: the digit upsampled to
  128 px, binarised at 0.5, reduced to its 1-px skeleton (``skimage.morphology.skeletonize``) or
  the edges of that binary shape (``skimage.feature.canny``, sigma 1), thickened (disk of
  radius 3 for skeletons, 2 for edges) and area-averaged down to 32 px;
- every digit gives one item, a photo or a sketch (half of each class each, seeded), so a
  sketch query never has its own photo in the gallery;
- splits: ``train`` = classes 0-6 of the train part (seen classes); ``test`` = classes 7-9 of the
  test part (unseen: the zero-shot split); ``test_seen`` = classes 0-6 of the test part. Each
  split's ``label`` names only its own classes (``test``: seven, eight, nine as 0, 1, 2), as
  Sketchy's train and zero-shot class lists do. Columns: ``image`` (3, 32, 32) float32,
  ``label`` (ClassLabel), ``domain`` (ClassLabel ``photo`` / ``sketch``).

``"digits-canvas"`` (open-vocabulary segmentation):

- 64 x 64 canvases (run the model at 64 px: each digit is then 20-32 px, the scale the 32 px
  shipped model was trained at) with 2-4 digits, each bicubically resized from 8x8 to a random
  20-32 px and placed at a random position in its own cell of a 2 x 2 grid (no overlap), white
  on black;
- per-pixel label (``mask``, (64, 64) int64, the column the segmentation training reads):
  ``1 + digit`` where the digit's intensity is
  above 0.5, else 0 = background; class names ``["background", "zero", ..., "nine"]``;
- ``train``: 400 canvases of classes 0-6 from the train part (label names: background + the
  seven seen digits); ``test``: 200 canvases of all ten classes from the test part (names:
  all eleven; seen = background and 0-6, unseen = 7-9). Class indices agree across splits.
  The names and subsets are in :func:`segmentation_info` (stored with the dataset).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DIGITS_SKETCH", "DIGITS_CANVAS", "SEEN_DIGITS", "UNSEEN_DIGITS", "SKETCH_STYLES",
           "digits_sketch", "digits_canvas", "render_sketches", "segmentation_info",
           "SegmentationInfo", "STANDINS"]

DIGITS_SKETCH = "digits-sketch"
DIGITS_CANVAS = "digits-canvas"
SEEN_DIGITS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
UNSEEN_DIGITS: tuple[int, ...] = (7, 8, 9)
SKETCH_STYLES = ("skeleton", "edges")
BACKGROUND = "background"
_UPSAMPLE = 4  # sketches are drawn at 4 x 32 = 128 px
_CANVAS = 64
_CANVAS_COUNTS = {"train": 400, "test": 200}


def _require_skimage():
    try:
        import skimage  # noqa: F401
    except ImportError as err:
        raise ImportError("The digits stand-ins draw sketches with scikit-image: "
                          "pip install 'diffperception[data]' (or scikit-image).") from err


@functools.lru_cache(maxsize=1)
def _digits_parts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train" | "test": (raw 8x8 images (N, 8, 8) in 0..16, labels (N,))}``: the split of
    ``default_model.load_digits_split`` (same call, same seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from ..default_model.data import TEST_FRACTION

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                           stratify=labels, random_state=0)
    return {"train": (digits.images[idx_train], labels[idx_train]),
            "test": (digits.images[idx_test], labels[idx_test])}


def render_sketches(images_8x8: np.ndarray, style: str = "skeleton",
                    size: int = 32) -> np.ndarray:
    """Line drawings of digits, black strokes on white.

    Args:
        images_8x8: ``(N, 8, 8)`` digits with values 0..16 (scikit-learn's).
        style: ``"skeleton"`` (the 1-px medial axis) or ``"edges"`` (Canny outlines).
        size: Output side in pixels (drawn at 4 x ``size``, then area-averaged).

    Returns:
        ``(N, 3, size, size)`` float32 in [0, 1] (1 = paper, 0 = ink).

    Raises:
        ValueError: An unknown style.
        ImportError: scikit-image is missing.
    """
    if style not in SKETCH_STYLES:
        raise ValueError(f"style = {style!r} is invalid: one of {SKETCH_STYLES}.")
    _require_skimage()
    import torch
    import torch.nn.functional as F
    from skimage.feature import canny
    from skimage.morphology import dilation, disk, skeletonize

    from ..default_model.data import upsample_digits

    high = upsample_digits(images_8x8, size * _UPSAMPLE)[:, 0]  # (N, 4S, 4S) in [0, 1]
    strokes = np.empty_like(high)
    for i, digit in enumerate(high):
        if style == "skeleton":
            lines, radius = skeletonize(digit > 0.5), 3
        else:
            lines, radius = canny((digit > 0.5).astype(np.float32), sigma=1.0), 2
        strokes[i] = dilation(lines, disk(radius))
    ink = F.avg_pool2d(torch.from_numpy(strokes)[:, None], _UPSAMPLE)  # (N, 1, S, S)
    return (1.0 - ink).repeat(1, 3, 1, 1).numpy().astype(np.float32)


def _photos(images_8x8: np.ndarray) -> np.ndarray:
    from ..default_model.data import upsample_digits

    return upsample_digits(images_8x8)  # (N, 3, 32, 32), white on black


def _domains(labels: np.ndarray, seed: int) -> np.ndarray:
    """0 (photo) for a seeded half of each class, 1 (sketch) for the rest."""
    rng = np.random.default_rng(seed)
    domain = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        domain[members[len(members) // 2:]] = 1
    return domain


def digits_sketch(split: str = "train", *, style: str = "skeleton", seed: int = 0) -> Any:
    """The digits zero-shot SBIR stand-in (module docstring).

    Args:
        split: ``"train"`` (seen classes 0-6), ``"test"`` (unseen 7-9) or ``"test_seen"``.
        style: Sketch style, ``"skeleton"`` or ``"edges"``.
        seed: Seed of the photo / sketch assignment.

    Returns:
        A ``datasets.Dataset`` with ``image``, ``label`` and ``domain`` columns.

    Raises:
        ValueError: An unknown split or style.
    """
    import datasets

    from ..default_model import CLASS_NAMES

    sources = {"train": ("train", SEEN_DIGITS), "test": ("test", UNSEEN_DIGITS),
               "test_seen": ("test", SEEN_DIGITS)}
    if split not in sources:
        raise ValueError(f"{DIGITS_SKETCH} has splits {list(sources)}, not {split!r}.")
    part, classes = sources[split]
    raw, digits = _digits_parts()[part]
    keep = np.isin(digits, classes)
    raw, digits = raw[keep], digits[keep]
    domain = _domains(digits, seed)
    images = _photos(raw)  # (N, 3, 32, 32)
    images[domain == 1] = render_sketches(raw[domain == 1], style)
    features = datasets.Features({
        "image": datasets.Array3D(shape=tuple(images.shape[1:]), dtype="float32"),
        "label": datasets.ClassLabel(names=[CLASS_NAMES[c] for c in classes]),
        "domain": datasets.ClassLabel(names=["photo", "sketch"]),
    })
    label_of = {c: i for i, c in enumerate(classes)}
    return datasets.Dataset.from_dict(
        {"image": images.astype(np.float32),
         "label": np.array([label_of[int(d)] for d in digits], dtype=np.int64),
         "domain": domain}, features=features,
        info=datasets.DatasetInfo(description=f"{DIGITS_SKETCH} {split}, {style} sketches, "
                                              f"seed {seed} (diffperception.data.standins)",
                                  features=features))


@dataclass(frozen=True)
class SegmentationInfo:
    """Class names and subsets of a segmentation split.

    Attributes:
        labels: Class names, index order (``labels[0]`` is ``"background"`` for the canvases).
        seen: Indices of the classes trained on.
        unseen: Indices of the classes only in the test split.
        ignore_index: Label of pixels left out.
    """

    labels: tuple[str, ...]
    seen: tuple[int, ...]
    unseen: tuple[int, ...]
    ignore_index: int = 255

    def to_json(self) -> str:
        return json.dumps({"segmentation": {"labels": list(self.labels), "seen": list(self.seen),
                                            "unseen": list(self.unseen),
                                            "ignore_index": self.ignore_index}})


def segmentation_info(dataset: Any) -> SegmentationInfo:
    """The :class:`SegmentationInfo` stored with a segmentation dataset (``digits-canvas``).

    Raises:
        ValueError: The dataset carries none.
    """
    try:
        data = json.loads(dataset.info.description or "")["segmentation"]
    except (ValueError, KeyError, TypeError):
        raise ValueError("This dataset carries no segmentation class list (its info.description "
                         "is not the JSON digits_canvas writes).") from None
    return SegmentationInfo(tuple(data["labels"]), tuple(data["seen"]), tuple(data["unseen"]),
                            int(data["ignore_index"]))


def _place_digits(rng: np.random.Generator, raw: np.ndarray, digits: np.ndarray,
                  pool: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One canvas: ``(image (64, 64) in [0, 1], label (64, 64) int64)``."""
    import torch
    import torch.nn.functional as F

    image = np.zeros((_CANVAS, _CANVAS), dtype=np.float32)
    label = np.zeros((_CANVAS, _CANVAS), dtype=np.int64)
    cell = _CANVAS // 2
    cells = rng.permutation(4)[:rng.integers(2, 5)]  # 2..4 of the 2 x 2 cells
    for c in cells:
        index = pool.pop()
        side = int(rng.integers(20, 33))  # 20..32 px
        digit = torch.from_numpy(raw[index].astype(np.float32) / 16.0)[None, None]
        digit = F.interpolate(digit, size=(side, side), mode="bicubic", align_corners=False)
        digit = digit.clamp(0, 1)[0, 0].numpy()
        top = (c // 2) * cell + int(rng.integers(0, cell - side + 1))
        left = (c % 2) * cell + int(rng.integers(0, cell - side + 1))
        window = (slice(top, top + side), slice(left, left + side))
        image[window] = np.maximum(image[window], digit)
        label[window][digit > 0.5] = 1 + int(digits[index])
    return image, label


def digits_canvas(split: str = "train", *, seed: int = 0, count: int | None = None) -> Any:
    """The digits open-vocabulary segmentation stand-in (module docstring).

    Args:
        split: ``"train"`` (digits 0-6) or ``"test"`` (all ten digits).
        seed: Seed of the layout and of the digits drawn.
        count: Number of canvases (default 400 train, 200 test).

    Returns:
        A ``datasets.Dataset`` with ``image`` (3, 64, 64) float32 and ``mask`` (64, 64) int64
        columns; :func:`segmentation_info` gives its class names and subsets.

    Raises:
        ValueError: An unknown split or a bad count.
    """
    import datasets

    from ..default_model import CLASS_NAMES

    if split not in _CANVAS_COUNTS:
        raise ValueError(f"{DIGITS_CANVAS} has splits {list(_CANVAS_COUNTS)}, not {split!r}.")
    count = _CANVAS_COUNTS[split] if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count = {count!r} is invalid: a positive number of canvases.")
    raw, digits = _digits_parts()[split]
    classes = SEEN_DIGITS if split == "train" else SEEN_DIGITS + UNSEEN_DIGITS
    members = np.flatnonzero(np.isin(digits, classes))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    pool: list[int] = []
    images, labels = [], []
    for _ in range(count):
        if len(pool) < 4:  # each digit is used once before any is used again
            pool = rng.permutation(members).tolist() + pool
        image, label = _place_digits(rng, raw, digits, pool)
        images.append(np.repeat(image[None], 3, axis=0))
        labels.append(label)
    names = (BACKGROUND,) + tuple(CLASS_NAMES[c] for c in classes)
    info = SegmentationInfo(names, tuple(range(1 + len(SEEN_DIGITS))),
                            tuple(1 + c for c in classes if c in UNSEEN_DIGITS))
    features = datasets.Features({
        "image": datasets.Array3D(shape=(3, _CANVAS, _CANVAS), dtype="float32"),
        "mask": datasets.Array2D(shape=(_CANVAS, _CANVAS), dtype="int64"),
    })
    return datasets.Dataset.from_dict({"image": np.stack(images), "mask": np.stack(labels)},
                                      features=features,
                                      info=datasets.DatasetInfo(description=info.to_json(),
                                                                features=features))


#: Names ``load_image_dataset`` resolves to a stand-in: ``name -> loader(split)``.
STANDINS = {DIGITS_SKETCH: digits_sketch, DIGITS_CANVAS: digits_canvas}
