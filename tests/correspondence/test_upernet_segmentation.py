"""UperNet segmentation the way seed 003 evaluates it: the segmentation task model with the
``upernet`` head through the tester mixin; its logits equal transformers' own ``UperNetHead`` fed
the taps grouped per resolution in the test; mIoU on a hand-made mask; the ``ade20k`` benchmark
(mIoU and pixel accuracy) on a tiny replica of ADEChallengeData2016 recomputed with numpy; the
preset's group widths at real SD 1.5 size (GDF's ``c_per_level`` 2560 / 640 / 320)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from testing_utils.model_tester import TaskModelTesterMixin

from diffperception import (
    AutoDiffusionPerception,
    DiffusionPerceptionForFeatureExtraction,
    DiffusionPerceptionForSemanticSegmentation,
)
from diffperception.cli import main
from diffperception.data.ade20k import ADE20K_CLASSES, load_ade20k
from diffperception.evaluation.segmentation import SegmentationMeter

ROOT = Path(__file__).resolve().parents[2]
# strides 16 (up_blocks.0) and 8 (a map and a token tap) on the tiny 64 px SD-1 model
TAPS = ["up_blocks.0", "up_ft.1", "up-level2-repeat0-vit-block0-cross-q"]


def _config(tiny_repos, labels=("sky", "tree", "road"), **head):
    return {
        "architecture": "DiffusionPerceptionForSemanticSegmentation",
        "backbone": {"repo_id": str(tiny_repos["sd1"]), "family": "sd"},
        "features": {"taps": TAPS, "timesteps": [261], "noise": {"kind": "fixed", "seed": 0}},
        "preprocess": {"size": [64, 64], "crop": "none"},
        "head": {"type": "upernet", "hidden_size": 16, **head},
        "labels": list(labels),
    }


class TestUperNetSegmentation(TaskModelTesterMixin):
    model_class = DiffusionPerceptionForSemanticSegmentation
    output_names = ("logits",)

    def get_init_dict(self, tiny_repos):
        return _config(tiny_repos)

    def test_logits_are_transformers_upernet_on_grouped_taps(self, model, tiny_repos):
        from transformers import UperNetConfig
        from transformers.models.upernet.modeling_upernet import UperNetHead

        features = DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=TAPS, timesteps=[261], size=(64, 64))
        images = self.get_dummy_inputs()["images"]
        with torch.no_grad():
            feats = features(images)
        query = feats[TAPS[2]].reshape(2, 8, 8, -1).permute(0, 3, 1, 2)  # tokens -> 8x8 map
        fine = torch.cat([feats[TAPS[1]], query], dim=1)  # stride 8 first (finest)
        coarse = feats[TAPS[0]]
        assert model.head.groups == [[TAPS[1], TAPS[2]], [TAPS[0]]]
        reference = UperNetHead(UperNetConfig(hidden_size=16, pool_scales=[1, 2, 3, 6],
                                              num_labels=3),
                                in_channels=[fine.shape[1], coarse.shape[1]]).eval()
        reference.load_state_dict(model.head.decoder.state_dict())
        with torch.no_grad():
            expected = F.interpolate(reference([fine, coarse]), size=(64, 64), mode="bilinear")
            out = model(images)
        assert out.logits.shape == (2, 3, 64, 64)
        assert torch.allclose(out.logits, expected, atol=1e-5)

    def test_groups_in_gdf_order_put_the_logits_on_the_first_grid(self, tiny_repos):
        model = DiffusionPerceptionForSemanticSegmentation(
            _config(tiny_repos, groups=[[TAPS[0]], TAPS[1:]], pool_scales=[1, 2, 3])).eval()
        with torch.no_grad():
            feats = model.backbone(torch.rand(1, 3, 64, 64))
            assert model.head(feats).logits.shape[-2:] == (4, 4)  # up_blocks.0's grid

    @pytest.mark.parametrize("groups", [[[TAPS[0]]], [[TAPS[0], TAPS[0]], TAPS[1:]],
                                        [["mid_block"], TAPS]])
    def test_groups_must_name_every_tap_once(self, tiny_repos, groups):
        with pytest.raises(ValueError, match="name every tap of the backbone"):
            DiffusionPerceptionForSemanticSegmentation(_config(tiny_repos, groups=groups))


def test_miou_on_a_hand_made_mask():
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1],
                          [0, 0, 1, 2],
                          [2, 0, 3, 0]]])
    meter = SegmentationMeter(5, ignore_index=255)
    meter.update(pred, labels)
    # class 0: inter 3, union 4 + 1 (pred 0 at a class-2 pixel) = 5 -> 3/5 (the 0 at an ignored
    # pixel does not count); class 1: inter 3, union 5 -> 3/5; class 2: inter 1, union 3 -> 1/3;
    # class 3 only at an ignored pixel and class 4 nowhere: left out of the mean
    iou = [3 / 5, 3 / 5, 1 / 3]
    assert meter.compute()["miou"] == pytest.approx(np.mean(iou))


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for i, (h, w) in enumerate([(48, 64), (64, 40)]):
        name = f"ADE_val_{i + 1:08d}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / "validation" / f"{name}.jpg")
        ann = rng.integers(0, 4, (h, w), dtype=np.uint8)  # 0 = other, classes 1..3
        ann[: h // 2, : w // 2] = 150
        Image.fromarray(ann).save(root / "annotations" / "validation" / f"{name}.png")
    return root


def test_ade20k_benchmark_recomputed_with_numpy(ade, tiny_repos, tmp_path):
    samples = load_ade20k(ade, "val")
    image, labels = samples[0].load()
    raw = np.array(Image.open(samples[0].annotation))
    assert labels[raw == 0].tolist() == [255] * int((raw == 0).sum())
    assert (labels[raw > 0] == raw[raw > 0] - 1).all() and labels[labels != 255].max() == 149
    torch.manual_seed(0)
    model = DiffusionPerceptionForSemanticSegmentation(
        _config(tiny_repos, labels=ADE20K_CLASSES))
    model.save_pretrained(tmp_path / "model")
    assert main(["evaluate", str(tmp_path / "model"), "--benchmark", "ade20k", "--data", str(ade),
                 "--split", "validation", "--out", str(tmp_path / "out"), "--no-progress",
                 "--no-card"]) == 0
    result = json.loads((tmp_path / "out" / "eval_ade20k_validation.json").read_text())
    loaded = AutoDiffusionPerception.from_pretrained(tmp_path / "model")
    inter, union, right, counted = np.zeros(150), np.zeros(150), 0, 0
    for sample in samples:
        image = np.array(Image.open(sample.image).convert("RGB"))
        raw = np.array(Image.open(sample.annotation)).astype(int)
        truth = np.where(raw == 0, 255, raw - 1)
        with torch.no_grad():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            pred = loaded(x).logits.argmax(1)[0].numpy()
        keep = truth != 255
        right += int((pred[keep] == truth[keep]).sum())
        counted += int(keep.sum())
        for c in range(150):
            p, t = (pred == c) & keep, (truth == c) & keep
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    present = union > 0
    assert result["metrics"]["miou"] == pytest.approx((inter[present] / union[present]).mean())
    assert result["metrics"]["pixel_accuracy"] == pytest.approx(right / counted)
    assert result["num_samples"] == 2


def test_ade20k_layout_errors(ade, tmp_path):
    with pytest.raises(ValueError, match="test images have no annotations"):
        load_ade20k(ade, "test")
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016 folder"):
        load_ade20k(tmp_path, "validation")


def test_ade20k_preset_groups_at_real_sd15_size(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "correspondence"))
    sys.path.insert(0, str(ROOT))
    from benchmarks.architectures import SD15_UNET, SD_VAE
    from test_gdf_aliases import _meta_folder

    from diffperception.features.backbone import DiffusionBackbone
    from diffperception.heads import build_head
    from diffperception.modeling.presets import preset_config

    config = preset_config("gdf-sd15-ade20k", repo_id=str(_meta_folder(tmp_path, SD15_UNET,
                                                                        SD_VAE)))
    assert config.labels == list(ADE20K_CLASSES) and config.task == {"ignore_index": 255}
    config.features.prompt.kind, config.features.prompt.text = "null", None  # no text encoder
    backbone = DiffusionBackbone(config.backbone, config.features, config.preprocess,
                                 load_weights=False)
    head = build_head(config.head.to_dict(), backbone.feature_info, num_labels=150,
                      image_size=[512, 512])
    assert head.decoder.in_channels == [2560, 640, 320]
    grids = [[512 // backbone.feature_info[t].stride for t in g] for g in head.groups]
    assert grids == [[16, 16], [32], [64]]
