"""The matching losses (METHODS.md §2.6) on hand-made score tables: the hardest-negative triplet
loss with margin 0.1 and the cross-entropy option, both against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from diffperception.training.matching_loss import (MatchingLoss, hardest_negative_triplet_loss,
                                                   matching_loss, positive_and_hardest_negative)

# Row 0: positive 0.9, hardest negative 0.85 -> max(0, 0.85 - 0.9 + 0.1) = 0.05
# Row 1: positive 0.2, hardest negative 0.7 -> 0.6
# Row 2: positive 1.0, hardest negative 0.5 -> 0 (beats it by more than the margin)
# Row 3: positive 0.4, hardest negative 0.4 (a tie)  -> 0.1
TABLE = torch.tensor([[0.9, 0.85, 0.1],
                      [0.2, 0.7, 0.5],
                      [1.0, 0.5, -3.0],
                      [0.4, 0.4, 0.0]])
BY_HAND = torch.tensor([0.05, 0.6, 0.0, 0.1])


def test_triplet_loss_per_row_and_mean_match_the_hand_values():
    per_row = hardest_negative_triplet_loss(TABLE, reduction="none")
    torch.testing.assert_close(per_row, BY_HAND)
    torch.testing.assert_close(hardest_negative_triplet_loss(TABLE), BY_HAND.mean())
    torch.testing.assert_close(hardest_negative_triplet_loss(TABLE, reduction="sum"), BY_HAND.sum())


def test_triplet_loss_is_zero_when_every_positive_wins_by_the_margin():
    table = torch.tensor([[1.0, 0.9, 0.2], [0.3, 0.1, 0.2]])  # margins 0.1 and 0.1
    assert hardest_negative_triplet_loss(table).item() == pytest.approx(0.0, abs=1e-7)
    assert hardest_negative_triplet_loss(table, margin=0.2).item() == pytest.approx(0.1)


def test_positive_index_per_row_moves_the_positive():
    # the same rows with the positive moved to columns 2, 1, 0, 2
    moved = torch.stack([TABLE[0][[1, 2, 0]], TABLE[1][[1, 0, 2]], TABLE[2], TABLE[3][[1, 2, 0]]])
    index = torch.tensor([2, 1, 0, 2])
    torch.testing.assert_close(hardest_negative_triplet_loss(moved, index, reduction="none"),
                               BY_HAND)
    pos, neg = positive_and_hardest_negative(moved, index)
    torch.testing.assert_close(pos, torch.tensor([0.9, 0.2, 1.0, 0.4]))
    torch.testing.assert_close(neg, torch.tensor([0.85, 0.7, 0.5, 0.4]))


def test_gradient_reaches_only_the_positive_and_the_hardest_negative():
    scores = TABLE.clone().requires_grad_(True)
    hardest_negative_triplet_loss(scores).backward()
    # active rows 0, 1, 3: d/dpos = -1/4, d/dneg = +1/4; row 2 (zero loss) gets nothing.
    # Row 3's tie: amax splits the gradient evenly between tied maxima (only one here).
    expected = torch.zeros_like(TABLE)
    expected[0, 0], expected[0, 1] = -0.25, 0.25
    expected[1, 0], expected[1, 1] = -0.25, 0.25
    expected[3, 0], expected[3, 1] = -0.25, 0.25
    torch.testing.assert_close(scores.grad, expected)


def test_cross_entropy_option_matches_the_softmax_by_hand():
    table = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    by_hand_0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    by_hand_1 = -math.log(math.exp(1) / (1 + math.exp(1) + math.exp(3)))
    got = matching_loss(table, torch.tensor([0, 1]), kind="cross_entropy", reduction="none")
    torch.testing.assert_close(got, torch.tensor([by_hand_0, by_hand_1]))
    half = matching_loss(table, torch.tensor([0, 1]), kind="cross_entropy", temperature=0.5,
                         reduction="none")
    torch.testing.assert_close(half, matching_loss(table * 2, torch.tensor([0, 1]),
                                                   kind="cross_entropy", reduction="none"))


def test_module_form_equals_the_function():
    loss = MatchingLoss("triplet", margin=0.1)
    torch.testing.assert_close(loss(TABLE), BY_HAND.mean())
    assert "margin=0.1" in repr(loss)


@pytest.mark.parametrize("scores,index,kwargs,error,match", [
    (torch.zeros(3), 0, {}, ValueError, "shape"),
    (torch.zeros(3, 1), 0, {}, ValueError, "M >= 2"),
    (torch.zeros(2, 3), 3, {}, ValueError, r"\[0, 3\)"),
    (torch.zeros(2, 3), torch.tensor([0, 1, 2]), {}, ValueError, "shape"),
    (torch.zeros(2, 3), 0.5, {}, TypeError, "integer"),
    (torch.zeros(2, 3, dtype=torch.long), 0, {}, TypeError, "floating"),
    ([[0.0, 1.0]], 0, {}, TypeError, "torch.Tensor"),
    (torch.zeros(2, 3), 0, {"margin": -0.1}, ValueError, "margin"),
    (torch.zeros(2, 3), 0, {"kind": "hinge"}, ValueError, "triplet"),
    (torch.zeros(2, 3), 0, {"kind": "cross_entropy", "temperature": 0}, ValueError, "temperature"),
])
def test_bad_input_is_a_clear_error(scores, index, kwargs, error, match):
    with pytest.raises(error, match=match):
        matching_loss(scores, index, **kwargs)
