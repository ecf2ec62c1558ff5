"""ZS-SBIR and CoOp few-shot loaders on tiny replicas of each benchmark's folder layout, written
here: every image's label and domain must be the one its folder / list line says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffperception.data import few_shot, load_image_dataset
from diffperception.data.fewshot_splits import load_coop_split
from diffperception.data.sbir import SKETCHY_SPLIT2_UNSEEN, load_sbir_dataset


def _image(path: Path, value: int, size=(6, 4)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return str(path)


def _write_lists(root: Path, folder: str, sketch_stem: str, photo_stem: str, sketch_dir: str,
                 photo_dir: str, num_seen: int, num_unseen: int, listed: int = 3) -> dict:
    """A SAKE-style split folder: class files with every class, file lists for the first
    ``listed`` classes of each subset (one sketch, two photos each). Returns the expected rows."""
    split = root / folder
    split.mkdir(parents=True)
    expected = {}
    for subset, suffix, count, class_file in (("train", "train", num_seen, "cname_cid.txt"),
                                              ("test", "zero", num_unseen, "cname_cid_zero.txt")):
        names = [f"{subset} class {i}" for i in range(count)]  # names with spaces
        ids = [100 + 7 * i for i in range(count)]  # ids need not start at 0
        (split / class_file).write_text("".join(f"{n} {c}\n" for n, c in zip(names, ids)))
        sketches, photos, rows = [], [], []
        for k in range(listed):
            name, cid = names[k], ids[k]
            rel = f"{sketch_dir}/{name}/s {k}.png"  # a path with a space
            _image(root / rel, 10 * k)
            sketches.append(f"{rel} {cid}\n")
            rows.append((str(root / rel), k, 1))
            for j in range(2):
                rel = f"{photo_dir}/{name}/p{j}.jpg"
                _image(root / rel, 10 * k + j)
                photos.append(f"{rel} {cid}\n")
                rows.append((str(root / rel), k, 0))
        (split / f"{sketch_stem}_{suffix}.txt").write_text("".join(sketches))
        (split / f"{photo_stem}_{suffix}.txt").write_text("\n".join(p.strip() for p in photos))
        expected[subset] = (names, rows)
    return expected


def _rows(dataset) -> list[tuple[str, int, int]]:
    paths = [d["path"] for d in dataset.cast_column(
        "image", type(dataset.features["image"])(decode=False))["image"]]
    return list(zip(paths, dataset["label"], dataset["domain"]))


@pytest.mark.parametrize("name,split,folder,stems,counts", [
    ("sketchy", "split1", "zeroshot1",
     ("sketch_tx_000000000000_ready_filelist", "all_photo_filelist"), (100, 25)),
    ("sketchy", "split2", "zeroshot0",
     ("sketch_tx_000000000000_ready_filelist", "all_photo_filelist"), (104, 21)),
    ("tuberlin", "test", "zeroshot", ("png_ready_filelist", "ImageResized_ready_filelist"),
     (220, 30)),
    ("quickdraw", "test", "zeroshot", ("sketch_filelist", "photo_filelist"), (80, 30)),
])
def test_file_list_layouts(tmp_path, name, split, folder, stems, counts):
    expected = _write_lists(tmp_path, folder, *stems, "sketches", "photos", *counts)
    for subset in ("test", "train"):
        data = load_sbir_dataset(tmp_path, name, split, subset=subset)
        names, rows = expected[subset]
        assert data.features["label"].names == names
        assert sorted(_rows(data)) == sorted(rows)
        assert data[0]["image"].size == (6, 4)
    if name == "sketchy" and split == "split2":  # "test" is split 2
        assert len(load_sbir_dataset(tmp_path, "sketchy", "test")) == len(expected["test"][1])


def test_file_list_errors(tmp_path):
    _write_lists(tmp_path, "zeroshot", "png_ready_filelist", "ImageResized_ready_filelist",
                 "s", "p", 220, 29)
    with pytest.raises(ValueError, match="number 29, the published split has 30"):
        load_sbir_dataset(tmp_path, "tuberlin")
    assert len(load_sbir_dataset(tmp_path, "tuberlin", strict=False)) == 9
    (tmp_path / "zeroshot" / "png_ready_filelist_zero.txt").write_text("s/x.png 999\n")
    with pytest.raises(ValueError, match="class id 999"):
        load_sbir_dataset(tmp_path, "tuberlin", strict=False)
    with pytest.raises(FileNotFoundError, match="no quickdraw test layout"):
        load_sbir_dataset(tmp_path / "zeroshot", "quickdraw")
    with pytest.raises(ValueError, match="has splits"):
        load_sbir_dataset(tmp_path, "tuberlin", "split2")
    with pytest.raises(ValueError, match="benchmark"):
        load_sbir_dataset(tmp_path, "flickr15k")


def test_sketchy_class_folders_use_the_published_split2_list(tmp_path):
    seen = ["airplane", "zebra"]
    for k, name in enumerate(list(SKETCHY_SPLIT2_UNSEEN) + seen):
        _image(tmp_path / "256x256/sketch/tx_000000000000" / name / "a-1.png", k)
        _image(tmp_path / "256x256/photo/tx_000000000000" / name / "a.jpg", k)
    _image(tmp_path / "EXTEND_image_sketchy/bat/extra.jpg", 1)  # the extended gallery
    (tmp_path / "256x256/photo/tx_000000000000/bat/notes.txt").write_text("not an image")
    test = load_sbir_dataset(tmp_path, "sketchy", "split2")
    assert test.features["label"].names == list(SKETCHY_SPLIT2_UNSEEN)
    rows = _rows(test)
    assert len(rows) == 21 * 2 + 1
    for path, label, domain in rows:
        assert Path(path).parent.name == SKETCHY_SPLIT2_UNSEEN[label]
        assert domain == (1 if "/sketch/" in path else 0)
    with pytest.raises(ValueError, match="published split has 104"):
        load_sbir_dataset(tmp_path, "sketchy", "split2", subset="train")
    train = load_sbir_dataset(tmp_path, "sketchy", "split2", subset="train", strict=False)
    assert train.features["label"].names == seen
    with pytest.raises(FileNotFoundError, match="zeroshot1"):  # split 1 needs the lists
        load_sbir_dataset(tmp_path, "sketchy", "split1")


def test_quickdraw_extended_class_folders(tmp_path):
    from diffperception.data.sbir import QUICKDRAW_EXTENDED_UNSEEN

    for k, name in enumerate(list(QUICKDRAW_EXTENDED_UNSEEN) + ["apple"]):
        _image(tmp_path / "QuickDraw_sketches_final" / name / "1.png", k)
        _image(tmp_path / "QuickDraw_images_final" / name / "1.jpg", k)
    test = load_sbir_dataset(tmp_path, "quickdraw", "extended25")
    assert len(test.features["label"].names) == 25 and len(test) == 50
    train = load_sbir_dataset(tmp_path, "quickdraw", "extended25", subset="train", strict=False)
    assert train.features["label"].names == ["apple"]


def _coop_replica(root: Path) -> dict:
    names = ["abyssinian", "american_bulldog", "beagle"]
    split = {"train": [], "val": [], "test": []}
    for part, per_class in (("train", 20), ("val", 2), ("test", 3)):
        for label, name in enumerate(names):
            for i in range(per_class):
                rel = f"{name}_{part}_{i}.jpg"
                _image(root / "images" / rel, label * 40 + i)
                split[part].append([rel, label, name])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return split


def test_coop_split_file(tmp_path):
    split = _coop_replica(tmp_path / "oxford_pets")
    test = load_image_dataset(tmp_path / "oxford_pets", "test")  # found by load_image_dataset
    assert test.features["label"].names == ["abyssinian", "american_bulldog", "beagle"]
    assert test["label"] == [e[1] for e in split["test"]]
    assert np.asarray(test[4]["image"])[0, 0, 0] == 1 * 40 + 1  # label 1, its image 1
    val = load_coop_split(tmp_path / "oxford_pets", "validation")
    assert len(val) == 6
    sixteen = few_shot(load_coop_split(tmp_path / "oxford_pets", "train"), 16, seed=0)
    assert np.bincount(sixteen["label"]).tolist() == [16, 16, 16]


def test_coop_errors(tmp_path):
    root = tmp_path / "pets"
    split = _coop_replica(root)
    with pytest.raises(ValueError, match="not 'dev'"):
        load_coop_split(root, "dev")
    (root / "images" / split["test"][0][0]).unlink()
    with pytest.raises(FileNotFoundError, match="1 images of split_zhou_OxfordPets.json"):
        load_coop_split(root, "test")
    split["val"][0][2] = "boxer"
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="label 0 is both"):
        load_coop_split(root, "train")
    with pytest.raises(FileNotFoundError, match="split_zhou"):
        load_coop_split(tmp_path, "train")
