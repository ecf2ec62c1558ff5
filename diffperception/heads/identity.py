"""The identity head: the backbone's features are the output (feature extraction)."""

from __future__ import annotations

from typing import Mapping

import torch

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head

__all__ = ["IdentityHead"]


@register_head("identity")
class IdentityHead(Head):
    """Passes ``{tap: tensor}`` through unchanged; it has no parameters."""

    output_key = "features"

    def __init__(self, feature_info: Mapping[str, FeatureInfo]) -> None:
        super().__init__(feature_info)

    def forward(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> HeadOutput:
        """Returns ``HeadOutput(features=features)``.

        Raises:
            ValueError: Labels were given (the identity head has nothing to train).
        """
        if labels is not None:
            raise ValueError("The identity head has no loss; pass no labels.")
        return HeadOutput(features=features)
