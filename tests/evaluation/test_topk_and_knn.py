"""Top-k accuracy, the confusion matrix and DINO's weighted kNN on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffperception.evaluation import confusion_matrix, knn_accuracy, knn_scores, topk_accuracy


def test_top2_counts_labels_among_the_two_best():
    scores = np.array([[0.1, 0.5, 0.3, 0.2],   # order 1, 2, 3, 0
                       [0.9, 0.0, 0.05, 0.8],  # order 0, 3, 2, 1
                       [0.2, 0.1, 0.4, 0.3]])  # order 2, 3, 0, 1
    # label 2 is 2nd (in), label 2 is 3rd (out), label 3 is 2nd (in)
    assert topk_accuracy(scores, np.array([2, 2, 3]), k=2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, np.array([2, 2, 3]), k=3) == pytest.approx(1.0)
    assert topk_accuracy(torch.from_numpy(scores), torch.tensor([1, 0, 2]), k=1) == 1.0


def test_top5_ties_rank_the_lower_index_first():
    # seven classes; row 0 ties classes 2..6 at 0.5 behind classes 0 and 1: the top 5 are
    # 0, 1, 2, 3, 4 (lower index first), so labels 5 and 6 are out however topk orders ties
    row = np.array([0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5])
    scores = np.stack([row] * 4)
    assert topk_accuracy(scores, np.array([4, 5, 6, 0]), k=5) == pytest.approx(2 / 4)
    all_tied = np.zeros((2, 7))  # every class tied: top 5 = 0..4
    assert topk_accuracy(all_tied, np.array([4, 5]), k=5) == pytest.approx(0.5)
    # fewer classes than k: every label is among the best k
    assert topk_accuracy(np.zeros((3, 4)), np.array([0, 3, 2]), k=5) == 1.0


def test_topk_refuses_bad_input():
    with pytest.raises(ValueError, match="positive integer"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, 1]), k=0)
    with pytest.raises(ValueError, match=r"float \(N, K\)"):
        topk_accuracy(np.array([0, 1]), np.array([0, 1]), k=1)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)"):
        topk_accuracy(np.zeros((2, 3)), np.array([0, 3]), k=2)
    with pytest.raises(ValueError, match="one per row"):
        topk_accuracy(np.zeros((2, 3)), np.array([0]), k=2)


def test_confusion_matrix_rows_are_true_classes():
    preds = np.array([0, 1, 1, 2, 2, 2])
    target = np.array([0, 0, 1, 2, 1, 2])
    expected = np.array([[1, 1, 0],
                         [0, 1, 1],
                         [0, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(preds, target, 3), expected)
    scores = np.eye(3)[preds] + 0.0  # the same predictions as scores
    np.testing.assert_array_equal(confusion_matrix(scores, target, 3), expected)
    assert confusion_matrix(preds, target, 4).shape == (4, 4)


# a memory bank of five unit-free 2-D points and two queries; cosine similarities by hand
BANK = np.array([[1.0, 0.0],    # class 0, angle 0
                 [2.0, 0.2],    # class 0 (length does not matter: cosine)
                 [0.0, 1.0],    # class 1, angle 90
                 [0.6, 0.8],    # class 1, angle ~53
                 [-1.0, 0.0]])  # class 2, angle 180
BANK_Y = np.array([0, 0, 1, 1, 2])
QUERIES = np.array([[0.8, 0.6],   # angle ~37: nearest 0.6/0.8 (class 1) then the class-0 points
                    [-1.0, 0.1]])  # nearest class 2


def _cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_knn_scores_are_summed_exponential_weights():
    t = 0.07
    scores = knn_scores(BANK, BANK_Y, QUERIES, k=3, num_classes=3, temperature=t)
    q = QUERIES[0]
    # query 0: similarities 0.8 (bank 0), 0.8*2+0.6*0.2 over |(2,0.2)|, 0.6, 0.96, -0.8
    sims = [_cos(q, b) for b in BANK]
    assert sims[3] == pytest.approx(0.96)
    top3 = sorted(range(5), key=lambda i: -sims[i])[:3]
    assert set(top3) == {0, 1, 3}  # bank 2 (0.6) and bank 4 (-0.8) are not among them
    expected0 = [math.exp(sims[0] / t) + math.exp(sims[1] / t), math.exp(sims[3] / t), 0.0]
    np.testing.assert_allclose(scores[0], expected0, rtol=1e-6)  # features are float32
    # query 1: neighbours bank 4 (class 2), then the class-1 point at 90 deg (0.0995), then
    # bank 3 (cos(-1,0.1 ; 0.6,0.8))
    sims1 = [_cos(QUERIES[1], b) for b in BANK]
    top = sorted(range(5), key=lambda i: -sims1[i])[:3]
    assert top == [4, 2, 3]
    expected1 = [0.0, math.exp(sims1[2] / t) + math.exp(sims1[3] / t), math.exp(sims1[4] / t)]
    np.testing.assert_allclose(scores[1], expected1, rtol=1e-6)  # features are float32


def test_knn_weighting_can_outvote_the_majority():
    # k=3 around query 0: two class-0 neighbours (cos 0.8, ~0.85) against one class-1 neighbour
    # (cos 0.96). T = 0.07 makes the single closest neighbour win: e^(0.96/0.07) = 9.0e5 against
    # e^(0.8/0.07) + e^(0.85/0.07) ~ 2.8e5; a large temperature gives back the majority vote.
    sharp = knn_scores(BANK, BANK_Y, QUERIES[:1], k=3, num_classes=3, temperature=0.07)
    flat = knn_scores(BANK, BANK_Y, QUERIES[:1], k=3, num_classes=3, temperature=100.0)
    assert sharp[0].argmax() == 1
    assert flat[0].argmax() == 0


def test_knn_accuracy_top1_and_top5_per_k():
    results = knn_accuracy(BANK, BANK_Y, QUERIES, np.array([1, 2]), ks=[1, 3])
    assert results[1] == {"top1": 1.0, "top5": 1.0}  # nearest: bank 3 (class 1), bank 4 (2)
    assert results[3]["top1"] == 1.0
    wrong = knn_accuracy(BANK, BANK_Y, QUERIES, np.array([0, 2]), ks=[1])
    assert wrong[1]["top1"] == pytest.approx(0.5)
    # label values need not be 0..K-1
    shifted = knn_accuracy(BANK, BANK_Y + 10, QUERIES, np.array([11, 12]), ks=[1])
    assert shifted[1]["top1"] == 1.0


def test_knn_refuses_bad_input():
    with pytest.raises(ValueError, match=r"k = 6 is invalid: an integer in \[1, 5\]"):
        knn_scores(BANK, BANK_Y, QUERIES, k=6, num_classes=3)
    with pytest.raises(ValueError, match="features per sample"):
        knn_scores(BANK, BANK_Y, QUERIES[:, :1], k=1, num_classes=3)
    with pytest.raises(ValueError, match="one label per row"):
        knn_scores(BANK, BANK_Y[:-1], QUERIES, k=1, num_classes=3)
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(BANK, BANK_Y, QUERIES, k=1, num_classes=3, temperature=0.0)
