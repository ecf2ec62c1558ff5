"""The ``attention`` and ``difformer`` heads against METHODS.md §1.3-1.4 (S001 §3.1-3.2):
parameter counts of the paper's configurations (no weights needed: ``feature_info`` alone), token
counts, and logits equal to a plain functional transcription of the layer list written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffperception.features.taps import FeatureInfo
from diffperception.heads import build_head, list_heads


def info(name: str, channels: int, stride: int, timesteps: int = 1, layout: str = "map"
         ) -> FeatureInfo:
    return FeatureInfo(name=name, module=name, kind="out", layout=layout, channels=channels,
                       stride=stride, num_timesteps=timesteps)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ADM-256 at 256 px (METHODS.md §0.2): b=19 1024 x 8 x 8, b=24 1024 x 16 x 16, b=30 512 x 64 x 64.
B24 = {"adm.24": info("adm.24", 1024, 16)}
DIFFORMER = {"adm.19": info("adm.19", 1024, 32, 3), "adm.24": info("adm.24", 1024, 16, 3),
             "adm.30": info("adm.30", 512, 4, 3)}


def test_heads_are_registered():
    assert {"attention", "difformer", "diffeed"} <= set(list_heads())


@pytest.mark.parametrize("depth,labels,expected", [
    (1, 1000, 15_193_064), (2, 1000, 27_786_216), (4, 1000, 52_972_520), (2, 50, 26_812_466)])
def test_attention_parameter_counts_are_the_papers(depth, labels, expected):
    head = build_head({"type": "attention", "depth": depth}, B24, num_labels=labels,
                      image_size=[256, 256])
    assert count(head) == expected
    assert head.num_tokens == 257  # 16 x 16 + CLS (METHODS.md §1.10 item 5)
    assert head.tokenizers[0].norm.weight.shape == (1024, 16, 16)  # one LayerNorm over the map


def test_difformer_parameter_count_and_tokens_are_the_papers():
    head = build_head({"type": "difformer"}, DIFFORMER, num_labels=50, image_size=[256, 256])
    assert count(head) == 28_882_994
    assert head.num_tokens == 577  # 64 + 256 + (64 x 64 pooled to 16 x 16) 256 + CLS
    assert head.classifier.in_features == 3072
    assert [t.grid for t in head.tokenizers] == [(8, 8), (16, 16), (16, 16)]
    assert isinstance(head.tokenizers[0].pool, torch.nn.Identity)  # no pooling at <= 16


# ------------------------------------------------------------------------- the transcription

def reference_logits(sd: dict, maps: list[torch.Tensor], *, pool: int, num_heads: int, depth: int,
                     norm: str = "layer") -> torch.Tensor:
    """METHODS.md §1.3-1.4 written out with functional ops: ``maps`` are ``(B, T, C, h, w)``."""
    batch, steps = maps[0].shape[:2]
    width = sd["cls_token"].shape[-1]
    head_dim = width // num_heads
    outputs = []
    for t in range(steps):
        seq = [sd["cls_token"].expand(batch, 1, width)]
        for i, x in enumerate(maps):
            x = x[:, t]  # (B, C, h, w)
            if x.shape[-1] > pool:
                x = F.adaptive_avg_pool2d(x, pool)
            p = f"tokenizers.{i}."
            if norm == "layer":  # one LayerNorm over C x s x s, affine (C, s, s)
                x = F.layer_norm(x, x.shape[1:], sd[p + "norm.weight"], sd[p + "norm.bias"], 1e-5)
            else:  # per token, over C
                x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], sd[p + "norm.weight"],
                                 sd[p + "norm.bias"], 1e-5).permute(0, 3, 1, 2)
            x = F.conv2d(x, sd[p + "proj.weight"], sd[p + "proj.bias"])
            seq.append(x.flatten(2).transpose(1, 2))  # row-major tokens, no position embedding
        x = torch.cat(seq, dim=1)
        for d in range(depth):
            p = f"blocks.{d}."
            h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
            q, k, v = (h @ sd[p + "attn.qkv.weight"].T).chunk(3, dim=-1)  # no qkv bias
            split = lambda z: z.reshape(batch, -1, num_heads, head_dim).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            a = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5, dim=-1) @ v
            a = a.transpose(1, 2).reshape(batch, -1, width)
            x = x + a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
            h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
            h = F.gelu(h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"])  # exact GELU
            x = x + h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"]
        outputs.append(x[:, 0])  # CLS, no final norm
    return torch.cat(outputs, dim=1) @ sd["classifier.weight"].T + sd["classifier.bias"]


def _randomised(head: torch.nn.Module) -> dict:
    """Random values everywhere (the zero CLS and unit norms would hide mistakes)."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


@pytest.mark.parametrize("norm", ["layer", "token"])
def test_attention_head_equals_the_transcription(norm):
    feature_info = {"up": info("up", 12, 4)}  # 12 x 8 x 8 at 32 px
    head = build_head({"type": "attention", "width": 16, "depth": 2, "num_heads": 4, "pool": 4,
                       "norm": norm}, feature_info, num_labels=5, image_size=[32, 32]).eval()
    sd = _randomised(head)
    x = torch.randn(3, 12, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = head({"up": x}).logits
    expected = reference_logits(sd, [x.unsqueeze(1)], pool=4, num_heads=4, depth=2, norm=norm)
    assert ours.shape == (3, 5)
    assert (ours - expected).abs().max() <= 1e-6


def test_difformer_equals_the_transcription_over_taps_and_timesteps():
    feature_info = {"mid": info("mid", 16, 8, 3), "up": info("up", 8, 2, 3)}
    head = build_head({"type": "difformer", "width": 16, "depth": 1, "num_heads": 2, "pool": 8},
                      feature_info, num_labels=4, image_size=[32, 32]).eval()
    sd = _randomised(head)
    gen = torch.Generator().manual_seed(1)
    mid, up = torch.randn(2, 3, 16, 4, 4, generator=gen), torch.randn(2, 3, 8, 16, 16, generator=gen)
    with torch.no_grad():
        ours = head({"mid": mid, "up": up}).logits
    expected = reference_logits(sd, [mid, up], pool=8, num_heads=2, depth=1)
    assert head.num_tokens == 1 + 16 + 64 and head.classifier.in_features == 48
    assert (ours - expected).abs().max() <= 1e-6


def test_loss_and_batch_norm_option():
    head = build_head({"type": "attention", "width": 8, "depth": 1, "num_heads": 2, "norm": "batch"},
                      {"up": info("up", 4, 8)}, num_labels=3, image_size=[32, 32])
    assert isinstance(head.tokenizers[0].norm, torch.nn.BatchNorm2d)
    out = head({"up": torch.randn(2, 4, 4, 4)}, labels=torch.tensor([0, 2]))
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2])))


@pytest.mark.parametrize("config,message", [
    ({"norm": "group"}, r"config\['head'\]\['norm'\] = 'group' is invalid: one of \('layer'"),
    ({"num_heads": 3}, r"config\['head'\]\['num_heads'\] = 3 is invalid: it must divide width"),
    ({"width": 0}, r"config\['head'\]\['width'\] = 0 is invalid"),
    ({"mlp_ratio": -1}, r"config\['head'\]\['mlp_ratio'\] = -1 is invalid"),
    ({"tap": "nope"}, r"config\['head'\]\['taps'\] = \['nope'\] is invalid"),
])
def test_bad_attention_config_is_a_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        build_head({"type": "attention", "width": 8, "num_heads": 2, **config},
                   {"up": info("up", 4, 8)}, num_labels=3, image_size=[32, 32])


def test_the_head_needs_a_tap_when_there_are_several_and_maps_of_its_size():
    two = {"a": info("a", 4, 8), "b": info("b", 4, 4)}
    with pytest.raises(ValueError, match=r"config\['head'\]\['tap'\] is missing"):
        build_head({"type": "attention"}, two, num_labels=2, image_size=[32, 32])
    with pytest.raises(ValueError, match="multiples of its stride 8"):
        build_head({"type": "attention", "tap": "a"}, two, num_labels=2, image_size=[36, 36])
    head = build_head({"type": "attention", "tap": "a", "width": 8, "num_heads": 2}, two,
                      num_labels=2, image_size=[32, 32])
    with pytest.raises(ValueError, match=r"built for 4x4 maps of this tap, got \(1, 4, 8, 8\)"):
        head({"a": torch.randn(1, 4, 8, 8)})
    with pytest.raises(ValueError, match=r"config\['head'\]\['taps'\] = 'a' is invalid"):
        build_head({"type": "difformer", "taps": "a"}, two, num_labels=2, image_size=[32, 32])
