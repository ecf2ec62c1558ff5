"""The project's offline default model: a small text-conditioned pixel diffusion model.

The weights in ``weights/`` (diffusers folder layout: ``unet``, ``text_encoder``,
``tokenizer``, ``scheduler``) were trained by this project on scikit-learn's
digits with :mod:`diffperception.default_model.train`. It is a demonstration
model, not Stable Diffusion. Importing this module loads no model library.
"""

from __future__ import annotations

from pathlib import Path

from .data import load_digits_split, upsample_digits

DEFAULT_MODEL_PATH: Path = (Path(__file__).parent / "weights").resolve()

CLASS_NAMES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)

CAPTION_PREFIX = "a handwritten digit"


def caption_for(label: int) -> str:
    """Returns the training caption for a digit label.

    Args:
        label: Digit class, 0..9.

    Returns:
        The caption, e.g. ``"a handwritten digit seven"`` for 7.
    """
    return f"{CAPTION_PREFIX} {CLASS_NAMES[int(label)]}"


__all__ = [
    "CAPTION_PREFIX",
    "CLASS_NAMES",
    "DEFAULT_MODEL_PATH",
    "caption_for",
    "load_digits_split",
    "upsample_digits",
]
