"""Vermouth's U-head (S000 §3.3; METHODS.md §3.4-3.5): fuse blocks, the global (down-sample) flow
with CLIP-style attention pooling, the dense (up-sample) flow, and the "add" baseline.

All flows take the scales of ``features.stages.StageAssembler`` (low to high resolution):

- ``GlobalFlow`` ("fuse", high2low): ``u = pool(Fuse(s_last))``, then each lower scale
  ``u = pool(Fuse(cat(s_k, u)))``, the lowest without pooling, then ``AttentionPool2d`` to the
  text width (``768`` for SD 1.5's CLIP ViT-L/14);
- ``DenseFlow`` (low2high): ``d = Fuse(s_0)``, then ``d = Fuse(cat(s_k, up(d)))`` to the finest
  scale, then a 1x1 convolution to the text width;
- ``AddFlow`` (S000 Table 6 baseline, ``ADDModel``): a 1x1 convolution per scale to one width,
  every scale resized to the lowest scale's grid, averaged, ``AttentionPool2d``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FuseBlock", "AttentionPool2d", "GlobalFlow", "DenseFlow", "AddFlow"]


class FuseBlock(nn.Sequential):
    """``Conv2d(in, out, 1, bias=False) -> GroupNorm(32, out) -> SiLU`` (the "tiny" arch),
    convolution weights ``kaiming_normal_`` (METHODS.md §3.4).

    Raises:
        ValueError: ``out`` not divisible by the number of groups.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32) -> None:
        if out_channels % groups:
            raise ValueError(f"FuseBlock width {out_channels} must be a multiple of the "
                             f"{groups} GroupNorm groups.")
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        super().__init__(conv, nn.GroupNorm(groups, out_channels), nn.SiLU())


class AttentionPool2d(nn.Module):
    """CLIP-ResNet's attention pooling: the mean token attends over all positions.

    Tokens: the ``spatial_dim**2`` positions with their mean prepended, plus a learned positional
    embedding (``randn(spatial_dim**2 + 1, C) / sqrt(C)``); one multi-head attention with separate
    q / k / v projections; the mean token's result projected to ``output_dim``.

    Args:
        spatial_dim: Side of the input grid (the input must be ``spatial_dim x spatial_dim``).
        embed_dim: Input channels ``C``.
        num_heads: Attention heads (``C`` must be divisible by it).
        output_dim: Output width.

    Shapes:
        ``(B, C, s, s)`` -> ``(B, output_dim)``.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"AttentionPool2d: embed_dim {embed_dim} is not divisible by "
                             f"num_heads {num_heads}.")
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, s*s, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1+s*s, C)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        b, n, c = tokens.shape
        h, d = self.num_heads, c // self.num_heads
        q = self.q_proj(tokens[:, :1]).view(b, 1, h, d).transpose(1, 2)  # (B, h, 1, d)
        k = self.k_proj(tokens).view(b, n, h, d).transpose(1, 2)  # (B, h, N, d)
        v = self.v_proj(tokens).view(b, n, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d)
        return self.c_proj(out.transpose(1, 2).reshape(b, c))  # (B, output_dim)


def _pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Average pooling to ``size`` (``AvgPool2d(2)`` when the grid halves)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, tuple(size))


class GlobalFlow(nn.Module):
    """The U-head's global (down-sample) flow, "high2low" (METHODS.md §3.4).

    Args:
        channels: Channels of the scales, low to high resolution.
        widths: Fuse widths per scale, low to high ("tiny": ``[1024, 768, 512, 256]``).
        pool_size: Grid side the lowest scale is average-pooled to before the attention pooling
            (4: the grid of SD 1.5 at 256 px, where no pooling happens).
        num_heads: Heads of the attention pooling.
        output_dim: Width of the pooled vector (the text feature width).
        fuse: False keeps only ``Fuse(s_0)`` (the released code's "no_fuse").

    Shapes:
        scales ``[(B, C_k, h_k, w_k)]`` -> ``(B, output_dim)``.
    """

    def __init__(self, channels: Sequence[int], widths: Sequence[int], *, pool_size: int = 4,
                 num_heads: int = 8, output_dim: int = 768, fuse: bool = True) -> None:
        super().__init__()
        if len(widths) != len(channels):
            raise ValueError(f"config['head']['widths'] = {list(widths)} is invalid: one width "
                             f"per scale ({len(channels)} scales of channels {list(channels)}).")
        self.fuse, self.pool_size = fuse, pool_size
        n = len(channels)
        blocks = []
        for k in range(n):
            extra = widths[k + 1] if (fuse and k + 1 < n) else 0
            blocks.append(FuseBlock(channels[k] + extra, widths[k]))
        self.blocks = nn.ModuleList(blocks if fuse else blocks[:1])
        self.pool = AttentionPool2d(pool_size, widths[0], num_heads, output_dim)

    def forward(self, scales: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.fuse:
            u = None
            for k in range(len(scales) - 1, 0, -1):
                x = scales[k] if u is None else torch.cat([scales[k], u], dim=1)
                u = _pool_to(self.blocks[k](x), scales[k - 1].shape[-2:])
            h = self.blocks[0](torch.cat([scales[0], u], dim=1) if u is not None else scales[0])
        else:
            h = self.blocks[0](scales[0])
        h = _pool_to(h, (self.pool_size, self.pool_size))  # (B, w_0, s, s)
        return self.pool(h)


class DenseFlow(nn.Module):
    """The U-head's dense (up-sample) flow, "low2high" (METHODS.md §3.5).

    ``d_0 = Fuse(s_0)``; ``d_k = Fuse(cat(s_k, up(d_{k-1})))`` (bilinear to ``s_k``'s grid);
    then ``Conv2d(w_last, output_dim, 1)``.

    Args:
        channels: Channels of the scales, low to high resolution.
        widths: Fuse widths per scale, low to high.
        output_dim: Channels of the per-pixel embedding (the text feature width).

    Shapes:
        scales -> ``(B, output_dim, h_last, w_last)`` at the finest scale's grid.
    """

    def __init__(self, channels: Sequence[int], widths: Sequence[int], *,
                 output_dim: int = 768) -> None:
        super().__init__()
        if len(widths) != len(channels):
            raise ValueError(f"config['head']['widths'] = {list(widths)} is invalid: one width "
                             f"per scale ({len(channels)} scales of channels {list(channels)}).")
        self.blocks = nn.ModuleList(
            FuseBlock(channels[k] + (widths[k - 1] if k else 0), widths[k])
            for k in range(len(channels)))
        self.proj = nn.Conv2d(widths[-1], output_dim, 1)

    def forward(self, scales: Sequence[torch.Tensor]) -> torch.Tensor:
        d = self.blocks[0](scales[0])
        for k in range(1, len(scales)):
            up = F.interpolate(d, size=tuple(scales[k].shape[-2:]), mode="bilinear",
                               align_corners=False)
            d = self.blocks[k](torch.cat([scales[k], up], dim=1))
        return self.proj(d)


class AddFlow(nn.Module):
    """The S000 Table 6 baseline: per-scale ``Conv2d(C_k, width, 1, bias=False)``, every scale
    average-pooled to the lowest scale's grid, the maps averaged, ``AttentionPool2d``.

    Shapes:
        scales -> ``(B, output_dim)``.
    """

    def __init__(self, channels: Sequence[int], width: int = 512, *, pool_size: int = 4,
                 num_heads: int = 8, output_dim: int = 768) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.convs = nn.ModuleList(nn.Conv2d(c, width, 1, bias=False) for c in channels)
        self.pool = AttentionPool2d(pool_size, width, num_heads, output_dim)

    def forward(self, scales: Sequence[torch.Tensor]) -> torch.Tensor:
        size = (self.pool_size, self.pool_size)
        maps = [_pool_to(conv(s), size) for conv, s in zip(self.convs, scales)]
        return self.pool(torch.stack(maps).mean(dim=0))
