"""The ``diffeed`` head against METHODS.md §1.5 (S001 §3.3): feedback parameter counts of the
three strategies on ADM-256, the zero-feedback invariant, and the hook-based two-pass trunk
against a block-by-block loop written here (after ``unet.py:912-985`` of the released code) on a
small ADM-layout ``UNet2DModel``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffperception import DiffusionBackbone
from diffperception.features.taps import FeatureInfo
from diffperception.heads import build_head

# ADM-256 block channels and sides at 256 px (METHODS.md §0.2).
_CHANNELS = {**dict.fromkeys(range(1, 8), 256), **dict.fromkeys(range(8, 14), 512),
             **dict.fromkeys(range(14, 26), 1024), **dict.fromkeys(range(26, 32), 512),
             **dict.fromkeys(range(32, 38), 256)}
_SIDES = [256, 256, 256, 128, 128, 128, 64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8, 8, 8, 16,
          16, 16, 32, 32, 32, 64, 64, 64, 128, 128, 128, 256, 256, 256, 256]
ADM256_INFO = {f"adm.{b}": FeatureInfo(name=f"adm.{b}", module=f"block{b}", kind="out",
                                       layout="map", channels=_CHANNELS[b],
                                       stride=256 // _SIDES[b - 1])
               for b in range(1, 38)}


def feedback_count(head) -> int:
    return sum(p.numel() for p in head.feedback_layers.parameters())


@pytest.mark.parametrize("strategy,expected,sources", [
    ("bottleneck", 2_759_680, ["adm.21", "adm.24", "adm.27", "adm.30", "adm.33", "adm.36"]),
    ("all", 7_622_144, [f"adm.{b}" for b in range(20, 38)]),
    ("windowed", 5_253_120, [f"adm.{b}" for b in range(20, 25)]),
])
def test_feedback_parameter_counts_are_the_papers(strategy, expected, sources):
    head = build_head({"type": "diffeed", "feedback": strategy}, ADM256_INFO, num_labels=1000,
                      image_size=[256, 256])
    assert feedback_count(head) == expected
    assert head.first_taps == sources and head.taps == ["adm.24"]
    assert head.pairs[0] == [sources[0], f"adm.{38 - int(sources[0][4:])}"]
    total = sum(p.numel() for p in head.parameters())
    assert total == 27_786_216 + expected  # the Attention head of §1.3 + the feedback layers


def test_bottleneck_layers_are_conv_bn_relu_without_bias():
    head = build_head({"type": "diffeed"}, ADM256_INFO, num_labels=10, image_size=[256, 256])
    conv, bn, relu = head.feedback_layers[0]  # 21 -> 17: 1024 -> 1024 at 8 x 8
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (1024, 1024, (1, 1), None)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert [layer[0].out_channels for layer in head.feedback_layers] == [1024, 1024, 512, 512, 256, 256]


@pytest.mark.parametrize("feedback,message", [
    ("nope", r"config\['head'\]\['feedback'\] = 'nope' is invalid: one of \['all', 'bottleneck'"),
    ([["adm.21"]], r"a non-empty list of \[source tap, target tap\] pairs"),
    ([["adm.21", "adm.99"]], r"needs the taps \['adm.99'\], which the backbone lacks"),
])
def test_bad_feedback_is_a_clear_error(feedback, message):
    with pytest.raises(ValueError, match=message):
        build_head({"type": "diffeed", "feedback": feedback}, ADM256_INFO, num_labels=2,
                   image_size=[256, 256])


# --------------------------------------------------------- a small ADM-layout network (13 blocks)

SMALL_ADM = dict(
    sample_size=32, in_channels=3, out_channels=6, layers_per_block=1,
    block_out_channels=(32, 32, 64), attention_head_dim=8, attn_norm_num_groups=8,
    norm_num_groups=8, norm_eps=1e-5, downsample_type="resnet", upsample_type="resnet",
    down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    resnet_time_scale_shift="scale_shift", flip_sin_to_cos=True, freq_shift=0)
# decoder b feeds encoder 14 - b (13 blocks); 9 -> 5 and 11 -> 3 change the size (bilinear)
PAIRS = [[f"adm.{b}", f"adm.{14 - b}"] for b in range(8, 14)]
FINAL = "adm.10"


@pytest.fixture(scope="module")
def small_adm(tmp_path_factory):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("small_adm")
    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL_ADM).eval()
    unet.save_pretrained(str(folder / "unet"))
    DDPMScheduler().save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    backbone = DiffusionBackbone.from_diffusers(folder, taps=[f"adm.{b}" for b in range(1, 14)],
                                                timesteps=[150])
    return unet, backbone


def _head(backbone, seed: int = 0):
    torch.manual_seed(seed)
    head = build_head({"type": "diffeed", "tap": FINAL, "feedback": PAIRS, "width": 16,
                       "depth": 1, "num_heads": 2}, backbone.feature_info, num_labels=3,
                      image_size=[32, 32])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # running statistics that are not 0 / 1 (eval mode uses them)
        for layer in head.feedback_layers:
            bn = layer[1]
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
    return head.eval()


def _inputs():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, eps


def manual_two_pass(unet, head, images, eps, t: int = 150, final: int = 10) -> torch.Tensor:
    """DifFeed written block by block on the diffusers modules (``unet.py:912-985`` order)."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler().alphas_cumprod[t]
    x = abar.sqrt() * (images * 2 - 1) + (1 - abar).sqrt() * eps  # (B, 3, 32, 32)
    emb = unet.time_embedding(unet.time_proj(torch.full((x.shape[0],), t)))

    def run(feedback: dict[int, torch.Tensor], stop: int) -> dict[int, torch.Tensor]:
        out, skips = {}, []

        def mark(b, h, skip=True):
            if b in feedback:  # block output + feedback: next input and skip alike
                h = h + F.interpolate(feedback[b], size=h.shape[-2:], mode="bilinear",
                                      align_corners=False)
            out[b] = h
            if skip:
                skips.append(h)
            return h

        h, b = mark(1, unet.conv_in(x)), 1
        for block in unet.down_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[i](h)
                b += 1
                h = mark(b, h)
            if block.downsamplers is not None:
                b += 1
                h = mark(b, block.downsamplers[0](h, emb))
        b += 1
        h = mark(b, unet.mid_block(h, emb), skip=False)
        for block in unet.up_blocks:
            for i, resnet in enumerate(block.resnets):
                h = resnet(torch.cat([h, skips.pop()], dim=1), emb)
                if hasattr(block, "attentions"):
                    h = block.attentions[i](h)
                last = i == len(block.resnets) - 1
                if last and block.upsamplers is not None:
                    h = block.upsamplers[0](h, emb)  # the level's last block holds the upsampler
                b += 1
                out[b] = h
                if b == stop:
                    return out
        return out

    with torch.no_grad():
        first = run({}, stop=13)
    feedback = {}
    for (source, target), layer in zip(head.pairs, head.feedback_layers):
        feedback[int(target[4:])] = layer(first[int(source[4:])])
    return run(feedback, stop=final)[final]


def test_two_pass_equals_a_block_by_block_loop(small_adm):
    unet, backbone = small_adm
    head = _head(backbone)
    images, eps = _inputs()
    with torch.no_grad():
        ours = backbone.forward_two_pass(images, head.feedback, first_taps=head.first_taps,
                                         taps=head.taps, noise=eps)
        expected = manual_two_pass(unet, head, images, eps)
        single = backbone(images, noise=eps, taps=[FINAL])[FINAL]
    assert list(ours) == [FINAL]
    assert (ours[FINAL] - expected).abs().max() <= 1e-5
    assert (ours[FINAL] - single).abs().max() > 1e-3  # the feedback changes the feature


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_zero_feedback_weights_give_the_first_pass_feature(small_adm, mode):
    """Zero convolutions: BatchNorm maps 0 to beta = 0 (running stats 0 / 1 in eval, the batch's in
    train), ReLU keeps 0, pass 2 adds exact zeros."""
    _, backbone = small_adm
    torch.manual_seed(0)
    head = build_head({"type": "diffeed", "tap": FINAL, "feedback": PAIRS, "width": 16,
                       "depth": 1, "num_heads": 2}, backbone.feature_info, num_labels=3,
                      image_size=[32, 32])
    for layer in head.feedback_layers:
        torch.nn.init.zeros_(layer[0].weight)
    head.train(mode == "train")
    images, eps = _inputs()
    with torch.no_grad():
        ours = backbone.forward_two_pass(images, head.feedback, first_taps=head.first_taps,
                                         taps=head.taps, noise=eps)[FINAL]
        first = backbone(images, noise=eps, taps=[FINAL])[FINAL]
    assert torch.equal(ours, first)


def test_batch_norm_follows_the_heads_mode(small_adm):
    _, backbone = small_adm
    head = _head(backbone)
    first = {name: torch.randn(4, backbone.feature_info[name].channels, 8, 8) for name in head.first_taps}
    bn = head.feedback_layers[0][1]
    before = bn.running_mean.clone()
    head.feedback(first)
    assert torch.equal(bn.running_mean, before)  # eval: running statistics used, not updated
    head.train()
    head.feedback(first)
    assert not torch.equal(bn.running_mean, before)  # train: batch statistics, updated


def test_sizes_and_paths_of_the_injections(small_adm):
    _, backbone = small_adm
    head = _head(backbone)
    info = backbone.feature_info
    first = {name: torch.zeros(2, info[name].channels, 32 // info[name].stride,
                               32 // info[name].stride) for name in head.first_taps}
    injections = head.feedback(first)
    assert list(injections) == [info[target].module for _, target in PAIRS]
    for (_, target), value in zip(PAIRS, injections.values()):
        side = 32 // info[target].stride
        assert value.shape == (2, info[target].channels, side, side), target
