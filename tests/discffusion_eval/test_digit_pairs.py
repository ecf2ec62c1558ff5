"""The digit-pairs data set and the pairs model's training path: images hold the named digits in
the named halves, the splits never share a drawing, the swaps are the same drawings swapped,
the default model's tokenizer is unchanged by the shared builders, and a two-step training run
writes a folder the library loads by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffperception.default_model import DEFAULT_MODEL_PATH
from diffperception.default_model.data import upsample_digits
from diffperception.default_model.pairs import (PAIR_CAPTIONS, PAIR_CLASSES, compose_pairs,
                                                digit_pair_swaps, load_digit_pairs, pair_caption,
                                                pair_label)


def test_captions_and_labels():
    assert pair_caption(3, 5) == "a three to the left of a five"
    assert len(PAIR_CAPTIONS) == 90 and len(set(PAIR_CAPTIONS)) == 90
    assert PAIR_CAPTIONS[pair_label(3, 5)] == "a three to the left of a five"
    with pytest.raises(ValueError, match="two different digits"):
        pair_label(4, 4)


def test_compose_places_each_digit_in_its_half_at_its_offsets():
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 17, (2, 8, 8)), rng.integers(0, 17, (2, 8, 8))
    offsets = np.array([[4, 0, 12, 2], [8, 1, 5, 2]])  # right column jitter 2: no overlap
    out = compose_pairs(left, right, offsets)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    ref_l, ref_r = upsample_digits(left, 16)[:, 0], upsample_digits(right, 16)[:, 0]
    for i, (ly, lx, ry, rx) in enumerate(offsets):
        canvas = np.zeros((32, 32), np.float32)
        canvas[ly:ly + 16, lx:lx + 16] = ref_l[i]
        canvas[ry:ry + 16, 14 + rx:30 + rx] = ref_r[i]
        np.testing.assert_array_equal(out[i, 0], canvas)
        np.testing.assert_array_equal(out[i, 1], canvas)


def test_splits_are_seeded_labelled_and_built_from_their_own_digits():
    a, b = load_digit_pairs("test", 64, seed=0), load_digit_pairs("test", 64, seed=0)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not np.array_equal(load_digit_pairs("test", 64, seed=1)["images"], a["images"])
    assert [PAIR_CLASSES[k] for k in a["labels"]] == list(zip(a["left"], a["right"]))
    assert (a["left"] != a["right"]).all() and a["images"].min() >= 0 and a["images"].max() <= 1
    train = load_digit_pairs("train", 64, seed=0)
    assert not np.array_equal(train["images"], a["images"])
    with pytest.raises(ValueError, match="'train' and 'test'"):
        load_digit_pairs("val")


def test_swaps_are_the_same_two_drawings_swapped_with_swapped_captions():
    examples = digit_pair_swaps(20, seed=0)
    for ex in examples:
        a, b = ex["left"], ex["right"]
        assert a != b
        assert (ex["caption_0"], ex["caption_1"]) == (pair_caption(a, b), pair_caption(b, a))
        # the same ink in both images (no overlap beyond a two-pixel seam can change the sum much)
        assert abs(ex["image_0"].sum() - ex["image_1"].sum()) < 0.05 * ex["image_0"].sum()
        assert not np.array_equal(ex["image_0"], ex["image_1"])


def test_digit_pairs_loads_by_name_through_diffperception_data():
    from diffperception.data import class_names, load_image_dataset

    test = load_image_dataset("digit-pairs", "test")
    assert len(test) == 2000 and class_names(test) == list(PAIR_CAPTIONS)
    row = test[0]
    assert PAIR_CLASSES[row["label"]] == (row["left"], row["right"])
    assert np.asarray(row["image"]).shape == (3, 32, 32)


def test_the_shared_builders_leave_the_default_models_tokenizer_unchanged():
    from diffperception.default_model.build import build_tokenizer

    shipped = json.loads((DEFAULT_MODEL_PATH / "tokenizer" / "vocab.json").read_text())
    assert build_tokenizer().get_vocab() == shipped


@pytest.mark.slow
def test_a_short_pairs_training_run_writes_a_loadable_model(tmp_path):
    from diffperception.default_model.build import load_model
    from diffperception.default_model.train_pairs import run

    out = tmp_path / "pairs"
    info = run(out, steps=2, num_pairs=32, evaluate=False, batch_size=4, warmup_steps=1)
    assert info["settings"]["steps"] == 2 and len(info["loss_curve"]) == 1
    parts = load_model(out)
    ids = parts["tokenizer"]("a three to the left of a five").input_ids
    assert len(ids) == 10  # start, eight whole-word tokens, end
    assert parts["text_encoder"].config.max_position_embeddings == 12
    assert "to the left of" in (out / "README.md").read_text()
    with torch.no_grad():
        ctx = parts["text_encoder"](torch.tensor([ids])).last_hidden_state
        sample = parts["unet"](torch.zeros(1, 3, 32, 32), 10, ctx).sample
    assert sample.shape == (1, 3, 32, 32)


def test_the_shipped_pairs_model_loads_by_its_alias():
    from diffperception.default_model import PAIRS_MODEL_PATH
    from diffperception.default_model.build import load_model
    from diffperception.hub import resolve_source_alias

    assert resolve_source_alias("diffperception:pairs") == PAIRS_MODEL_PATH
    parts = load_model(PAIRS_MODEL_PATH)
    ids = parts["tokenizer"]("a three to the left of a five").input_ids
    assert len(ids) == 10
    info = json.loads((PAIRS_MODEL_PATH / "training_info.json").read_text())
    assert info["settings"]["steps"] == 1500 and info["settings"]["seed"] == 0
    size = sum(f.stat().st_size for f in PAIRS_MODEL_PATH.rglob("*") if f.is_file())
    assert size < 8e6  # a few MB
