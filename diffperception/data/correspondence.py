"""Keypoint-pair data sets for semantic correspondence, in their own file layouts, and offline
stand-ins whose true matches are known exactly (METHODS.md §4.7, §5).

Real benchmarks (images are read when a pair is used):

- ``load_spair71k(root, split)``: SPair-71k as distributed
  (``PairAnnotation/{trn,val,test}/*.json``, ``JPEGImages/<category>/<name>.jpg``); keypoints
  ``(x, y)`` in pixels, boxes ``[x1, y1, x2, y2]``.
- ``load_pf_willow(root)``: PF-WILLOW as used by the correspondence literature (``test_pairs.csv``:
  image A, image B, then 10 x and 10 y of A, 10 x and 10 y of B; images under the data root);
  the box is the target keypoints' extent, the usual PF-WILLOW threshold.

Offline stand-ins (nothing to download; the images ship with scikit-image / scikit-learn):

- ``warped_photo_pairs``: a photo and its random affine or thin-plate-spline warp; keypoints on
  a grid of the target, mapped into the source by the same function that made the warp.
- ``stereo_pairs``: scikit-image's Middlebury motorcycle pair; the left-image disparity gives the
  match ``x_right = x_left - d`` on the same row.
- ``warped_digit_pairs``: scikit-learn digits at 32 px (the shipped model's size) under random
  affine warps, keypoints on the digit strokes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["CorrespondencePair", "load_pairs", "load_spair71k", "load_pf_willow",
           "warped_photo_pairs",
           "stereo_pairs", "warped_digit_pairs", "sample_photos", "SPAIR_SPLITS"]

#: The split names of SPair-71k's ``PairAnnotation/`` folders.
SPAIR_SPLITS = {"train": "trn", "trn": "trn", "val": "val", "test": "test"}


@dataclass
class CorrespondencePair:
    """One annotated image pair.

    Attributes:
        source, target: ``(H, W, 3)`` uint8 RGB arrays, or a path read on first use.
        source_points, target_points: ``(K, 2)`` matching ``(x, y)`` in pixels of each image.
        target_bbox: ``[x1, y1, x2, y2]`` of the target object in pixels (the bbox threshold),
            or None.
        category: The object category (per-category results).
        name: An identifier of the pair.
    """

    source: Any
    target: Any
    source_points: np.ndarray
    target_points: np.ndarray
    target_bbox: np.ndarray | None = None
    category: str = ""
    name: str = ""
    extra: dict = field(default_factory=dict)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """``(source, target)`` as ``(H, W, 3)`` uint8 arrays."""
        return _read(self.source), _read(self.target)


def _read(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as img:
            return np.array(img.convert("RGB"))  # writable, as torch.from_numpy wants
    return np.array(image)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what}.")
    return path


# ------------------------------------------------------------------------------- SPair-71k

def load_spair71k(root: str | os.PathLike, split: str = "test") -> list[CorrespondencePair]:
    """The pairs of one SPair-71k split (sorted by annotation file name).

    Args:
        root: The ``SPair-71k`` folder (holding ``PairAnnotation/`` and ``JPEGImages/``).
        split: ``"test"``, ``"val"`` or ``"train"`` (``"trn"``).

    Raises:
        FileNotFoundError: The layout is not SPair-71k's.
        ValueError: An unknown split, or an annotation without the expected keys.
    """
    root = Path(root).expanduser()
    if split not in SPAIR_SPLITS:
        raise ValueError(f"split = {split!r} is invalid for SPair-71k: one of "
                         f"{sorted(set(SPAIR_SPLITS))}.")
    folder = _require(root / "PairAnnotation" / SPAIR_SPLITS[split],
                      "--data must be the SPair-71k folder (PairAnnotation/, JPEGImages/)")
    pairs = []
    for path in sorted(folder.glob("*.json")):
        ann = json.loads(path.read_text())
        try:
            category = ann["category"]
            images = root / "JPEGImages" / category
            pairs.append(CorrespondencePair(
                source=images / ann["src_imname"], target=images / ann["trg_imname"],
                source_points=np.asarray(ann["src_kps"], dtype=np.float32).reshape(-1, 2),
                target_points=np.asarray(ann["trg_kps"], dtype=np.float32).reshape(-1, 2),
                target_bbox=np.asarray(ann["trg_bndbox"], dtype=np.float32),
                category=category, name=path.stem,
                extra={k: ann[k] for k in ("vp_var", "sc_var", "truncn", "occln") if k in ann}))
        except KeyError as err:
            raise ValueError(f"{path}: no {err} key; not an SPair-71k pair annotation.") from None
    if not pairs:
        raise FileNotFoundError(f"{folder} holds no pair annotations (*.json).")
    return pairs


# ------------------------------------------------------------------------------- PF-WILLOW

def _pf_image(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file() and len(Path(name).parts) > 1:
        path = root.joinpath(*Path(name).parts[1:])  # names start with "PF-dataset/"
    return _require(path, f"an image test_pairs.csv names ({name})")


def load_pf_willow(root: str | os.PathLike, split: str = "test") -> list[CorrespondencePair]:
    """The 900 PF-WILLOW test pairs (``test_pairs.csv``), 10 keypoints each.

    The category is the image's folder (``car(G)``, ``duck(S)``, ...); the box is the target
    keypoints' extent (the PF-WILLOW threshold ``alpha * max(w, h)`` of that box).

    Args:
        root: The PF-WILLOW folder (``test_pairs.csv`` and the class folders of images).
        split: ``"test"`` (the only split).

    Raises:
        FileNotFoundError: No ``test_pairs.csv`` or a missing image.
        ValueError: Another split, or a row without 2 names and 40 coordinates.
    """
    if split != "test":
        raise ValueError(f"split = {split!r} is invalid: PF-WILLOW has only the 'test' split.")
    root = Path(root).expanduser()
    table = _require(root / "test_pairs.csv", "--data must be the PF-WILLOW folder "
                     "(test_pairs.csv and the image folders)")
    pairs = []
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 42:
            raise ValueError(f"{table}, line {i}: {len(row)} columns; expected image A, image B "
                             "and 40 coordinates (XA, YA, XB, YB, 10 each).")
        coords = np.asarray(row[2:], dtype=np.float32).reshape(4, 10)
        src, tgt = np.stack(coords[:2], axis=1), np.stack(coords[2:], axis=1)  # (10, 2)
        box = np.concatenate([tgt.min(0), tgt.max(0)])
        pairs.append(CorrespondencePair(
            source=_pf_image(root, row[0]), target=_pf_image(root, row[1]), source_points=src,
            target_points=tgt, target_bbox=box, category=Path(row[0]).parent.name,
            name=f"{i - 1:04d}"))
    return pairs


# ---------------------------------------------------------------------------- stand-ins

def sample_photos() -> dict[str, np.ndarray]:
    """The natural colour photos shipped with scikit-image and scikit-learn (uint8 RGB).

    Raises:
        ImportError: scikit-image is not installed (``pip install scikit-image``).
    """
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("The offline photo pairs need scikit-image: pip install "
                          "'diffperception[data]' (or scikit-image).") from err
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    sk = load_sample_images()
    for name, image in zip(("china", "flower"), sk.images):
        photos[name] = image
    return photos


def _resize(image: np.ndarray, longer: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = longer / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def _require_skimage(what: str) -> None:
    """Raises a clear ImportError when scikit-image (the ``data`` extra) is missing."""
    try:
        import skimage  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{what} are warped with scikit-image: pip install "
                          "'diffperception[data]' (or scikit-image).") from err


def _random_affine(rng: np.random.Generator, hw: tuple[int, int], strength: float):
    from skimage.transform import AffineTransform

    h, w = hw
    centre = np.array([w / 2, h / 2])
    core = AffineTransform(rotation=rng.uniform(-0.35, 0.35) * strength,
                           scale=tuple(rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength, 2)),
                           shear=rng.uniform(-0.15, 0.15) * strength)
    shift = rng.uniform(-0.15, 0.15, 2) * strength * np.array([w, h])
    # about the image centre: target = T(centre) . core . T(-centre) (source)
    return (AffineTransform(translation=-centre) + core
            + AffineTransform(translation=centre + shift))


def _random_tps(rng: np.random.Generator, hw: tuple[int, int], strength: float):
    """A thin-plate spline mapping target pixels to source pixels (the warp's inverse map)."""
    from skimage.transform import ThinPlateSplineTransform

    h, w = hw
    xs, ys = np.meshgrid(np.linspace(0, w - 1, 4), np.linspace(0, h - 1, 4))
    target = np.stack([xs.ravel(), ys.ravel()], axis=1)
    source = target + rng.normal(0, 0.05 * strength, target.shape) * np.array([w, h])
    if hasattr(ThinPlateSplineTransform, "from_estimate"):  # scikit-image >= 0.26
        tps = ThinPlateSplineTransform.from_estimate(target, source)
        if not tps:
            raise RuntimeError(f"thin-plate-spline estimation failed: {tps}")
        return tps
    tps = ThinPlateSplineTransform()
    if not tps.estimate(target, source):
        raise RuntimeError("thin-plate-spline estimation failed")
    return tps


class _Chain:
    """Target -> source map of two warps (a bound method, as ``skimage.transform.warp`` wants)."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def map(self, points: np.ndarray) -> np.ndarray:
        return self.second(self.first(points))


def _warp(image: np.ndarray, target_to_source: Callable) -> np.ndarray:
    from skimage.transform import warp

    out = warp(image, target_to_source, output_shape=image.shape[:2], order=1, mode="constant",
               cval=0.0, preserve_range=True)
    return out.astype(np.uint8)


def _grid(hw: tuple[int, int], n: int, margin: float) -> np.ndarray:
    h, w = hw
    xs = np.linspace(margin * w, (1 - margin) * w - 1, n)
    ys = np.linspace(margin * h, (1 - margin) * h - 1, n)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).round().astype(np.float32)


def _inside(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return ((points[:, 0] >= 0) & (points[:, 0] <= hw[1] - 1) & (points[:, 1] >= 0)
            & (points[:, 1] <= hw[0] - 1))


def _warped_pair(image: np.ndarray, rng: np.random.Generator, warp_kind: str, strength: float,
                 grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(target image, source points, target points, target bbox) of one random warp."""
    hw = image.shape[:2]
    if warp_kind == "affine":
        forward = _random_affine(rng, hw, strength)  # source -> target
        inverse = forward.inverse
    elif warp_kind == "tps":  # a random affine warp, then a thin-plate spline on top
        inverse = _Chain(_random_tps(rng, hw, strength), _random_affine(rng, hw, strength).inverse
                         ).map
    else:
        raise ValueError(f"warp = {warp_kind!r} is invalid: 'affine' or 'tps'.")
    target = _warp(image, inverse)
    tgt_points = _grid(hw, grid, 0.1)
    src_points = inverse(tgt_points).astype(np.float32)
    keep = _inside(src_points, hw)
    mask = _warp(np.full(hw, 255, np.uint8), inverse) > 127  # where the warped photo lies
    ys, xs = np.nonzero(mask)
    keep &= mask[tgt_points[:, 1].astype(int), tgt_points[:, 0].astype(int)]
    bbox = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    return target, src_points[keep], tgt_points[keep], bbox


def warped_photo_pairs(num_pairs: int = 12, *, warp: str = "affine", size: int = 256,
                       strength: float = 1.0, grid: int = 6, seed: int = 0
                       ) -> list[CorrespondencePair]:
    """Pairs (photo, random warp of it) with exact matches, cycling over ``sample_photos``.

    Args:
        num_pairs: Pairs made (photos are reused with new warps).
        warp: ``"affine"`` (rotation, anisotropic scale, shear, shift) or ``"tps"`` (an affine
            warp and a thin-plate spline through a 4x4 grid of jittered control points).
        size: Longer image side in pixels (aspect kept).
        strength: Scales every random range (1: rotation up to 20 degrees, scale 0.8-1.2, shift
            up to 15% of the side; thin-plate jitter 5% of the side).
        grid: Keypoints on a ``grid x grid`` lattice of the target (those whose source point
            falls outside the photo are dropped).
        seed: Seed of the warps.

    Returns:
        Pairs whose category is the photo's name and whose box is the warped photo's extent.
    """
    _require_skimage("The warped photo pairs")
    photos = sample_photos()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(num_pairs):
        name = names[i % len(names)]
        image = _resize(photos[name], size)
        target, src, tgt, bbox = _warped_pair(image, rng, warp, strength, grid)
        pairs.append(CorrespondencePair(source=image, target=target, source_points=src,
                                        target_points=tgt, target_bbox=bbox, category=name,
                                        name=f"{name}-{warp}-{i:03d}"))
    return pairs


def stereo_pairs(*, size: int | None = None, grid: int = 10, crops: int = 0,
                 crop_size: int = 160, seed: int = 0) -> list[CorrespondencePair]:
    """scikit-image's motorcycle stereo pair (Middlebury 2014), true matches from the disparity.

    A left-image pixel ``(x, y)`` with finite disparity ``d`` matches ``(x - d, y)`` in the
    right image. Keypoints lie on a ``grid x grid`` lattice (pixels with invalid disparity or a
    match outside the right image are dropped).

    Args:
        size: Longer side the pair is resized to (points and disparities scale with it); None
            keeps 741 x 500.
        grid: Lattice side.
        crops: Also this many random ``crop_size`` square crops (the same window in both
            views): the disparity is then large against the image (PCK@0.1 of the whole pair is
            reached by predicting no motion at all; on a 160 px crop it is not).
        crop_size: Side of the crops in pixels of the 741 x 500 pair.
        seed: Seed of the crops.

    Returns:
        Pairs (category ``"motorcycle"``, box = the whole right image).
    """
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("The stereo pair needs scikit-image: pip install "
                          "'diffperception[data]' (or scikit-image).") from err
    left, right, disparity = data.stereo_motorcycle()
    windows = [(0, 0, left.shape[1], left.shape[0])]
    rng = np.random.default_rng(seed)
    side = min(crop_size, *left.shape[:2])
    for _ in range(crops):
        x0 = int(rng.integers(0, left.shape[1] - side + 1))
        y0 = int(rng.integers(0, left.shape[0] - side + 1))
        windows.append((x0, y0, side, side))
    pairs = []
    for k, (x0, y0, w, h) in enumerate(windows):
        l_img, r_img = left[y0:y0 + h, x0:x0 + w], right[y0:y0 + h, x0:x0 + w]
        disp = disparity[y0:y0 + h, x0:x0 + w]
        src = _grid((h, w), grid, 0.05)
        d = disp[src[:, 1].astype(int), src[:, 0].astype(int)]
        tgt = np.stack([src[:, 0] - d, src[:, 1]], axis=1)
        keep = np.isfinite(d) & _inside(np.nan_to_num(tgt, nan=-1, posinf=-1), (h, w))
        src, tgt = src[keep], tgt[keep].astype(np.float32)
        scale = 1.0
        if size is not None:
            scale = size / max(h, w)
            l_img, r_img = _resize(l_img, size), _resize(r_img, size)
            src, tgt = src * scale, tgt * scale
        hh, ww = r_img.shape[:2]
        pairs.append(CorrespondencePair(
            source=l_img, target=r_img, source_points=src.astype(np.float32),
            target_points=tgt.astype(np.float32),
            target_bbox=np.array([0, 0, ww - 1, hh - 1], np.float32), category="motorcycle",
            name=f"motorcycle-{k}", extra={"scale": scale}))
    return pairs


def warped_digit_pairs(num_pairs: int = 100, *, strength: float = 1.0, max_points: int = 8,
                       seed: int = 0, split: str = "test") -> list[CorrespondencePair]:
    """Held-out scikit-learn digits (the shipped model's test split, 32 px) and their random
    affine warps; keypoints on the strokes (intensity > 0.5) of the source digit.

    Args:
        num_pairs: Pairs (the first ``num_pairs`` digits of the split).
        split: ``"test"`` (never seen by the shipped model) or ``"train"`` (to fit an
            aggregator).
        strength: Scales the random affine ranges (see ``warped_photo_pairs``).
        max_points: Keypoints per pair at most (a seeded choice among stroke pixels).
        seed: Seed of the warps and the choice.

    Returns:
        Pairs whose category is the digit and whose box is the warped digit's extent.
    """
    _require_skimage("The warped digit pairs")
    from ..default_model.data import load_digits_split

    if split not in ("train", "test"):
        raise ValueError(f"split = {split!r} is invalid: 'train' or 'test'.")
    data = load_digits_split(0)
    images, labels = data[f"{split}_images"][:num_pairs], data[f"{split}_labels"][:num_pairs]
    rng = np.random.default_rng(seed)
    pairs = []
    for i, (image, label) in enumerate(zip(images, labels)):
        source = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)  # (32, 32, 3)
        hw = source.shape[:2]
        forward = _random_affine(rng, hw, strength)
        target = _warp(source, forward.inverse)
        ys, xs = np.nonzero(source[..., 0] > 127)
        pick = rng.choice(len(xs), size=min(max_points, len(xs)), replace=False)
        src = np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)
        tgt = forward(src).astype(np.float32)
        keep = _inside(tgt, hw)
        fy, fx = np.nonzero(target[..., 0] > 127)
        bbox = (np.array([fx.min(), fy.min(), fx.max(), fy.max()], np.float32) if len(fx)
                else np.array([0, 0, hw[1] - 1, hw[0] - 1], np.float32))
        pairs.append(CorrespondencePair(source=source, target=target, source_points=src[keep],
                                        target_points=tgt[keep], target_bbox=bbox,
                                        category=str(int(label)), name=f"digit-{i:04d}"))
    return pairs


def load_pairs(source: str | os.PathLike, split: str = "train") -> list[CorrespondencePair]:
    """The pairs of a split, by source: an SPair-71k folder (``PairAnnotation/``), a PF-WILLOW
    folder (``test_pairs.csv``), or ``"warped-digits"`` / ``"warped-photos"`` (offline; the
    ``train`` split uses the training digits / another warp seed than ``test``).

    Raises:
        FileNotFoundError: A folder of neither layout.
        ValueError: An unknown name or split.
    """
    train = split in ("train", "trn")
    if str(source) == "warped-digits":
        return warped_digit_pairs(300 if train else 100, split="train" if train else "test",
                                  seed=1 if train else 0)
    if str(source) == "warped-photos":
        return warped_photo_pairs(60 if train else 12, seed=1 if train else 0)
    root = Path(source).expanduser()
    if (root / "PairAnnotation").is_dir():
        return load_spair71k(root, split)
    if (root / "test_pairs.csv").is_file():
        return load_pf_willow(root, split)
    raise FileNotFoundError(f"{source} is neither an SPair-71k folder (PairAnnotation/) nor a "
                            "PF-WILLOW folder (test_pairs.csv), nor 'warped-digits' / "
                            "'warped-photos'.")
