"""The digits stand-ins: zero-shot class splits, photos that are the shipped model's digits,
sketches drawn from the digit's shape, canvases whose labels match their pixels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from diffperception.data import class_names, load_image_dataset
from diffperception.data.standins import (
    digits_canvas,
    digits_sketch,
    render_sketches,
    segmentation_info,
)
from diffperception.default_model import load_digits_split

needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                   reason="the sketches are drawn with scikit-image")


@pytest.fixture(scope="module")
def sketch_test():
    pytest.importorskip("skimage")
    return load_image_dataset("digits-sketch", "test")


def test_zero_shot_split_classes_and_domains(sketch_test):
    train = load_image_dataset("digits-sketch", "train")
    assert class_names(train) == ["zero", "one", "two", "three", "four", "five", "six"]
    assert class_names(sketch_test) == ["seven", "eight", "nine"]
    assert class_names(digits_sketch("test_seen")) == class_names(train)
    for split in (train, sketch_test):
        labels, domains = np.asarray(split["label"]), np.asarray(split["domain"])
        for label in np.unique(labels):
            photos = int((domains[labels == label] == 0).sum())
            sketches = int((domains[labels == label] == 1).sum())
            assert abs(photos - sketches) <= 1 and photos > 0
    # the test split is every 7, 8 and 9 of the shipped model's held-out third
    held_out = load_digits_split()
    assert len(sketch_test) == int(np.isin(held_out["test_labels"], [7, 8, 9]).sum())


def test_photos_are_the_shipped_models_held_out_digits(sketch_test):
    held_out = load_digits_split()
    images = np.asarray(sketch_test["image"], dtype=np.float32)
    labels, domains = np.asarray(sketch_test["label"]), np.asarray(sketch_test["domain"])
    for image, label in zip(images[domains == 0][:10], labels[domains == 0][:10]):
        same = held_out["test_images"][held_out["test_labels"] == 7 + label]
        assert np.any(np.all(np.abs(same - image) < 1e-6, axis=(1, 2, 3)))
    sketches = images[domains == 1]
    assert sketches.min() >= 0 and sketches.max() <= 1
    assert np.all(sketches.mean(axis=(1, 2, 3)) > 0.6)  # black strokes on white paper
    assert np.all(sketches.min(axis=(1, 2, 3)) < 0.5)  # every sketch has ink


@needs_skimage
def test_a_bar_is_drawn_as_a_line_along_its_middle():
    bar = np.zeros((1, 8, 8))
    bar[0, 1:7, 3:5] = 16  # a vertical bar, columns 3 and 4 (centre at 4 of 8 -> 16 of 32)
    for style in ("skeleton", "edges"):
        sketch = render_sketches(bar, style)[0, 0]  # (32, 32)
        ink = 1 - sketch
        assert ink.sum() > 5
        columns = np.flatnonzero(ink.sum(0) > 0)
        centre = (ink.sum(0) * np.arange(32)).sum() / ink.sum()
        assert abs(centre - 15.5) < 1.0  # symmetric about the bar's axis
        if style == "skeleton":  # a thin line on the axis
            assert columns.min() >= 13 and columns.max() <= 18
        else:  # two outlines, one each side of the axis
            assert ink[:, :15].sum() > 0 and ink[:, 17:].sum() > 0
    with pytest.raises(ValueError, match="style"):
        render_sketches(bar, "charcoal")


@needs_skimage
def test_stand_ins_are_deterministic_and_seeded():
    a, b = digits_sketch("test"), digits_sketch("test")
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert a["domain"] != digits_sketch("test", seed=1)["domain"]
    c1, c2 = digits_canvas("test", count=5), digits_canvas("test", count=5)
    np.testing.assert_array_equal(np.asarray(c1["mask"]), np.asarray(c2["mask"]))
    assert not np.array_equal(np.asarray(c1["mask"]),
                              np.asarray(digits_canvas("test", count=5, seed=1)["mask"]))


def test_canvas_labels_match_pixels_and_unseen_classes_are_test_only(tmp_path):
    train = load_image_dataset("digits-canvas", "train")
    test = digits_canvas("test", count=60)
    info_train, info_test = segmentation_info(train), segmentation_info(test)
    assert info_train.labels == info_test.labels[:8] and info_test.labels[0] == "background"
    assert info_test.unseen == (8, 9, 10) and info_train.unseen == ()
    for split, info in ((train, info_train), (test, info_test)):
        images = np.asarray(split["image"], dtype=np.float32)  # (N, 3, 64, 64)
        labels = np.asarray(split["mask"])  # (N, 64, 64)
        assert images.shape[1:] == (3, 64, 64) and labels.shape[1:] == (64, 64)
        np.testing.assert_array_equal(labels > 0, images[:, 0] > 0.5)
        assert labels.max() < len(info.labels)
        for mask in labels[:20]:
            assert 1 <= len(np.unique(mask[mask > 0])) <= 4
    assert np.isin(np.asarray(test["mask"]), [8, 9, 10]).any()
    assert not np.isin(np.asarray(train["mask"]), [8, 9, 10]).any()
    import datasets

    test.save_to_disk(str(tmp_path / "canvas"))  # the class list travels with the data

    assert segmentation_info(datasets.load_from_disk(str(tmp_path / "canvas"))) == info_test


def test_bad_splits_are_clear_errors():
    with pytest.raises(ValueError, match="test_seen"):
        load_image_dataset("digits-sketch", "validation")
    with pytest.raises(ValueError, match="has splits"):
        digits_canvas("test_seen")
    with pytest.raises(ValueError, match="count"):
        digits_canvas("test", count=0)
    with pytest.raises(ValueError, match="no segmentation class list"):
        segmentation_info(load_image_dataset("digits", "test"))
