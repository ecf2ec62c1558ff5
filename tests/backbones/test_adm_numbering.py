"""The ``adm.B`` alias against the ADM-256 block table of the text-free paper (S001 §2.1;
``METHODS.md`` §0.2): module path, channels and size of every block b = 1..37, read with forward
hooks on a diffusers ``UNet2DModel`` of the ADM-256 layout built on the meta device."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DModel

from diffperception.backbones import get_family
from diffperception.backbones.unet import adm_block_paths
from diffperception.features.taps import resolve_taps
from testing_utils.tiny_models import ADM256_CONFIG

# (b, diffusers module, channels, size at 256 px), transcribed from the table.
ADM256 = [
    (1, "conv_in", 256, 256), (2, "down_blocks.0.resnets.0", 256, 256),
    (3, "down_blocks.0.resnets.1", 256, 256), (4, "down_blocks.0.downsamplers.0", 256, 128),
    (5, "down_blocks.1.resnets.0", 256, 128), (6, "down_blocks.1.resnets.1", 256, 128),
    (7, "down_blocks.1.downsamplers.0", 256, 64), (8, "down_blocks.2.resnets.0", 512, 64),
    (9, "down_blocks.2.resnets.1", 512, 64), (10, "down_blocks.2.downsamplers.0", 512, 32),
    (11, "down_blocks.3.attentions.0", 512, 32), (12, "down_blocks.3.attentions.1", 512, 32),
    (13, "down_blocks.3.downsamplers.0", 512, 16), (14, "down_blocks.4.attentions.0", 1024, 16),
    (15, "down_blocks.4.attentions.1", 1024, 16), (16, "down_blocks.4.downsamplers.0", 1024, 8),
    (17, "down_blocks.5.attentions.0", 1024, 8), (18, "down_blocks.5.attentions.1", 1024, 8),
    (19, "mid_block", 1024, 8), (20, "up_blocks.0.attentions.0", 1024, 8),
    (21, "up_blocks.0.attentions.1", 1024, 8), (22, "up_blocks.0.upsamplers.0", 1024, 16),
    (23, "up_blocks.1.attentions.0", 1024, 16), (24, "up_blocks.1.attentions.1", 1024, 16),
    (25, "up_blocks.1.upsamplers.0", 1024, 32), (26, "up_blocks.2.attentions.0", 512, 32),
    (27, "up_blocks.2.attentions.1", 512, 32), (28, "up_blocks.2.upsamplers.0", 512, 64),
    (29, "up_blocks.3.resnets.0", 512, 64), (30, "up_blocks.3.resnets.1", 512, 64),
    (31, "up_blocks.3.upsamplers.0", 512, 128), (32, "up_blocks.4.resnets.0", 256, 128),
    (33, "up_blocks.4.resnets.1", 256, 128), (34, "up_blocks.4.upsamplers.0", 256, 256),
    (35, "up_blocks.5.resnets.0", 256, 256), (36, "up_blocks.5.resnets.1", 256, 256),
    (37, "up_blocks.5.resnets.2", 256, 256),
]



@pytest.fixture(scope="module")
def adm256():
    with init_empty_weights():
        return UNet2DModel(**ADM256_CONFIG)


@pytest.mark.parametrize("size", [256, 64])
def test_adm_numbering_is_the_papers_table(adm256, size):
    paths = adm_block_paths(adm256)
    assert paths == [path for _, path, _, _ in ADM256]
    family = get_family("pixel")
    family.check_config(ADM256_CONFIG)  # the pixel family accepts the ADM block classes
    taps = resolve_taps([f"adm.{b}" for b, *_ in ADM256], adm256, family.resolve_alias)
    assert [t.path for t in taps] == paths
    shapes, handles = {}, []
    modules = dict(adm256.named_modules())
    for b, path, _, _ in ADM256:
        def grab(m, a, out, _b=b):
            shapes[_b] = tuple((out[0] if isinstance(out, tuple) else out).shape)
        handles.append(modules[path].register_forward_hook(grab))
    with torch.no_grad():
        adm256(torch.empty(1, 3, size, size, device="meta"), torch.zeros(1, device="meta"))
    for h in handles:
        h.remove()
    for b, _, channels, side in ADM256:
        assert shapes[b] == (1, channels, side * size // 256, side * size // 256), b


def test_the_cut_planner_runs_adm_blocks(adm256):
    family = get_family("pixel")
    with init_empty_weights():
        unet = UNet2DModel(**ADM256_CONFIG)
    taps = resolve_taps(["adm.24"], unet, family.resolve_alias)
    plan = family.plan_cut(unet, [(t.path, t.kind) for t in taps])
    family.prune(unet, plan)
    assert len(unet.up_blocks) == 2 and len(unet.up_blocks[1].resnets) == 2
    assert unet.up_blocks[1].upsamplers is None  # b = 24 is before the level's upsampler


def test_every_adm_block_of_a_small_adm_layout_matches_the_full_forward(tmp_path):
    """All b of a small ADM-layout model (resnet up/downsampling, scale-shift norm) equal hooks on
    diffusers' full forward, through the public backbone."""
    import json

    from diffusers import DDPMScheduler

    from diffperception import DiffusionBackbone

    config = {**ADM256_CONFIG, "sample_size": 32, "block_out_channels": (32, 32, 64),
              "layers_per_block": 1, "attention_head_dim": 8, "attn_norm_num_groups": 8,
              "norm_num_groups": 8, "down_block_types": ("ResnetDownsampleBlock2D",
                                                         "AttnDownBlock2D", "AttnDownBlock2D"),
              "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")}
    torch.manual_seed(0)
    unet = UNet2DModel(**config).eval()
    unet.save_pretrained(str(tmp_path / "unet"))
    DDPMScheduler().save_pretrained(str(tmp_path / "scheduler"))
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    paths = adm_block_paths(unet)
    names = [f"adm.{b}" for b in range(1, len(paths) + 1)]
    backbone = DiffusionBackbone.from_diffusers(tmp_path, taps=names, timesteps=[150])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    store, modules = {}, dict(unet.named_modules())
    for path in paths:
        modules[path].register_forward_hook(
            lambda m, a, out, _p=path: store.__setitem__(_p, out[0] if isinstance(out, tuple) else out))
    abar = DDPMScheduler().alphas_cumprod[150]
    with torch.no_grad():
        unet(abar.sqrt() * (images * 2 - 1) + (1 - abar).sqrt() * eps, torch.full((2,), 150))
        ours = backbone(images, noise=eps)
    for name, path in zip(names, paths):
        assert (ours[name] - store[path]).abs().max() <= 1e-5, name
