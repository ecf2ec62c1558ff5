"""The noise-error matcher: its table is minus ``caption_errors`` of each image alone (so every
image meets the same seeded noise), the same whether the images come together or one by one."""

from __future__ import annotations

import numpy as np
import torch

from diffperception.data import load_image_dataset
from diffperception.evaluation.matching import NoiseErrorMatcher
from diffperception.evaluation.zero_shot import caption_errors, noise_prediction_model

CAPTIONS = ["a handwritten digit zero", "a handwritten digit one", "a handwritten digit two"]


def test_noise_error_matcher_equals_caption_errors_per_image():
    ds = load_image_dataset("digits", "test").select(range(3))
    images = np.stack([np.asarray(x, dtype=np.float32) for x in ds["image"]])  # (3, 3, 32, 32)
    matcher = NoiseErrorMatcher("diffperception:default", timesteps=[700])
    table = matcher.score(torch.from_numpy(images), CAPTIONS)
    assert table.shape == (3, 3)
    model = noise_prediction_model("diffperception:default", timesteps=[700], captions=CAPTIONS)
    for i in range(3):
        expected = -caption_errors(model, images[i:i + 1], CAPTIONS, progress=False)[0]
        np.testing.assert_allclose(table[i].numpy(), expected, rtol=1e-6)
    alone = matcher.score(images[2:3], CAPTIONS)
    torch.testing.assert_close(alone[0], table[2])
    # the same image twice gets the same row (the same noise)
    twice = matcher.score(np.stack([images[0], images[0]]), CAPTIONS)
    torch.testing.assert_close(twice[0], twice[1])
