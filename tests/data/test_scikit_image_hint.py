"""Without scikit-image (the ``data`` extra), the offline stand-ins that need it say how to get it
instead of failing deep inside with a bare ModuleNotFoundError."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.parametrize("call", [
    lambda: __import__("diffperception.data.correspondence", fromlist=["x"]).warped_digit_pairs(2),
    lambda: __import__("diffperception.data.correspondence", fromlist=["x"]).warped_photo_pairs(2),
    lambda: __import__("diffperception.data.correspondence", fromlist=["x"]).stereo_pairs(),
])
def test_missing_scikit_image_names_the_extra(monkeypatch, call):
    for name in [m for m in sys.modules if m == "skimage" or m.startswith("skimage.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "skimage", None)  # "import skimage" now raises ImportError
    with pytest.raises(ImportError, match=r"diffperception\[data\]"):
        call()
