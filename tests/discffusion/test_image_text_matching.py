"""DiffusionPerceptionForImageTextMatching through the tester mixin (Hub round trip, strict load,
push / pull, the fixed-candidate classifier's specialise and ONNX parity), plus its own edges:
the presets, config errors and bad texts."""

from __future__ import annotations

import pytest
import torch
from test_score import TEXTS, matching_config
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import DiffusionPerceptionForImageTextMatching


class TestImageTextMatching(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageTextMatching
    output_names = ("scores",)

    def get_init_dict(self, tiny_repos):
        return matching_config(tiny_repos["sd2"], adaptation="kv", labels=TEXTS, head_weights=True)

    def test_eager_scores_are_the_candidate_scores(self, model):
        images = self.get_dummy_inputs()["images"]
        with torch.no_grad():
            out = model(images)
        assert out.scores.shape == (2, len(TEXTS))
        assert torch.equal(out.scores, model.score(images))

    def test_specialize_to_other_texts(self, model):
        images = self.get_dummy_inputs()["images"]
        special = model.specialize(texts=["x", "two blue dogs"])
        assert special.source_config["labels"] == ["x", "two blue dogs"]
        with torch.no_grad():
            got = special(images)["scores"]
        assert torch.allclose(got, model.score(images, ["x", "two blue dogs"]), atol=1e-5)

    def test_bad_texts_are_clear_errors(self, model):
        images = self.get_dummy_inputs()["images"]
        with pytest.raises(TypeError, match="list of strings"):
            model.score(images, "one text")
        with pytest.raises(ValueError, match="empty"):
            model.score(images, [])
        with pytest.raises(ValueError, match="scorer"):
            model.score(images, TEXTS, scorer="cosine")
        with pytest.raises(ValueError, match="lists"):
            model(images, [["a", "b"], ["c"]])
        with pytest.raises(ValueError, match="one image"):
            model.match(images, TEXTS)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["features"].update(prompt={"kind": "null"}), "per_image"),
    (lambda c: c["features"]["noise"].update(kind="none"), "'fixed'"),
    (lambda c: c["task"].update(adaptation="prefix"), "adaptation"),
    (lambda c: c["task"].update(margin=-1), "margin"),
    (lambda c: c["task"].update(unknown=1), "unknown keys"),
    (lambda c: c["head"].update(pool="both"), "pool"),
    (lambda c: c["head"].update(lam=0), "lam"),
    (lambda c: c.update(labels=["a", "a"]), "duplicates"),
])
def test_config_errors(tiny_repos, edit, message):
    config = matching_config(tiny_repos["sd2"])
    edit(config)
    with pytest.raises(ValueError, match=message):
        DiffusionPerceptionForImageTextMatching(config)


def test_noise_error_needs_the_noise_prediction(tiny_repos):
    config = matching_config(tiny_repos["sd2"], noise_error=True)
    config["features"]["taps"].remove("conv_out")
    with pytest.raises(ValueError, match="conv_out"):
        DiffusionPerceptionForImageTextMatching(config)
    config["task"]["noise_error"] = False
    model = DiffusionPerceptionForImageTextMatching(config)
    with pytest.raises(ValueError, match="conv_out"):
        model.score(torch.rand(1, 3, 64, 64), TEXTS, scorer="noise_error")


def test_presets_are_matching_configs():
    from diffperception.modeling.presets import load_preset, preset_config

    sd21 = load_preset("discffusion-sd21base")
    assert sd21["backbone"]["repo_id"] == "stabilityai/stable-diffusion-2-1-base"
    assert sum(t.endswith("attn2:logits") for t in sd21["features"]["taps"]) == 16
    assert sd21["features"]["timesteps"] == [199, 399, 599, 799]
    assert sd21["task"]["noise_error"] is False and sd21["task"]["adaptation"] == "kv"
    digits = preset_config("discffusion-digits")
    assert len(digits.labels) == 10 and digits.labels[7] == "a handwritten digit seven"


def test_digits_preset_builds_and_scores():
    from diffperception import AutoDiffusionPerception
    from diffperception.default_model import caption_for, load_digits_split

    model = AutoDiffusionPerception.from_preset("discffusion-digits")
    assert type(model) is DiffusionPerceptionForImageTextMatching
    assert model.candidate_texts == [caption_for(i) for i in range(10)]
    data = load_digits_split()
    images = torch.from_numpy(data["test_images"][:4])
    scores = model.score(images, scorer="noise_error")
    assert scores.shape == (4, 10)
    # the shipped model matches digits to their captions by the noise error (README figures)
    assert (scores.argmax(1).numpy() == data["test_labels"][:4]).mean() >= 0.75


def test_free_text_matching_module_and_onnx(tiny_repos, tmp_path):
    pytest.importorskip("onnxruntime")
    from diffperception.export.free_text import export_free_text_onnx

    torch.manual_seed(0)
    model = DiffusionPerceptionForImageTextMatching(
        matching_config(tiny_repos["sd2"], adaptation="kv", timesteps=[599])).eval()
    with torch.no_grad():
        for prompt in model.adapter.prompts.values():  # trained prompts must reach the graph
            prompt.normal_(0, 0.02)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    special = model.specialize_free_text()
    with torch.no_grad():
        got = special(images, model.encode_texts(TEXTS)[0])["scores"]
    assert torch.allclose(got, model.score(images, TEXTS), atol=1e-5)
    result = export_free_text_onnx(model, tmp_path / "free.onnx", TEXTS[:2], batch=2)
    assert result["inputs"] == ["images", "text_context"] and result["max_rel"] <= 1e-4
