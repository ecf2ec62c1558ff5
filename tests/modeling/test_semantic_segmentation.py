"""DiffusionPerceptionForSemanticSegmentation through the tester mixin, and its own behaviour:
logits equal a 1x1 convolution written out in the test on the feature extractor's maps, upsampled
to the image size, and the loss leaves ignore_index pixels out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import (
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForSemanticSegmentation,
)

LABELS = ["sky", "tree", "road"]
TAPS = ["up_ft.1", "up_ft.2"]


class TestSemanticSegmentation(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForSemanticSegmentation
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        return {
            "architecture": "DiffusionPerceptionForSemanticSegmentation",
            "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
            "features": {"taps": TAPS, "timesteps": [261],
                         "noise": {"kind": "fixed", "seed": 0}},
            "preprocess": {"size": [64, 64]},
            "head": {"type": "linear_segmentation"},
            "labels": LABELS,
            "task": {"ignore_index": 255},
        }

    def test_logits_are_a_1x1_conv_on_upsampled_maps(self, model, tiny_repos):
        features = DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=TAPS, timesteps=[261], size=(64, 64))
        images = self.get_dummy_inputs()["images"]
        generator = torch.Generator().manual_seed(3)
        labels = torch.randint(0, 3, (2, 64, 64), generator=generator)
        labels[:, :8] = 255
        with torch.no_grad():
            feats = features(images)
            out = model(images, labels=labels)
        finest = max((feats[t].shape[-2:] for t in TAPS), key=lambda s: s[0])
        stacked = torch.cat([F.interpolate(feats[t], size=tuple(finest), mode="bilinear")
                             for t in TAPS], dim=1)
        conv = model.head.classifier
        small = torch.einsum("bchw,kc->bkhw", stacked, conv.weight[:, :, 0, 0]) \
            + conv.bias[None, :, None, None]
        expected = F.interpolate(small, size=(64, 64), mode="bilinear")
        assert out.logits.shape == (2, 3, 64, 64)
        assert torch.allclose(out.logits, expected, atol=1e-5)
        keep = labels != 255
        per_pixel = -expected.log_softmax(1).gather(1, labels.clamp(max=2)[:, None])[:, 0]
        assert torch.allclose(out.loss, per_pixel[keep].mean(), atol=1e-5)

    def test_logits_follow_the_input_size(self, model):
        images = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            out = model(images)
        assert out.logits.shape == (1, 3, 48, 80)

    @pytest.mark.parametrize("labels,error,message", [
        ([0, 1], TypeError, "per-pixel class indices"),
        (torch.zeros(2, 32, 32, dtype=torch.long), ValueError, r"shape \(2, 64, 64\)"),
        (torch.full((2, 64, 64), 7), ValueError, r"hold \[7\], outside \[0, 3\)"),
    ])
    def test_bad_labels(self, model, labels, error, message):
        with pytest.raises(error, match=message):
            model(self.get_dummy_inputs()["images"], labels=labels)

    @pytest.mark.parametrize("task,message", [
        ({"ignore_index": 1}, "ignore_index'\\] = 1 is invalid"),
        ({"ignore": 255}, "unknown keys \\['ignore'\\]"),
    ])
    def test_bad_task_settings(self, tiny_repos, task, message):
        with pytest.raises(ValueError, match=message):
            DiffusionPerceptionForSemanticSegmentation({**self.get_init_dict(tiny_repos),
                                                        "task": task})


def test_the_config_does_not_share_the_callers_dicts(tiny_repos):
    from diffperception import TaskConfig

    data = TestSemanticSegmentation().get_init_dict(tiny_repos)
    data["labels"] = list(LABELS)  # the test's own list, edited below
    config = TaskConfig.from_dict(data)
    data["task"]["ignore_index"] = 7
    data["labels"].append("water")
    assert config.task == {"ignore_index": 255} and config.labels == LABELS
