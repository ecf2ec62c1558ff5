"""The truncated trunk holds, loads and saves only the modules its taps reach."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from diffperception import DiffusionPerceptionForFeatureExtraction, list_taps
from diffperception.backbones.sd import StableDiffusionFamily
from diffperception.backbones.unet import adm_block_paths
from diffperception.features.taps import resolve_taps


def plan_cut(network, taps):
    return StableDiffusionFamily.plan_cut(network, [(t.path, t.kind) for t in taps])


def _unet_keys(model) -> set[str]:
    return {k[len("backbone.unet."):] for k in model.state_dict() if k.startswith("backbone.unet.")}


def _full_unet(folder, kind):
    cls = UNet2DModel if kind == "pixel" else UNet2DConditionModel
    return cls.from_pretrained(str(folder), subfolder="unet")


@pytest.mark.parametrize("kind,tap,absent,present", [
    ("sd1", "up_blocks.1",
     ["up_blocks.2.", "conv_out.", "conv_norm_out."], ["up_blocks.1.upsamplers.0.conv.weight"]),
    ("sd1", "up_blocks.1.resnets.0",
     ["up_blocks.1.attentions.0.", "up_blocks.1.resnets.1.", "up_blocks.1.upsamplers.", "up_blocks.2."],
     ["up_blocks.1.resnets.0.conv1.weight"]),
    ("sd1", "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
     ["up_blocks.1.resnets.2.", "up_blocks.1.attentions.2.", "up_blocks.1.upsamplers."],
     ["up_blocks.1.attentions.1.proj_out.weight"]),
    ("sd1", "mid_block", ["up_blocks.", "conv_out."], ["mid_block.attentions.0.proj_in.weight"]),
    ("sd1", "down_blocks.1.resnets.0",
     ["down_blocks.1.attentions.0.", "down_blocks.2.", "mid_block.", "up_blocks."],
     ["down_blocks.1.resnets.0.conv1.weight"]),
    ("sdxl", "up_ft.0", ["up_blocks.1.", "conv_out."], ["add_embedding.linear_1.weight"]),
    ("pixel", "adm.5", ["down_blocks.2.", "mid_block.", "up_blocks."],
     ["down_blocks.1.attentions.0.to_q.weight"]),
])
def test_unreached_modules_are_not_held(tiny_repos, kind, tap, absent, present):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos[kind], taps=[tap])
    keys = _unet_keys(model)
    for prefix in absent:
        assert not any(k.startswith(prefix) for k in keys), prefix
    for key in present:
        assert key in keys
    full = _full_unet(tiny_repos[kind], kind)
    assert keys < set(full.state_dict())  # a strict subset, with diffusers' own names
    kept = sum(p.numel() for p in model.backbone.unet.parameters())
    assert kept < sum(p.numel() for p in full.parameters())
    # every kept tensor is the checkpoint's own value
    ref = full.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.backbone.unet.state_dict().items())


def test_last_up_block_keeps_everything_up_to_it(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["conv_out"])
    full = _full_unet(tiny_repos["sd1"], "sd1")
    assert _unet_keys(model) == set(full.state_dict())


def test_vae_decoder_is_never_held(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd2"], taps=["mid_block"])
    vae_keys = [k for k in model.state_dict() if k.startswith("backbone.vae.")]
    assert vae_keys and all(k.startswith(("backbone.vae.encoder.", "backbone.vae.quant_conv."))
                            for k in vae_keys)


def test_plan_keeps_attention_only_when_needed(tiny_repos):
    full = _full_unet(tiny_repos["sd1"], "sd1")
    resnet_only = plan_cut(full, resolve_taps(["up_blocks.2.resnets.1"], full))
    assert (resnet_only.stage, resnet_only.block, resnet_only.pairs, resnet_only.keep_attn) == ("up", 2, 2, False)
    both = plan_cut(full, resolve_taps(["up_blocks.2.resnets.1", "up_blocks.2.attentions.1.transformer_blocks.0.attn1:attn"], full))
    assert both.keep_attn and both.pairs == 2 and not both.keep_sampler


def test_list_taps_for_folder_and_model(tiny_repos):
    names = list_taps(tiny_repos["sd1"])
    full = _full_unet(tiny_repos["sd1"], "sd1")
    # every module that runs, in module order; containers (never called) are not taps
    assert names == [n for n, m in full.named_modules()
                     if n and not isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict))]
    with_kinds = list_taps(tiny_repos["sd1"], include_kinds=True)
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2:attn" in with_kinds
    assert "up_blocks.1:in" in with_kinds and "up_blocks.1:attn" not in with_kinds
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(tiny_repos["sd1"], taps=["mid_block"])
    assert "up_blocks.0" not in list_taps(model) and "mid_block" in list_taps(model)


def test_adm_numbering_follows_execution_order(tiny_repos):
    full = _full_unet(tiny_repos["pixel"], "pixel")
    paths = adm_block_paths(full)
    assert paths[0] == "conv_in" and "mid_block" in paths
    assert paths.index("mid_block") < paths.index("up_blocks.0.attentions.0")
    taps = resolve_taps([f"adm.{len(paths)}"], full)
    assert taps[0].path == paths[-1]


def test_config_records_the_source(tiny_repos):
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        tiny_repos["sd1"], taps=["up_ft.1"], timesteps=[10, 20], ensemble=2)
    cfg = model.config.to_dict()
    json.dumps(cfg)  # JSON-only values
    assert cfg["backbone"]["family"] == "sd" and cfg["features"]["noise"]["ensemble"] == 2
