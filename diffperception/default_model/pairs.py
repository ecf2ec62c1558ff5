"""Digit pairs: two scikit-learn digits side by side, with relational captions.

The data set of the pairs model (``diffperception:pairs``) and of the Winoground-style swap
test. An image is a 32x32 canvas (3 channels, [0, 1], black background) holding two digits
upsampled from 8x8 to 16x16: one in the left half, one in the right half, each at a seeded
random vertical offset (4..12 pixels) and horizontal jitter (0..2 pixels). Its caption is
``"a <left> to the left of a <right>"`` (e.g. ``"a three to the left of a five"``); the two
digits always differ, so there are 90 captions and a caption names its image's layout
exactly. The train images are built from the default model's digits train split and the test
images from its test split only, so no digit drawing is shared between them.

A *swap example* holds two images made of the same two digit drawings, swapped
(``[a | b]`` and ``[b | a]``, same offsets per slot) and the two captions with the digit names
swapped: only the relation tells them apart (Thrush et al. 2022's Winoground, in miniature).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import CLASS_NAMES
from .data import raw_digits_split, upsample_digits

PAIR_IMAGE_SIZE = 32
PAIR_DIGIT_SIZE = 16
#: Positions of the pairs model's text encoder: start + 8 words + end, and two spare.
PAIR_MAX_LENGTH = 12
RELATION = "to the left of"
#: ``(left, right)`` digit classes of caption / label ``i`` (all ordered pairs of two different
#: digits, left-major).
PAIR_CLASSES: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in range(len(CLASS_NAMES)) for b in range(len(CLASS_NAMES)) if a != b)
#: Default sizes of the seeded splits (images).
NUM_TRAIN_PAIRS = 20000
NUM_TEST_PAIRS = 2000


def pair_caption(left: int, right: int) -> str:
    """The caption of a pair image, e.g. ``pair_caption(3, 5) == "a three to the left of a five"``.

    Raises:
        ValueError: A digit outside 0..9.
    """
    for digit in (left, right):
        if not 0 <= int(digit) < len(CLASS_NAMES):
            raise ValueError(f"Digit {digit!r} is not in 0..9.")
    return f"a {CLASS_NAMES[int(left)]} {RELATION} a {CLASS_NAMES[int(right)]}"


#: Caption of label ``i`` (``PAIR_CLASSES[i]``).
PAIR_CAPTIONS: tuple[str, ...] = tuple(pair_caption(a, b) for a, b in PAIR_CLASSES)


def pair_words() -> tuple[str, ...]:
    """The whole-word tokens of the pairs model's tokenizer: ``a``, the relation's words and the
    ten digit names."""
    return tuple(sorted({"a", *RELATION.split(), *CLASS_NAMES}))


def pair_label(left: int, right: int) -> int:
    """The label (caption index) of a ``(left, right)`` pair of two different digits.

    Raises:
        ValueError: Equal digits (no caption) or a digit outside 0..9.
    """
    try:
        return PAIR_CLASSES.index((int(left), int(right)))
    except ValueError:
        raise ValueError(f"({left}, {right}) is not a pair of two different digits in 0..9."
                         ) from None


def compose_pairs(left: np.ndarray, right: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Puts digits side by side on black 32x32 canvases.

    Args:
        left: ``(N, 8, 8)`` raw digits (values 0..16) for the left halves.
        right: ``(N, 8, 8)`` raw digits for the right halves.
        offsets: ``(N, 4)`` integers: left digit's row and column, right digit's row and
            column offset (rows 0..16, columns 0..2 of each half).

    Returns:
        ``(N, 3, 32, 32)`` float32 in [0, 1]; where the two digits overlap, the brighter wins.
    """
    n = len(left)
    small_l = upsample_digits(left, PAIR_DIGIT_SIZE)[:, 0]  # (N, 16, 16)
    small_r = upsample_digits(right, PAIR_DIGIT_SIZE)[:, 0]
    canvas = np.zeros((n, PAIR_IMAGE_SIZE, PAIR_IMAGE_SIZE), np.float32)
    half, d = PAIR_IMAGE_SIZE // 2, PAIR_DIGIT_SIZE
    for i, (ly, lx, ry, rx) in enumerate(np.asarray(offsets, dtype=int)):
        canvas[i, ly:ly + d, lx:lx + d] = small_l[i]
        rx = min(half - 2 + rx, PAIR_IMAGE_SIZE - d)
        view = canvas[i, ry:ry + d, rx:rx + d]
        np.maximum(view, small_r[i], out=view)
    return np.repeat(canvas[:, None], 3, axis=1)


def _offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.integers(4, 13, size=(n, 2))
    cols = rng.integers(0, 3, size=(n, 2))
    return np.stack([rows[:, 0], cols[:, 0], rows[:, 1], cols[:, 1]], axis=1)  # (N, 4)


def _raw_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The raw 8x8 digits and labels of the default model's train or test split."""
    digits, idx_train, idx_test = raw_digits_split(0)
    idx = {"train": idx_train, "test": idx_test}[split]
    return digits.images[idx], digits.target[idx].astype(np.int64)


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"The digit-pairs data set has splits 'train' and 'test', not {split!r}.")


def load_digit_pairs(split: str = "train", num_pairs: int | None = None, *,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded split of digit-pair images with their labels.

    Each image draws a left digit drawing and a right digit drawing of a different class
    from the split (uniformly over the 90 ordered class pairs), and its offsets.

    Args:
        split: ``"train"`` (from the digits train split) or ``"test"`` (from the test split).
        num_pairs: Images (default 20000 train, 2000 test).
        seed: Seed of the draws (0: the split the pairs model was trained on).

    Returns:
        Dict with ``images`` ``(N, 3, 32, 32)`` float32 in [0, 1], ``labels`` ``(N,)`` (caption
        index into ``PAIR_CAPTIONS``), ``left`` and ``right`` ``(N,)`` digit classes.

    Raises:
        ValueError: An unknown split or ``num_pairs < 1``.
    """
    _check_split(split)
    n = (NUM_TRAIN_PAIRS if split == "train" else NUM_TEST_PAIRS) if num_pairs is None else num_pairs
    if int(n) < 1:
        raise ValueError(f"num_pairs = {num_pairs!r} is invalid: an integer >= 1.")
    raw, labels = _raw_split(split)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    pair = rng.integers(0, len(PAIR_CLASSES), size=n)
    classes = np.asarray(PAIR_CLASSES)[pair]  # (N, 2)
    members = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    left = np.array([rng.choice(members[c]) for c in classes[:, 0]])
    right = np.array([rng.choice(members[c]) for c in classes[:, 1]])
    images = compose_pairs(raw[left], raw[right], _offsets(rng, n))
    return {"images": images, "labels": pair.astype(np.int64),
            "left": classes[:, 0].astype(np.int64), "right": classes[:, 1].astype(np.int64)}


def digit_pair_swaps(num_examples: int = 200, *, split: str = "test",
                     seed: int = 0) -> list[dict[str, Any]]:
    """Winoground-style swap examples from one split of the digits.

    Example ``k`` takes a drawing of digit ``a`` and one of digit ``b != a``: ``image_0`` is
    ``[a | b]``, ``image_1`` is ``[b | a]`` (the same drawings and the same offsets per slot),
    ``caption_0 = pair_caption(a, b)`` and ``caption_1 = pair_caption(b, a)``; caption ``i``
    describes image ``i``.

    Args:
        num_examples: How many examples.
        split: ``"test"`` (default; drawings the pairs model never saw) or ``"train"``.
        seed: Seed of the draws.

    Returns:
        A list of dicts with ``id``, ``image_0``, ``image_1`` (``(3, 32, 32)`` float32 in
        [0, 1]), ``caption_0``, ``caption_1``, ``left`` and ``right`` (``a`` and ``b``).

    Raises:
        ValueError: An unknown split or ``num_examples < 1``.
    """
    _check_split(split)
    if int(num_examples) < 1:
        raise ValueError(f"num_examples = {num_examples!r} is invalid: an integer >= 1.")
    raw, labels = _raw_split(split)
    rng = np.random.default_rng([seed, 2 if split == "train" else 3])
    pair = rng.integers(0, len(PAIR_CLASSES), size=num_examples)
    classes = np.asarray(PAIR_CLASSES)[pair]
    members = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    first = np.array([rng.choice(members[c]) for c in classes[:, 0]])
    second = np.array([rng.choice(members[c]) for c in classes[:, 1]])
    offsets = _offsets(rng, num_examples)
    image_0 = compose_pairs(raw[first], raw[second], offsets)
    image_1 = compose_pairs(raw[second], raw[first], offsets)
    return [{"id": k, "image_0": image_0[k], "image_1": image_1[k],
             "caption_0": pair_caption(a, b), "caption_1": pair_caption(b, a),
             "left": int(a), "right": int(b)} for k, (a, b) in enumerate(classes)]
