"""Listing DiT taps, and the massive-activation (``:adaln``) tap against a hand computation."""

from __future__ import annotations

import uuid

import torch
import torch.nn.functional as F

from diffperception import DiffusionBackbone, list_taps

SIZE = (64, 48)


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, *SIZE, generator=torch.Generator().manual_seed(0))


def _tokens(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, N, C)


def _hand_adaln(hidden: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, ratio: float = 100.0):
    """LayerNorm written out, the block's modulation, massive channels (> ratio x median) zeroed."""
    mean = hidden.mean(dim=-1, keepdim=True)
    var = ((hidden - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (hidden - mean) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    dropped = []
    for b in range(hidden.shape[0]):
        median = hidden[b].abs().flatten().sort().values[(hidden[b].numel() - 1) // 2]
        massive = [c for c in range(hidden.shape[2]) if hidden[b, :, c].abs().max() > ratio * median]
        out[b, :, massive] = 0.0
        dropped.append(massive)
    return out, dropped


def test_list_taps_of_a_pixart_folder(dit_repos):
    taps = list_taps(dit_repos["pixart"], include_kinds=True)
    for name in ("transformer_blocks.2", "transformer_blocks.1.attn1.to_k", "transformer_blocks.1.attn2.to_q",
                 "transformer_blocks.1.ff.net.0", "transformer_blocks.0.attn1:attn", "pos_embed"):
        assert name in taps
    sd3 = list_taps(dit_repos["sd3"], include_kinds=True)
    # the last joint block returns (None, image): listed too; joint attention taps are listed
    assert "transformer_blocks.2" in sd3 and "transformer_blocks.1.attn:logits" in sd3
    assert {"transformer_blocks.0:adaln", "transformer_blocks.2:adaln"} <= set(sd3)
    assert "transformer_blocks.1:adaln" in taps and "transformer_blocks.1.ff:adaln" not in taps


def test_list_taps_of_a_hub_repo_reads_configs_only(dit_repos, local_hub, tmp_path):
    from huggingface_hub import HfApi

    repo = f"alice/PixArt-XL-2-512x512-{uuid.uuid4().hex[:8]}"
    api = HfApi(token="hf_alice_token")
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(dit_repos["pixart"]),
                      ignore_patterns=["*.safetensors"])
    taps = list_taps(repo, cache_dir=tmp_path)
    assert "transformer_blocks.1.ff.net.0" in taps
    assert not list(tmp_path.rglob("*.safetensors"))


def test_pixart_adaln_tap_equals_the_hand_computation_with_a_massive_channel(dit_repos, dit_pipes):
    backbone = DiffusionBackbone.from_diffusers(
        dit_repos["pixart"], taps=["transformer_blocks.1", "transformer_blocks.1:adaln"], timesteps=[261])
    block = backbone.network.transformer_blocks[1]
    with torch.no_grad():
        block.ff.net[2].bias[5] += 1e4  # plants a massive activation in channel 5
        out = backbone(_images())
        t6, _ = dit_pipes["pixart"].transformer.adaln_single(
            torch.tensor([261, 261]), {"resolution": None, "aspect_ratio": None}, batch_size=2,
            hidden_dtype=torch.float32)
    table = block.scale_shift_table[None] + t6.reshape(2, 6, -1)  # PixArt's per-block AdaLN
    hidden = _tokens(out["transformer_blocks.1"])
    expected, dropped = _hand_adaln(hidden, table[:, 0], table[:, 1])
    assert dropped == [[5], [5]]
    torch.testing.assert_close(_tokens(out["transformer_blocks.1:adaln"]), expected, atol=1e-5, rtol=1e-5)
    assert out["transformer_blocks.1:adaln"][:, 5].abs().max() == 0


def test_sd3_adaln_tap_equals_the_hand_computation_specialised_too(dit_repos, dit_pipes):
    taps = ["transformer_blocks.2", "transformer_blocks.2:adaln", "transformer_blocks.0:adaln"]
    backbone = DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=taps, timesteps=[500], prompt="a cat")
    with torch.no_grad():
        out = backbone(_images())
        special = backbone.specialize(size=SIZE)(_images())
        pipe = dit_pipes["sd3"]
        _, _, pooled, _ = pipe.encode_prompt("a cat", None, None, do_classifier_free_guidance=False)
        temb = pipe.transformer.time_text_embed(torch.tensor([500.0, 500.0]), pooled.expand(2, -1))
    linear = pipe.transformer.transformer_blocks[2].norm1.linear  # AdaLayerNormZero: 6 chunks
    shift, scale = F.linear(F.silu(temb), linear.weight, linear.bias).chunk(6, dim=1)[:2]
    expected, dropped = _hand_adaln(_tokens(out["transformer_blocks.2"]), shift, scale)
    assert dropped == [[], []]
    for result in (out, special):
        torch.testing.assert_close(_tokens(result["transformer_blocks.2:adaln"]), expected,
                                   atol=2e-5, rtol=1e-4)
    # block 0 is a dual-attention (SD3.5) block: its AdaLN has 9 chunks, the first two are used
    torch.testing.assert_close(special["transformer_blocks.0:adaln"], out["transformer_blocks.0:adaln"],
                               atol=2e-5, rtol=1e-4)


def test_joint_attention_logits_are_the_scores_behind_the_probabilities(dit_repos):
    taps = ["transformer_blocks.0.attn:logits", "transformer_blocks.0.attn:attn", "transformer_blocks.0.attn2:attn"]
    backbone = DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=taps, timesteps=[250])
    with torch.no_grad():
        out = backbone(_images())
    logits, probs = out[taps[0]], out[taps[1]]
    assert logits.shape == probs.shape == (2, 2, 12 + 16 + 256, 12 + 16 + 256)  # [image, text] tokens
    torch.testing.assert_close(logits.softmax(dim=-1), probs)
    assert out[taps[2]].shape == (2, 2, 12, 12)  # SD3.5's second attention: image tokens only
