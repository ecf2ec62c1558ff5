"""Discffusion's image-text score from pre-softmax cross-attention scores (METHODS.md §2.2-2.3).

For each selected cross-attention layer ``l`` (an ``attn2``, tapped as ``<path>:logits``), heads
``h``, image tokens ``i`` (queries) and text tokens ``j`` (keys, padding included), with
``L[l,h,i,j] = q_{h,i} . k_{h,j} / sqrt(d)``:

- ``pool="text"`` (the released code, ``attention_processor.py:412``, default):
  ``s_lh = mean_i (1/lam) log sum_j exp(lam L[l,h,i,j])``;
- ``pool="image"`` (the paper, S002 §4.4 Eq. 3-4):
  ``s_lh = mean_j (1/lam) log sum_i exp(lam L[l,h,i,j])``;

then ``s_l = sum_h w_lh s_lh`` with ``w_l = softmax(head_logits_l)`` (uniform, i.e. the
released code's mean over heads, unless ``head_weights`` learns them: the paper's "dynamic
attention head weighting", unspecified by the authors, METHODS §2.3), and the score is the mean
of ``s_l`` over the layers (equal weight per layer, as the released code). One score per sample:
the released code's batch- and CFG-half-averaged scalar (METHODS §2.2) is a bug, not an option.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head

__all__ = ["CrossAttentionScoreHead", "POOLS", "LAYER_SELECTIONS", "attention_score",
           "cross_attention_taps"]

POOLS = ("text", "image")
#: ``"all"``: every cross-attention (the paper: 16 in SD 2.x); ``"released_code"``: the last
#: cross-attention block of each stage, all its attentions (6 in SD 2.x, METHODS §2.2).
LAYER_SELECTIONS = ("all", "released_code")


def attention_score(logits: torch.Tensor, *, pool: str = "text", lam: float = 1.0,
                    head_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The score of one layer: LogSumExp pooling, then the mean over the other axis and heads.

    Args:
        logits: Pre-softmax scores ``(S, heads, image tokens, text tokens)``.
        pool: ``"text"`` (LSE over text tokens) or ``"image"`` (LSE over image tokens).
        lam: LSE sharpness ``lambda`` (> 0; 1 in both paper and code).
        head_weights: ``(heads,)`` weights summing to 1 (None: the mean over heads).

    Returns:
        ``(S,)`` float32 scores.
    """
    x = logits.float() * lam
    pooled = torch.logsumexp(x, dim=-1 if pool == "text" else -2) / lam  # (S, h, Q or K)
    per_head = pooled.mean(dim=-1)  # (S, h)
    if head_weights is None:
        return per_head.mean(dim=-1)
    return per_head @ head_weights.to(per_head.dtype)  # (S,)


@register_head("cross_attention_score")
class CrossAttentionScoreHead(Head):
    """Image-text matching score from the ``:logits`` taps of cross-attention layers.

    Args:
        feature_info: The backbone's taps; the ``:logits`` taps of cross-attentions are used.
        taps: The taps to score (default: every ``:logits`` tap of the backbone).
        pool: ``"text"`` (released code, default) or ``"image"`` (paper).
        lam: LSE sharpness ``lambda`` (> 0).
        head_weights: Learn per-layer head weights (softmax of zero-initialised logits, i.e.
            uniform at first).

    Raises:
        ValueError: No ``:logits`` tap, an unknown pool, a non-positive ``lam``.

    Example:
        >>> head = build_head({"type": "cross_attention_score", "pool": "image"}, feature_info)
        >>> head({tap: logits (S, h, Q, K), ...}).logits      # (S,) one score per sample
    """

    output_key = "logits"

    def __init__(self, feature_info: Mapping[str, FeatureInfo], taps: list[str] | None = None,
                 pool: str = "text", lam: float = 1.0, head_weights: bool = False) -> None:
        super().__init__(feature_info)
        if taps is None:
            taps = [name for name, info in feature_info.items() if info.kind == "logits"]
        if not taps:
            raise ValueError("The 'cross_attention_score' head needs ':logits' taps of "
                             "cross-attention layers (e.g. '...transformer_blocks.0.attn2:logits');"
                             " see diffperception.heads.cross_attention_score.cross_attention_taps.")
        infos = self.select_taps(feature_info, list(taps), ("attention",), self.name)
        not_logits = [i.name for i in infos if i.kind != "logits"]
        if not_logits:
            raise ValueError(f"config['head']['taps'] = {taps!r} is invalid: {not_logits} are not "
                             "':logits' taps (pre-softmax scores).")
        if pool not in POOLS:
            raise ValueError(f"config['head']['pool'] = {pool!r} is invalid: one of {POOLS} "
                             "('text': the released code, 'image': the paper).")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
            raise ValueError(f"config['head']['lam'] = {lam!r} is invalid: a number > 0.")
        self.taps, self.pool, self.lam = [i.name for i in infos], pool, float(lam)
        self.head_logits = None
        if head_weights:
            self.head_logits = nn.ParameterList(
                [nn.Parameter(torch.zeros(i.channels)) for i in infos])  # (heads,) per layer

    def layer_head_weights(self, index: int) -> torch.Tensor | None:
        """Head weights of layer ``index`` (``softmax``), or None for the uniform mean."""
        if self.head_logits is None:
            return None
        return self.head_logits[index].softmax(dim=0)

    def forward(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None = None
                ) -> HeadOutput:
        """``HeadOutput(logits=(S,))``: one score per trunk sample (higher = better match).

        Raises:
            ValueError: Labels were given (the matching loss lives with the task model).
        """
        if labels is not None:
            raise ValueError("The 'cross_attention_score' head computes no loss; train the "
                             "matching model on score tables.")
        scores = [attention_score(features[tap], pool=self.pool, lam=self.lam,
                                  head_weights=self.layer_head_weights(i))
                  for i, tap in enumerate(self.taps)]
        return HeadOutput(logits=torch.stack(scores).mean(dim=0))


def cross_attention_taps(network: nn.Module, layers: str = "all") -> list[str]:
    """The ``:logits`` taps of a U-Net's cross-attention layers, in module order.

    Args:
        network: A (meta or loaded) ``UNet2DConditionModel``.
        layers: ``"all"`` (every ``attn2``; SD 2.x: 16) or ``"released_code"`` (for each of
            down / mid / up, the last block with cross-attention, the last transformer block
            of each of its attentions; SD 2.x: ``down_blocks.2.attentions.{0,1}``,
            ``mid_block.attentions.0``, ``up_blocks.3.attentions.{0,1,2}``).

    Raises:
        ValueError: Unknown selection, or a network without cross-attention.
    """
    from diffusers.models.attention_processor import Attention

    if layers not in LAYER_SELECTIONS:
        raise ValueError(f"layers = {layers!r} is invalid: one of {LAYER_SELECTIONS}.")
    if layers == "all":
        order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}  # execution order
        taps = sorted((f"{name}:logits" for name, m in network.named_modules()
                       if isinstance(m, Attention) and m.is_cross_attention),
                      key=lambda tap: order.get(tap.split(".")[0], 3))
    else:
        taps = []
        stages = [("down_blocks", list(network.down_blocks)), ("mid_block", [network.mid_block]),
                  ("up_blocks", list(network.up_blocks))]
        for stage, blocks in stages:
            indices = [i for i, b in enumerate(blocks)
                       if b is not None and getattr(b, "has_cross_attention", False)]
            if not indices:
                continue
            index = indices[-1]
            prefix = stage if stage == "mid_block" else f"{stage}.{index}"
            for j, attention in enumerate(blocks[index].attentions):
                last = len(attention.transformer_blocks) - 1
                taps.append(f"{prefix}.attentions.{j}.transformer_blocks.{last}.attn2:logits")
    if not taps:
        raise ValueError("This network has no cross-attention layer; Discffusion scores need a "
                         "text-conditioned U-Net.")
    return taps
