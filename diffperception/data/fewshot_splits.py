"""Few-shot classification data in CoOp's layout (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022), the splits CLIP-Adapter and Vermouth report on (METHODS.md
§3.9).

A data set folder holds its images and a ``split_zhou_<Name>.json`` file
``{"train": [[path, label, classname], ...], "val": [...], "test": [...]}``, paths relative to
the image folder below (CoOp's ``DATASETS.md``):

============== ===================== ====================== ==================================
data set       folder                image folder           split file
============== ===================== ====================== ==================================
OxfordPets     ``oxford_pets``       ``images``             ``split_zhou_OxfordPets.json``
Caltech101     ``caltech-101``       ``101_ObjectCategories`` ``split_zhou_Caltech101.json``
DTD            ``dtd``               ``images``             ``split_zhou_DescribableTextures.json``
EuroSAT        ``eurosat``           ``2750``               ``split_zhou_EuroSAT.json``
Food101        ``food-101``          ``images``             ``split_zhou_Food101.json``
Flowers102     ``oxford_flowers``    ``jpg``                ``split_zhou_OxfordFlowers.json``
StanfordCars   ``stanford_cars``     (the folder itself)    ``split_zhou_StanfordCars.json``
SUN397         ``sun397``            ``SUN397``             ``split_zhou_SUN397.json``
UCF101         ``ucf101``            ``UCF-101-midframes``  ``split_zhou_UCF101.json``
============== ===================== ====================== ==================================

(ImageNet and FGVCAircraft have no ``split_zhou`` file in CoOp: ImageNet is an image folder,
which ``load_image_dataset`` reads; FGVCAircraft's own ``images_variant_*.txt`` lists are not read
here.) The k-shot training subset is drawn with ``diffperception.data.few_shot`` (k images per
class, seeded), as CoOp samples its ``shot_{k}-seed_{s}`` subsets; the test split is complete.

Example:
    >>> train = load_coop_split("/data/oxford_pets", "train")
    >>> sixteen = few_shot(train, 16, seed=1)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["COOP_IMAGE_FOLDERS", "find_coop_split_file", "load_coop_split"]

#: ``split file -> image folder`` (relative to the data set folder).
COOP_IMAGE_FOLDERS: dict[str, str] = {
    "split_zhou_OxfordPets.json": "images",
    "split_zhou_Caltech101.json": "101_ObjectCategories",
    "split_zhou_DescribableTextures.json": "images",
    "split_zhou_EuroSAT.json": "2750",
    "split_zhou_Food101.json": "images",
    "split_zhou_OxfordFlowers.json": "jpg",
    "split_zhou_StanfordCars.json": "",
    "split_zhou_SUN397.json": "SUN397",
    "split_zhou_UCF101.json": "UCF-101-midframes",
}


def find_coop_split_file(root: str | os.PathLike) -> Path | None:
    """The ``split_zhou_*.json`` of a data set folder, or None when it has none.

    Raises:
        ValueError: The folder holds several.
    """
    found = sorted(Path(root).expanduser().glob("split_zhou_*.json"))
    if len(found) > 1:
        raise ValueError(f"{root} holds several CoOp split files {[p.name for p in found]}; "
                         "keep one per data set folder.")
    return found[0] if found else None


def _class_names(entries: list, path: Path) -> list[str]:
    names: dict[int, str] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
            raise ValueError(f"{path}: entry {entry!r} is not [path, label, classname].")
        _, label, name = entry
        if names.setdefault(label, name) != name:
            raise ValueError(f"{path}: label {label} is both {names[label]!r} and {name!r}.")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: labels {sorted(names)[:10]}... are not 0..{len(names) - 1}.")
    return [names[i] for i in range(len(names))]


def load_coop_split(root: str | os.PathLike, split: str = "train", *,
                    image_folder: str | None = None) -> Any:
    """One split of a CoOp-layout data set as a ``datasets.Dataset`` (``image``, ``label``).

    The class names are those of the split file (CoOp's, e.g. ``"abyssinian"``), indexed by its
    labels; every split uses the names of all three splits together.

    Args:
        root: The data set folder holding ``split_zhou_<Name>.json``.
        split: ``"train"``, ``"val"`` or ``"test"`` (``"validation"`` is read as ``"val"``).
        image_folder: Folder the paths are relative to (default: from the table above, else
            the data set folder).

    Returns:
        A ``datasets.Dataset`` with ``image`` (``datasets.Image``, read lazily) and ``label``
        (``ClassLabel``) columns.

    Raises:
        FileNotFoundError: No split file, or a listed image that does not exist.
        ValueError: An unknown split, or a malformed split file.
    """
    import datasets

    root = Path(root).expanduser()
    path = find_coop_split_file(root)
    if path is None:
        raise FileNotFoundError(f"{root} holds no split_zhou_*.json (CoOp's split file).")
    split = "val" if split == "validation" else split
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("train", "val", "test")):
        raise ValueError(f"{path} is not a CoOp split file: it needs 'train', 'val' and 'test' "
                         "lists of [path, label, classname].")
    if split not in ("train", "val", "test"):
        raise ValueError(f"{path.name} has splits ['train', 'val', 'test'], not {split!r}.")
    names = _class_names(data["train"] + data["val"] + data["test"], path)
    folder = root / (COOP_IMAGE_FOLDERS.get(path.name, "") if image_folder is None
                     else image_folder)
    files = [str(folder / entry[0]) for entry in data[split]]
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise FileNotFoundError(f"{len(absent)} images of {path.name} ({split}) are missing, e.g. "
                                f"{absent[0]} (image folder {folder}).")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": files, "label": [e[1] for e in data[split]]},
                                      features=features)
