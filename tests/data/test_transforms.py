"""Training / evaluation transforms: sizes, the code's scale range, flips, seeding, collation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffperception.data import (TransformedImages, collate_images, load_image_dataset,
                                 resize_short_side, transform_image)


def _ramp(h: int, w: int) -> torch.Tensor:
    x = torch.linspace(0, 1, w).expand(3, h, w)  # brightness grows left to right
    return x.contiguous()


def test_eval_transform_is_resize_short_side_then_centre_crop():
    image = _ramp(40, 80)
    out = transform_image(image, 20, "none")
    assert out.shape == (3, 20, 20)
    expected = resize_short_side(image, 20)[:, :, 10:30]  # (3, 20, 40) -> centre 20 columns
    assert torch.equal(out, expected)
    pil = Image.fromarray((np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8))
    assert transform_image(pil, 16, "none").shape == (3, 16, 16)


def test_code_augmentation_scale_range_crop_and_flip():
    size = 32
    shorts, flips = set(), 0
    for draw in range(200):
        rng = np.random.default_rng([0, 0, draw])
        short = int(np.random.default_rng([0, 0, draw]).integers(size, math.ceil(size / 0.8) + 1))
        shorts.add(short)
        out = transform_image(_ramp(32, 32), size, "code", rng)
        assert out.shape == (3, size, size)
        flips += bool(out[0, 0, 0] > out[0, 0, -1])  # a flipped ramp decreases
    assert shorts == set(range(32, 41))  # [S, 1.25 S]
    assert 70 < flips < 130  # p = 0.5
    with pytest.raises(ValueError, match="needs a random generator"):
        transform_image(_ramp(8, 8), 8, "code")
    with pytest.raises(ValueError, match="augment = 'crop' is invalid"):
        transform_image(_ramp(8, 8), 8, "crop")


def test_views_are_seeded_by_seed_epoch_and_index_and_collate():
    data = load_image_dataset("digits", "train").select(range(6))
    view = TransformedImages(data, 32, "code", seed=3)
    first = [view[i]["pixel_values"] for i in range(6)]
    assert all(torch.equal(a, view[i]["pixel_values"]) for i, a in enumerate(first))
    view.set_epoch(1)
    assert not all(torch.equal(a, view[i]["pixel_values"]) for i, a in enumerate(first))
    other = TransformedImages(data, 32, "code", seed=4)
    assert not all(torch.equal(a, other[i]["pixel_values"]) for i, a in enumerate(first))
    batch = collate_images([view[i] for i in (4, 1)])
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["labels"].tolist() == [data[4]["label"], data[1]["label"]]
    assert batch["index"].tolist() == [4, 1]
    assert torch.equal(TransformedImages(data, 32, "none")[2]["pixel_values"],
                       torch.tensor(np.asarray(data[2]["image"], dtype=np.float32)))
