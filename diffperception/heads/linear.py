"""The linear probe: adaptive average pool to P x P, flatten, Linear.

This is the "GD" linear-probe baseline of the text-free diffusion-features paper (S001 §4.1:
"For guided diffusion with linear head (GD), we use a 2x2 adaptive average pooling"; its released
code's ``--head_type linear --pre_pool_size 2``: ``AdaptiveAvgPool2d(2)`` on the 1024 x 16 x 16
block-24 map, flatten to 4096, ``nn.Linear(4096, classes)``, no normalisation). The released
code's ``--head_arc "h1_h2"`` (an MLP with ReLU, S001 Table 12) is ``hidden_sizes=[h1, h2]``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head

__all__ = ["LinearHead"]


@register_head("linear")
class LinearHead(Head):
    """Pool each tap to ``pool x pool``, flatten, concatenate, then a Linear layer (or an MLP).

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; taps must be maps ``(B, C, h, w)``
            (with several timesteps ``(B, T, C, h, w)``, read as ``T * C`` channels).
        num_labels: Number of classes (supplied by the task model from its labels).
        pool: Side of the adaptive average pool (the paper's GD uses 2).
        taps: Taps the head reads, in order (default: every tap).
        hidden_sizes: Hidden widths of an MLP with ReLU (default: none, a linear probe).

    Raises:
        ValueError: ``pool`` or ``num_labels`` below 1, a bad hidden size, or taps that are not
            maps.
    """

    task_arguments = ("num_labels",)

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int, pool: int = 2,
                 taps: Sequence[str] | None = None, hidden_sizes: Sequence[int] = ()) -> None:
        super().__init__(feature_info)
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"config['head']['pool'] = {pool!r} is invalid: an integer >= 1.")
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels = {num_labels!r} is invalid: an integer >= 1 (the "
                             "number of labels).")
        if not all(isinstance(h, int) and h >= 1 for h in hidden_sizes):
            raise ValueError(f"config['head']['hidden_sizes'] = {hidden_sizes!r} is invalid: "
                             "positive integers.")
        infos = self.select_taps(feature_info, list(taps) if taps is not None else None,
                                 ("map",), "linear")
        self.taps = [info.name for info in infos]
        self.pool = nn.AdaptiveAvgPool2d(pool)
        width = sum(info.channels * info.num_timesteps for info in infos) * pool * pool
        layers: list[nn.Module] = []
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_labels))
        self.classifier = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> HeadOutput:
        """Class logits from the tapped maps.

        Args:
            features: ``{tap: (B, C, h, w) or (B, T, C, h, w)}``.
            labels: ``(B,)`` class indices; gives a cross-entropy ``loss``.

        Returns:
            ``HeadOutput(logits (B, num_labels), loss)``.
        """
        pooled = []
        for name in self.taps:
            x = features[name]
            x = x.flatten(1, 2) if x.ndim == 5 else x  # (B, T*C, h, w)
            pooled.append(self.pool(x.float()).flatten(1))  # (B, T*C*P*P)
        logits = self.classifier(torch.cat(pooled, dim=1))  # (B, num_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return HeadOutput(loss=loss, logits=logits)
