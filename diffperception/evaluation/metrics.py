"""Classification metrics, computed by ``torchmetrics``.

Only the input handling is ours: numpy or torch in, validated at the edge, a Python float out,
and one rule torchmetrics leaves to ``torch.topk``: tied scores rank the lower class index first
(so a tie never counts for a label it could also count against).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_stat_scores

__all__ = ["accuracy", "topk_accuracy", "confusion_matrix"]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(value))
    raise TypeError(f"{name} must be a numpy array or a torch.Tensor, got {type(value).__name__}.")


def accuracy(preds: Any, target: Any, *, num_classes: int | None = None) -> float:
    """Top-1 accuracy: the fraction of samples whose prediction is their label.

    Counted by torchmetrics (``multiclass_stat_scores`` with ``average="micro"``, the counts
    behind ``MulticlassAccuracy(average="micro")``: every sample counts once, where torchmetrics'
    default ``"macro"`` would average per class). The ratio of the two integer counts is taken
    here, in double precision, so that e.g. 271 of 300 is exactly ``271 / 300`` rather than its
    float32 rounding.

    Args:
        preds: Predicted class indices ``(N,)`` (integers), or scores ``(N, K)`` (floats; the
            highest score per row is the prediction, ties going to the lower index). For
            errors where lower is better, pass ``-errors``.
        target: True class indices ``(N,)`` in ``[0, K)``.
        num_classes: ``K``. Default: ``preds.shape[1]`` for scores, else ``max(preds, target) + 1``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        TypeError: ``preds`` or ``target`` is not an array or tensor, or ``target`` is not integer.
        ValueError: Shapes disagree, no samples, or a label or prediction outside ``[0, K)``.

    Example:
        >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
        0.5
    """
    preds, target = _as_tensor(preds, "preds"), _as_tensor(target, "target")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
    if target.ndim != 1 or len(target) == 0:
        raise ValueError(f"target must be a non-empty (N,) vector, got shape {tuple(target.shape)}.")
    if preds.is_floating_point():
        if preds.ndim != 2:
            raise ValueError(f"Scores must be (N, K), got shape {tuple(preds.shape)}.")
        num_classes = preds.shape[1] if num_classes is None else num_classes
        if preds.shape[1] != num_classes:
            raise ValueError(f"Scores have {preds.shape[1]} columns but num_classes={num_classes}.")
    else:
        if preds.ndim != 1:
            raise ValueError(f"Class predictions must be (N,), got shape {tuple(preds.shape)}.")
        if num_classes is None:
            num_classes = int(max(preds.max(), target.max())) + 1
        if len(preds) and (preds.min() < 0 or preds.max() >= num_classes):
            raise ValueError(f"Predictions must lie in [0, {num_classes}), got "
                             f"[{int(preds.min())}, {int(preds.max())}].")
    if len(preds) != len(target):
        raise ValueError(f"{len(preds)} predictions for {len(target)} labels.")
    if target.min() < 0 or target.max() >= num_classes:
        raise ValueError(f"Labels must lie in [0, {num_classes}), got "
                         f"[{int(target.min())}, {int(target.max())}].")
    tp, _, _, fn, _ = multiclass_stat_scores(preds, target.long(), num_classes=num_classes,
                                             average="micro", top_k=1).tolist()
    return tp / (tp + fn)


def _check_scores(scores: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    scores, target = _as_tensor(scores, "scores"), _as_tensor(target, "target")
    if not scores.is_floating_point() or scores.ndim != 2:
        raise ValueError(f"scores must be float (N, K), got {scores.dtype} of shape "
                         f"{tuple(scores.shape)}.")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
    if target.ndim != 1 or len(target) == 0 or len(target) != len(scores):
        raise ValueError(f"target must be a non-empty (N,) vector with N = {len(scores)} (one per "
                         f"row of scores), got shape {tuple(target.shape)}.")
    if target.min() < 0 or target.max() >= scores.shape[1]:
        raise ValueError(f"Labels must lie in [0, {scores.shape[1]}), got "
                         f"[{int(target.min())}, {int(target.max())}].")
    return scores, target.long()


def _tie_free(scores: torch.Tensor) -> torch.Tensor:
    """Scores replaced by their rank, ties ranked by lower class index first: (N, K) floats."""
    order = torch.sort(-scores.double(), dim=1, stable=True).indices  # (N, K) best first
    k = scores.shape[1]
    ranks = torch.arange(k, 0, -1, dtype=torch.float64).expand_as(order)  # K for the best
    return torch.empty_like(ranks).scatter_(1, order, ranks)


def topk_accuracy(scores: Any, target: Any, k: int = 5) -> float:
    """Top-k accuracy: the fraction of samples whose label is among their ``k`` best scores.

    Counted by torchmetrics (``multiclass_stat_scores(top_k=k, average="micro")``, the counts
    behind ``MulticlassAccuracy(top_k=k, average="micro")``). Ties are ranked here first, lower
    class index ahead (as ``accuracy`` breaks top-1 ties), so the result does not depend on how
    ``torch.topk`` orders equal values. With ``k >= K`` every sample counts as right.

    Args:
        scores: ``(N, K)`` float scores (higher is better; pass ``-errors`` for errors).
        target: ``(N,)`` integer labels in ``[0, K)``.
        k: How many of the best classes count.

    Returns:
        Top-k accuracy in ``[0, 1]``.

    Raises:
        TypeError: Not arrays or tensors, or a float ``target``.
        ValueError: Bad shapes, labels outside ``[0, K)``, or ``k < 1``.

    Example:
        >>> topk_accuracy(np.array([[0.5, 0.5, 0.1]]), np.array([1]), k=1)   # tie -> class 0
        0.0
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    scores, target = _check_scores(scores, target)
    num_classes = scores.shape[1]
    if k >= num_classes:
        return 1.0
    tp, _, _, fn, _ = multiclass_stat_scores(_tie_free(scores), target, num_classes=num_classes,
                                             average="micro", top_k=k).tolist()
    return tp / (tp + fn)


def confusion_matrix(preds: Any, target: Any, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, by torchmetrics.

    Args:
        preds: ``(N,)`` predicted class indices, or ``(N, K)`` scores (top-1, ties to the
            lower index).
        target: ``(N,)`` true class indices.
        num_classes: ``K``.

    Returns:
        ``(K, K)`` int64 array: row = true class, column = predicted class; it sums to ``N``.

    Raises:
        TypeError, ValueError: As for :func:`accuracy`.
    """
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    preds, target = _as_tensor(preds, "preds"), _as_tensor(target, "target")
    if preds.is_floating_point():
        scores, target = _check_scores(preds, target)
        preds = scores.argmax(dim=1)  # first maximum: ties go to the lower index
    accuracy(preds, target, num_classes=num_classes)  # validates shapes and ranges
    matrix = multiclass_confusion_matrix(preds.long(), target.long(), num_classes=num_classes)
    return matrix.numpy().astype(np.int64)
