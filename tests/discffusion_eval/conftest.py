"""A small matcher with ``score(images, texts)`` for the benchmark tests: a text naming a colour
scores each image by the mean of that colour's channel, any other text scores 0. Its outcomes
on solid-colour images can be worked out by hand, ties included."""

from __future__ import annotations

import pytest
import torch

COLOURS = {"red": 0, "green": 1, "blue": 2}


class ColourMatcher:
    """``score(images (N, 3, H, W) in [0, 1], texts) -> (N, M)``; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], list[str]]] = []

    def score(self, images, texts):
        images = torch.as_tensor(images)
        self.calls.append((tuple(images.shape), list(texts)))
        out = torch.zeros(len(images), len(texts))
        for j, text in enumerate(texts):
            words = [COLOURS[w.strip("?.,")] for w in text.split() if w.strip("?.,") in COLOURS]
            if words:
                out[:, j] = images[:, words[-1]].float().mean(dim=(1, 2))
        return out


@pytest.fixture
def colour_matcher() -> ColourMatcher:
    return ColourMatcher()


def solid(rgb: tuple[float, float, float], size: int = 8):
    """A solid-colour PIL image."""
    from PIL import Image

    return Image.new("RGB", (size, size), tuple(int(round(255 * c)) for c in rgb))
