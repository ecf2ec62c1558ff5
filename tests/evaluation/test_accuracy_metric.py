"""Top-1 accuracy on hand-made tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffperception.evaluation import accuracy


def test_class_predictions():
    preds = np.array([0, 1, 2, 2, 1, 0, 0, 1])
    target = np.array([0, 1, 2, 1, 1, 2, 0, 0])  # rows 0, 1, 2, 4, 6 right: 5 of 8
    assert accuracy(preds, target) == pytest.approx(5 / 8)
    assert accuracy(torch.from_numpy(preds), torch.from_numpy(target)) == pytest.approx(5 / 8)
    assert accuracy(preds, target, num_classes=5) == pytest.approx(5 / 8)


def test_micro_not_macro():
    # class 0: 3 of 3 right, class 1: 0 of 1 right -> micro 0.75, macro would be 0.5
    assert accuracy(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1])) == pytest.approx(0.75)


def test_scores_take_the_highest_and_ties_the_lower_index():
    scores = np.array([[0.1, 0.7, 0.2],
                       [0.5, 0.5, 0.0],   # tie -> class 0
                       [2.0, -1.0, 3.0],  # unnormalised scores are fine
                       [0.3, 0.3, 0.4]])
    assert accuracy(scores, np.array([1, 0, 2, 0])) == pytest.approx(3 / 4)
    errors = np.array([[0.2, 0.1], [0.4, 0.9], [0.5, 0.5]])  # lower is better: pass -errors
    assert accuracy(-errors, np.array([1, 0, 0])) == pytest.approx(1.0)


def test_bad_input():
    with pytest.raises(TypeError, match="integer class indices"):
        accuracy(np.array([0, 1]), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        accuracy("01", np.array([0, 1]))
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        accuracy(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="non-empty"):
        accuracy(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 2\)"):
        accuracy(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match=r"Predictions must lie in \[0, 2\)"):
        accuracy(np.array([0, 3]), np.array([0, 1]), num_classes=2)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        accuracy(np.zeros(3), np.array([0, 1, 1]))
