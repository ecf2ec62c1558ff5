"""generic-diffusion-feature activation ids as tap aliases (METHODS.md §4.1, §4.6 checks 1-2):
the id -> diffusers module table written out here, the recommended selections' channels and grid
sizes on real-size SD 1.5 / SDXL configs built on the meta device (their sums 3520 and 3840,
METHODS.md §4.2), GDF's ``res-increment`` equal to a hand computation from forward hooks on
diffusers' full U-Net, and GDF configuration files read as tap lists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.backbones.gdf_aliases import gdf_id_to_tap, taps_from_gdf_config
from diffperception.config import BackboneConfig, FeaturesConfig, PreprocessConfig
from diffperception.features.backbone import DiffusionBackbone
from diffperception.heads import build_head
from diffperception.modeling.presets import preset_config

ROOT = Path(__file__).resolve().parents[2]

TABLE = {  # noqa: E501 - one id and its module per line
    "up-level1-repeat1-vit-block0-cross-q": "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q",
    "down-level2-repeat0-res-out": "down_blocks.2.resnets.0",
    "up-level3-repeat2-res-increment": "up_blocks.3.resnets.2.conv2",
    "up-level3-repeat2-vit-out": "up_blocks.3.attentions.2",
    "up-level0-repeat0-vit-block7-out": "up_blocks.0.attentions.0.transformer_blocks.7",
    "down-level1-repeat1-vit-block0-self-v": "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_v",
    "up-level3-repeat0-vit-block0-self-k": "up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_k",
    "up-level2-repeat0-vit-block0-ffn-inner": "up_blocks.2.attentions.0.transformer_blocks.0.ff.net.0",
    "up-level1-repeat0-vit-block0-cross-map": "up_blocks.1.attentions.0.transformer_blocks.0.attn2:attn",
    "down-level0-downsampler-out": "down_blocks.0.downsamplers.0",
    "up-level2-upsampler-out": "up_blocks.2.upsamplers.0",
    "mid-repeat1-res-out": "mid_block.resnets.1",
    "mid-vit-out": "mid_block.attentions.0",
    "mid-vit-block0-self-q": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet-in": "conv_in:in",
    "unet-after-conv-in": "conv_in",
    "unet-out": "conv_out",
    "vit-block13-out": "transformer_blocks.13",
}


@pytest.mark.parametrize("gdf_id,tap", sorted(TABLE.items()))
def test_id_table(gdf_id, tap):
    assert gdf_id_to_tap(gdf_id) == tap


@pytest.mark.parametrize("name", ["up-level1-repeat1-vit-block0-cross-k", "up-level1-res-out",
                                  "mid-repeat0-vit-block0-out", "up_blocks.1"])
def test_other_names_are_no_ids(name):
    assert gdf_id_to_tap(name) is None


# ----------------------------------------------------------- real sizes on the meta device

def _meta_folder(root: Path, unet: dict, vae: dict) -> Path:
    """A config-only diffusers folder: enough to plan, prune and size taps without weights."""
    for sub in ("unet", "vae", "scheduler"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "unet/config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                       **unet}))
    (root / "vae/config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **vae}))
    (root / "scheduler/scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear"}))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return root


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    sys.path.insert(0, str(ROOT))
    from benchmarks.architectures import SD15_UNET, SD_VAE, SDXL_UNET, SDXL_VAE

    root = tmp_path_factory.mktemp("meta")
    return {"sd15": _meta_folder(root / "sd15", SD15_UNET, SD_VAE),
            "sdxl": _meta_folder(root / "sdxl", SDXL_UNET, SDXL_VAE)}


# (C, feature-grid side) of each selected activation at the preset's size (METHODS.md §4.2)
SELECTIONS = {
    "gdf-legacy-sd15": ("sd15", [("up_blocks.0.upsamplers.0", 1280, 16),
                                 ("up_blocks.1.upsamplers.0", 1280, 32),
                                 ("up_blocks.2.upsamplers.0", 640, 64),
                                 ("up_blocks.3.attentions.2", 320, 64)], 3520),
    "gdf-practical-sd15": ("sd15", [
        ("up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q", 1280, 16),
        ("up_blocks.1.resnets.2", 1280, 16),
        ("up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q", 640, 32),
        ("up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_k", 320, 64)], 3520),
    "gdf-legacy-sdxl": ("sdxl", [("up_blocks.0.upsamplers.0", 1280, 64),
                                 ("up_blocks.1.upsamplers.0", 640, 128),
                                 ("up_blocks.2.resnets.2", 320, 128)], 2240),
    "gdf-practical-sdxl": ("sdxl", [
        ("up_blocks.0.attentions.0.transformer_blocks.7", 1280, 32),
        ("up_blocks.0.attentions.0.transformer_blocks.5", 1280, 32),
        ("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q", 640, 64),
        ("up_blocks.1.attentions.0.transformer_blocks.0", 640, 64)], 3840),
}


@pytest.mark.parametrize("preset", sorted(SELECTIONS))
def test_recommended_selections_channels_and_sums(preset, real_size):
    kind, expected, total = SELECTIONS[preset]
    config = preset_config(preset, repo_id=str(real_size[kind]))
    config.features.prompt.kind, config.features.prompt.text = "null", None  # no text encoder
    backbone = DiffusionBackbone(config.backbone, config.features, config.preprocess,
                                 load_weights=False)
    size = config.preprocess.size[0]
    got = [(info.module, info.channels, size // info.stride)
           for info in backbone.feature_info.values()]
    assert got == expected
    assert sum(c for _, c, _ in got) == total
    head = build_head(config.head.to_dict(), backbone.feature_info, image_size=[size, size])
    assert head.out_channels == total


def test_conv_preset_is_the_practical_selection_with_the_aggregator():
    nn_config, conv_config = (preset_config(n) for n in ("gdf-practical-sd15",
                                                         "gdf-practical-sd15-conv"))
    assert conv_config.features == nn_config.features
    assert conv_config.head.kwargs["aggregator"] == "conv"
    assert nn_config.head.kwargs == {"grid": [128, 128], "aggregator": "none"}


# ---------------------------------------------------------------- values on a tiny model

def test_alias_values_and_res_increment_equal_full_model_hooks(tiny_repos, reference_pipes):
    """res-increment = conv2 output = res-out * output_scale_factor - shortcut(input)."""
    ids = ["up-level1-repeat1-res-out", "up-level1-repeat1-res-increment",
           "up-level1-repeat0-vit-block0-cross-q"]
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=ids, timesteps=[261], noise="none", size=(64, 64))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model(images)
    pipe = reference_pipes["sd1"]
    unet = pipe.unet
    resnet = unet.up_blocks[1].resnets[1]
    seen = {}
    handles = [
        resnet.register_forward_hook(lambda m, a, o: seen.update(res_in=a[0], res_out=o)),
        resnet.conv2.register_forward_hook(lambda m, a, o: seen.update(conv2=o)),
        unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2.to_q.register_forward_hook(
            lambda m, a, o: seen.update(query=o)),
    ]
    with torch.no_grad():
        latent = pipe.vae.encode(images * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        context, _ = pipe.encode_prompt("", "cpu", 1, False)
        unet(latent, torch.full((2,), 261), encoder_hidden_states=context.expand(2, -1, -1))
    for h in handles:
        h.remove()
    shortcut = seen["res_in"] if resnet.conv_shortcut is None else resnet.conv_shortcut(
        seen["res_in"])
    increment = seen["res_out"] * resnet.output_scale_factor - shortcut
    assert torch.allclose(feats[ids[0]], seen["res_out"], atol=1e-5)
    assert torch.allclose(feats[ids[1]], seen["conv2"], atol=1e-5)
    assert torch.allclose(feats[ids[1]], increment, atol=1e-4)
    assert torch.allclose(feats[ids[2]], seen["query"], atol=1e-5)


def test_map_ids_tap_attention_probabilities(tiny_repos):
    gdf = "up-level1-repeat0-vit-block0-self-map"
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=[gdf, "up_blocks.1.attentions.0.transformer_blocks.0.attn1:attn"],
        timesteps=[261], size=(64, 64))
    info = model.backbone.feature_info[gdf]
    assert (info.kind, info.layout) == ("attn", "attention")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    values = list(out.values())
    assert torch.equal(values[0], values[1])


def test_unknown_module_names_the_closest_taps(tiny_repos):
    with pytest.raises(ValueError, match="no module 'up_blocks.3.attentions.0"):
        DiffusionPerceptionForFeatureExtraction.from_diffusers(
            tiny_repos["sd1"], taps=["up-level3-repeat0-vit-block0-self-k"], size=(64, 64))


def test_gdf_configuration_files_are_tap_lists(tmp_path):
    path = tmp_path / "config_15_practical.json"
    path.write_text(json.dumps({"up-level1-repeat1-vit-block0-cross-q": True,
                                "up-level1-repeat2-res-out": True,
                                "up-level2-upsampler-out": False}))
    assert taps_from_gdf_config(path) == ["up-level1-repeat1-vit-block0-cross-q",
                                          "up-level1-repeat2-res-out"]
    assert taps_from_gdf_config({"unet-out": True}) == ["unet-out"]
    with pytest.raises(ValueError, match="not GDF activation ids"):
        taps_from_gdf_config({"up_blocks.1": True})
    with pytest.raises(FileNotFoundError):
        taps_from_gdf_config(tmp_path / "missing.json")


def test_pixart_block_ids_resolve_on_the_dit_family(tmp_path):
    """GDF's PixArt ids (``vit-block{i}-...``) name the transformer's blocks."""
    sys.path.insert(0, str(ROOT / "tests"))
    from testing_utils import tiny_dit

    folder = tiny_dit.make_pixart(tmp_path / "pixart")
    ids = ["vit-block1-out", "vit-block0-cross-q", "vit-block1-self-k", "vit-block0-ffn-inner"]
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        folder, taps=ids + ["transformer_blocks.1", "transformer_blocks.0.attn2.to_q"],
        timesteps=[261])
    info = model.backbone.feature_info
    assert [info[i].module for i in ids] == [
        "transformer_blocks.1", "transformer_blocks.0.attn2.to_q",
        "transformer_blocks.1.attn1.to_k", "transformer_blocks.0.ff.net.0"]
    size = model.backbone.native_size
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(out[ids[0]], out["transformer_blocks.1"])
    assert torch.equal(out[ids[1]], out["transformer_blocks.0.attn2.to_q"])
