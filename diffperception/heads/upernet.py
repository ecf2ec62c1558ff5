"""UperNet on diffusion features, as seed 003 evaluates segmentation (METHODS.md §4.4; GDF
``segmentation/configs/ade_sd15.py``): the taps are grouped per resolution, each group's maps are
concatenated, and the groups feed transformers' ``UperNetHead`` (pyramid pooling on the last
group, FPN over the others) — the decoder is reused from transformers, not rewritten.

Defaults follow transformers' convention (groups from the finest to the coarsest grid, pyramid
pooling on the coarsest, logits on the finest grid). GDF's ADE20K configuration lists its groups
from the coarsest (``[[cross-q 1280, res-out 1280], [cross-q 640], [self-k 320]]``, 2560 / 640 /
320 channels, 512 hidden channels, pool scales 1, 2, 3); given in that order the head does what
mmseg's ``UPerHead`` did with it (pyramid pooling on the last group, logits on the first group's
grid). Not built here: GDF's per-tap and per-group residual adapters before the decoder, its FCN
auxiliary head and its Lovasz loss term.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head
from .dense_maps import maps_of, tap_channels

__all__ = ["UperNetSegmentationHead"]


def _by_stride(infos: Sequence[FeatureInfo]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for info in infos:
        groups.setdefault(info.stride or 0, []).append(info.name)
    return [groups[s] for s in sorted(groups)]  # finest (smallest stride) first


@register_head("upernet")
class UperNetSegmentationHead(Head):
    """Taps grouped per resolution into transformers' ``UperNetHead``.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; map or token taps.
        num_labels: Number of classes (from the task model's labels).
        image_size: ``(H, W)`` of the network input (token taps are laid out on its grid).
        groups: Lists of taps, one list per decoder level, in the decoder's order (the last
            gets the pyramid pooling; the logits come out on the first one's grid); each group's
            maps are resized to its first tap's grid and concatenated. Default: the taps grouped
            by stride, finest first.
        hidden_size: The decoder's channels (``UperNetConfig.hidden_size``; GDF: 512).
        pool_scales: Pyramid pooling scales (transformers: ``[1, 2, 3, 6]``; GDF: ``[1, 2, 3]``).

    Returns (forward):
        ``HeadOutput(logits=(B, num_labels, h, w))`` on the first group's grid; the task model
        upsamples to the image size.

    Raises:
        ValueError: A tap in no group or in two, a group naming an unknown tap, bad sizes.
    """

    task_arguments = ("num_labels", "image_size")

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 image_size: Sequence[int], groups: Sequence[Sequence[str]] | None = None,
                 hidden_size: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__(feature_info)
        from transformers import UperNetConfig
        from transformers.models.upernet.modeling_upernet import UperNetHead

        infos = self.select_taps(feature_info, None, ("map", "tokens"), "upernet")
        if groups is None:
            groups = _by_stride(infos)
        groups = [list(g) for g in groups]
        named = [t for g in groups for t in g]
        if not groups or any(not g for g in groups) or sorted(named) != sorted(feature_info) \
                or len(set(named)) != len(named):
            raise ValueError(f"config['head']['groups'] = {groups!r} is invalid: lists of taps "
                             f"that name every tap of the backbone {list(feature_info)} once.")
        for key, value in (("hidden_size", hidden_size), ("num_labels", num_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config['head'][{key!r}] = {value!r} is invalid: an integer "
                                 ">= 1.")
        self.groups = groups
        self.infos = [[feature_info[t] for t in g] for g in groups]
        self.image_size = [int(s) for s in image_size]
        in_channels = [sum(tap_channels(i) for i in g) for g in self.infos]
        config = UperNetConfig(hidden_size=hidden_size, pool_scales=list(pool_scales),
                               num_labels=num_labels)
        self.decoder = UperNetHead(config, in_channels=in_channels)

    def grouped(self, features: Mapping[str, torch.Tensor],
                image_size: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The decoder's inputs: one ``(B, C_g, h_g, w_g)`` map per group."""
        out = []
        for infos in self.infos:
            maps = maps_of(features, infos, image_size or self.image_size)
            size = tuple(maps[0].shape[-2:])
            maps = [m if tuple(m.shape[-2:]) == size else
                    F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                    for m in maps]
            out.append(torch.cat(maps, dim=1))
        return out

    def forward(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                image_size: Sequence[int] | None = None) -> HeadOutput:
        return HeadOutput(logits=self.decoder(self.grouped(features, image_size)))
