"""Zero-shot sketch-based image retrieval benchmarks in their own folder layouts.

Each loader returns one ``datasets.Dataset`` with ``image`` (``datasets.Image`` read lazily from
the files), ``label`` (``ClassLabel`` of the split's classes) and ``domain`` (``ClassLabel``
``photo`` / ``sketch``) columns, the format of the ``digits-sketch`` stand-in. ``subset="test"``
gives the unseen (zero-shot) classes: sketches are the queries, photos the gallery;
``subset="train"`` gives the seen classes.

Two layouts are read (METHODS.md §3.9, §3.12):

1. **File lists** (SAKE, Liu et al. 2019, and the ZS-SBIR code built on it, Vermouth's
   included): the data set folder holds a split folder with ``<relative path> <class id>`` lists
   and ``<class name> <class id>`` class files; the class split is the one those files define
   (the literature's standard splits are distributed this way):

   ========== ============ ================================================================
   benchmark  split folder file lists (``*_train.txt`` / ``*_zero.txt``), class files
   ========== ============ ================================================================
   sketchy    zeroshot1    ``sketch_tx_000000000000_ready_filelist``, ``all_photo_filelist``;
              (split1:     ``cname_cid.txt`` (100 seen), ``cname_cid_zero.txt`` (25 unseen,
              25 unseen)   Shen et al. 2018's random split as used by SAKE)
   sketchy    zeroshot2    the same names (104 seen / 21 unseen, Yelamarthi et al. 2018)
              (split2)
   tuberlin   zeroshot     ``png_ready_filelist``, ``ImageResized_ready_filelist`` (220 / 30)
   quickdraw  zeroshot     ``sketch_filelist``, ``photo_filelist`` (80 / 30)
   ========== ============ ================================================================

   Some releases name Sketchy split 2 ``zeroshot0``; both are accepted.

2. **Class folders** (the data sets as downloaded), where the unseen classes come from the
   lists below: Sketchy (``256x256/sketch/tx_000000000000/<class>/``; photos from
   ``256x256/photo/tx_000000000000/<class>/`` and, when present, the extended gallery
   ``EXTEND_image_sketchy/<class>/`` of Liu et al. 2017) for split 2, and QuickDraw-Extended
   (Dey et al. 2019: ``QuickDraw_sketches_final/<class>/``, ``QuickDraw_images_final/<class>/``)
   with its 25 unseen classes. Sketchy split 1, TU-Berlin's 30 and the 30-class QuickDraw split
   were random draws published only as the class files of layout 1, which is then required.

Example:
    >>> test = load_sbir_dataset("/data/Sketchy", "sketchy", "split2")
    >>> sketches = test.filter(lambda d: d == 1, input_columns="domain")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SBIR_BENCHMARKS", "SKETCHY_SPLIT2_UNSEEN", "QUICKDRAW_EXTENDED_UNSEEN",
           "SBIRLayout", "load_sbir_dataset", "sbir_splits"]

#: Sketchy split 2: the 21 unseen classes of Yelamarthi et al., "A Zero-Shot Framework for
#: Sketch Based Image Retrieval", ECCV 2018 (classes not in ImageNet-1K), used by every later
#: ZS-SBIR paper for the mAP@200 / P@200 protocol.
SKETCHY_SPLIT2_UNSEEN: tuple[str, ...] = (
    "bat", "cabin", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear",
    "raccoon", "rhinoceros", "saw", "scissors", "seagull", "skyscraper", "songbird", "sword",
    "tree", "wheelchair", "windmill", "window",
)

#: QuickDraw-Extended: the 25 unseen classes of Dey et al., "Doodle to Search", CVPR 2019
#: (their repository's ``src/data/zeroshot_classes_quickdraw.txt``).
QUICKDRAW_EXTENDED_UNSEEN: tuple[str, ...] = (
    "bat", "cow", "dolphin", "door", "giraffe", "helicopter", "mouse", "pear", "raccoon",
    "rhinoceros", "saw", "scissors", "skyscraper", "sword", "tree", "windmill", "feather", "bed",
    "campfire", "palm_tree", "fire_hydrant", "bread", "beach", "megaphone", "cactus",
)


@dataclass(frozen=True)
class SBIRLayout:
    """Where one benchmark split's files are (layout 1 of the module docstring).

    Attributes:
        folders: Candidate split folders under the data set root, first found wins.
        sketch_list: Stem of the sketch file lists (``<stem>_train.txt`` / ``<stem>_zero.txt``).
        photo_list: Stem of the photo file lists.
        num_seen: Seen (training) classes of the published split, for the check.
        num_unseen: Unseen classes.
        unseen: The unseen classes when they are known as a list (layout 2), else None.
        class_folders: ``(sketch folders, photo folders)`` of layout 2, or None.
    """

    folders: tuple[str, ...]
    sketch_list: str
    photo_list: str
    num_seen: int
    num_unseen: int
    unseen: tuple[str, ...] | None = None
    class_folders: tuple[tuple[str, ...], tuple[str, ...]] | None = None


_SKETCHY_FOLDERS = (("256x256/sketch/tx_000000000000",),
                    ("256x256/photo/tx_000000000000", "EXTEND_image_sketchy"))

#: ``{benchmark: {split: SBIRLayout}}``; ``"test"`` is an alias of each benchmark's default.
SBIR_BENCHMARKS: dict[str, dict[str, SBIRLayout]] = {
    "sketchy": {
        "split1": SBIRLayout(("zeroshot1",), "sketch_tx_000000000000_ready_filelist",
                             "all_photo_filelist", 100, 25),
        "split2": SBIRLayout(("zeroshot2", "zeroshot0"), "sketch_tx_000000000000_ready_filelist",
                             "all_photo_filelist", 104, 21, SKETCHY_SPLIT2_UNSEEN,
                             _SKETCHY_FOLDERS),
    },
    "tuberlin": {
        "test": SBIRLayout(("zeroshot",), "png_ready_filelist", "ImageResized_ready_filelist",
                           220, 30),
    },
    "quickdraw": {
        "test": SBIRLayout(("zeroshot",), "sketch_filelist", "photo_filelist", 80, 30),
        "extended25": SBIRLayout((), "", "", 85, 25, QUICKDRAW_EXTENDED_UNSEEN,
                                 (("QuickDraw_sketches_final",), ("QuickDraw_images_final",))),
    },
}
_DEFAULT_SPLIT = {"sketchy": "split2", "tuberlin": "test", "quickdraw": "test"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def sbir_splits(benchmark: str) -> list[str]:
    """The split names of a benchmark (``"test"`` names its default)."""
    if benchmark not in SBIR_BENCHMARKS:
        raise ValueError(f"benchmark = {benchmark!r} is invalid: one of {list(SBIR_BENCHMARKS)}.")
    return ["test", *SBIR_BENCHMARKS[benchmark]]


def _read_pairs(path: Path) -> list[tuple[str, int]]:
    """Lines ``<text, may hold spaces> <integer>``."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        text, _, value = line.strip().rpartition(" ")
        try:
            pairs.append((text.strip(), int(value)))
        except ValueError:
            raise ValueError(f"{path}:{number}: {line!r} is not '<name or path> <integer>'.") \
                from None
    return pairs


def _from_lists(root: Path, folder: Path, layout: SBIRLayout, subset: str) -> dict[str, Any]:
    suffix = "zero" if subset == "test" else "train"
    class_file = folder / ("cname_cid_zero.txt" if subset == "test" else "cname_cid.txt")
    lists = [folder / f"{layout.sketch_list}_{suffix}.txt",
             folder / f"{layout.photo_list}_{suffix}.txt"]
    for path in (class_file, *lists):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the {folder.name} split needs its class "
                                    "file and its sketch and photo file lists.")
    classes = _read_pairs(class_file)
    names = [name for name, _ in sorted(classes, key=lambda pair: pair[1])]
    index = {cid: names.index(name) for name, cid in classes}
    rows: dict[str, list] = {"image": [], "label": [], "domain": []}
    for domain, path in ((1, lists[0]), (0, lists[1])):
        for relative, cid in _read_pairs(path):
            if cid not in index:
                raise ValueError(f"{path}: class id {cid} ({relative}) is not in {class_file}.")
            rows["image"].append(str(root / relative))
            rows["label"].append(index[cid])
            rows["domain"].append(domain)
    return {"names": names, **rows}


def _class_files(root: Path, folders: tuple[str, ...], classes: list[str]
                 ) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in classes}
    for folder in folders:
        for name in classes:
            directory = root / folder / name
            if directory.is_dir():
                found[name] += sorted(str(p) for p in directory.iterdir()
                                      if p.suffix.lower() in _IMAGE_SUFFIXES)
    return found


def _from_class_folders(root: Path, layout: SBIRLayout, subset: str) -> dict[str, Any]:
    sketch_folders, photo_folders = layout.class_folders
    first = root / sketch_folders[0]
    all_classes = sorted(p.name for p in first.iterdir() if p.is_dir())
    unseen = [c for c in layout.unseen if c in all_classes]
    missing = sorted(set(layout.unseen) - set(all_classes))
    if missing:
        raise FileNotFoundError(f"{first} lacks the unseen classes {missing[:10]}: not the "
                                "published class set.")
    names = unseen if subset == "test" else [c for c in all_classes if c not in layout.unseen]
    rows: dict[str, list] = {"image": [], "label": [], "domain": []}
    for domain, folders in ((1, sketch_folders), (0, photo_folders)):
        for label, (name, files) in enumerate(_class_files(root, folders, names).items()):
            if not files:
                raise FileNotFoundError(f"Class {name!r} has no {('photo', 'sketch')[domain]} "
                                        f"under {root} ({', '.join(folders)}).")
            rows["image"] += files
            rows["label"] += [label] * len(files)
            rows["domain"] += [domain] * len(files)
    return {"names": names, **rows}


def load_sbir_dataset(root: str | os.PathLike, benchmark: str, split: str = "test", *,
                      subset: str = "test", strict: bool = True) -> Any:
    """One ZS-SBIR split as a ``datasets.Dataset`` (module docstring).

    Args:
        root: The data set folder (``/data/Sketchy``, ``/data/TUBerlin``, ``/data/QuickDraw``).
        benchmark: ``"sketchy"``, ``"tuberlin"`` or ``"quickdraw"``.
        split: ``"split1"`` / ``"split2"`` (Sketchy), ``"extended25"`` (QuickDraw-Extended
            class folders), or ``"test"`` for the benchmark's default (Sketchy: split 2).
        subset: ``"test"`` (unseen classes) or ``"train"`` (seen classes).
        strict: Refuse a class count that differs from the published split's (False reads a
            partial copy).

    Returns:
        A ``datasets.Dataset`` with ``image``, ``label`` and ``domain`` columns.

    Raises:
        FileNotFoundError: ``root`` holds neither layout, or a listed file's folder is missing.
        ValueError: An unknown benchmark / split / subset, or a class count that is not the
            published split's.
    """
    import datasets

    if subset not in ("test", "train"):
        raise ValueError(f"subset = {subset!r} is invalid: 'test' (unseen) or 'train' (seen).")
    splits = sbir_splits(benchmark)
    if split not in splits:
        raise ValueError(f"{benchmark} has splits {splits}, not {split!r}.")
    layout = SBIR_BENCHMARKS[benchmark][_DEFAULT_SPLIT[benchmark] if split == "test" else split]
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (the {benchmark} data set root).")
    folder = next((root / f for f in layout.folders if (root / f).is_dir()), None)
    if folder is not None:
        rows = _from_lists(root, folder, layout, subset)
    elif layout.class_folders and (root / layout.class_folders[0][0]).is_dir():
        rows = _from_class_folders(root, layout, subset)
    else:
        wanted = [str(root / f) for f in layout.folders]
        if layout.class_folders:
            wanted.append(str(root / layout.class_folders[0][0]))
        raise FileNotFoundError(f"{root} holds no {benchmark} {split} layout: expected one of "
                                f"{wanted} (see diffperception.data.sbir).")
    expected = layout.num_unseen if subset == "test" else layout.num_seen
    if strict and len(rows["names"]) != expected:
        raise ValueError(f"{root}: the {benchmark} {split} {subset} classes number "
                         f"{len(rows['names'])}, the published split has {expected}.")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=rows["names"]),
                                  "domain": datasets.ClassLabel(names=["photo", "sketch"])})
    return datasets.Dataset.from_dict({k: rows[k] for k in ("image", "label", "domain")},
                                      features=features)
