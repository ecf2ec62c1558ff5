"""DiffusionPerceptionForImageClassification through the tester mixin, and its own behaviour:
logits equal a linear probe written out in the test on hooks of diffusers' full U-Net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import (
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForImageClassification,
)

LABELS = ["zero", "one", "two"]


class TestImageClassification(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageClassification
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        return {
            "architecture": "DiffusionPerceptionForImageClassification",
            "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
            "features": {"taps": ["up_ft.1", "mid_block"], "timesteps": [261],
                         "noise": {"kind": "fixed", "seed": 0, "ensemble": 2}},
            "preprocess": {"size": [64, 64]},
            "head": {"type": "linear", "pool": 2},
            "labels": LABELS,
        }

    def test_logits_are_a_linear_probe_on_the_features(self, model, tiny_repos):
        features = DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=["up_ft.1", "mid_block"], timesteps=[261], ensemble=2,
            size=(64, 64))
        images = self.get_dummy_inputs()["images"]
        labels = torch.tensor([2, 0])
        with torch.no_grad():
            feats = features(images)
            out = model(images, labels=labels)
        weight, bias = model.head.classifier.weight, model.head.classifier.bias
        pooled = torch.cat([F.adaptive_avg_pool2d(feats[t], 2).flatten(1)
                            for t in ("up_ft.1", "mid_block")], dim=1)
        expected = pooled @ weight.T + bias
        assert out.logits.shape == (2, 3)
        assert torch.allclose(out.logits, expected, atol=1e-5)
        assert torch.allclose(out.loss, F.cross_entropy(expected, labels), atol=1e-5)
        assert model.id2label == {0: "zero", 1: "one", 2: "two"} and model.label2id["two"] == 2

    def test_loss_trains_the_head_only(self, tiny_repos):
        model = DiffusionPerceptionForImageClassification.from_diffusers(
            tiny_repos["pixel"], taps=["mid_block"], labels=["a", "b"], head={"type": "linear", "pool": 1})
        out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
                    labels=torch.tensor([0, 1]))
        out.loss.backward()
        assert model.head.classifier.weight.grad is not None
        assert all(p.grad is None for p in model.backbone.parameters())

    @pytest.mark.parametrize("labels,error,message", [
        ([0, 1], TypeError, "labels must be a torch.Tensor"),
        (torch.tensor([0.0, 1.0]), ValueError, "integer class indices of shape"),
        (torch.tensor([0, 3]), ValueError, r"labels \[3\] are outside \[0, 3\)"),
    ])
    def test_bad_labels(self, model, labels, error, message):
        with pytest.raises(error, match=message):
            model(self.get_dummy_inputs()["images"], labels=labels)

    def test_config_needs_unique_labels(self, tiny_repos):
        config = self.get_init_dict(tiny_repos)
        for labels, message in ((None, "config\\['labels'\\] is missing"),
                                (["a", "a"], "duplicates \\['a'\\]")):
            with pytest.raises(ValueError, match=message):
                DiffusionPerceptionForImageClassification({**config, "labels": labels})

    def test_card_snippet_runs(self, saved):
        from huggingface_hub import ModelCard

        card = ModelCard.load(saved / "README.md")
        assert card.data.pipeline_tag == "image-classification"
        snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
        exec(compile(snippet.replace("'" + str(saved) + "'", repr(str(saved))), "card", "exec"), {})
