"""diffperception: pretrained diffusion models as perception backbones.

Example:
    >>> from diffperception import DiffusionPerceptionForFeatureExtraction, list_taps
    >>> model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
    ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261])
    >>> feats = model(images)  # {"up_ft.1": (B, 1280, H/16, W/16)}
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import list_taps
from .config import TaskConfig
from .modeling import (
    AutoDiffusionPerception,
    DiffusionPerceptionForFeatureExtraction,
    Learnable,
    list_models,
    list_presets,
    register_model,
)

__all__ = [
    "__version__",
    "AutoDiffusionPerception",
    "DiffusionPerceptionForFeatureExtraction",
    "Learnable",
    "TaskConfig",
    "list_models",
    "list_presets",
    "list_taps",
    "register_model",
]
