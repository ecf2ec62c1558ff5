"""Losses of image-text matching over a table of scores (Discffusion, METHODS.md §2.6).

The score table has one row per query and one column per candidate: ``scores[b, m]`` is the
match score (higher = better match) of query ``b`` with candidate ``m``, and
``positive_index[b]`` says which candidate of row ``b`` is the true match. A query is a text and
the candidates images (ComVG: one sentence, its image and the negative image), or a query is an
image and the candidates texts (RefCOCOg: one image, ten expressions); the loss does not care.

- ``"triplet"`` (default; S002 Eq. 6 with ``d = -score``, the released code's
  ``utils/losses.py``): the hardest negative of each row (the highest-scoring non-positive
  candidate) against the positive, ``mean_b max(0, neg_b - pos_b + margin)`` with margin 0.1
  (the released code's ``--margin`` default; the paper leaves M unspecified). The released code
  hard-codes the positive at column 0; ``positive_index`` generalises it (default 0).
- ``"cross_entropy"`` (S002 App. F.7 / Table 11, "CE"): softmax cross-entropy of each row
  against its positive, scores divided by ``temperature``.

The hinge itself is ``torch.nn.functional.margin_ranking_loss`` (``max(0, -y (x1 - x2) +
margin)`` with ``x1 = pos``, ``x2 = hardest negative``, ``y = 1``) and the cross-entropy
``torch.nn.functional.cross_entropy``; picking the hardest negative is the only code here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MATCHING_LOSSES", "DEFAULT_MARGIN", "MatchingLoss", "hardest_negative_triplet_loss",
           "matching_loss", "positive_and_hardest_negative"]

#: The released code's margin (``dsd_train.py --margin``, default 0.1).
DEFAULT_MARGIN = 0.1
MATCHING_LOSSES = ("triplet", "cross_entropy")
Reduction = Literal["mean", "sum", "none"]


def _positive_index(scores: torch.Tensor, positive_index: int | torch.Tensor) -> torch.Tensor:
    """``positive_index`` as a ``(B,)`` long tensor on ``scores``' device, checked."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor of shape (B, M), got "
                        f"{type(scores).__name__}.")
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, M) with M >= 2 candidates per row (one positive, at "
                         f"least one negative), got shape {tuple(scores.shape)}.")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}.")
    index = torch.as_tensor(positive_index, device=scores.device)
    if index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"positive_index must be an integer or an integer tensor, got "
                        f"{index.dtype}.")
    index = index.long().expand(scores.shape[0]) if index.ndim == 0 else index.long()
    if index.shape != (scores.shape[0],):
        raise ValueError(f"positive_index must be one integer or (B,) = ({scores.shape[0]},) "
                         f"integers, got shape {tuple(index.shape)}.")
    if len(index) and (index.min() < 0 or index.max() >= scores.shape[1]):
        raise ValueError(f"positive_index must lie in [0, {scores.shape[1]}) (the candidates of a "
                         f"row), got values in [{int(index.min())}, {int(index.max())}].")
    return index


def positive_and_hardest_negative(scores: torch.Tensor, positive_index: int | torch.Tensor = 0
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's positive score and its highest non-positive score.

    Args:
        scores: ``(B, M)`` match scores, higher = better, ``M >= 2``.
        positive_index: Column of each row's positive: one integer for all rows (default 0, the
            released code's layout) or a ``(B,)`` integer tensor.

    Returns:
        ``(pos, neg)``, each ``(B,)``; gradients flow into both picked entries.

    Raises:
        TypeError: ``scores`` not a floating tensor, or a non-integer ``positive_index``.
        ValueError: A shape other than ``(B, M >= 2)`` or an index outside ``[0, M)``.
    """
    index = _positive_index(scores, positive_index)
    pos = scores.gather(1, index[:, None]).squeeze(1)  # (B,)
    is_pos = F.one_hot(index, scores.shape[1]).bool()  # (B, M)
    neg = scores.masked_fill(is_pos, float("-inf")).amax(dim=1)  # (B,)
    return pos, neg


def hardest_negative_triplet_loss(scores: torch.Tensor, positive_index: int | torch.Tensor = 0, *,
                                  margin: float = DEFAULT_MARGIN,
                                  reduction: Reduction = "mean") -> torch.Tensor:
    """``max(0, neg - pos + margin)`` per row, the hardest negative per row (S002 Eq. 6).

    Zero for a row whose positive beats every negative by at least ``margin``.

    Args:
        scores: ``(B, M)`` match scores (higher = better).
        positive_index: See :func:`positive_and_hardest_negative` (default 0).
        margin: ``M`` of Eq. 6, ``>= 0`` (default 0.1, the released code's).
        reduction: ``"mean"`` (the released code's), ``"sum"`` or ``"none"`` (``(B,)``).

    Returns:
        The loss: a scalar, or ``(B,)`` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: See :func:`positive_and_hardest_negative`; a negative margin or an
            unknown reduction.

    Example:
        >>> hardest_negative_triplet_loss(torch.tensor([[1.0, 0.95, 0.2]]))  # 0.95 - 1 + 0.1
        tensor(0.0500)
    """
    if float(margin) < 0:
        raise ValueError(f"margin = {margin!r} is invalid: a number >= 0.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction = {reduction!r} is invalid: 'mean', 'sum' or 'none'.")
    pos, neg = positive_and_hardest_negative(scores, positive_index)
    return F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=float(margin),
                                 reduction=reduction)


def matching_loss(scores: torch.Tensor, positive_index: int | torch.Tensor = 0, *,
                  kind: str = "triplet", margin: float = DEFAULT_MARGIN,
                  temperature: float = 1.0, reduction: Reduction = "mean") -> torch.Tensor:
    """The matching loss of a score table: hardest-negative triplet or cross-entropy.

    Args:
        scores: ``(B, M)`` match scores, row = query, column = candidate (higher = better).
        positive_index: Column of each row's true match (int or ``(B,)``; default 0).
        kind: ``"triplet"`` (default, S002 Eq. 6) or ``"cross_entropy"`` (S002 Table 11, "CE").
        margin: Triplet margin (default 0.1).
        temperature: Cross-entropy logits are ``scores / temperature`` (default 1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss (scalar, or ``(B,)`` with ``reduction="none"``).

    Raises:
        TypeError, ValueError: Bad scores or indices (see
            :func:`positive_and_hardest_negative`), an unknown ``kind`` or reduction, a negative
            margin or a non-positive temperature.
    """
    if kind == "triplet":
        return hardest_negative_triplet_loss(scores, positive_index, margin=margin,
                                             reduction=reduction)
    if kind != "cross_entropy":
        raise ValueError(f"kind = {kind!r} is unknown; choose one of {list(MATCHING_LOSSES)}.")
    if not float(temperature) > 0:
        raise ValueError(f"temperature = {temperature!r} is invalid: a number > 0.")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction = {reduction!r} is invalid: 'mean', 'sum' or 'none'.")
    index = _positive_index(scores, positive_index)
    return F.cross_entropy(scores / float(temperature), index, reduction=reduction)


class MatchingLoss(nn.Module):
    """:func:`matching_loss` as a module (its settings fixed at construction).

    Example:
        >>> loss_fn = MatchingLoss("triplet", margin=0.1)
        >>> loss = loss_fn(scores)          # scores (B, M), positives in column 0
    """

    def __init__(self, kind: str = "triplet", *, margin: float = DEFAULT_MARGIN,
                 temperature: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if kind not in MATCHING_LOSSES:
            raise ValueError(f"kind = {kind!r} is unknown; choose one of {list(MATCHING_LOSSES)}.")
        self.kind, self.margin, self.temperature, self.reduction = (kind, float(margin),
                                                                    float(temperature), reduction)

    def forward(self, scores: torch.Tensor, positive_index: int | torch.Tensor = 0
                ) -> torch.Tensor:
        return matching_loss(scores, positive_index, kind=self.kind, margin=self.margin,
                             temperature=self.temperature, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, margin={self.margin}, temperature={self.temperature}"
