"""ComVG, R@K and Winoground metrics on hand-made score tables, ties included (METHODS.md §2.7,
§2.9 item 5): every expected value below is counted by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffperception.evaluation.matching import (comvg_accuracy, positive_rank, recall_at_k,
                                                winoground_scores)


def test_comvg_per_type_and_both_aggregates_with_a_tie_counted_wrong():
    pos = [0.9, 0.5, 0.3, 0.3, 0.8, 0.1]
    neg = [0.1, 0.2, 0.3, 0.1, 0.9, 0.0]
    types = ["subject", "subject", "object", "object", "verb", "predicate"]
    # subject: right, right -> 1.0; object: tie (wrong), right -> 0.5;
    # predicate (verb is its CSV name): wrong, right -> 0.5
    acc = comvg_accuracy(pos, neg, types)
    assert (acc["subject"], acc["object"], acc["predicate"]) == (1.0, 0.5, 0.5)
    assert acc["accuracy"] == pytest.approx(4 / 6)             # row-weighted: 4 of 6 rows
    assert acc["mean_per_type"] == pytest.approx(2 / 3)        # (1 + 0.5 + 0.5) / 3
    assert acc["counts"] == {"subject": 2, "object": 2, "predicate": 2} and acc["ties"] == 1


def test_comvg_aggregates_differ_when_types_are_unbalanced():
    # subject 3 rows all right, object 1 row wrong: row-weighted 3/4, per-type mean 1/2
    acc = comvg_accuracy([1, 1, 1, 0], [0, 0, 0, 1], ["subject"] * 3 + ["object"])
    assert acc["accuracy"] == 0.75 and acc["mean_per_type"] == 0.5
    assert math.isnan(acc["predicate"]) and acc["counts"]["predicate"] == 0


def test_rank_and_recall_count_ties_against_the_positive():
    scores = np.array([
        [5.0, 1, 2, 3, 4, 0, 0, 0, 0, 0],   # positive first       -> rank 0
        [3.0, 3, 1, 1, 1, 1, 1, 1, 1, 1],   # one tie              -> rank 1
        [1.0, 2, 3, 4, 5, 6, 0, 0, 0, 0],   # five above           -> rank 5
        [2.0, 2, 2, 2, 2, 0, 0, 0, 0, 0],   # four ties            -> rank 4
    ])
    np.testing.assert_array_equal(positive_rank(scores), [0, 1, 5, 4])
    recall = recall_at_k(scores, 0, (1, 5))
    assert recall == {1: 0.25, 5: 0.75}                      # R@1 1/4, R@5 3/4
    moved = scores[:, ::-1]                                   # positive in the last column
    assert recall_at_k(torch.tensor(moved.copy()), 9, (1, 5)) == recall


def test_winoground_text_image_group_scores_by_hand():
    # scores[n, image, caption]
    table = np.array([
        [[2, 1], [0, 3]],   # text: 2>1, 3>0 yes; image: 2>0, 3>1 yes -> group yes
        [[2, 1], [3, 4]],   # text: 2>1, 4>3 yes; image: 2>3 no       -> text only
        [[2, 5], [1, 6]],   # text: 2>5 no;       image: 2>1, 6>5 yes -> image only
        [[1, 1], [0, 2]],   # text: 1>1 tie, no;  image: 1>0, 2>1 yes -> image only
        [[1, 0], [1, 2]],   # text: yes;          image: 1>1 tie, no  -> text only
        [[0, 1], [1, 0]],   # all wrong
    ], dtype=float)
    assert winoground_scores(table) == {"text_score": 3 / 6, "image_score": 3 / 6,
                                        "group_score": 1 / 6}


@pytest.mark.parametrize("call,match", [
    (lambda: winoground_scores(np.zeros((3, 2))), "shape"),
    (lambda: winoground_scores(np.full((1, 2, 2), np.nan)), "NaN"),
    (lambda: comvg_accuracy([1, 2], [0], ["subject", "object"]), "one entry per row"),
    (lambda: comvg_accuracy([1], [0], ["colour"]), "colour"),
    (lambda: recall_at_k(np.zeros((2, 3)), 3), r"\[0, 3\)"),
    (lambda: recall_at_k(np.zeros((2, 3)), 0, (0,)), "k = 0"),
])
def test_bad_tables_are_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
