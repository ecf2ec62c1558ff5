"""The dense descriptor head of semantic correspondence (seed 003 / DIFT, METHODS.md §4.4-4.5).

Every tap is bilinearly resized to one grid (GDF: 128 x 128; default: the finest tap's grid) and
the maps are concatenated (3520 channels for GDF's SD 1.5 selections). ``aggregator="none"`` is
the nearest-neighbour protocol (GDF ``--algorithm nn``; DIFT with its one tap); ``"conv"`` adds
GDF's learned aggregation, a ``Conv2d(D, D, 3, padding=1, bias=False)`` (GDF
``correspondence/aggregation_network.py``), trained with the symmetric CLIP-style loss of
``DiffusionPerceptionForSemanticCorrespondence.correspondence_loss``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head
from .dense_maps import maps_of, tap_channels

__all__ = ["CorrespondenceHead"]

AGGREGATORS = ("none", "conv")


@register_head("correspondence")
class CorrespondenceHead(Head):
    """Taps resized to one grid and concatenated, optionally a 3x3 convolution: dense descriptors.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; map or token taps.
        image_size: ``(H, W)`` of the network input in pixels (supplied by the task model; token
            taps are laid out on its grid).
        taps: Taps read, in concatenation order (default: every tap).
        grid: ``[h, w]`` every tap is resized to (GDF: ``[128, 128]``); None: the finest tap's.
        aggregator: ``"none"`` (plain concatenation) or ``"conv"`` (GDF's 3x3 conv, no bias).
        out_channels: Output channels of the conv (default: its input channels; GDF halves them
            when several models are concatenated).

    Returns (forward):
        ``HeadOutput(embeddings=(B, D, h, w))``: one descriptor per grid cell.

    Raises:
        ValueError: An unknown aggregator, a bad grid, taps without a spatial grid.
    """

    task_arguments = ("image_size",)
    output_key = "embeddings"

    def __init__(self, feature_info: Mapping[str, FeatureInfo], image_size: Sequence[int],
                 taps: Sequence[str] | None = None, grid: Sequence[int] | None = None,
                 aggregator: str = "none", out_channels: int | None = None) -> None:
        super().__init__(feature_info)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"config['head']['aggregator'] = {aggregator!r} is invalid: one of "
                             f"{list(AGGREGATORS)}.")
        if grid is not None and (len(grid) != 2 or not all(
                isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
            raise ValueError(f"config['head']['grid'] = {grid!r} is invalid: [height, width] in "
                             "feature cells (GDF: [128, 128]), or null for the finest tap's grid.")
        self.infos = self.select_taps(feature_info, list(taps) if taps is not None else None,
                                      ("map", "tokens"), "correspondence")
        self.taps = [info.name for info in self.infos]
        self.image_size = [int(s) for s in image_size]
        self.grid = [int(g) for g in grid] if grid is not None else None
        width = sum(tap_channels(info) for info in self.infos)
        self.aggregator = aggregator
        self.conv = None
        if aggregator == "conv":
            out = width if out_channels is None else int(out_channels)
            self.conv = nn.Conv2d(width, out, kernel_size=3, padding=1, bias=False)
        self.out_channels = width if self.conv is None else self.conv.out_channels

    def forward(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                image_size: Sequence[int] | None = None) -> HeadOutput:
        """``HeadOutput(embeddings=(B, D, h, w))``; ``image_size`` overrides the network input
        size the token taps are laid out on."""
        maps = maps_of(features, self.infos, image_size or self.image_size)
        size = tuple(self.grid) if self.grid is not None else tuple(
            max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1]))
        maps = [m if tuple(m.shape[-2:]) == size else
                F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        x = torch.cat(maps, dim=1)  # (B, D, h, w)
        if self.conv is not None:
            x = self.conv(x)
        return HeadOutput(embeddings=x)
