"""The Attention head of the text-free diffusion-features paper (S001 §3.1; METHODS.md §1.3).

Layer by layer, with the released code's choices as defaults (its config string
``Use_CLS_Token:True:1024,Insert_CLS_Token,Attention:1024:8:4:2,Extract_CLS_Token``,
``--norm_type layer --pre_pool_size 16``):

1. per tap a tokenizer: ``AdaptiveAvgPool2d(s)`` with ``s = min(S, 16)`` (identity when the map
   is already that small), ONE ``LayerNorm([C, s, s])`` over the whole map of each image (affine
   of shape ``(C, s, s)``, eps 1e-5), ``Conv2d(C, 1024, 1)``, tokens in row-major order;
2. a zero-initialised CLS parameter ``(1, 1, 1024)`` in front; no positional embedding;
3. 2 pre-norm ViT blocks (8 heads, MLP ratio 4, exact GELU, no dropout, qkv without bias);
4. no final norm; the CLS output -> ``Linear(1024 * T, num_labels)`` (T timesteps, their CLS
   outputs concatenated; T = 1 for the plain head).

The paper's per-token LayerNorm is ``norm="token"``; ``--norm_type batch`` is ``norm="batch"``.
The same machinery reads several taps (DifFormer, ``heads/difformer.py``) and a second trunk
pass (DifFeed, ``heads/diffeed.py``).

Image size: the tokenizer's LayerNorm is shaped by the map size ``s``, which depends on the image
size the model runs at. The task model supplies it as the task argument ``image_size`` (its
``preprocess.size``, else the network's native size), next to ``num_labels``; the map size of a tap
is ``image_size / feature_info[tap].stride``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head

__all__ = ["AttentionHead", "MapTokenizer", "TokenTransformerHead", "TransformerBlock",
           "map_size", "NORMS"]

#: Tokenizer normalisations: the released code's whole-map LayerNorm, the paper's per-token
#: LayerNorm, and ``--norm_type batch``.
NORMS = ("layer", "token", "batch")


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config['head'][{key!r}] = {value!r} is invalid: an integer >= 1.")
    return value


def map_size(info: FeatureInfo, image_size: Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` of a map tap at ``image_size`` ``(H, W)``: ``(H / stride, W / stride)``.

    Raises:
        ValueError: A tap without a stride, or an image size that is not a multiple of it.
    """
    if info.stride is None:
        raise ValueError(f"Tap {info.name!r} has no spatial grid (stride None); the token heads "
                         "read feature maps.")
    if any(s % info.stride for s in image_size):
        raise ValueError(f"image_size = {list(image_size)} is invalid for tap {info.name!r}: "
                         f"both sides must be multiples of its stride {info.stride}.")
    return image_size[0] // info.stride, image_size[1] // info.stride


class MapTokenizer(nn.Module):
    """Pool, normalise and project one tap's map into tokens (METHODS.md §1.3 steps 1-4).

    Args:
        channels: ``C`` of the map.
        size: ``(h, w)`` of the map at the model's image size.
        width: Token width (the 1x1 convolution's output channels).
        pool: Largest token grid side; larger maps are average-pooled to it.
        norm: ``"layer"`` (one LayerNorm over ``C x s x s``), ``"token"`` (LayerNorm over ``C``
            per position) or ``"batch"`` (``BatchNorm2d(C)``).
    """

    def __init__(self, channels: int, size: tuple[int, int], width: int, pool: int,
                 norm: str) -> None:
        super().__init__()
        self.size = tuple(size)
        self.grid = (min(size[0], pool), min(size[1], pool))
        self.pool = nn.AdaptiveAvgPool2d(self.grid) if self.grid != self.size else nn.Identity()
        self.norm_kind = norm
        if norm == "layer":
            self.norm = nn.LayerNorm([channels, *self.grid], eps=1e-5)
        elif norm == "token":
            self.norm = nn.LayerNorm(channels, eps=1e-5)
        else:
            self.norm = nn.BatchNorm2d(channels)
        self.proj = nn.Conv2d(channels, width, kernel_size=1)

    @property
    def num_tokens(self) -> int:
        """Tokens this tap contributes per image and timestep (``s_h * s_w``)."""
        return self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of one map.

        Args:
            x: ``(N, C, h, w)`` at the size the head was built for.

        Returns:
            ``(N, s_h * s_w, width)`` tokens in row-major order.

        Raises:
            ValueError: A map of another size (the model runs at another image size than the
                head was built for).
        """
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"The token head was built for {self.size[0]}x{self.size[1]} maps "
                             f"of this tap, got {tuple(x.shape)}: run the model at the image "
                             "size it was built for (config['preprocess']['size']).")
        x = self.pool(x)  # (N, C, s_h, s_w)
        if self.norm_kind == "token":
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over C
        else:
            x = self.norm(x)  # (N, C, s_h, s_w)
        x = self.proj(x)  # (N, width, s_h, s_w)
        return x.flatten(2).transpose(1, 2)  # (N, s_h * s_w, width)


class SelfAttention(nn.Module):
    """Multi-head self-attention: qkv without bias, scale ``head_dim ** -0.5``, proj with bias."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, width)`` -> ``(N, L, width)``."""
        n, length, width = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, head_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (N, heads, L, L)
        out = attn.softmax(dim=-1) @ v  # (N, heads, L, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, width))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` (METHODS.md §1.3 step 6).

    Args:
        width: Token width.
        num_heads: Attention heads (``width`` must divide by it).
        mlp_ratio: MLP hidden width over ``width``.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = SelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, width)`` -> ``(N, L, width)``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenTransformerHead(Head):
    """Tokenizers per tap, a shared CLS and transformer, and a Linear on the CLS outputs.

    The common part of the ``attention``, ``difformer`` and ``diffeed`` heads (not registered).
    Per timestep the token sets of the taps are concatenated in tap order behind the shared CLS
    token and run through the shared transformer; the CLS outputs of the T timesteps are
    concatenated and classified (S001 §3.2).

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``.
        num_labels: Number of classes (task argument).
        image_size: ``(H, W)`` the model runs at (task argument).
        taps: The taps tokenized, in order.
        width, depth, num_heads, mlp_ratio, pool, norm: See ``AttentionHead``.

    Raises:
        ValueError: A bad value, naming the key, the value and what is allowed.
    """

    task_arguments = ("num_labels", "image_size")

    def _build(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
               image_size: Sequence[int], taps: list[str] | None, *, width: int, depth: int,
               num_heads: int, mlp_ratio: float, pool: int, norm: str, head: str) -> None:
        for key, value in (("width", width), ("depth", depth), ("num_heads", num_heads),
                           ("pool", pool)):
            _positive_int(value, key)
        if width % num_heads:
            raise ValueError(f"config['head']['num_heads'] = {num_heads!r} is invalid: it must "
                             f"divide width = {width}.")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"config['head']['mlp_ratio'] = {mlp_ratio!r} is invalid: a number > 0.")
        if norm not in NORMS:
            raise ValueError(f"config['head']['norm'] = {norm!r} is invalid: one of {NORMS}.")
        _positive_int(num_labels, "num_labels")
        if not (isinstance(image_size, (list, tuple)) and len(image_size) == 2
                and all(isinstance(s, int) and s > 0 for s in image_size)):
            raise ValueError(f"image_size = {image_size!r} is invalid: [height, width] in pixels "
                             "(supplied by the task model).")
        infos = self.select_taps(feature_info, taps, ("map",), head)
        steps = {info.num_timesteps for info in infos}
        if len(steps) != 1:
            raise ValueError(f"The {head!r} head needs taps with one number of timesteps; got "
                             f"{sorted(steps)}.")
        self.taps = [info.name for info in infos]
        self.num_timesteps, self.width = steps.pop(), width
        self.tokenizers = nn.ModuleList(
            MapTokenizer(info.channels, map_size(info, image_size), width, pool, norm)
            for info in infos)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))  # zero init, as released
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_ratio)
                                    for _ in range(depth))
        self.classifier = nn.Linear(width * self.num_timesteps, num_labels)

    @property
    def num_tokens(self) -> int:
        """Sequence length per timestep, CLS included (257 for b=24 at 256 px)."""
        return 1 + sum(t.num_tokens for t in self.tokenizers)

    def tokens(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The transformer's input: ``(B * T, 1 + N, width)``, CLS first, then taps in order."""
        per_tap = []
        for name, tokenizer in zip(self.taps, self.tokenizers):
            x = features[name].float()
            x = x.unsqueeze(1) if x.ndim == 4 else x  # (B, T, C, h, w)
            # one timestep at a time: batch-norm statistics per timestep, as released
            per_tap.append(torch.stack([tokenizer(x[:, t]) for t in range(x.shape[1])], 1))
        tokens = torch.cat(per_tap, dim=2).flatten(0, 1)  # (B*T, N, width)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B*T, 1, width)
        return torch.cat([cls, tokens], dim=1)  # (B*T, 1+N, width)

    def forward(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> HeadOutput:
        """Class logits from the tapped maps.

        Args:
            features: ``{tap: (B, C, h, w)}``, or ``(B, T, C, h, w)`` with several timesteps.
            labels: ``(B,)`` class indices; gives a cross-entropy ``loss``.

        Returns:
            ``HeadOutput(logits (B, num_labels), loss)``.
        """
        x = self.tokens(features)  # (B*T, 1+N, width)
        for block in self.blocks:
            x = block(x)
        cls = x[:, 0].reshape(-1, self.num_timesteps * self.width)  # (B, T*width), t in order
        logits = self.classifier(cls)  # (B, num_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return HeadOutput(loss=loss, logits=logits)


@register_head("attention")
class AttentionHead(TokenTransformerHead):
    """The Attention head on one tap (S001 §3.1, METHODS.md §1.3).

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``; the tap must be a map.
        num_labels: Number of classes (supplied by the task model).
        image_size: ``(H, W)`` the model runs at (supplied by the task model: its
            ``preprocess.size``, else the network's native size).
        tap: The tap read (default: the backbone's only tap).
        width: Token width (1024).
        depth: Transformer blocks (2; the paper's Table 2 also has 1 and 4).
        num_heads: Attention heads (8; head_dim = width / num_heads).
        mlp_ratio: MLP hidden width over ``width`` (4).
        pool: Largest token grid side (16).
        norm: ``"layer"`` (default, whole-map LayerNorm), ``"token"`` or ``"batch"``.

    Raises:
        ValueError: A bad value (naming key, value and what is allowed), no ``tap`` when the
            backbone has several, or a tap that is not a map.

    Example:
        >>> head = build_head({"type": "attention"}, backbone.feature_info, num_labels=1000,
        ...                   image_size=[256, 256])
        >>> head.num_tokens                                   # 257 on ADM-256 block 24
    """

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 image_size: Sequence[int], tap: str | None = None, width: int = 1024,
                 depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4, pool: int = 16,
                 norm: str = "layer") -> None:
        super().__init__(feature_info)
        if tap is None:
            if len(feature_info) != 1:
                raise ValueError(f"config['head']['tap'] is missing: the {self.name!r} head reads "
                                 f"one tap and the backbone has {list(feature_info)}.")
            tap = next(iter(feature_info))
        if not isinstance(tap, str):
            raise ValueError(f"config['head']['tap'] = {tap!r} is invalid: one tap name of "
                             f"{list(feature_info)}.")
        self._build(feature_info, num_labels, image_size, [tap], width=width, depth=depth,
                    num_heads=num_heads, mlp_ratio=mlp_ratio, pool=pool, norm=norm,
                    head=self.name)
