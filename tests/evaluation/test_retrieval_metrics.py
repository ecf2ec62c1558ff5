"""ZS-SBIR metrics on hand-made rankings with known answers, against scikit-learn's average
precision and a plain loop of PASCAL-VOC's interpolated AP written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffperception.evaluation.retrieval import (
    average_precision,
    class_mean,
    precision_at_k,
    retrieval_metrics,
)

DESCENDING = [[0.9, 0.8, 0.7, 0.6, 0.5]]  # gallery already in rank order


def test_ap_of_a_hand_made_ranking():
    relevant = [[False, True, False, True, True]]  # hits at ranks 2, 4, 5
    # precisions at the hits: 1/2, 2/4, 3/5
    assert average_precision(DESCENDING, relevant).item() == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    # VOC: each hit takes the best precision at or after it: 3/5 for all three
    assert average_precision(DESCENDING, relevant, interpolation="voc").item() == \
        pytest.approx(0.6)
    # a ranking whose precision never rises gives the same AP both ways
    assert average_precision(DESCENDING, [[True, False, True, False, False]]).item() == \
        pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(DESCENDING, [[True, False, True, False, False]],
                             interpolation="voc").item() == pytest.approx((1 + 2 / 3) / 2)


def test_ap_at_k_counts_the_first_k_ranks():
    relevant = [[False, True, False, True, True]]
    # the usual mAP@K: mean precision over the hits found in the first K
    assert average_precision(DESCENDING, relevant, top_k=2).item() == pytest.approx(0.5)
    assert average_precision(DESCENDING, relevant, top_k=4).item() == pytest.approx(0.5)
    assert average_precision(DESCENDING, relevant, top_k=1).item() == 0.0
    # the released code: recall over min(K, relevant) = 2 at K = 2, so one hit is recall 1/2
    # at interpolated precision 1/2
    assert average_precision(DESCENDING, relevant, top_k=2, interpolation="voc").item() == \
        pytest.approx(0.25)
    # K = 4: min(4, 3) = 3; hits at 2 and 4, both with best-later precision 1/2
    assert average_precision(DESCENDING, relevant, top_k=4, interpolation="voc").item() == \
        pytest.approx((0.5 + 0.5) / 3)
    # K larger than the gallery = all
    assert average_precision(DESCENDING, relevant, top_k=50).item() == \
        pytest.approx(average_precision(DESCENDING, relevant).item())


def test_ties_rank_the_lower_gallery_index_first():
    scores = [[0.5, 0.5, 0.3]]
    assert average_precision(scores, [[False, True, False]]).item() == pytest.approx(0.5)
    assert average_precision(scores, [[True, False, False]]).item() == pytest.approx(1.0)
    assert average_precision(scores, [[False, True, False]], interpolation="voc").item() == \
        pytest.approx(0.5)
    assert precision_at_k(scores, [[False, True, False]], 1).item() == 0.0
    assert precision_at_k(scores, [[True, False, False]], 1).item() == 1.0
    # all tied: gallery order; negative scores are ranked like any other
    tied = [[-0.2, -0.2, -0.2, -0.2]]
    assert average_precision(tied, [[False, False, False, True]]).item() == pytest.approx(0.25)


def test_precision_at_k():
    relevant = [[True, False, True, True, False]]
    assert precision_at_k(DESCENDING, relevant, 2).item() == pytest.approx(0.5)
    assert precision_at_k(DESCENDING, relevant, 4).item() == pytest.approx(0.75)
    # K beyond the gallery still divides by K (the P@200 convention)
    assert precision_at_k(DESCENDING, relevant, 10).item() == pytest.approx(0.3)


def test_class_average_differs_from_query_average():
    # gallery: one photo of class 0 at angle 0, one of class 1 at angle 90 degrees
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g_labels = torch.tensor([0, 1])
    # one class-0 sketch on its photo (AP 1); three class-1 sketches at 10 degrees, nearer the
    # class-0 photo (AP 1/2 each)
    angle = math.radians(10)
    queries = torch.tensor([[1.0, 0.0]] + [[math.cos(angle), math.sin(angle)]] * 3)
    q_labels = torch.tensor([0, 1, 1, 1])
    metrics = retrieval_metrics(queries, q_labels, gallery, g_labels, map_at=(None, 1),
                                precision_at=(1, 2))
    assert metrics["map@all"] == pytest.approx((1 + 3 * 0.5) / 4)
    assert metrics["map@all_class_voc"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["map@1"] == pytest.approx(1 / 4)
    assert metrics["map@1_class_voc"] == pytest.approx((1 + 0) / 2)
    assert metrics["p@1"] == pytest.approx(1 / 4)
    assert metrics["p@2"] == pytest.approx(0.5)
    assert class_mean([1.0, 0.5, 0.5, 0.5], [7, 3, 3, 3]) == pytest.approx(0.75)
    # chunking the queries changes nothing
    assert retrieval_metrics(queries, q_labels, gallery, g_labels, map_at=(None, 1),
                             precision_at=(1, 2), chunk_size=1) == metrics


def _voc_loop(scores, relevant, top_k=None):
    """PASCAL-VOC AP of one query as a plain loop over the ranking."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits = [bool(relevant[i]) for i in order]
    total = sum(hits)
    if top_k is not None:
        hits, total = hits[:top_k], min(top_k, total)
    precisions, found = [], 0
    for rank, hit in enumerate(hits, start=1):
        found += hit
        precisions.append(found / rank)
    ap = 0.0
    for i, hit in enumerate(hits):
        if hit:
            ap += max(precisions[i:]) / total
    return ap


def test_random_rankings_against_sklearn_and_a_voc_loop():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 40))  # continuous: no ties
    relevant = rng.random((12, 40)) < 0.3
    relevant[:, 0] = True  # every query has a relevant item
    ours = average_precision(scores, relevant)
    voc = average_precision(scores, relevant, interpolation="voc")
    ours_at = average_precision(scores, relevant, top_k=10)
    voc_at = average_precision(scores, relevant, top_k=10, interpolation="voc")
    for q in range(12):
        assert ours[q].item() == pytest.approx(average_precision_score(relevant[q], scores[q]))
        assert voc[q].item() == pytest.approx(_voc_loop(scores[q], relevant[q]))
        assert voc_at[q].item() == pytest.approx(_voc_loop(scores[q], relevant[q], 10))
        top = np.argsort(-scores[q])[:10]
        expected = average_precision_score(relevant[q][top], scores[q][top]) \
            if relevant[q][top].any() else 0.0
        assert ours_at[q].item() == pytest.approx(expected)
        assert voc[q] >= ours[q] - 1e-12  # interpolation never lowers a precision


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="float"):
        average_precision([[1, 2]], [[True, False]])
    with pytest.raises(ValueError, match="shape of scores"):
        average_precision([[0.1, 0.2]], [[True]])
    with pytest.raises(ValueError, match="boolean"):
        average_precision([[0.1, 0.2]], [[0.5, 1.0]])
    with pytest.raises(ValueError, match="interpolation"):
        average_precision([[0.1, 0.2]], [[True, False]], interpolation="11-point")
    with pytest.raises(ValueError, match="top_k"):
        average_precision([[0.1, 0.2]], [[True, False]], top_k=0)
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        average_precision("scores", [[True]])
    gallery, queries = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"Query classes \[5\] have no gallery item"):
        retrieval_metrics(queries, [0, 1, 5], gallery, [0, 1, 2])
    with pytest.raises(ValueError, match="4-d"):
        retrieval_metrics(torch.ones(2, 4), [0, 1], gallery, [0, 1, 2])
    with pytest.raises(ValueError, match="one per"):
        retrieval_metrics(queries, [0, 1], gallery, [0, 1, 2])
