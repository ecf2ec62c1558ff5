"""ADE20K (SceneParsing, ``ADEChallengeData2016``) in its own layout.

``images/{training,validation}/ADE_*.jpg`` and ``annotations/{training,validation}/ADE_*.png``
(one class index per pixel, 0 = "other", 1..150 the classes). As mmseg's ``reduce_zero_label``:
label 0 becomes the ignore index 255 and every other label is shifted down by one, so the 150
classes are 0..149. Class names come from the release's ``objectInfo150.txt`` when it is there,
else from the table below (the first name of each class, mmseg's ``ADE20KDataset``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ADE20K_CLASSES", "ADE20K_SPLITS", "ADE20KSample", "load_ade20k", "reduce_zero_label",
           "ade20k_class_names"]

IGNORE_INDEX = 255
ADE20K_SPLITS = {"training": "training", "train": "training", "validation": "validation",
                 "val": "validation"}
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food",
    "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)


@dataclass
class ADE20KSample:
    """One image and its annotation (read on use)."""

    image: Path
    annotation: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, labels (H, W) int64 in 0..149 or 255)``."""
        from PIL import Image

        with Image.open(self.image) as img:
            image = np.array(img.convert("RGB"))
        with Image.open(self.annotation) as ann:
            raw = np.array(ann)
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{self.annotation} is {raw.shape[1]}x{raw.shape[0]}, its image "
                             f"{image.shape[1]}x{image.shape[0]}: not an ADE20K annotation.")
        return image, reduce_zero_label(raw)


def reduce_zero_label(raw: np.ndarray) -> np.ndarray:
    """ADE20K labels 0..150 -> 0..149 with 0 ("other") -> 255 (mmseg's ``reduce_zero_label``)."""
    raw = raw.astype(np.int64)
    return np.where(raw == 0, IGNORE_INDEX, raw - 1)


def ade20k_class_names(root: str | os.PathLike | None = None) -> list[str]:
    """The 150 class names: from ``root/objectInfo150.txt`` (tab-separated, a ``Name`` column of
    ``;``-separated synonyms) when present, else ``ADE20K_CLASSES``."""
    table = Path(root) / "objectInfo150.txt" if root is not None else None
    if table is not None and table.is_file():
        rows = [line.split("\t") for line in table.read_text().splitlines() if line.strip()]
        column = [c.strip() for c in rows[0]].index("Name")
        names = [row[column].split(";")[0].strip() for row in rows[1:]]
        if len(names) == len(ADE20K_CLASSES):
            return names
    return list(ADE20K_CLASSES)


def load_ade20k(root: str | os.PathLike, split: str = "validation") -> list[ADE20KSample]:
    """The samples of one split, sorted by file name.

    Args:
        root: The ``ADEChallengeData2016`` folder.
        split: ``"validation"`` (``"val"``) or ``"training"`` (``"train"``).

    Raises:
        FileNotFoundError: The layout is not ADE20K's, or an image has no annotation.
        ValueError: An unknown split.
    """
    if split not in ADE20K_SPLITS:
        raise ValueError(f"split = {split!r} is invalid for ADE20K: one of "
                         f"{sorted(ADE20K_SPLITS)} (the test images have no annotations).")
    root = Path(root).expanduser()
    images = root / "images" / ADE20K_SPLITS[split]
    annotations = root / "annotations" / ADE20K_SPLITS[split]
    if not images.is_dir() or not annotations.is_dir():
        raise FileNotFoundError(f"{images} or {annotations} not found: --data must be the "
                                "ADEChallengeData2016 folder (images/ and annotations/).")
    samples = []
    for image in sorted(images.glob("*.jpg")):
        annotation = annotations / f"{image.stem}.png"
        if not annotation.is_file():
            raise FileNotFoundError(f"{annotation} not found: every image of {images} needs its "
                                    "annotation.")
        samples.append(ADE20KSample(image, annotation))
    if not samples:
        raise FileNotFoundError(f"{images} holds no .jpg images.")
    return samples
