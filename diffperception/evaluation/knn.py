"""Weighted k-nearest-neighbour classification on pooled features (DINO's rule).

The text-free diffusion-features paper (S001, Table 9) reports kNN top-1 / top-5 with k = 20
and k = 200 on pooled features, but states neither the neighbour weighting nor a temperature,
and its released code has no kNN. We use DINO's weighted kNN (Caron et al. 2021,
``eval_knn.py``), the usual protocol of self-supervised papers of that time:

1. L2-normalise train and test features; similarity = cosine (a dot product).
2. Take each test sample's ``k`` most similar train samples.
3. Weight each neighbour by ``exp(similarity / T)``, ``T = 0.07``; a class's score is the sum of
   its neighbours' weights.
4. Top-1 / top-5 from those scores (:func:`~diffperception.evaluation.metrics.topk_accuracy`).

What is ours: the batching over test rows and the mapping of label values onto ``0..K-1``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import accuracy, topk_accuracy

__all__ = ["KNN_K", "KNN_TEMPERATURE", "knn_scores", "knn_accuracy"]

#: The k of S001 Table 9.
KNN_K = (20, 200)
#: DINO's temperature (not stated by S001).
KNN_TEMPERATURE = 0.07


def _table(x: Any, name: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{name} must be (N, ...) with N >= 1 samples, got shape "
                         f"{tuple(x.shape)}.")
    return x.reshape(len(x), -1)


def knn_scores(train_x: Any, train_y: Any, test_x: Any, *, k: int, num_classes: int,
               temperature: float = KNN_TEMPERATURE, batch_size: int = 1024) -> np.ndarray:
    """Class scores of DINO's weighted kNN (see the module docstring).

    Args:
        train_x: ``(N, ...)`` train features (trailing dimensions are flattened).
        train_y: ``(N,)`` train labels in ``[0, num_classes)``.
        test_x: ``(M, ...)`` test features, the same trailing size.
        k: Neighbours per test sample (``1 <= k <= N``).
        num_classes: ``K``.
        temperature: ``T`` of the weights ``exp(cos / T)``.
        batch_size: Test rows per similarity block (memory bound: ``batch_size x N`` floats).

    Returns:
        ``(M, K)`` float64 scores: per class, the summed weights of its neighbours.

    Raises:
        ValueError: Bad shapes, ``k`` outside ``[1, N]``, a label outside ``[0, K)``, or a
            non-positive temperature.
    """
    train, test = _table(train_x, "train_x"), _table(test_x, "test_x")
    labels = torch.as_tensor(np.asarray(train_y)).long()
    if labels.shape != (len(train),):
        raise ValueError(f"train_y must be ({len(train)},), one label per row of train_x, got "
                         f"shape {tuple(labels.shape)}.")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_x has {train.shape[1]} features per sample, test_x "
                         f"{test.shape[1]}.")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(train):
        raise ValueError(f"k = {k!r} is invalid: an integer in [1, {len(train)}] (the number of "
                         "train samples).")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"train_y must lie in [0, {num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}].")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    train, test = F.normalize(train.double(), dim=1), F.normalize(test.double(), dim=1)
    out = []
    for start in range(0, len(test), batch_size):
        similarity = test[start: start + batch_size] @ train.T  # (m, N) cosine
        top_sim, top_idx = similarity.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()  # (m, k)
        scores = torch.zeros(len(top_idx), num_classes, dtype=torch.float64)
        out.append(scores.scatter_add_(1, labels[top_idx], weights))  # (m, K)
    return torch.cat(out).numpy()


def knn_accuracy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *,
                 ks: Sequence[int] = KNN_K, temperature: float = KNN_TEMPERATURE
                 ) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy of DINO's weighted kNN for each ``k`` (S001 Table 9's protocol).

    The paper does not state the weighting or the temperature; these are DINO's (module
    docstring). Labels may be any values; they are mapped onto ``0..K-1`` over train and test.

    Args:
        train_x: ``(N, ...)`` train features.
        train_y: ``(N,)`` train labels.
        test_x: ``(M, ...)`` test features.
        test_y: ``(M,)`` test labels.
        ks: The neighbour counts (each in ``[1, N]``).
        temperature: ``T`` of the weights.

    Returns:
        ``{k: {"top1": float, "top5": float}}``.

    Raises:
        ValueError: Bad shapes or a ``k`` outside ``[1, N]`` (see :func:`knn_scores`).

    Example:
        >>> knn_accuracy(train_feats, train_labels, test_feats, test_labels, ks=[20])
        {20: {'top1': 0.97, 'top5': 1.0}}
    """
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if test_y.shape != (len(np.asarray(test_x)),):
        raise ValueError(f"test_y must be ({len(np.asarray(test_x))},), one label per row of "
                         f"test_x, got shape {test_y.shape}.")
    classes = np.unique(np.concatenate([train_y, test_y]))
    train_idx, test_idx = np.searchsorted(classes, train_y), np.searchsorted(classes, test_y)
    results = {}
    for k in ks:
        scores = knn_scores(train_x, train_idx, test_x, k=k, num_classes=len(classes),
                            temperature=temperature)
        results[int(k)] = {"top1": accuracy(scores, test_idx, num_classes=len(classes)),
                           "top5": topk_accuracy(scores, test_idx, k=5)}
    return results
