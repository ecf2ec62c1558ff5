"""What a trunk costs: parameters and FLOPs, kept against the full U-Net.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on modules built on the meta
device from the diffusers configs, so no weight is read and no arithmetic is done: counting the
full SD 1.5 U-Net at 512 px takes about two seconds of Python on a CPU. torch 2.13 has no formula
for the CPU attention kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) and silently
drops its FLOPs when real CPU tensors are counted; ``flop_counter()`` adds one.

Example:
    >>> from diffperception.features.cost import trunk_cost
    >>> cost = trunk_cost(model)           # a task model
    >>> cost.trunk_flops / cost.unet_flops  # 0.546 for SD 1.5 cut after up_blocks.1 at 512 px
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["TrunkCost", "count_flops", "count_parameters", "flop_counter", "trunk_cost"]


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter(**kwargs: Any):
    """A ``FlopCounterMode`` that also counts the CPU SDPA kernel.

    Args:
        **kwargs: Passed to ``FlopCounterMode`` (``display`` defaults to False).
    """
    from torch.utils.flop_counter import FlopCounterMode

    kwargs.setdefault("display", False)
    mapping = dict(kwargs.pop("custom_mapping", None) or {})
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping.setdefault(op, _cpu_sdpa_flop)
    return FlopCounterMode(custom_mapping=mapping, **kwargs)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (works with meta tensors), under ``no_grad``."""
    with torch.no_grad(), flop_counter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameter elements of ``module`` (0 for None); works on the meta device."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class TrunkCost:
    """Parameters and FLOPs of one trunk forward (batch 1) against the full U-Net.

    Attributes:
        size: ``(H, W)`` of the image the FLOPs are counted at.
        forwards_per_image: Trunk forwards per image (timesteps x noise ensemble).
        inversion_forwards: Full U-Net forwards per image spent on DDIM inversion.
        unet_params / trunk_params / vae_encoder_params / text_encoder_params: Parameters.
        unet_flops / trunk_flops / vae_encoder_flops: FLOPs of one forward at ``size``.
    """

    size: tuple[int, int]
    forwards_per_image: int
    inversion_forwards: int
    unet_params: int
    trunk_params: int
    vae_encoder_params: int
    text_encoder_params: int
    unet_flops: int
    trunk_flops: int
    vae_encoder_flops: int

    @property
    def flops_per_image(self) -> int:
        """VAE encoder once, the trunk for every timestep and noise draw, and any inversion."""
        return (self.vae_encoder_flops + self.forwards_per_image * self.trunk_flops
                + self.inversion_forwards * self.unet_flops)


def native_size(unet_config: dict[str, Any], vae_factor: int) -> tuple[int, int]:
    """The image size the U-Net was trained at (``sample_size`` times the VAE factor)."""
    sample = unet_config.get("sample_size") or 64
    h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    return int(h) * vae_factor, int(w) * vae_factor


def _meta_inputs(unet_config: dict[str, Any], latent_hw: tuple[int, int], context_len: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict | None]:
    meta = torch.device("meta")
    sample = torch.empty(1, int(unet_config.get("in_channels", 4)), *latent_hw, device=meta)
    timesteps = torch.zeros(1, dtype=torch.long, device=meta)
    if "cross_attention_dim" not in unet_config:  # text-free UNet2DModel
        return sample, timesteps, None, None
    context = torch.empty(1, context_len, int(unet_config["cross_attention_dim"]), device=meta)
    added = None
    if unet_config.get("addition_embed_type") == "text_time":
        time_dim = int(unet_config["addition_time_embed_dim"])
        pooled = int(unet_config["projection_class_embeddings_input_dim"]) - 6 * time_dim
        added = {"text_embeds": torch.empty(1, pooled, device=meta),
                 "time_ids": torch.empty(1, 6, device=meta)}
    return sample, timesteps, context, added


def _context_length(folder) -> int:
    config = folder / "tokenizer" / "tokenizer_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("model_max_length", 77))
    return 77


def trunk_cost(model: nn.Module, size: tuple[int, int] | None = None) -> TrunkCost:
    """Counts the parameters and FLOPs of a task model's trunk against the full U-Net.

    Args:
        model: A task model (has ``config``, ``source``, ``unet``, ``vae``).
        size: ``(H, W)`` of the image; default ``config.preprocess.size`` or the native size.

    Returns:
        The counts, for batch 1.
    """
    import diffusers
    from accelerate import init_empty_weights

    from ..backbones.components import build_parts
    from .trunk import Trunk

    config, folder = model.config, model.source.folder
    parts = build_parts(model.source, config.features, load_weights=False)  # meta, pruned
    vae_factor = parts.vae.downsample_factor if parts.vae is not None else 1
    if size is None:
        size = tuple(config.preprocess.size) if config.preprocess.size else native_size(
            parts.unet_config, vae_factor)
    latent_hw = (size[0] // vae_factor, size[1] // vae_factor)
    sample, timesteps, context, added = _meta_inputs(parts.unet_config, latent_hw,
                                                     _context_length(folder))
    with init_empty_weights():
        full = getattr(diffusers, parts.unet_config["_class_name"]).from_config(parts.unet_config)
    trunk = Trunk(parts.unet, parts.taps, parts.plan,
                  num_up_blocks=len(parts.unet_config.get("up_block_types", ())))
    if context is None:
        full_flops = count_flops(full, sample, timesteps)
    else:
        full_flops = count_flops(full, sample, timesteps, encoder_hidden_states=context,
                                 added_cond_kwargs=added)
    vae_flops = 0
    if parts.vae is not None:
        image = torch.empty(1, 3, *size, device="meta")
        vae_flops = count_flops(parts.vae, image)
    text = [getattr(model, name, None) for name in ("text_encoder", "text_encoder_2")]
    noise = config.features.noise
    steps = noise.inversion_steps if noise.kind == "ddim_inversion" else 0
    return TrunkCost(
        size=(int(size[0]), int(size[1])),
        forwards_per_image=len(config.features.timesteps) * noise.ensemble,
        inversion_forwards=len(config.features.timesteps) * steps,
        unet_params=count_parameters(full), trunk_params=count_parameters(parts.unet),
        vae_encoder_params=count_parameters(parts.vae),
        text_encoder_params=sum(count_parameters(m) for m in text),
        unet_flops=full_flops, trunk_flops=count_flops(trunk, sample, timesteps, context, added),
        vae_encoder_flops=vae_flops,
    )
