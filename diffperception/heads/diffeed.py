"""DifFeed: the Attention head on a second trunk pass fed back from the first (S001 §3.3,
Fig. 6c, Table 4; METHODS.md §1.5).

Pass 1 (no gradients) runs the trunk on the noisy input ``x_t`` and keeps the decoder outputs of
the feedback sources. Each source b goes through a feedback layer ``Conv2d(C_dec, C_enc, 1,
bias=False) -> BatchNorm2d(C_enc) -> ReLU`` (the released code's ``C_B_R``) and is added, resized
bilinearly (``align_corners=False``) when the sizes differ, to the output of encoder block
``38 - b``; pass 2 runs on the same ``x_t`` (same noise, same t) with those additions, which also
reach the skip connections, and stops after the final tap (b = 24), where the Attention head
reads it. The mid block gets no feedback.

Strategies (ADM-256 block numbers b of ``METHODS.md`` §0.2, taps named ``adm.B``):

- ``bottleneck`` (default): sources {21, 24, 27, 30, 33, 36}, the middle output block of each
  decoder level; 2,759,680 feedback parameters;
- ``all``: sources 20..37; 7,622,144;
- ``windowed``: sources 20..24; 5,253,120.

Any other network takes explicit ``[[source tap, target tap], ...]`` pairs. Sources, targets and
the final tap must all be taps of the backbone, so that ``feature_info`` gives their module paths,
channels and strides.

The BatchNorm layers follow the head's mode: batch statistics while training (``model.train()``),
running statistics in eval mode (``model.eval()``, the default after loading).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..features.taps import FeatureInfo
from .attention import AttentionHead
from .base import register_head

__all__ = ["DifFeedHead", "STRATEGIES", "feedback_layer", "strategy_pairs"]

#: Decoder source blocks of each strategy (ADM-256 numbering; target = 38 - b).
STRATEGIES: dict[str, tuple[int, ...]] = {
    "bottleneck": (21, 24, 27, 30, 33, 36),
    "all": tuple(range(20, 38)),
    "windowed": (20, 21, 22, 23, 24),
}
ADM_MIRROR = 38  # encoder block of decoder block b: 38 - b (ADM-256 has 37 blocks)


def strategy_pairs(strategy: str) -> list[list[str]]:
    """``[[source tap, target tap], ...]`` of a strategy, in ``adm.B`` tap names."""
    return [[f"adm.{b}", f"adm.{ADM_MIRROR - b}"] for b in STRATEGIES[strategy]]


def feedback_layer(dec_channels: int, enc_channels: int) -> nn.Sequential:
    """``Conv2d(C_dec, C_enc, 1, bias=False) -> BatchNorm2d(C_enc) -> ReLU`` ("C_B_R")."""
    return nn.Sequential(nn.Conv2d(dec_channels, enc_channels, 1, bias=False),
                         nn.BatchNorm2d(enc_channels), nn.ReLU())


def _scaled(side: int, source_stride: int, target_stride: int) -> int:
    """A source map side converted to the target's grid (strides are powers of two)."""
    if source_stride >= target_stride:
        return side * (source_stride // target_stride)
    return side // (target_stride // source_stride)


def _check_pairs(feedback: object, feature_info: Mapping[str, FeatureInfo]) -> list[list[str]]:
    if isinstance(feedback, str):
        if feedback not in STRATEGIES:
            raise ValueError(f"config['head']['feedback'] = {feedback!r} is invalid: one of "
                             f"{sorted(STRATEGIES)} or a list of [source tap, target tap] pairs.")
        pairs = strategy_pairs(feedback)
    elif (isinstance(feedback, (list, tuple)) and feedback
          and all(isinstance(p, (list, tuple)) and len(p) == 2
                  and all(isinstance(t, str) for t in p) for p in feedback)):
        pairs = [list(p) for p in feedback]
    else:
        raise ValueError(f"config['head']['feedback'] = {feedback!r} is invalid: one of "
                         f"{sorted(STRATEGIES)} or a non-empty list of [source tap, target tap] "
                         "pairs.")
    needed = list(dict.fromkeys(t for pair in pairs for t in pair))
    missing = [t for t in needed if t not in feature_info]
    if missing:
        raise ValueError(f"config['head']['feedback'] = {feedback!r} needs the taps {missing}, "
                         f"which the backbone lacks: add them to config['features']['taps'] "
                         f"(it has {list(feature_info)}).")
    bad = [t for t in needed if feature_info[t].layout != "map" or feature_info[t].kind != "out"
           or feature_info[t].stride is None]
    if bad:
        raise ValueError(f"config['head']['feedback'] = {feedback!r} is invalid: {bad} are not "
                         "module outputs with a feature map (':out' taps of blocks).")
    return pairs


@register_head("diffeed")
class DifFeedHead(AttentionHead):
    """The Attention head on the final tap of a second trunk pass with feedback.

    The task model runs ``backbone.forward_two_pass(images, head.feedback,
    first_taps=head.first_taps, taps=head.taps)`` and gives the result to this head.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}``: the final tap, every source and
            every target.
        num_labels: Number of classes (supplied by the task model).
        image_size: ``(H, W)`` the model runs at (supplied by the task model).
        tap: The final tap, read from the second pass (``"adm.24"``).
        feedback: ``"bottleneck"``, ``"all"``, ``"windowed"`` (ADM-256 numbering, taps named
            ``adm.B``) or ``[[source tap, target tap], ...]``.
        width, depth, num_heads, mlp_ratio, pool, norm: As for the ``attention`` head.

    Raises:
        ValueError: An unknown strategy, a pair that is not two tap names, sources or targets
            that are not taps of the backbone, or a bad head value.

    Example:
        >>> head = build_head({"type": "diffeed"}, backbone.feature_info, num_labels=1000,
        ...                   image_size=[256, 256])
        >>> head.first_taps                   # ['adm.21', 'adm.24', ..., 'adm.36']
    """

    #: The task model runs the trunk twice for this head.
    two_pass = True

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 image_size: Sequence[int], tap: str = "adm.24",
                 feedback: str | Sequence[Sequence[str]] = "bottleneck", width: int = 1024,
                 depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4, pool: int = 16,
                 norm: str = "layer") -> None:
        super().__init__(feature_info, num_labels, image_size, tap=tap, width=width, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, pool=pool, norm=norm)
        pairs = _check_pairs(feedback, feature_info)
        self.pairs = pairs
        #: Taps of the first pass (the feedback sources, in order).
        self.first_taps = list(dict.fromkeys(source for source, _ in pairs))
        # (source tap, target module path, source stride, target stride) per layer
        self.links = [(s, feature_info[t].module, feature_info[s].stride, feature_info[t].stride)
                      for s, t in pairs]
        self.feedback_layers = nn.ModuleList(
            feedback_layer(feature_info[s].channels, feature_info[t].channels) for s, t in pairs)

    def feedback(self, first: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The second pass's injections from the first pass's features.

        Args:
            first: ``{source tap: (N, C_dec, h, w)}`` per trunk sample (N = T * E * B).

        Returns:
            ``{target module path: (N, C_enc, h', w')}`` added to those modules' outputs (sums
            where several sources feed one target).
        """
        injections: dict[str, torch.Tensor] = {}
        for (source, path, s_stride, t_stride), layer in zip(self.links, self.feedback_layers):
            x = first[source]
            fb = layer(x.float())  # (N, C_enc, h, w)
            size = (_scaled(x.shape[-2], s_stride, t_stride), _scaled(x.shape[-1], s_stride, t_stride))
            if tuple(fb.shape[-2:]) != size:
                fb = F.interpolate(fb, size=size, mode="bilinear", align_corners=False)
            fb = fb.to(x.dtype)
            injections[path] = injections[path] + fb if path in injections else fb
        return injections
