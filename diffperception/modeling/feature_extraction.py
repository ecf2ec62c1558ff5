"""``DiffusionPerceptionForFeatureExtraction``: images in, ``{tap: activation}`` out.

The backbone with the identity head: what it returns is exactly what the backbone returns.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..features.conditioning import Learnable, LearnablePrompt
from .base import DiffusionPerceptionModel
from .registry import register_model

__all__ = ["DiffusionPerceptionForFeatureExtraction", "LearnablePrompt", "Learnable"]


@register_model
class DiffusionPerceptionForFeatureExtraction(DiffusionPerceptionModel,
                                              pipeline_tag="image-feature-extraction"):
    """A diffusion network, cut after the last tap, as a feature extractor.

    Args:
        config: A ``TaskConfig`` (or its dict) with ``architecture`` set to this class's name;
            ``head`` is null or ``{"type": "identity"}``.
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Example:
        >>> model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261])
        >>> feats = model(images)          # images (B, 3, H, W) in [0, 1]
        >>> feats["up_ft.1"].shape         # (B, 1280, H/16, W/16)
    """

    default_head = {"type": "identity"}

    def check_config(self, config) -> None:
        if config.head.type != "identity":
            raise ValueError(f"config['head']['type'] = {config.head.type!r} is invalid: a "
                             "feature extractor has the 'identity' head (use a task model such "
                             "as DiffusionPerceptionForImageClassification for other heads).")

    def forward(self, images: Any, *, noise: torch.Tensor | None = None,
                prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """Extracts the tapped activations.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            noise: Explicit noise, shaped like the latent ``(B, C, h, w)`` (or
                ``(E, B, C, h, w)``, ``(T, E, B, C, h, w)``); overrides the configured noise.
            prompt: One text per image (models built with ``prompt=[...]`` only).
            value_range: Value range of integer (or non-[0, 1]) inputs, e.g. ``(0, 255)``.

        Returns:
            ``{tap: (B, C, h, w)}`` for one timestep, ``{tap: (B, T, C, h, w)}`` for several
            (attention taps: ``(B, heads, queries, keys)``).
        """
        feats = self.backbone(images, noise=noise, prompt=prompt, value_range=value_range)
        return self.head(feats).features
