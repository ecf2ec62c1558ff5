"""Specialisation: fixing timestep, prompt and noise turns them into constants.

- the timestep MLP (and SDXL's added-condition embedding) and every resnet's time projection
  become one bias per resnet (``FrozenTimeProjection``); the embedding modules are dropped;
- a fixed prompt's cross-attention K and V are computed once per layer (``fixed_key`` /
  ``fixed_value`` buffers) and ``to_k`` / ``to_v`` are dropped;
- the fixed noise (and ``sqrt(abar_t)``, ``sqrt(1 - abar_t)``) become buffers.
The result takes images only; it is what gets exported.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .attention import install_processor
from .noise import fixed_noise
from .trunk import Trunk

__all__ = ["FrozenTimeProjection", "SpecializedFeatureExtractor", "specialize"]

_EMBEDDING_MODULES = ("time_proj", "time_embedding", "add_embedding", "add_time_proj",
                      "time_embed_act", "encoder_hid_proj")


class FrozenTimeProjection(nn.Module):
    """A resnet's ``time_emb_proj`` output for fixed timesteps: ``bias`` of shape ``(T, C)``.

    The batch is laid out timesteps-outermost, so each timestep's row repeats ``N / T`` times.
    """

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, placeholder: torch.Tensor) -> torch.Tensor:
        if self.bias.shape[0] == 1:
            return self.bias.expand(placeholder.shape[0], -1)  # (N, C)
        # expand + reshape, not repeat_interleave: the ONNX exporter (torch 2.13) translates
        # repeat_interleave with a dynamic repeat count wrongly for batches > 1.
        repeats = placeholder.shape[0] // self.bias.shape[0]
        return self.bias[:, None].expand(-1, repeats, -1).reshape(-1, self.bias.shape[1])  # (N, C)


def _resnets_with_time(unet: nn.Module) -> list[nn.Module]:
    from diffusers.models.resnet import ResnetBlock2D

    found = []
    for name, module in unet.named_modules():
        if getattr(module, "time_emb_proj", None) is None:
            continue
        if not isinstance(module, ResnetBlock2D):
            raise ValueError(f"Cannot specialise {name}: {type(module).__name__} takes the time "
                             "embedding in a way the specialiser does not know.")
        found.append(module)
    return found


@torch.no_grad()
def freeze_time(unet: nn.Module, emb: torch.Tensor) -> None:
    """Replaces each resnet's time projection by its output for ``emb`` ``(T, D)``."""
    for resnet in _resnets_with_time(unet):
        temb = emb if resnet.skip_time_act else resnet.nonlinearity(emb)
        resnet.time_emb_proj = FrozenTimeProjection(resnet.time_emb_proj(temb))
    for name in _EMBEDDING_MODULES:
        if getattr(unet, name, None) is not None:
            setattr(unet, name, None)


@torch.no_grad()
def bake_cross_attention(unet: nn.Module, context: torch.Tensor) -> None:
    """Precomputes K / V of every cross-attention for a batch-1 ``context`` ``(1, L, D)``."""
    from diffusers.models.attention_processor import Attention

    for attn in unet.modules():
        if not isinstance(attn, Attention) or not attn.is_cross_attention:
            continue
        ctx = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
        head_dim = attn.to_k.out_features // attn.heads
        key = attn.to_k(ctx).view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, h, L, d)
        value = attn.to_v(ctx).view(1, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        attn.register_buffer("fixed_key", key.contiguous())
        attn.register_buffer("fixed_value", value.contiguous())
        attn.to_k, attn.to_v = None, None
        install_processor(attn)


class SpecializedFeatureExtractor(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] (or latents) in, ``{tap: activation}`` out.

    Built by ``DiffusionPerceptionForFeatureExtraction.specialize``; timestep, prompt and noise
    are constants. The output equals the unspecialised model's up to fp32 rounding.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module | None, trunk: Trunk, noise: torch.Tensor,
                 alphas: torch.Tensor, *, value_range: list[float], num_timesteps: int,
                 ensemble: int, size: tuple[int, int], latent_input: bool,
                 source_config: dict[str, Any]) -> None:
        super().__init__()
        self.unet, self.vae, self.trunk = unet, vae, trunk
        self.register_buffer("noise", noise)  # (T, E, 1, C, h, w)
        self.register_buffer("sqrt_alpha", alphas.sqrt().view(-1, 1, 1, 1, 1, 1))
        self.register_buffer("sqrt_one_minus_alpha", (1 - alphas).sqrt().view(-1, 1, 1, 1, 1, 1))
        self.low, self.high = float(value_range[0]), float(value_range[1])
        self.num_timesteps, self.ensemble = num_timesteps, ensemble
        self.size, self.latent_input = tuple(size), latent_input
        self.source_config = source_config
        self.tap_names = [t.name for t in trunk.taps]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = images.shape[0]
        if self.latent_input:
            latent = images  # (B, C, h, w)
        else:
            x = images * (self.high - self.low) + self.low  # (B, 3, H, W) in the model's range
            latent = self.vae(x) if self.vae is not None else x
        z = self.sqrt_alpha * latent[None, None] + self.sqrt_one_minus_alpha * self.noise
        z = z.reshape(-1, *latent.shape[1:])  # (T*E*B, C, h, w)
        feats = self.trunk(z, None)
        out = {}
        for name in self.tap_names:
            f = feats[name]
            f = f.reshape(self.num_timesteps, self.ensemble, batch, *f.shape[1:]).mean(dim=1)
            out[name] = f[0] if self.num_timesteps == 1 else f.transpose(0, 1)
        return out


def _check_specialisable(model) -> None:
    features = model.config.features
    if features.noise.kind not in ("fixed", "none"):
        raise ValueError(
            f"Cannot specialise noise kind {features.noise.kind!r}: only 'fixed' and 'none' are "
            "constants. Rebuild the model with noise='fixed'."
        )
    if features.prompt.kind == "per_image":
        raise ValueError("Cannot specialise per-image prompts; use a fixed prompt.")


@torch.no_grad()
def specialize(model, *, size: tuple[int, int] | None = None, latent_input: bool = False
               ) -> SpecializedFeatureExtractor:
    """Builds the images-only module of a feature extractor (see module docstring)."""
    _check_specialisable(model)
    features = model.config.features
    size = tuple(size or model.config.preprocess.size or ())
    if len(size) != 2:
        raise ValueError("specialize() needs the image size: pass size=(H, W) or set preprocess.size.")
    if size[0] % model.size_multiple or size[1] % model.size_multiple:
        raise ValueError(f"size {size} must be a multiple of {model.size_multiple} in both sides.")
    T, E = len(features.timesteps), features.noise.ensemble
    t_index = torch.tensor(model._timesteps(), device=model.device)
    model.trunk.detach_taps()  # copy the U-Net without the original trunk's capture hooks
    try:
        unet = copy.deepcopy(model.unet)
    finally:
        model.trunk.attach_taps()
    trunk = Trunk(unet, model.trunk.taps, model.trunk.plan, model.trunk.num_up_blocks)
    factor = model.vae.downsample_factor if model.vae is not None else 1
    latent_hw = (size[0] // factor, size[1] // factor)
    probe = torch.zeros(T, model.unet_config["in_channels"], *latent_hw, device=model.device,
                        dtype=model.dtype)
    context, added = model.conditioning(None, 1, size, T)  # (1, L, D), batch-1 conditions
    emb = model.trunk.embed(probe, t_index, context, added)  # (T, D)
    freeze_time(unet, emb)
    if context is not None:
        bake_cross_attention(unet, unet_process_context(model.unet, context.detach(), added))
    kept = dict(unet.named_modules())
    lost = [t.name for t in trunk.taps if t.path not in kept]
    if lost:
        raise ValueError(f"Taps {lost} read modules that specialisation removes (to_k / to_v of "
                         "a fixed-prompt cross-attention, or the time embedding).")
    trunk.frozen_timesteps = T
    trunk.attach_taps()
    channels = model.unet_config["in_channels"]
    if features.noise.kind == "fixed":
        noise = fixed_noise(features.noise.seed, T, E, (channels, *latent_hw), dtype=model.dtype)
    else:
        noise = torch.zeros(T, E, 1, channels, *latent_hw, dtype=model.dtype)
    alphas = model.alphas_cumprod[t_index.cpu()].to(model.dtype)
    if features.noise.kind == "none":
        alphas = torch.ones_like(alphas)
    vae = None if latent_input else (copy.deepcopy(model.vae) if model.vae is not None else None)
    return SpecializedFeatureExtractor(
        unet, vae, trunk, noise.to(model.device), alphas.to(model.device),
        value_range=model.config.preprocess.range, num_timesteps=T, ensemble=E, size=size,
        latent_input=latent_input, source_config=model.config.to_dict(),
    ).eval()


def unet_process_context(unet: nn.Module, context: torch.Tensor, added) -> torch.Tensor:
    """The context the cross-attentions see (after ``encoder_hid_proj`` when present)."""
    if hasattr(unet, "process_encoder_hidden_states"):
        return unet.process_encoder_hidden_states(context, added or {})
    return context
