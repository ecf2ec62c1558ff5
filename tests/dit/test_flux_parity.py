"""FLUX features against hooks on the FULL ``FluxTransformer2DModel``, called as ``FluxPipeline``
calls it: packed latents, image / text position ids, ``timestep / 1000``, guidance 3.5.

The joint attention probabilities are written out here from the projections the hooks capture,
diffusers' ``apply_rotary_emb`` on [text, image] queries and keys, and a softmax.
"""

from __future__ import annotations

import torch

from diffperception import DiffusionBackbone
from diffperception.features.noise import fixed_noise

SIZE = (64, 48)
GRID = (4, 3)
TAPS = ["transformer_blocks.0", "single_transformer_blocks.1", "single_transformer_blocks.0.proj_mlp",
        "transformer_blocks.0.ff.net.0", "transformer_blocks.0.attn:attn", "x_embedder"]


def _images() -> torch.Tensor:
    return torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(0))


def _map(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *GRID)


def _flux_reference(pipe, images, prompt, t, eps):
    from diffusers.models.embeddings import apply_rotary_emb

    vae, transformer = pipe.vae, pipe.transformer
    z0 = (vae.encode(images * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    zt = pipe.scheduler.scale_noise(z0, torch.tensor([float(t)]), eps.expand_as(z0))
    embeds, pooled, text_ids = pipe.encode_prompt(prompt, None, max_sequence_length=512)
    b, c, h, w = zt.shape
    packed = pipe._pack_latents(zt, b, c, h, w)
    image_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    paths = ["transformer_blocks.0", "single_transformer_blocks.1", "single_transformer_blocks.0.proj_mlp",
             "transformer_blocks.0.ff.net.0", "x_embedder", "pos_embed"]
    attn = transformer.transformer_blocks[0].attn
    proj = {f"transformer_blocks.0.attn.{n}": n for n in ("to_q", "to_k", "add_q_proj", "add_k_proj")}
    store, handles = {}, []
    modules = dict(transformer.named_modules())
    for path in paths + list(proj):
        def post(mod, args, out, _p=path):
            store[_p] = out
        handles.append(modules[path].register_forward_hook(post))
    try:
        with torch.no_grad():
            transformer(hidden_states=packed, encoder_hidden_states=embeds.expand(b, -1, -1),
                        pooled_projections=pooled.expand(b, -1), timestep=torch.tensor([t / 1000] * b),
                        img_ids=image_ids, txt_ids=text_ids, guidance=torch.full([b], 3.5))
    finally:
        for handle in handles:
            handle.remove()
    ref = {"transformer_blocks.0": _map(store["transformer_blocks.0"][1]),
           "single_transformer_blocks.1": _map(store["single_transformer_blocks.1"][1]),
           "single_transformer_blocks.0.proj_mlp": store["single_transformer_blocks.0.proj_mlp"],
           "transformer_blocks.0.ff.net.0": _map(store["transformer_blocks.0.ff.net.0"]),
           "x_embedder": _map(store["x_embedder"])}
    p = {name: store[path].unflatten(-1, (-1, attn.head_dim)) for path, name in proj.items()}
    with torch.no_grad():
        q = torch.cat([attn.norm_added_q(p["add_q_proj"]), attn.norm_q(p["to_q"])], dim=1)
        k = torch.cat([attn.norm_added_k(p["add_k_proj"]), attn.norm_k(p["to_k"])], dim=1)
        q = apply_rotary_emb(q, store["pos_embed"], sequence_dim=1).transpose(1, 2)  # (B, h, L+S, d)
        k = apply_rotary_emb(k, store["pos_embed"], sequence_dim=1).transpose(1, 2)
        ref["transformer_blocks.0.attn:attn"] = (q @ k.transpose(-1, -2) * attn.head_dim ** -0.5).softmax(-1)
    return ref


def test_flux_taps_equal_hooks_on_the_full_transformer(flux_repo):
    from diffusers import FluxPipeline

    backbone = DiffusionBackbone.from_diffusers(flux_repo, taps=TAPS, timesteps=[750], prompt="a red cat")
    assert len(backbone.network.single_transformer_blocks) == 2 and backbone.network.proj_out is None
    eps = fixed_noise(0, 1, 1, (4, 8, 6))[0, 0]
    with torch.no_grad():
        out = backbone(_images())
        special = backbone.specialize(size=SIZE)(_images())
    ref = _flux_reference(FluxPipeline.from_pretrained(str(flux_repo)), _images(), "a red cat", 750, eps)
    for result in (out, special):
        for name in TAPS:
            assert result[name].shape == ref[name].shape, name
            torch.testing.assert_close(result[name], ref[name], atol=2e-5, rtol=1e-4, msg=name)
    # a single-stream block's MLP runs on [text, image]: it stays tokens
    assert out["single_transformer_blocks.0.proj_mlp"].shape[1] == 512 + 12


def test_flux_cut_before_the_single_stream_blocks(flux_repo):
    backbone = DiffusionBackbone.from_diffusers(flux_repo, taps=["transformer_blocks.0.ff.net.0"],
                                                timesteps=[250])
    assert len(backbone.network.single_transformer_blocks) == 0
    assert not any(k.startswith("single_transformer_blocks") for k in backbone.network.state_dict())
