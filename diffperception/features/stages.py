"""Multi-scale U-Net stage features and up-stage cross-attention maps (Vermouth, METHODS.md §3.1).

Vermouth reads the outputs of whole U-Net blocks and arranges them into scales, low to high
resolution:

- ``"mid+up"`` (segmentation, retrieval): the mid block and every up block, blocks of equal
  resolution concatenated: SD 1.5 at 256 px ``[mid 1280@4, up0 1280@8, up1 1280@16,
  cat(up2, up3) 960@32]``;
- ``"mid+down"`` (classification): the mid block and every down block that has a downsampler,
  each upsampled x2 (bilinear, ``align_corners=False``) back to its input resolution:
  ``[mid 1280@4, down2 1280@8, down1 640@16, down0 320@32]`` (the last down block, at the mid
  block's resolution, is left out as the released code drops it).

The cross-attention maps of the up blocks (``attn2`` probabilities, ``:attn`` taps) are
averaged over heads and, per resolution, over layers, reshaped to ``(B, L, h, w)`` (``L`` the
text length, 77 for SD) and concatenated as ``L`` extra channels to the scale of the same
resolution; maps finer than ``attention_min_stride`` pixels are left out (the released code's
``--max_attn_size 16`` at 256 px: the 8x8 and 16x16 maps are used, the 32x32 maps are not).

Every value comes from the backbone's taps (``features/taps.py``); nothing here runs the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .taps import FeatureInfo

__all__ = ["STAGE_LAYOUTS", "stage_taps", "StageAssembler", "ScaleSpec"]

STAGE_LAYOUTS = ("mid+up", "mid+down")


def _int_list(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * n


def stage_taps(unet_config: Mapping[str, Any], layout: str = "mid+up", *,
               cross_attention: bool = False) -> list[str]:
    """The tap names a stage layout needs, from a ``UNet2DConditionModel`` config.

    Args:
        unet_config: The U-Net's ``config.json`` (``block_out_channels``, ``down_block_types``,
            ``up_block_types``, ``layers_per_block``, ``transformer_layers_per_block``).
        layout: ``"mid+up"`` or ``"mid+down"``.
        cross_attention: Also tap every up-block cross-attention's probabilities
            (``up_blocks.i.attentions.j.transformer_blocks.k.attn2:attn``).

    Returns:
        Tap names: ``mid_block`` then the blocks in execution order, then the attention taps.

    Raises:
        ValueError: An unknown layout.

    Example:
        >>> stage_taps(unet.config, "mid+up", cross_attention=True)[:5]
        ['mid_block', 'up_blocks.0', 'up_blocks.1', 'up_blocks.2', 'up_blocks.3']
    """
    if layout not in STAGE_LAYOUTS:
        raise ValueError(f"layout = {layout!r} is invalid: one of {STAGE_LAYOUTS}.")
    n = len(unet_config["block_out_channels"])
    if layout == "mid+up":
        taps = ["mid_block"] + [f"up_blocks.{i}" for i in range(n)]
    else:  # every down block but the last has a downsampler
        taps = [f"down_blocks.{i}" for i in range(n - 1)] + ["mid_block"]
    if cross_attention:
        layers = _int_list(unet_config.get("layers_per_block", 2), n)[::-1]
        depth = _int_list(unet_config.get("transformer_layers_per_block", 1), n)[::-1]
        for i, kind in enumerate(unet_config["up_block_types"]):
            if "CrossAttn" not in kind:
                continue
            taps += [f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}.attn2:attn"
                     for j in range(layers[i] + 1) for k in range(depth[i])]
    return taps


@dataclass(frozen=True)
class ScaleSpec:
    """One output scale: the taps concatenated into it and its channels.

    Attributes:
        stride: Input pixels per cell of the scale.
        taps: Map taps concatenated (in this order) into the scale.
        upsample: Taps upsampled x2 before concatenation (the down blocks).
        attention: Attention taps averaged into ``L`` extra channels (empty: none).
        channels: Channels of the scale (maps plus ``L`` when there are attention maps).
    """

    stride: int
    taps: tuple[str, ...]
    upsample: tuple[str, ...]
    attention: tuple[str, ...]
    channels: int


class StageAssembler(nn.Module):
    """``{tap: tensor}`` -> the list of scales of §3.1, low to high resolution (no parameters).

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``.
        layout: ``"mid+up"`` or ``"mid+down"``; the block taps are picked from ``feature_info``
            by module path (``mid_block``, ``up_blocks.i`` / ``down_blocks.i``).
        cross_attention: Concatenate the up-stage cross-attention maps (the ``:attn`` taps of
            ``attn2`` modules in ``up_blocks``).
        attention_channels: ``L``, the text context length (77 for SD's CLIP tokenizer).
        attention_min_stride: Maps with fewer input pixels per cell than this are not used.

    Raises:
        ValueError: A layout whose taps the backbone lacks (naming them and ``stage_taps``).
    """

    def __init__(self, feature_info: Mapping[str, FeatureInfo], layout: str = "mid+up", *,
                 cross_attention: bool = False, attention_channels: int = 77,
                 attention_min_stride: int = 16) -> None:
        super().__init__()
        if layout not in STAGE_LAYOUTS:
            raise ValueError(f"config['head']['stages'] = {layout!r} is invalid: one of "
                             f"{STAGE_LAYOUTS}.")
        self.layout, self.attention_channels = layout, int(attention_channels)
        prefix = "up_blocks." if layout == "mid+up" else "down_blocks."
        blocks = [i for i in feature_info.values() if i.kind == "out" and i.layout == "map" and (
            i.module == "mid_block" or (i.module.startswith(prefix) and i.module.count(".") == 1))]
        if not any(i.module == "mid_block" for i in blocks) or len(blocks) < 2:
            raise ValueError(
                f"The {layout!r} stages need the taps 'mid_block' and the "
                f"{prefix[:-1]} outputs; the backbone taps {list(feature_info)}. Build the "
                "features with diffperception.features.stages.stage_taps(unet_config, "
                f"{layout!r}).")
        attention = [i for i in feature_info.values() if i.kind == "attn"
                     and i.module.startswith("up_blocks.") and i.module.endswith("attn2")
                     and i.stride is not None and i.stride >= attention_min_stride]
        if cross_attention and not any(i.kind == "attn" for i in feature_info.values()):
            raise ValueError("cross_attention needs the up-stage ':attn' taps of the attn2 "
                             "modules; build the features with stage_taps(..., "
                             "cross_attention=True).")
        self.scales = self._plan(blocks, attention if cross_attention else [])

    def _plan(self, blocks: list[FeatureInfo], attention: list[FeatureInfo]) -> list[ScaleSpec]:
        def stride(info: FeatureInfo) -> int:
            up = info.module.startswith("down_blocks.")
            return info.stride // 2 if up else info.stride

        scales = []
        for s in sorted({stride(i) for i in blocks}, reverse=True):
            members = [i for i in blocks if stride(i) == s]
            if self.layout == "mid+down" and any(i.module == "mid_block" for i in members):
                members = [i for i in members if i.module == "mid_block"]  # the last down block
            maps = [i for i in members]
            if self.layout == "mid+down":
                maps = sorted(maps, key=lambda i: i.module != "mid_block")
            attn = tuple(i.name for i in attention if i.stride == s)
            channels = sum(i.channels * i.num_timesteps for i in maps) + (
                self.attention_channels if attn else 0)
            scales.append(ScaleSpec(
                stride=s, taps=tuple(i.name for i in maps),
                upsample=tuple(i.name for i in maps if i.module.startswith("down_blocks.")),
                attention=attn, channels=channels))
        return scales

    @property
    def channels(self) -> list[int]:
        """Channels of each scale, low to high resolution."""
        return [s.channels for s in self.scales]

    @property
    def strides(self) -> list[int]:
        """Input pixels per cell of each scale, low to high resolution."""
        return [s.stride for s in self.scales]

    def _attention_map(self, features: Mapping[str, torch.Tensor], names: Sequence[str],
                       hw: tuple[int, int]) -> torch.Tensor:
        maps = []
        for name in names:
            probs = features[name]  # (B, heads, h*w, L)
            if probs.shape[-2] != hw[0] * hw[1] or probs.shape[-1] != self.attention_channels:
                raise ValueError(
                    f"Cross-attention tap {name!r} gives {tuple(probs.shape)}; the head expects "
                    f"{hw[0] * hw[1]} queries and attention_channels = {self.attention_channels} "
                    "keys (the text length): set config['head']['attention_channels'].")
            maps.append(probs.float().mean(dim=1))  # (B, h*w, L)
        mean = torch.stack(maps).mean(dim=0)  # (B, h*w, L)
        return mean.transpose(1, 2).reshape(mean.shape[0], -1, *hw)  # (B, L, h, w)

    def forward(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The scales ``[(B, C_k, h_k, w_k)]``, low to high resolution."""
        out = []
        for scale in self.scales:
            parts = []
            for name in scale.taps:
                x = features[name]
                x = x.flatten(1, 2) if x.dim() == 5 else x  # (B, T*C, h, w)
                if name in scale.upsample:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                parts.append(x)
            if scale.attention:
                hw = tuple(parts[0].shape[-2:])
                parts.append(self._attention_map(features, scale.attention, hw).to(parts[0]))
            out.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return out
