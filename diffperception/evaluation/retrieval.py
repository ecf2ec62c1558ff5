"""Zero-shot sketch-based image retrieval (ZS-SBIR) metrics: mAP@all, mAP@K, P@K.

Queries (sketches) rank a gallery (photos) by cosine similarity of their L2-normalised
embeddings; a gallery item is relevant to a query when it has the query's class
(METHODS.md §3.9). Two families of mAP are reported, because the literature uses both:

- **query-averaged, non-interpolated** (``map@all``, ``map@200``): the AP of each query is the
  mean precision at the ranks of its relevant items (torchmetrics'
  ``retrieval_average_precision``; at ``top_k`` the mean over the relevant items found in the
  first ``top_k``, as scikit-learn's ``average_precision_score`` on the truncated list), and the
  mAP is the mean over queries. This is the usual definition (Yelamarthi et al. 2018 for
  mAP@200; SAKE, Liu et al. 2019, for mAP@all).
- **class-averaged, VOC-interpolated** (``map@all_class_voc``, ``map@200_class_voc``): what the
  released Vermouth code computes (``SBIR/utils_sbir/evaluate.py``, METHODS.md §3.9, §3.10 item
  10). The AP of a query is PASCAL-VOC's: precision is replaced by the best precision at any
  later rank, summed over the recall steps; at ``top_k`` the recall is divided by
  ``min(top_k, number of relevant items)``. The mAP is the mean over classes of the mean AP of
  that class's queries.

P@K (``p@100``, ``p@200``) is the fraction of the first K items that are relevant
(torchmetrics' ``retrieval_precision``), averaged over queries.

Ties: gallery items with equal similarity are ranked in gallery order (the lower index first),
so every metric is deterministic. Scores are replaced by these tie-free ranks before they reach
torchmetrics, whose ``topk`` leaves the order of ties unspecified and which counts an item with a
score <= 0 as not relevant (cosine similarities can be negative).

Example:
    >>> metrics = retrieval_metrics(sketch_embeddings, sketch_labels,
    ...                             photo_embeddings, photo_labels)
    >>> metrics["map@all"], metrics["map@200"], metrics["p@100"]
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .metrics import _as_tensor

__all__ = ["average_precision", "precision_at_k", "class_mean", "retrieval_metrics",
           "tie_free_ranks", "INTERPOLATIONS"]

#: ``"none"``: mean precision at the relevant ranks; ``"voc"``: PASCAL-VOC interpolated precision.
INTERPOLATIONS = ("none", "voc")


def _check_pair(scores: Any, relevant: Any) -> tuple[torch.Tensor, torch.Tensor]:
    scores, relevant = _as_tensor(scores, "scores"), _as_tensor(relevant, "relevant")
    if not scores.is_floating_point() or scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be float (Q, G) with G >= 1 (one row per query, one column "
                         f"per gallery item), got {scores.dtype} of shape {tuple(scores.shape)}.")
    if relevant.shape != scores.shape:
        raise ValueError(f"relevant must have the shape of scores {tuple(scores.shape)}, got "
                         f"{tuple(relevant.shape)}.")
    if relevant.dtype != torch.bool:
        if relevant.is_floating_point() or not bool(((relevant == 0) | (relevant == 1)).all()):
            raise ValueError("relevant must be boolean (or integer 0 / 1).")
        relevant = relevant.bool()
    return scores, relevant


def _check_k(k: int | None, name: str) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} = {k!r} is invalid: a positive integer, or None for all.")
    return k


def tie_free_ranks(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gallery order of each query, ties broken by gallery index.

    Args:
        scores: ``(Q, G)`` similarities (higher ranks first).

    Returns:
        ``(order, rank_scores)``: ``order`` ``(Q, G)`` int64 gallery indices, best first (a
        stable sort, so equal scores keep gallery order); ``rank_scores`` ``(Q, G)`` float64,
        ``G`` for the best item down to ``1`` for the last: the same order without ties and
        with every score positive.
    """
    order = torch.sort(-scores, dim=1, stable=True).indices  # (Q, G); negation is exact
    g = scores.shape[1]
    ranks = torch.arange(g, 0, -1, dtype=torch.float64).expand_as(order)  # (Q, G)
    return order, torch.empty_like(ranks).scatter_(1, order, ranks)


def _voc_average_precision(order: torch.Tensor, relevant: torch.Tensor,
                           top_k: int | None) -> torch.Tensor:
    """PASCAL-VOC interpolated AP per query (METHODS.md §3.9): ``(Q,)`` float64."""
    hits = relevant.gather(1, order).double()  # (Q, G) relevance in rank order
    total = relevant.sum(1).double()  # (Q,)
    if top_k is not None:
        hits = hits[:, :top_k]
        total = total.clamp(max=top_k)  # the released code's min(top_k, relevant)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    precision = hits.cumsum(1) / ranks  # (Q, K)
    # best precision at this rank or any later one
    interpolated = precision.flip(1).cummax(1).values.flip(1)  # (Q, K)
    ap = (hits * interpolated).sum(1) / total.clamp(min=1)
    return torch.where(total > 0, ap, torch.zeros_like(ap))


def average_precision(scores: Any, relevant: Any, *, top_k: int | None = None,
                      interpolation: str = "none") -> torch.Tensor:
    """Average precision of every query.

    Args:
        scores: ``(Q, G)`` similarities of each query to each gallery item (higher is closer).
        relevant: ``(Q, G)`` booleans: gallery item is relevant to the query.
        top_k: Only the first ``top_k`` ranks count (mAP@K); None counts them all (mAP@all).
        interpolation: ``"none"``: mean precision at the ranks of the relevant items found
            (torchmetrics' ``retrieval_average_precision``); ``"voc"``: PASCAL-VOC interpolated
            precision with recall divided by ``min(top_k, relevant items)`` (the released
            Vermouth code, METHODS.md §3.9).

    Returns:
        ``(Q,)`` float64 APs in [0, 1]; 0 for a query with no relevant item (torchmetrics'
        convention).

    Raises:
        TypeError: Not arrays or tensors.
        ValueError: Bad shapes, non-boolean ``relevant``, a bad ``top_k`` or ``interpolation``.

    Example:
        >>> average_precision([[0.9, 0.8, 0.7]], [[False, True, True]])
        tensor([0.5833], dtype=torch.float64)
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation = {interpolation!r} is invalid: one of {INTERPOLATIONS}.")
    top_k = _check_k(top_k, "top_k")
    scores, relevant = _check_pair(scores, relevant)
    return _average_precision(*tie_free_ranks(scores), relevant, top_k, interpolation)


def _average_precision(order: torch.Tensor, rank_scores: torch.Tensor, relevant: torch.Tensor,
                       top_k: int | None, interpolation: str) -> torch.Tensor:
    if interpolation == "voc":
        return _voc_average_precision(order, relevant, top_k)
    from torchmetrics.functional.retrieval import retrieval_average_precision

    return torch.stack([retrieval_average_precision(rank_scores[q], relevant[q], top_k=top_k)
                        for q in range(len(rank_scores))]).double()


def precision_at_k(scores: Any, relevant: Any, k: int) -> torch.Tensor:
    """Fraction of each query's first ``k`` gallery items that are relevant (P@K).

    Computed by torchmetrics' ``retrieval_precision`` (denominator ``k`` even when the gallery
    is smaller, as in the literature) on the tie-free ranks.

    Args:
        scores: ``(Q, G)`` similarities.
        relevant: ``(Q, G)`` booleans.
        k: The cut-off.

    Returns:
        ``(Q,)`` float64 precisions in [0, 1].

    Raises:
        TypeError, ValueError: As for :func:`average_precision`.
    """
    k = _check_k(k, "k")
    if k is None:
        raise ValueError("k = None is invalid for P@K: a positive integer.")
    scores, relevant = _check_pair(scores, relevant)
    return _precision_at_k(tie_free_ranks(scores)[1], relevant, k)


def _precision_at_k(rank_scores: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    from torchmetrics.functional.retrieval import retrieval_precision

    return torch.stack([retrieval_precision(rank_scores[q], relevant[q], top_k=k)
                        for q in range(len(rank_scores))]).double()


def class_mean(values: Any, labels: Any) -> float:
    """Mean over classes of the mean value of each class's queries (the released code's mAP).

    Args:
        values: ``(Q,)`` per-query values.
        labels: ``(Q,)`` query classes (any integers).

    Returns:
        The class-averaged mean.

    Raises:
        ValueError: Lengths differ or nothing to average.
    """
    values = _as_tensor(values, "values").double()
    labels = _as_tensor(labels, "labels")
    if values.ndim != 1 or labels.shape != values.shape or len(values) == 0:
        raise ValueError(f"values and labels must be non-empty (Q,) vectors of one length, got "
                         f"{tuple(values.shape)} and {tuple(labels.shape)}.")
    return float(torch.stack([values[labels == c].mean() for c in labels.unique()]).mean())


def _check_embeddings(embeddings: Any, labels: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = _as_tensor(embeddings, f"{name} embeddings"), _as_tensor(labels, name)
    if not embeddings.is_floating_point() or embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"{name} embeddings must be a non-empty float (N, D) matrix, got "
                         f"{embeddings.dtype} of shape {tuple(embeddings.shape)}.")
    if labels.is_floating_point() or labels.shape != (len(embeddings),):
        raise ValueError(f"{name} labels must be ({len(embeddings)},) integers (one per "
                         f"embedding), got {labels.dtype} of shape {tuple(labels.shape)}.")
    return F.normalize(embeddings.float(), dim=1), labels.long()


def _metric_keys(map_at: Sequence[int | None], precision_at: Sequence[int]) -> None:
    for k in map_at:
        _check_k(k, "map_at entry")
    for k in precision_at:
        if _check_k(k, "precision_at entry") is None:
            raise ValueError("precision_at entries must be positive integers.")


def _name(k: int | None) -> str:
    return "all" if k is None else str(k)


@torch.no_grad()
def retrieval_metrics(query_embeddings: Any, query_labels: Any, gallery_embeddings: Any,
                      gallery_labels: Any, *, map_at: Sequence[int | None] = (None, 200),
                      precision_at: Sequence[int] = (100, 200),
                      chunk_size: int = 256) -> dict[str, float]:
    """ZS-SBIR metrics of query embeddings against a gallery (module docstring).

    Similarity is the cosine of the embeddings (both are L2-normalised here; the released code's
    negative Euclidean distance of normalised vectors ranks identically).

    Args:
        query_embeddings: ``(Q, D)`` query embeddings (sketches).
        query_labels: ``(Q,)`` query classes.
        gallery_embeddings: ``(G, D)`` gallery embeddings (photos).
        gallery_labels: ``(G,)`` gallery classes.
        map_at: Cut-offs of the mAPs; None is mAP@all.
        precision_at: Cut-offs of P@K.
        chunk_size: Queries scored at once (memory ``chunk_size x G``).

    Returns:
        ``{"map@all", "map@200", "map@all_class_voc", "map@200_class_voc", "p@100", "p@200"}``
        (for the default cut-offs) as floats in [0, 1].

    Raises:
        TypeError: Not arrays or tensors.
        ValueError: Bad shapes, embedding widths that differ, a bad cut-off, or a query class
            with no gallery item (its AP would be undefined).
    """
    queries, q_labels = _check_embeddings(query_embeddings, query_labels, "query")
    gallery, g_labels = _check_embeddings(gallery_embeddings, gallery_labels, "gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"Query embeddings are {queries.shape[1]}-d but gallery embeddings are "
                         f"{gallery.shape[1]}-d.")
    _metric_keys(map_at, precision_at)
    missing = sorted(set(q_labels.tolist()) - set(g_labels.tolist()))
    if missing:
        raise ValueError(f"Query classes {missing[:10]} have no gallery item; every query class "
                         "needs at least one relevant gallery item.")
    per_query: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(queries), chunk_size):
        scores = queries[start:start + chunk_size] @ gallery.T  # (q, G)
        relevant = q_labels[start:start + chunk_size, None] == g_labels[None, :]  # (q, G)
        order, rank_scores = tie_free_ranks(scores)  # one sort serves every metric
        for k in map_at:
            per_query.setdefault(f"map@{_name(k)}", []).append(
                _average_precision(order, rank_scores, relevant, k, "none"))
            per_query.setdefault(f"map@{_name(k)}_class_voc", []).append(
                _average_precision(order, rank_scores, relevant, k, "voc"))
        for k in precision_at:
            per_query.setdefault(f"p@{k}", []).append(_precision_at_k(rank_scores, relevant, k))
    metrics = {}
    for key, chunks in per_query.items():
        values = torch.cat(chunks)
        metrics[key] = class_mean(values, q_labels) if key.endswith("_class_voc") \
            else float(values.mean())
    return metrics
