"""mIoU with ignore_index and seen / unseen subsets, on a hand-made label map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffperception.evaluation.segmentation import SegmentationMeter, mean_iou

# one 3x4 image, classes 0..3, 255 = ignore
TARGET = torch.tensor([[[0, 0, 1, 1],
                        [0, 2, 1, 255],
                        [2, 2, 255, 255]]])
PREDS = torch.tensor([[[0, 1, 1, 1],
                       [0, 2, 2, 3],
                       [2, 0, 0, 1]]])
# counted pixels: the 9 that are not 255
# class 0: pred {00,10,21,(22 ignored)} -> counted {00,10,21}; target {00,01,10}: I=2, U=4 -> 0.5
# class 1: pred {01,02,03,(23 ignored)} -> {01,02,03}; target {02,03,12}: I=2, U=4 -> 0.5
# class 2: pred {11,12,20}; target {11,20,21}: I=2, U=4 -> 0.5
# class 3: pred {13} is ignored; target none -> no IoU (NaN)
EXPECTED = [0.5, 0.5, 0.5, float("nan")]


def test_per_class_iou_and_ignore_index():
    meter = SegmentationMeter(4, ignore_index=255)
    meter.update(PREDS, TARGET)
    iou = meter.per_class_iou()
    assert iou[:3] == pytest.approx(EXPECTED[:3]) and math.isnan(iou[3])
    assert meter.compute()["miou"] == pytest.approx(0.5)  # NaN class left out
    assert meter.num_pixels == 9


def test_subsets_harmonic_mean_and_accumulation():
    # second batch: class 3 present and predicted right on one pixel, missed on another
    target2 = torch.tensor([[[3, 3], [0, 0]]])
    preds2 = torch.tensor([[[3, 0], [0, 0]]])
    meter = SegmentationMeter(4, subsets={"seen": [0, 1], "unseen": [2, 3]})
    meter.update(PREDS, TARGET)
    meter.update(preds2, target2)
    # class 0 now: I = 2 + 2, U = 4 + 3 (pixels 01 and 11 of batch 2 add to both) -> 4/7
    # class 3: I = 1, U = 2 -> 1/2
    out = meter.compute()
    seen, unseen = (4 / 7 + 0.5) / 2, (0.5 + 0.5) / 2
    assert out["miou_seen"] == pytest.approx(seen)
    assert out["miou_unseen"] == pytest.approx(unseen)
    assert out["hiou"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    assert out["miou"] == pytest.approx((4 / 7 + 0.5 + 0.5 + 0.5) / 4)


def test_scores_are_argmaxed_and_a_predicted_absent_class_counts_zero():
    scores = torch.nn.functional.one_hot(torch.tensor([[[0, 1]]]), 3).permute(0, 3, 1, 2).float()
    out = mean_iou(scores, torch.tensor([[[0, 0]]]), 3)
    # class 0: I=1, U=2; class 1 predicted, absent: 0; class 2: NaN
    assert out["miou"] == pytest.approx((0.5 + 0.0) / 2)
    np.testing.assert_allclose(mean_iou(TARGET.clamp(max=3), TARGET, 4)["miou"], 1.0)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="is a class index"):
        SegmentationMeter(4, ignore_index=2)
    with pytest.raises(ValueError, match=r"subsets\['unseen'\]"):
        SegmentationMeter(4, subsets={"unseen": [4]})
    meter = SegmentationMeter(4)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="one shape"):
        meter.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="No labelled pixel"):
        meter.compute()
