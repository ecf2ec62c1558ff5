"""diffperception: pretrained diffusion models as perception backbones.

Example:
    >>> from diffperception import DiffusionBackbone, DiffusionPerceptionForImageClassification
    >>> backbone = DiffusionBackbone.from_diffusers(
    ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261])
    >>> feats = backbone(images)  # {"up_ft.1": (B, 1280, H/16, W/16)}
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import default_model  # noqa: F401 - registers the "diffperception:default" source alias
from .api import list_taps
from .config import HeadConfig, TaskConfig
from .features.backbone import DiffusionBackbone
from .features.conditioning import LearnablePrompt
from .heads import build_head, list_heads, register_head
from .modeling import (
    AutoDiffusionPerception,
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForImageClassification,
    Learnable,
    list_models,
    list_presets,
    register_model,
)

__all__ = [
    "__version__",
    "AutoDiffusionPerception",
    "DiffusionBackbone",
    "DiffusionPerceptionForFeatureExtraction",
    "DiffusionPerceptionForImageClassification",
    "HeadConfig",
    "Learnable",
    "LearnablePrompt",
    "TaskConfig",
    "build_head",
    "list_heads",
    "list_models",
    "list_presets",
    "list_taps",
    "register_head",
    "register_model",
]
