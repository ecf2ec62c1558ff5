"""Taps as dense maps: what the dense heads (correspondence, UperNet) read.

A map tap is ``(B, C, h, w)`` already; several timesteps ``(B, T, C, h, w)`` are read as ``T * C``
channels; a token tap ``(B, N, C)`` (the projections inside a transformer block, such as
``...attn2.to_q``) is laid out row-major on the feature grid of the image, whose side is the
image side divided by the tap's stride (never a square root of ``N``: non-square images work).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..features.taps import FeatureInfo

__all__ = ["as_map", "tap_channels"]


def tap_channels(info: FeatureInfo) -> int:
    """Channels a tap gives as a map (``T * C`` with several timesteps)."""
    return info.channels * info.num_timesteps


def as_map(value: torch.Tensor, info: FeatureInfo, image_size: Sequence[int]) -> torch.Tensor:
    """One tap's value as a ``(B, C', h, w)`` map.

    Args:
        value: ``(B, C, h, w)``, ``(B, T, C, h, w)``, ``(B, N, C)`` or ``(B, T, N, C)``.
        info: The tap's ``FeatureInfo`` (layout, stride).
        image_size: ``(H, W)`` of the network's input image in pixels (token grids follow it).

    Raises:
        ValueError: A token count that does not match the image's grid at the tap's stride.
    """
    if info.layout == "map":
        return value.flatten(1, 2) if value.dim() == 5 else value
    if info.layout != "tokens" or not info.stride:
        raise ValueError(f"Tap {info.name!r} ({info.layout}) has no spatial grid; dense heads "
                         "take map or token taps.")
    h, w = int(image_size[0]) // info.stride, int(image_size[1]) // info.stride
    if value.dim() == 4:  # (B, T, N, C) -> (B, N, T*C)
        value = value.permute(0, 2, 1, 3).flatten(2)
    if value.shape[1] != h * w:
        raise ValueError(f"Tap {info.name!r} gives {value.shape[1]} tokens, but a {image_size[0]}"
                         f"x{image_size[1]} image at stride {info.stride} has {h}x{w}; pass the "
                         "network input's size.")
    return value.transpose(1, 2).reshape(value.shape[0], value.shape[2], h, w)  # (B, C, h, w)


def maps_of(features: Mapping[str, torch.Tensor], infos: Sequence[FeatureInfo],
            image_size: Sequence[int]) -> list[torch.Tensor]:
    """``as_map`` for each of ``infos``, in order."""
    return [as_map(features[info.name], info, image_size) for info in infos]
