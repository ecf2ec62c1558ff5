"""The U-head flows against a plain PyTorch transcription of METHODS.md §3.4-3.5 written here
(functional ops on the module's own weights: conv 1x1 as einsum, GroupNorm, average pooling, the
CLIP attention pool as explicit softmax attention), and the parameter counts of the default
("tiny") channel sets, counted by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffperception.heads.uhead import AddFlow, AttentionPool2d, DenseFlow, GlobalFlow

# SD 1.5 at 256 px, "mid + up" with the cross-attention maps at s1 / s2 and the ResNet-18 expert
SD15_CHANNELS = [1280, 1280 + 77 + 512, 1280 + 77 + 256, 960 + 128]
TINY = [1024, 768, 512, 256]


def fuse_ref(block, x):
    conv, norm = block[0], block[1]
    y = torch.einsum("bchw,oc->bohw", x, conv.weight[:, :, 0, 0])
    y = F.group_norm(y, 32, norm.weight, norm.bias, norm.eps)
    return y * torch.sigmoid(y)


def attention_pool_ref(pool, x):
    b, c = x.shape[:2]
    t = x.reshape(b, c, -1).permute(0, 2, 1)  # (B, HW, C)
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding
    h = pool.num_heads
    d = c // h
    q = (t[:, :1] @ pool.q_proj.weight.T + pool.q_proj.bias).reshape(b, 1, h, d)
    k = (t @ pool.k_proj.weight.T + pool.k_proj.bias).reshape(b, -1, h, d)
    v = (t @ pool.v_proj.weight.T + pool.v_proj.bias).reshape(b, -1, h, d)
    att = torch.einsum("bqhd,bkhd->bhqk", q, k) / d ** 0.5
    out = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(b, c)
    return out @ pool.c_proj.weight.T + pool.c_proj.bias


def global_ref(flow, s):
    # METHODS.md §3.4: u3 = pool(F(s3)); u2 = pool(F(cat(s2, u3))); u1 = pool(F(cat(s1, u2)));
    # h = F(cat(s0, u1)); v = AttentionPool2d(h)
    u = F.avg_pool2d(fuse_ref(flow.blocks[3], s[3]), 2)
    u = F.avg_pool2d(fuse_ref(flow.blocks[2], torch.cat([s[2], u], 1)), 2)
    u = F.avg_pool2d(fuse_ref(flow.blocks[1], torch.cat([s[1], u], 1)), 2)
    h = fuse_ref(flow.blocks[0], torch.cat([s[0], u], 1))
    return attention_pool_ref(flow.pool, h)


def dense_ref(flow, s):
    # METHODS.md §3.5: d0 = F(s0); d_k = F(cat(s_k, up2(d_{k-1}))); 1x1 conv to the text width
    d = fuse_ref(flow.blocks[0], s[0])
    for k in range(1, 4):
        up = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
        d = fuse_ref(flow.blocks[k], torch.cat([s[k], up], 1))
    return F.conv2d(d, flow.proj.weight, flow.proj.bias)


def scales(channels, base=2, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, base * 2 ** k, base * 2 ** k, generator=g)
            for k, c in enumerate(channels)]


def test_global_flow_equals_the_transcription():
    torch.manual_seed(0)
    channels, widths = [64, 48, 40, 24], [64, 64, 32, 32]
    flow = GlobalFlow(channels, widths, pool_size=4, num_heads=4, output_dim=16).eval()
    s = scales(channels, base=4)
    with torch.no_grad():
        out = flow(s)
        ref = global_ref(flow, s)
    assert out.shape == (2, 16)
    assert torch.allclose(out, ref, atol=1e-5)


def test_dense_flow_equals_the_transcription():
    torch.manual_seed(0)
    channels, widths = [64, 48, 40, 24], [64, 64, 32, 32]
    flow = DenseFlow(channels, widths, output_dim=16).eval()
    s = scales(channels)
    with torch.no_grad():
        out = flow(s)
        ref = dense_ref(flow, s)
    assert out.shape == (2, 16, 16, 16)
    assert torch.allclose(out, ref, atol=1e-5)


def test_add_baseline_averages_projected_scales():
    torch.manual_seed(0)
    channels = [32, 24, 16]
    flow = AddFlow(channels, 32, pool_size=2, num_heads=4, output_dim=8).eval()
    s = scales(channels, base=2)
    with torch.no_grad():
        maps = [F.adaptive_avg_pool2d(F.conv2d(x, c.weight), 2) for x, c in zip(s, flow.convs)]
        ref = attention_pool_ref(flow.pool, sum(maps) / 3)
        assert torch.allclose(flow(s), ref, atol=1e-5)


def test_attention_pool_matches_spatial_grid_only():
    pool = AttentionPool2d(4, 64, 8, 32)
    with pytest.raises(RuntimeError):
        pool(torch.randn(1, 64, 5, 5))


def test_parameter_counts_of_the_default_channel_sets():
    # by hand: FuseBlock = in*out (conv, no bias) + 2*out (GroupNorm);
    # AttentionPool2d(4, 1024, 8, 768) = 17*1024 + 3*(1024*1024 + 1024) + 1024*768 + 768
    fuse = ((1088 * 256 + 512) + ((1613 + 256) * 512 + 1024) + ((1869 + 512) * 768 + 1536)
            + ((1280 + 768) * 1024 + 2048))
    pool = 17 * 1024 + 3 * (1024 * 1024 + 1024) + 1024 * 768 + 768
    count = sum(p.numel() for p in GlobalFlow(SD15_CHANNELS, TINY).parameters())
    assert count == fuse + pool == 9_119_744
    dense = sum(p.numel() for p in DenseFlow(SD15_CHANNELS, TINY).parameters())
    assert dense == 5_363_712
    add = sum(p.numel() for p in AddFlow(SD15_CHANNELS).parameters())
    pool512 = 17 * 512 + 3 * (512 * 512 + 512) + 512 * 768 + 768
    assert add == sum(c * 512 for c in SD15_CHANNELS) + pool512 == 4_185_856


def test_widths_must_match_the_scales():
    with pytest.raises(ValueError, match="one width per scale"):
        GlobalFlow([32, 32], [64, 32, 32])
