"""The project's offline default model: a small text-conditioned pixel diffusion model.

The weights in ``weights/`` (diffusers folder layout: ``unet``, ``text_encoder``,
``tokenizer``, ``scheduler``) were trained by this project on scikit-learn's
digits with :mod:`diffperception.default_model.train`. It is a demonstration
model, not Stable Diffusion. Importing this module loads no model library; it registers the
source alias ``"diffperception:default"`` (``DEFAULT_MODEL_ID``), so that name loads this folder
wherever a model name is accepted, and ``"diffperception:pairs"`` (``PAIRS_MODEL_ID``) for the
pairs model in ``pairs_weights/``, trained the same way on two digits side by side with
relational captions (:mod:`diffperception.default_model.train_pairs`).
"""

from __future__ import annotations

from pathlib import Path

from ..hub import register_source_alias
from .data import load_digits_split, upsample_digits

DEFAULT_MODEL_PATH: Path = (Path(__file__).parent / "weights").resolve()
#: The name that loads this model, e.g. ``from_diffusers("diffperception:default", ...)``.
DEFAULT_MODEL_ID = "diffperception:default"

register_source_alias(DEFAULT_MODEL_ID, lambda: DEFAULT_MODEL_PATH)

#: The pairs model (two digits side by side, relational captions; ``pairs.py``,
#: ``train_pairs.py``), same layout, loaded by the name ``"diffperception:pairs"``.
PAIRS_MODEL_PATH: Path = (Path(__file__).parent / "pairs_weights").resolve()
PAIRS_MODEL_ID = "diffperception:pairs"

register_source_alias(PAIRS_MODEL_ID, lambda: PAIRS_MODEL_PATH)

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
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_PATH",
    "PAIRS_MODEL_ID",
    "PAIRS_MODEL_PATH",
    "caption_for",
    "load_digits_split",
    "upsample_digits",
]
