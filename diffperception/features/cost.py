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


def trunk_cost(model: nn.Module, size: tuple[int, int] | None = None) -> TrunkCost:
    """Counts the parameters and FLOPs of a backbone's trunk against the full network.

    Args:
        model: A ``DiffusionBackbone`` or a task model (its ``backbone`` is counted).
        size: ``(H, W)`` of the image in pixels; default ``preprocess.size`` or the native size.

    Returns:
        The counts, for batch 1.
    """
    from accelerate import init_empty_weights

    from .backbone import DiffusionBackbone

    real = getattr(model, "backbone", model)
    meta = DiffusionBackbone(real.backbone_config, real.features, real.preprocess,
                             source=real.source, load_weights=False)  # pruned, no weights read
    family, config = meta.family, meta.network_config
    if size is None:
        size = tuple(meta.preprocess.size) if meta.preprocess.size else meta.native_size
    latent_hw = (size[0] // meta.vae_factor, size[1] // meta.vae_factor)
    context_shape, pooled = family.context_shape(meta.source.folder, config)
    sample, timesteps, context, added = family.meta_inputs(config, latent_hw, context_shape, pooled)
    # counted in float32: FLOPs do not depend on the dtype
    meta = meta.float()
    with init_empty_weights():
        full = family.build_network(config)
    # one forward of the whole network, called as the family's pipelines call it
    full_flops = count_flops(family.forward_full, full, sample, timesteps, context, added)
    vae_flops = 0
    if meta.vae is not None:
        vae_flops = count_flops(meta.vae, torch.empty(1, 3, *size, device="meta"))
    text = [getattr(real.prompt, name, None)
            for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    noise = meta.features.noise
    steps = noise.inversion_steps if noise.kind == "ddim_inversion" else 0
    return TrunkCost(
        size=(int(size[0]), int(size[1])),
        forwards_per_image=len(meta.features.timesteps) * noise.ensemble,
        inversion_forwards=len(meta.features.timesteps) * steps,
        unet_params=count_parameters(full), trunk_params=count_parameters(meta.network),
        vae_encoder_params=count_parameters(meta.vae),
        text_encoder_params=sum(count_parameters(m) for m in text),
        unet_flops=full_flops,
        trunk_flops=count_flops(meta.trunk, sample, timesteps, context, added),
        vae_encoder_flops=vae_flops,
    )
