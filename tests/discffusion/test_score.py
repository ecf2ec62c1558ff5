"""The Discffusion score (METHODS.md §2.2-2.4) against references written here.

- the attention score equals a hand computation from ``q`` and ``k`` captured by hooks on the
  FULL diffusers U-Net of diffusers' own pipeline (``attn2.to_q`` / ``attn2.to_k`` outputs,
  ``q k^T * scale`` per head, LogSumExp over text or image tokens, lambda, means), for both
  pooling axes, two timesteps and every cross-attention;
- the released code's noise-error term equals ``||eps - eps_hat(z_t, "")|| - ||eps -
  eps_hat(z_t, y)||`` from the same U-Net;
- one image's score is the same alone and in a batch of 8, and with any ``batch_size``;
- ``scorer="noise_error"`` equals minus the project's diffusion-classifier errors
  (``evaluation.zero_shot.caption_errors``) on the same noise;
- the layer selections and the released code's timesteps, checked on SD 2.1's published layout.
"""

from __future__ import annotations

import pytest
import torch

from diffperception import DiffusionPerceptionForImageTextMatching
from diffperception.heads.cross_attention_score import cross_attention_taps
from diffperception.modeling.image_text_matching import released_code_timesteps

TEXTS = ["a red cube", "two blue dogs", "x"]
TIMESTEPS = [199, 599]


def matching_config(repo, *, pool="text", lam=1.0, taps=None, timesteps=TIMESTEPS,
                    adaptation="none", noise_error=False, labels=None, head_weights=False):
    from diffusers import UNet2DConditionModel
    from accelerate import init_empty_weights

    if taps is None:
        config = UNet2DConditionModel.load_config(str(repo / "unet"))
        with init_empty_weights():
            taps = cross_attention_taps(UNet2DConditionModel.from_config(config), "all")
    return {
        "architecture": "DiffusionPerceptionForImageTextMatching",
        "backbone": {"repo_id": str(repo), "family": "sd"},
        "features": {"taps": list(taps) + ["conv_out"], "timesteps": list(timesteps),
                     "noise": {"kind": "fixed", "seed": 0},
                     "prompt": {"kind": "per_image"}},
        "preprocess": {"size": [64, 64]},
        "head": {"type": "cross_attention_score", "pool": pool, "lam": lam,
                 "head_weights": head_weights},
        "labels": labels,
        "task": {"adaptation": adaptation, "noise_error": noise_error},
    }


@pytest.fixture(scope="module")
def images():
    return torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _reference(pipe, image, text, eps, timesteps, taps):
    """``{t: ({tap: logits (h, Q, K)}, eps_hat_text, eps_hat_null)}`` from the full U-Net."""
    unet = pipe.unet  # diffusers' own processors; hooks read the projections' outputs
    paths = [tap.split(":")[0] for tap in taps]
    store, handles = {}, []
    for path in paths:
        for proj in ("to_q", "to_k"):
            module = unet.get_submodule(f"{path}.{proj}")
            handles.append(module.register_forward_hook(
                lambda mod, args, out, _k=(path, proj): store.__setitem__(_k, out)))
    with torch.no_grad():
        x = image[None] * 2 - 1
        z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        context = pipe.encode_prompt(text, "cpu", 1, False)[0]
        null = pipe.encode_prompt("", "cpu", 1, False)[0]
        out = {}
        for i, t in enumerate(timesteps):
            abar = pipe.scheduler.alphas_cumprod[t]
            zt = abar.sqrt() * z0 + (1 - abar).sqrt() * eps[i]
            eps_text = unet(zt, t, encoder_hidden_states=context).sample
            logits = {}
            for path, tap in zip(paths, taps):
                attn = unet.get_submodule(path)
                q, k = store[(path, "to_q")][0], store[(path, "to_k")][0]  # (Q, inner), (K, inner)
                d = q.shape[-1] // attn.heads
                q = q.view(-1, attn.heads, d).transpose(0, 1)  # (h, Q, d)
                k = k.view(-1, attn.heads, d).transpose(0, 1)  # (h, K, d)
                logits[tap] = q @ k.transpose(-1, -2) / d ** 0.5  # (h, Q, K)
            eps_null = unet(zt, t, encoder_hidden_states=null).sample
            out[t] = (logits, eps_text[0], eps_null[0])
    for handle in handles:
        handle.remove()
    return out


def _lse_score(logits, pool, lam):
    # the paper: (1/lam) log sum_i exp(lam A_i,:) over image tokens, then the mean over text
    # tokens; the released code: log sum_j exp over text tokens, then the mean over image tokens
    dim = 1 if pool == "image" else 2
    return (torch.log(torch.exp(lam * logits.double()).sum(dim=dim)) / lam).mean().item()


@pytest.mark.parametrize("pool,lam", [("text", 1.0), ("image", 1.0), ("image", 2.5)])
def test_attention_score_equals_hand_computation(tiny_repos, reference_pipes, images, pool, lam):
    model = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"], pool=pool,
                                                                    lam=lam)).eval()
    taps = model.head.taps
    assert len(taps) == 11  # every attn2 of the tiny SD-2 layout
    eps = torch.randn(len(TIMESTEPS), 4, 8, 8, generator=torch.Generator().manual_seed(5))
    got = model.score(images[:1], TEXTS[:2], noise=eps[:, None, None])  # (1, 2)
    for j, text in enumerate(TEXTS[:2]):
        ref = _reference(reference_pipes["sd2"], images[0], text, eps[:, None], TIMESTEPS, taps)
        expected = sum(_lse_score(ref[t][0][tap], pool, lam) for t in TIMESTEPS for tap in taps)
        expected /= len(TIMESTEPS) * len(taps)
        assert got[0, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_noise_error_term_equals_the_released_code_formula(tiny_repos, reference_pipes, images):
    with_term = DiffusionPerceptionForImageTextMatching(
        matching_config(tiny_repos["sd2"], noise_error=True)).eval()
    without = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"])).eval()
    eps = torch.randn(len(TIMESTEPS), 4, 8, 8, generator=torch.Generator().manual_seed(6))
    noise = eps[:, None, None]
    term = with_term.score(images[:1], TEXTS[:1], noise=noise) - without.score(
        images[:1], TEXTS[:1], noise=noise)
    ref = _reference(reference_pipes["sd2"], images[0], TEXTS[0], eps[:, None], TIMESTEPS,
                     without.head.taps)
    expected = sum((eps[i] - ref[t][2]).norm() - (eps[i] - ref[t][1]).norm()
                   for i, t in enumerate(TIMESTEPS)) / len(TIMESTEPS)
    assert term.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)


def test_one_sample_scores_the_same_alone_and_in_a_batch_of_8(tiny_repos, images):
    model = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"])).eval()
    batch = model.score(images, TEXTS)  # (8, 3)
    assert batch.shape == (8, 3)
    for i in (0, 5):
        alone = model.score(images[i: i + 1], TEXTS)
        assert torch.allclose(alone, batch[i: i + 1], rtol=1e-6, atol=1e-6)
    small_passes = model.score(images, TEXTS, batch_size=1)  # one trunk sample per pass
    assert torch.allclose(small_passes, batch, rtol=1e-6, atol=1e-6)
    # the same image twice in a batch gets the same scores (no batch coupling)
    twice = model.score(torch.stack([images[3], images[3]]), TEXTS)
    assert torch.equal(twice[0], twice[1])


def test_noise_error_scorer_is_the_diffusion_classifier(tiny_repos, images):
    from diffperception.evaluation.zero_shot import NOISE_SEED, caption_errors, noise_prediction_model

    model = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"])).eval()
    reference = noise_prediction_model(tiny_repos["sd2"], timesteps=TIMESTEPS, captions=TEXTS,
                                       size=(64, 64))
    errors = caption_errors(reference, images[:3].numpy(), TEXTS, progress=False)  # (3, 3)
    eps = torch.randn(len(TIMESTEPS), 1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(NOISE_SEED))
    got = model.score(images[:3], TEXTS, scorer="noise_error", noise=eps)
    assert torch.allclose(got.double(), -torch.from_numpy(errors), rtol=1e-5, atol=1e-6)


def test_forward_candidate_lists_equal_the_grid(tiny_repos, images):
    model = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"])).eval()
    grid = model.score(images[:2], TEXTS)
    with torch.no_grad():
        lists = model(images[:2], [[TEXTS[2], TEXTS[0]], [TEXTS[1], TEXTS[2]]]).scores
        pairs = model.score_pairs(images[:2], [TEXTS[1], TEXTS[0]])
    assert torch.allclose(lists, torch.stack([grid[0, [2, 0]], grid[1, [1, 2]]]), atol=1e-6)
    assert torch.allclose(pairs, torch.stack([grid[0, 1], grid[1, 0]]), atol=1e-6)
    best = model.match(images[0], TEXTS)
    assert best.index == int(grid[0].argmax()) and torch.allclose(best.scores, grid[0])


def test_learned_head_weights_start_uniform(tiny_repos, images):
    plain = DiffusionPerceptionForImageTextMatching(matching_config(tiny_repos["sd2"])).eval()
    weighted = DiffusionPerceptionForImageTextMatching(
        matching_config(tiny_repos["sd2"], head_weights=True)).eval()
    assert torch.allclose(weighted.score(images[:2], TEXTS), plain.score(images[:2], TEXTS),
                          atol=1e-6)
    with torch.no_grad():
        weighted.head.head_logits[0][0] = 5.0
    assert not torch.allclose(weighted.score(images[:2], TEXTS), plain.score(images[:2], TEXTS))


SD21_UNET = dict(  # stabilityai/stable-diffusion-2-1-base unet/config.json (the layout)
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def test_layer_selections_on_the_sd21_layout():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD21_UNET)
    assert len(cross_attention_taps(unet, "all")) == 16
    code = [t.split(".transformer_blocks")[0] for t in cross_attention_taps(unet, "released_code")]
    assert code == ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
                    "mid_block.attentions.0", "up_blocks.3.attentions.0",
                    "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"]
    with pytest.raises(ValueError, match="released_code"):
        cross_attention_taps(unet, "last")
    from diffperception.modeling.presets import load_preset

    preset = load_preset("discffusion-sd21base")  # the paper's layers, in execution order
    assert preset["features"]["taps"] == cross_attention_taps(unet, "all") + ["conv_out"]


def test_released_code_timesteps():
    k40 = released_code_timesteps(40)
    assert len(k40) == 40 and k40[:2] == [14, 39] and k40[-1] == 989
    assert released_code_timesteps(10) == list(range(89, 990, 100))
    assert len(released_code_timesteps(30)) == 30 and released_code_timesteps(30)[0] == 32
