"""The linear segmentation probe: every tap resized to the finest tap's grid, concatenated, then a
1x1 convolution to the class logits (with a BatchNorm first when ``norm`` is true, as DINOv2's
linear segmentation head).

It is the simplest dense head; the method heads (Vermouth's U-head, UperNet) register next to it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head

__all__ = ["LinearSegmentationHead", "segmentation_loss"]


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
                      ) -> torch.Tensor:
    """Mean per-pixel cross-entropy of ``(B, K, H, W)`` logits against ``(B, H, W)`` labels,
    pixels equal to ``ignore_index`` left out (the usual semantic-segmentation loss)."""
    return F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index)


@register_head("linear_segmentation")
class LinearSegmentationHead(Head):
    """Resize each map tap to the finest tap's ``h x w`` (bilinear), concatenate, 1x1 conv.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; taps must be maps ``(B, C, h, w)``
            (``(B, T, C, h, w)`` with several timesteps, read as ``T * C`` channels).
        num_labels: Number of classes (from the task model's labels).
        taps: Taps the head reads (default: every tap).
        norm: A ``BatchNorm2d`` over the concatenated channels before the convolution.

    Returns (forward):
        ``HeadOutput(logits=(B, num_labels, h, w))`` at the finest tap's grid; the task model
        upsamples to the image size.

    Raises:
        ValueError: ``num_labels`` below 1 or taps that are not maps.
    """

    task_arguments = ("num_labels",)

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 taps: Sequence[str] | None = None, norm: bool = False) -> None:
        super().__init__(feature_info)
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels = {num_labels!r} is invalid: an integer >= 1 (the "
                             "number of labels).")
        infos = self.select_taps(feature_info, list(taps) if taps is not None else None,
                                 ("map",), "linear_segmentation")
        self.taps = [info.name for info in infos]
        width = sum(info.channels * info.num_timesteps for info in infos)
        self.norm = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.classifier = nn.Conv2d(width, num_labels, kernel_size=1)

    def forward(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> HeadOutput:
        maps = [features[t].flatten(1, 2) if features[t].dim() == 5 else features[t]
                for t in self.taps]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == size else
                F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
                for m in maps]
        logits = self.classifier(self.norm(torch.cat(maps, dim=1)))
        return HeadOutput(logits=logits)
