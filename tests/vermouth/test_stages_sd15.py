"""Stage shapes on the real SD 1.5 U-Net layout at 256 px (METHODS.md §3.11 item 1), on the meta
device (no weights): block outputs captured by forward hooks on the full diffusers model, the
cross-attention queries from the attn2 inputs; the presets' taps resolve on it."""

from __future__ import annotations

import json

import pytest
import torch

from diffperception.features.stages import StageAssembler, stage_taps
from diffperception.features.taps import FeatureInfo
from diffperception.modeling.presets import load_preset

SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


@pytest.fixture(scope="module")
def sd15_infos():
    """``{tap: FeatureInfo}`` of every stage / attention tap of SD 1.5 at 256 px (latent 32)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
    taps = sorted(set(stage_taps(unet.config, "mid+up", cross_attention=True))
                  | set(stage_taps(unet.config, "mid+down")))
    modules = dict(unet.named_modules())
    shapes, handles = {}, []
    for name in taps:
        path, _, kind = name.partition(":")

        def hook(mod, args, kwargs, out, _n=name, _k=kind):
            if _k == "attn":
                shapes[_n] = (mod.heads, args[0].shape[1] if args else
                              kwargs["hidden_states"].shape[1])
            else:
                shapes[_n] = tuple((out[0] if isinstance(out, tuple) else out).shape)
        handles.append(modules[path].register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        unet(torch.empty(1, 4, 32, 32, device="meta"), torch.tensor([200], device="meta"),
             encoder_hidden_states=torch.empty(1, 77, 768, device="meta"))
    infos = {}
    for name, shape in shapes.items():
        path, _, kind = name.partition(":")
        if kind == "attn":
            heads, queries = shape
            infos[name] = FeatureInfo(name, path, "attn", "attention", heads,
                                      int(round((256 * 256 / queries) ** 0.5)))
        else:
            infos[name] = FeatureInfo(name, path, "out", "map", shape[1], 256 // shape[-1])
    return unet, infos


def test_mid_up_stages_with_cross_attention_maps(sd15_infos):
    unet, infos = sd15_infos
    stages = StageAssembler(infos, "mid+up", cross_attention=True, attention_channels=77,
                            attention_min_stride=16)
    # METHODS.md §3.1: [mid 1280@4, up0 1280@8, up1 1280@16, cat(up2, up3) 960@32]; the 8x8 and
    # 16x16 cross-attention maps (77 channels) at s1 and s2, the 32x32 ones left out
    assert stages.strides == [64, 32, 16, 8]
    assert stages.channels == [1280, 1280 + 77, 1280 + 77, 960]
    assert stages.scales[3].taps == ("up_blocks.2", "up_blocks.3")
    assert len(stages.scales[1].attention) == 3 and len(stages.scales[2].attention) == 3
    assert not stages.scales[3].attention


def test_mid_down_stages(sd15_infos):
    unet, infos = sd15_infos
    stages = StageAssembler(infos, "mid+down")
    # [mid 1280@4, down2 (upsampled) 1280@8, down1 640@16, down0 320@32]; down3 left out
    assert stages.strides == [64, 32, 16, 8]
    assert stages.channels == [1280, 1280, 640, 320]
    assert [s.taps for s in stages.scales] == [("mid_block",), ("down_blocks.2",),
                                               ("down_blocks.1",), ("down_blocks.0",)]


def test_sd15_preset_taps_are_the_stage_taps(sd15_infos):
    unet, _ = sd15_infos
    modules = dict(unet.named_modules())
    for name, layout, attn in (("vermouth-sd15-classification", "mid+down", True),
                               ("vermouth-sd15-sbir", "mid+up", False),
                               ("vermouth-sd15-segmentation", "mid+up", True)):
        preset = load_preset(name)
        assert preset["features"]["taps"] == stage_taps(unet.config, layout, cross_attention=attn)
        assert all(t.partition(":")[0] in modules for t in preset["features"]["taps"])
        assert preset["head"]["stages"] == layout
        assert json.dumps(preset)  # a complete config.json minus weights


@pytest.mark.parametrize("name,labels", [
    ("vermouth-digits-sbir", None), ("vermouth-digits-classification", ["zero", "one"])])
def test_digits_presets_build_offline(name, labels):
    from diffperception import AutoDiffusionPerception

    model = AutoDiffusionPerception.from_preset(name, labels=labels)
    model.backbone.set_captioner(lambda images: ["a handwritten digit one"] * len(images))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    if name.endswith("sbir"):
        assert out.embeddings.shape == (2, 64)
    else:
        assert out.logits.shape == (2, 2)
