"""PCK@alpha against hand-made point sets: image vs bounding-box thresholds (``<=``), per-point
vs per-image averaging, per category, and rescaling from a feature grid to the original size."""

from __future__ import annotations

import numpy as np
import pytest

from diffperception.evaluation.correspondence import PCKMeter, pck_correct, rescale_points


def test_threshold_is_inclusive():
    truth = np.zeros((3, 2))
    pred = np.array([[3.0, 4.0], [5.0, 0.0], [5.0, 0.1]])  # distances 5, 5, 5.001
    assert pck_correct(pred, truth, 5.0).tolist() == [True, True, False]


def test_image_and_bbox_thresholds():
    meter = PCKMeter(alphas=(0.1,))
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 20.0], [0.0, 0.0]])
    # target image 200 x 400 (H x W): img threshold 0.1 * 400 = 40
    # bbox [20, 30, 120, 80]: max(100, 50) = 100 -> threshold 10
    pred = truth + np.array([[8.0, 0.0], [0.0, 30.0], [40.0, 0.0], [41.0, 0.0]])
    meter.add(pred, truth, image_hw=(200, 400), bbox=[20, 30, 120, 80], category="cat")
    out = meter.compute()
    assert out["pck@0.1_img"] == pytest.approx(3 / 4)  # 8, 30, 40 within 40; 41 not
    assert out["pck@0.1_bbox"] == pytest.approx(1 / 4)  # only 8 within 10


def test_per_point_and_per_image_differ_as_hand_computed():
    meter = PCKMeter(alphas=(0.1, 0.05))
    # pair 1: 1 of 1 correct; pair 2: 1 of 4 correct (img threshold 0.1 * 100 = 10)
    meter.add([[0, 0]], [[0, 0]], image_hw=(100, 100), category="a")
    truth = np.zeros((4, 2))
    meter.add([[0, 0], [20, 0], [0, 20], [30, 30]], truth, image_hw=(100, 100), category="b")
    out = meter.compute()
    assert out["pck@0.1_img"] == pytest.approx(2 / 5)
    assert out["pck@0.1_img_per_image"] == pytest.approx((1 + 1 / 4) / 2)
    assert "pck@0.1_bbox" not in out  # no boxes given
    per = meter.per_category()
    assert per["a"]["pck@0.1_img"] == 1.0 and per["b"]["pck@0.1_img"] == 0.25
    assert meter.category_mean()["pck@0.1_img"] == pytest.approx(0.625)
    # alpha 0.05 -> threshold 5: same counts here
    assert out["pck@0.05_img"] == pytest.approx(2 / 5)


def test_rescaling_from_a_feature_grid_to_the_original_size():
    # a match found at cell (x=12, y=3) of a 16 x 32 grid (H x W) of a 480 x 640 target image
    found = rescale_points([[12, 3]], (16, 32), (480, 640))
    assert found.tolist() == [[240.0, 90.0]]
    # the true point (250, 80): distance sqrt(10^2 + 10^2) = 14.1 -> correct at 0.1 * 640 = 64,
    # wrong at a bbox of 100 px (threshold 10)
    meter = PCKMeter()
    meter.add(found, [[250, 80]], image_hw=(480, 640), bbox=[0, 0, 100, 60])
    assert meter.compute()["pck@0.1_img"] == 1.0
    assert meter.compute()["pck@0.1_bbox"] == 0.0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        pck_correct(np.zeros((3, 2)), np.zeros((2, 2)), 1.0)
