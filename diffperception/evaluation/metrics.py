"""Classification metrics, computed by ``torchmetrics``.

Only the input handling is ours: numpy or torch in, validated at the edge, a Python float out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_stat_scores

__all__ = ["accuracy"]


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
