"""The dit family's features against hooks on the FULL diffusers transformer.

The reference is written here from diffusers alone: the pipeline's own VAE, prompt encoding
(``encode_prompt``) and noising (``DDPMScheduler.add_noise`` / ``FlowMatchEulerDiscreteScheduler.
scale_noise``), then one forward of the whole transformer with forward hooks; token outputs are
reshaped to the (h / 2, w / 2) grid by hand. Images are 64 x 48 px, so the token grid is 4 x 3
(not square).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffperception import DiffusionBackbone
from diffperception.features.noise import fixed_noise

SIZE = (64, 48)
GRID = (4, 3)
PIXART_TAPS = ["transformer_blocks.1", "transformer_blocks.0.attn1.to_k",
               "transformer_blocks.2.attn2.to_q", "transformer_blocks.0.ff.net.0",
               "transformer_blocks.1.attn1:attn", "pos_embed"]
SD3_TAPS = ["transformer_blocks.1", "transformer_blocks.0.attn.to_q",
            "transformer_blocks.0.attn2.to_k", "transformer_blocks.1.ff.net.0",
            "transformer_blocks.1.ff_context.net.0", "transformer_blocks.1.attn:attn"]


def _images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, *SIZE, generator=torch.Generator().manual_seed(0))


def _hooks(model, paths):
    store, handles = {}, []
    modules = dict(model.named_modules())
    for path in paths:
        def post(mod, args, out, _p=path):
            store[_p] = out
        handles.append(modules[path].register_forward_hook(post))
    return store, handles


def _map(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *GRID)


def _pixart_reference(pipe, images, prompts, t, eps):
    vae, transformer = pipe.vae, pipe.transformer
    z0 = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    zt = pipe.scheduler.add_noise(z0, eps.expand_as(z0), torch.tensor([t]))
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            clean_caption=False, max_sequence_length=120)
    embeds, mask = embeds.expand(len(images), -1, -1), mask.expand(len(images), -1)
    paths = [p.split(":")[0] for p in PIXART_TAPS if ":" not in p]
    store, handles = _hooks(transformer, paths)
    from testing_utils.reference import hook_modules

    attn_store, attn_handles = hook_modules(transformer, [("attn", "transformer_blocks.1.attn1", "attn")])
    try:
        with torch.no_grad():
            transformer(zt, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                        timestep=torch.tensor([t] * len(images)),
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    finally:
        for handle in handles + attn_handles:
            handle.remove()
    ref = {p: _map(store[p]) for p in paths}
    ref["transformer_blocks.1.attn1:attn"] = attn_store["attn"]
    return ref


def _sd3_attention(store, attn):
    """Joint attention probabilities from the projections: [image, text] tokens, as SD3's processor."""
    def heads(x, norm):
        x = x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
        return norm(x) if norm is not None else x
    q = torch.cat([heads(store["q"], attn.norm_q), heads(store["aq"], attn.norm_added_q)], dim=2)
    k = torch.cat([heads(store["k"], attn.norm_k), heads(store["ak"], attn.norm_added_k)], dim=2)
    return (q @ k.transpose(-1, -2) * attn.scale).softmax(dim=-1)


def _sd3_reference(pipe, images, prompt, t, eps):
    vae, transformer = pipe.vae, pipe.transformer
    z0 = (vae.encode(images * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    zt = pipe.scheduler.scale_noise(z0, torch.tensor([float(t)]), eps.expand_as(z0))
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False)
    block = "transformer_blocks.1"
    attn = transformer.transformer_blocks[1].attn
    paths = ["transformer_blocks.1", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn2.to_k",
             "transformer_blocks.1.ff.net.0", "transformer_blocks.1.ff_context.net.0"]
    proj = {f"{block}.attn.{n}": k for n, k in (("to_q", "q"), ("to_k", "k"), ("add_q_proj", "aq"),
                                                ("add_k_proj", "ak"))}
    store, handles = _hooks(transformer, paths + list(proj))
    try:
        with torch.no_grad():
            transformer(hidden_states=zt, encoder_hidden_states=embeds.expand(len(images), -1, -1),
                        pooled_projections=pooled.expand(len(images), -1),
                        timestep=torch.tensor([float(t)] * len(images)))
    finally:
        for handle in handles:
            handle.remove()
    ref = {"transformer_blocks.1": _map(store["transformer_blocks.1"][1]),  # (text, image)
           "transformer_blocks.1.ff_context.net.0": store["transformer_blocks.1.ff_context.net.0"]}
    for p in paths[1:4]:
        ref[p] = _map(store[p])
    with torch.no_grad():
        ref["transformer_blocks.1.attn:attn"] = _sd3_attention({k: store[p] for p, k in proj.items()}, attn)
    return ref


def _check(out, ref, names):
    for name in names:
        assert out[name].shape == ref[name].shape, name
        torch.testing.assert_close(out[name], ref[name], atol=2e-5, rtol=1e-4, msg=name)


def test_pixart_taps_equal_hooks_on_the_full_transformer(dit_repos, dit_pipes):
    backbone = DiffusionBackbone.from_diffusers(dit_repos["pixart"], taps=PIXART_TAPS,
                                                timesteps=[261], prompt="a red cat")
    assert len(backbone.network.transformer_blocks) == 3  # attn2 of block 2 is tapped
    eps = fixed_noise(0, 1, 1, (4, 8, 6))[0, 0]  # (1, 4, 16, 12)
    with torch.no_grad():
        out = backbone(_images())
        special = backbone.specialize(size=SIZE)(_images())
    ref = _pixart_reference(dit_pipes["pixart"], _images(), "a red cat", 261, eps)
    _check(out, ref, PIXART_TAPS)
    _check(special, ref, PIXART_TAPS)


def test_pixart_cut_stops_after_the_last_needed_block(dit_repos, dit_pipes):
    backbone = DiffusionBackbone.from_diffusers(dit_repos["pixart"], taps=["transformer_blocks.0.ff.net.0"],
                                                timesteps=[261])
    net = backbone.network
    assert len(net.transformer_blocks) == 1 and net.proj_out is None and net.norm_out is None
    assert not any(k.startswith(("proj_out", "scale_shift_table")) for k in net.state_dict())
    assert backbone.feature_info["transformer_blocks.0.ff.net.0"].channels == 64  # 4 x 16 (GELU-tanh FFN)


def test_pixart_per_image_prompts_honour_the_t5_attention_mask(dit_repos, dit_pipes):
    prompts = ["a cat", "two dogs on green grass"]
    backbone = DiffusionBackbone.from_diffusers(dit_repos["pixart"], taps=["transformer_blocks.1"],
                                                timesteps=[261], prompt=prompts)
    eps = fixed_noise(0, 1, 1, (4, 8, 6))[0, 0]
    with torch.no_grad():
        out = backbone(_images())
    pipe = dit_pipes["pixart"]
    refs = [_pixart_reference(pipe, _images()[i:i + 1], prompts[i], 261, eps)["transformer_blocks.1"]
            for i in range(2)]
    torch.testing.assert_close(out["transformer_blocks.1"], torch.cat(refs), atol=2e-5, rtol=1e-4)


def test_sd3_taps_equal_hooks_on_the_full_transformer(dit_repos, dit_pipes):
    backbone = DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=SD3_TAPS, timesteps=[750],
                                                prompt="a red cat")
    assert len(backbone.network.transformer_blocks) == 2
    eps = fixed_noise(0, 1, 1, (4, 8, 6))[0, 0]
    with torch.no_grad():
        out = backbone(_images())
        special = backbone.specialize(size=SIZE)(_images())
    ref = _sd3_reference(dit_pipes["sd3"], _images(), "a red cat", 750, eps)
    _check(out, ref, SD3_TAPS)
    _check(special, ref, SD3_TAPS)
    assert out["transformer_blocks.1.ff_context.net.0"].ndim == 3  # the text stream stays tokens


def test_sd3_specialised_network_holds_constants_only(dit_repos):
    backbone = DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=["transformer_blocks.1"],
                                                timesteps=[250], prompt="a red cat")
    special = backbone.specialize(size=SIZE)
    net = special.transformer
    assert net.time_text_embed is None and net.context_embedder is None
    assert tuple(net.fixed_context.shape) == (1, 16 + 256, 16)
    names = set(dict(net.named_parameters()))
    assert not any(".norm1.linear." in n or "norm1_context.linear." in n for n in names)


@pytest.mark.parametrize("t", [250, 500, 750])
def test_flow_matching_noise_equals_scale_noise(dit_repos, dit_pipes, t):
    backbone = DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=["pos_embed"], timesteps=[t])
    z0 = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(2))
    zt, timesteps = backbone.noisy_latents(z0, eps)
    scheduler = dit_pipes["sd3"].scheduler.__class__.from_config(dit_pipes["sd3"].scheduler.config)
    assert float(t) in scheduler.timesteps.tolist()  # a timestep of the scheduler's own table
    ref = scheduler.scale_noise(z0, torch.tensor([float(t)] * 2), eps)
    torch.testing.assert_close(zt, ref, atol=1e-6, rtol=1e-6)
    assert timesteps.tolist() == [t, t]


def test_sd3_without_t5_uses_zeros_as_its_pipeline(tmp_path):
    from testing_utils import tiny_dit

    from diffusers import StableDiffusion3Pipeline

    folder = tiny_dit.make_sd3(tmp_path / "sd3_no_t5", t5=False)
    backbone = DiffusionBackbone.from_diffusers(folder, taps=["transformer_blocks.0"], timesteps=[250],
                                                prompt="a cat")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", None, None, do_classifier_free_guidance=False)
    torch.testing.assert_close(backbone.prompt.context, embeds)
    torch.testing.assert_close(backbone.prompt.pooled, pooled)


def test_adaln_tap_on_a_unet_is_a_clear_error(tiny_repos):
    with pytest.raises(ValueError, match="adaln"):
        DiffusionBackbone.from_diffusers(tiny_repos["sd1"], taps=["up_blocks.1:adaln"])


def test_adaln_inside_a_block_is_a_clear_error(dit_repos):
    with pytest.raises(ValueError, match="transformer block"):
        DiffusionBackbone.from_diffusers(dit_repos["sd3"], taps=["transformer_blocks.0.attn:adaln"])


def test_pixart_resolution_conditions_as_at_1024_px(tmp_path):
    """PixArt-alpha 1024 adds the image's resolution and aspect ratio to the time embedding."""
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel

    from diffperception.diffusers_folder import DiffusersFolderWriter
    from testing_utils import tiny_dit

    folder = tmp_path / "pixart_1024"
    writer = DiffusersFolderWriter(folder, "PixArtAlphaPipeline")
    torch.manual_seed(0)
    config = dict(tiny_dit.PIXART, num_attention_heads=3, cross_attention_dim=24)  # width 24: /3 for the size embedding
    transformer = PixArtTransformer2DModel(**config, use_additional_conditions=True)
    writer.add("transformer", transformer)
    writer.add("vae", AutoencoderKL(**tiny_dit.TINY_VAE))
    writer.add("scheduler", DDPMScheduler(beta_schedule="linear"))
    tokenizer = tiny_dit.save_t5_tokenizer(folder / "tokenizer")
    writer.add("tokenizer", tokenizer, save=False)
    writer.add("text_encoder", tiny_dit._t5(tokenizer, 32))
    writer.write_index()
    backbone = DiffusionBackbone.from_diffusers(folder, taps=["transformer_blocks.0.attn1.to_q", "transformer_blocks.1"],
                                                timesteps=[261], noise="none")
    context = torch.randn(1, 120, 32, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, 120)
    mask[:, 9:] = 0
    backbone.prompt.context.copy_(context)  # a prompt of 9 tokens
    backbone.prompt.pooled.copy_(mask)
    latent = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        z, t = backbone.noisy_latents(latent)
        ctx, added = backbone.conditioning(None, 2, SIZE, 2)
        feats = backbone.trunk(z, t, ctx, added)
        store, handles = _hooks(transformer, ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1"])
        transformer(latent, encoder_hidden_states=context.expand(2, -1, -1), encoder_attention_mask=mask.expand(2, -1),
                    timestep=torch.tensor([261, 261]),
                    added_cond_kwargs={"resolution": torch.tensor([[64.0, 48.0]] * 2),
                                       "aspect_ratio": torch.tensor([[64 / 48]] * 2)})
    for handle in handles:
        handle.remove()
    for name in store:
        torch.testing.assert_close(feats[name], _map(store[name]), atol=2e-5, rtol=1e-4, msg=name)
