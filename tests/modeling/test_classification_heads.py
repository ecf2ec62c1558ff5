"""The image classifier with the text-free paper's heads (``attention``, ``difformer``,
``diffeed``; S001 §3, METHODS.md §1.3-1.5) through the tester mixin, DifFeed's two passes in the
task model, and the classification presets.

Presets. ``*-adm256`` are the paper's configurations on ADM-256 (METHODS.md §1.2-1.5): t = 150,
b = 24; DifFormer T = {90, 150, 300}, B = {19, 24, 30}; DifFeed "bottleneck" (its taps list the
sources 21, 24, ..., 36, their targets 38 - b and the final 24, so that ``feature_info`` gives
their modules and channels). Their base is the folder ``adm256/`` that ``diffperception
convert-adm`` writes (pass another with ``repo_id=``), and they leave the labels to the user
(``from_preset(..., labels=[...])``).

``*-digits`` are the same four on the shipped 32 px digits model (``diffperception:default``, a
``UNet2DConditionModel``, so module paths instead of ``adm.B``), chosen for that model:

- ``mid_block`` at t = 200 for the linear probe and the Attention head: the best (tap, t) of
  the README's probe grid (99.0 %, against 98.3 % for the best random-weight feature);
- DifFormer: ``mid_block``, ``up_blocks.0`` and ``up_blocks.1`` (the paper's B = {19, 24, 30} is
  the mid block and two decoder levels; these are the three mid/decoder taps the README measures
  above raw pixels), at T = {100, 200, 400}: half, once and twice the best t, as {90, 150, 300}
  brackets the paper's 150;
- DifFeed: the final tap and t of ``attention-digits`` (so the two differ only by the feedback,
  as in the paper's Attention vs DifFeed comparison), fed back from the first block of each
  decoder level (``up_blocks.0.attentions.0``, ``up_blocks.1.resnets.0``,
  ``up_blocks.2.resnets.0``: with the ADM numbering of this 13-block network, b = 8, 10, 12 -> 14 -
  b = 6, 4, 2, the block before each level's upsampling block, as "bottleneck" is on ADM-256)
  into ``down_blocks.2.attentions.0``, ``down_blocks.1.resnets.0``, ``down_blocks.0.resnets.0``,
  whose channels and sizes match exactly (64 @ 8, 32 @ 16, 16 @ 32), as the paper's pairs do;
- token heads of width 128 (4 heads of 32, depth 2) and ``pool = 8``: the digits are 8 x 8
  images upsampled to 32 px, so a grid finer than 8 x 8 holds no more detail, and the smaller head
  trains in minutes on a CPU (the paper's width 1024 is sized for 1024-channel ADM maps).
"""

from __future__ import annotations

import json

import pytest
import torch
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import AutoDiffusionPerception, DiffusionPerceptionForImageClassification
from diffperception.default_model import DEFAULT_MODEL_PATH
from diffperception.hub import ModelSource
from diffperception.modeling.presets import load_preset, preset_config
from testing_utils.tiny_models import ADM256_CONFIG as TINY_ADM256

LABELS = ["zero", "one", "two"]
SMALL = {"width": 16, "depth": 1, "num_heads": 2}
PIXEL_FEEDBACK = [["up_blocks.0.attentions.0", "down_blocks.2.attentions.0"],
                  ["up_blocks.1.attentions.0", "down_blocks.1.attentions.0"],
                  ["up_blocks.2.resnets.0", "down_blocks.1.downsamplers.0"]]  # 32 @ 32 -> 32 @ 8


def _pixel_config(tiny_repos, taps, head, timesteps=(150,)):
    return {"architecture": "DiffusionPerceptionForImageClassification",
            "backbone": {"repo_id": str(tiny_repos["pixel"]), "family": "pixel"},
            "features": {"taps": list(taps), "timesteps": list(timesteps)},
            "preprocess": {"size": [32, 32]}, "head": head, "labels": LABELS}


class TestAttentionClassifier(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageClassification
    output_names = ("logits",)
    image_size = (32, 32)

    def get_init_dict(self, tiny_repos):
        return _pixel_config(tiny_repos, ["up_blocks.1"], {"type": "attention", **SMALL, "pool": 4})


class TestDifFormerClassifier(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageClassification
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        return {"architecture": "DiffusionPerceptionForImageClassification",
                "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
                "features": {"taps": ["mid_block", "up_ft.1"], "timesteps": [100, 261]},
                "preprocess": {"size": [64, 64]},
                "head": {"type": "difformer", **SMALL}, "labels": LABELS}

    def test_head_sees_every_timestep(self, model):
        assert model.head.num_timesteps == 2 and model.head.classifier.in_features == 32


class TestDifFeedClassifier(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForImageClassification
    output_names = ("logits",)
    image_size = (32, 32)

    def get_init_dict(self, tiny_repos):
        taps = sorted({t for pair in PIXEL_FEEDBACK for t in pair}) + ["mid_block"]
        return _pixel_config(tiny_repos, taps, {"type": "diffeed", "tap": "mid_block",
                                                "feedback": PIXEL_FEEDBACK, **SMALL})

    def test_forward_runs_the_two_passes(self, model):
        images = self.get_dummy_inputs()["images"]
        head = model.head
        with torch.no_grad():
            logits = model(images).logits
            two = model.backbone.forward_two_pass(images, head.feedback,
                                                  first_taps=head.first_taps, taps=head.taps)
            one = model.backbone(images, taps=head.taps)
        assert torch.equal(logits, head(two).logits)
        assert (logits - head(one).logits).abs().max() > 1e-4

    def test_training_reaches_the_feedback_layers_through_the_trunk(self, tiny_repos):
        torch.manual_seed(0)
        model = DiffusionPerceptionForImageClassification(self.get_init_dict(tiny_repos)).train()
        out = model(self.get_dummy_inputs()["images"], labels=torch.tensor([0, 2]))
        out.loss.backward()
        assert all(layer[0].weight.grad is not None and layer[0].weight.grad.abs().sum() > 0
                   for layer in model.head.feedback_layers)
        assert all(p.grad is None for p in model.backbone.parameters())
        bn = model.head.feedback_layers[0][1]
        assert bn.training and bn.num_batches_tracked.item() == 1  # batch statistics in training
        model.eval()
        assert not bn.training


# ------------------------------------------------------------------------------------ presets

NEW = ["gd-linear", "attention", "difformer", "diffeed"]
# the ADM-256 layout as a config.json (JSON lists) of a UNet2DModel
ADM256_CONFIG = {"_class_name": "UNet2DModel",
                 **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_ADM256.items()}}


def _write_folder(folder, unet_config=None, unet=None):
    from diffusers import DDPMScheduler

    if unet is not None:
        unet.save_pretrained(str(folder / "unet"))
    else:
        (folder / "unet").mkdir(parents=True)
        (folder / "unet" / "config.json").write_text(json.dumps(unet_config))
    DDPMScheduler(beta_schedule="linear").save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


@pytest.fixture(scope="module")
def adm256_layout(tmp_path_factory):
    """A tiny network of the ADM-256 layout (all 37 blocks, 8-32 channels) with weights."""
    from diffusers import UNet2DModel

    config = {k: v for k, v in ADM256_CONFIG.items() if k != "_class_name"}
    config.update(sample_size=64, block_out_channels=[8, 8, 16, 16, 32, 32], attention_head_dim=8,
                  attn_norm_num_groups=4, norm_num_groups=4)
    torch.manual_seed(0)
    return _write_folder(tmp_path_factory.mktemp("adm256_layout"), unet=UNet2DModel(**config))


def test_adm256_presets_are_the_papers_configurations():
    for method in NEW:
        config = preset_config(f"{method}-adm256")
        assert config.backbone.repo_id == "adm256/" and config.backbone.family == "pixel"
        assert config.preprocess.size == [256, 256] and config.labels is None
    assert preset_config("gd-linear-adm256").features.taps == ["adm.24"]
    assert preset_config("attention-adm256").features.timesteps == [150]
    difformer = preset_config("difformer-adm256").features
    assert difformer.taps == ["adm.19", "adm.24", "adm.30"] and difformer.timesteps == [90, 150, 300]
    diffeed = preset_config("diffeed-adm256")
    assert diffeed.head.kwargs["feedback"] == "bottleneck" and diffeed.head.kwargs["tap"] == "adm.24"
    assert preset_config("attention-adm256", labels=["a", "b"]).labels == ["a", "b"]


@pytest.mark.parametrize("method,labels,expected", [
    ("gd-linear", 1000, 4096 * 1000 + 1000), ("attention", 1000, 27_786_216),
    ("difformer", 50, 28_882_994), ("diffeed", 1000, 27_786_216 + 2_759_680)])
def test_adm256_presets_have_the_papers_parameter_counts(method, labels, expected, tmp_path):
    """Built on the full-size ADM-256 layout on the meta device (a config-only folder)."""
    folder = _write_folder(tmp_path / "adm256", unet_config=ADM256_CONFIG)
    config = preset_config(f"{method}-adm256", labels=[f"c{i}" for i in range(labels)])
    model = DiffusionPerceptionForImageClassification(
        config, source=ModelSource(folder=folder, repo_id="adm256/", revision=None),
        load_weights=False)
    assert sum(p.numel() for p in model.head.parameters()) == expected
    if method != "gd-linear":
        assert model.head.num_tokens == (577 if method == "difformer" else 257)


@pytest.mark.parametrize("name", [f"{m}-{base}" for m in NEW for base in ("adm256", "digits")])
def test_classification_preset_builds_runs_and_round_trips(name, adm256_layout, tmp_path):
    preset = load_preset(name)
    if preset["backbone"]["repo_id"] == "adm256/":
        model = AutoDiffusionPerception.from_preset(name, repo_id=adm256_layout, size=(64, 64),
                                                    labels=LABELS)
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    else:
        model = AutoDiffusionPerception.from_preset(name, repo_id=DEFAULT_MODEL_PATH)
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        assert model.config.labels[:2] == ["zero", "one"] and len(model.config.labels) == 10
    with torch.no_grad():
        logits = model(images).logits
    assert logits.shape == (2, len(model.config.labels)) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / name)
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, logits)


def test_digits_diffeed_pairs_match_channels_and_sizes():
    model = AutoDiffusionPerception.from_preset("diffeed-digits")
    info = model.backbone.feature_info
    for source, target in model.head.pairs:
        assert (info[source].channels, info[source].stride) == (info[target].channels,
                                                                info[target].stride)


def test_an_adm_preset_without_labels_says_how_to_give_them(adm256_layout):
    with pytest.raises(ValueError, match=r"config\['labels'\] is missing"):
        AutoDiffusionPerception.from_preset("attention-adm256", repo_id=adm256_layout, size=(64, 64))
