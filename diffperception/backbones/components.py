"""Building the pieces of a backbone for a features config: the pruned U-Net, the VAE encoder,
the text stack, the noise schedule."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import FeaturesConfig
from ..features.taps import Tap, resolve_taps
from ..features.trunk import CutPlan, plan_cut, prune_unet
from . import family_for_unet
from .loading import ModelSource, load_alphas_cumprod, load_unet, load_vae_encoder, read_model_index

__all__ = ["BackboneParts", "build_parts", "unet_config", "DTYPES"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BackboneParts:
    """What a task model is assembled from."""

    unet: nn.Module
    unet_config: dict[str, Any]
    taps: list[Tap]
    plan: CutPlan
    family: Any
    vae: nn.Module | None
    alphas_cumprod: torch.Tensor
    scheduler_config: dict[str, Any]
    model_index: dict[str, Any]
    text_encoders: dict[str, nn.Module] = field(default_factory=dict)
    tokenizers: dict[str, Any] = field(default_factory=dict)


def unet_config(folder: Path) -> dict[str, Any]:
    """The U-Net's ``config.json`` of a diffusers folder."""
    path = folder / "unet" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder is not a diffusers model.")
    return json.loads(path.read_text())


def build_parts(source: ModelSource, features: FeaturesConfig, *, dtype: str = "float32",
                variant: str | None = None, load_weights: bool = True,
                need_text: bool = False) -> BackboneParts:
    """Loads (or, with ``load_weights=False``, builds on the meta device) the backbone pieces.

    Args:
        source: The resolved diffusers folder.
        features: Taps / timesteps / noise / prompt; decide what is kept.
        dtype: Weight dtype name.
        variant: Weight file variant.
        load_weights: Read weights from the folder; False leaves U-Net and VAE on the meta device
            (their weights then come from a saved task model).
        need_text: Load the text encoder(s) and tokenizer(s).
    """
    folder, torch_dtype = source.folder, DTYPES[dtype]
    config = unet_config(folder)
    family = family_for_unet(config.get("_class_name", "UNet2DConditionModel"))
    family.check_unet_config(config)
    if features.prompt.kind != "null" and not family.text_conditioned:
        raise ValueError(
            f"{source.repo_id} is a text-free {family.unet_class}: it takes no prompt. Use "
            "prompt='' (the default), or a text-conditioned model."
        )
    holder: dict[str, Any] = {}

    def prune(unet: nn.Module) -> None:
        taps = resolve_taps(features.taps, unet)
        full = features.noise.kind == "ddim_inversion"  # inversion needs the whole U-Net
        holder["taps"], holder["plan"] = taps, plan_cut(unet, taps, full=full)
        prune_unet(unet, holder["plan"])

    if load_weights:
        unet = load_unet(folder, prune, torch_dtype, variant)
    else:
        unet = _meta_unet(config, prune)
    index = read_model_index(folder)
    vae = None
    if index.get("vae") and index["vae"][1] is not None:
        vae = (load_vae_encoder(folder, torch_dtype, variant) if load_weights
               else _meta_vae(folder))
    alphas, sched_config = load_alphas_cumprod(folder)
    parts = BackboneParts(unet=unet, unet_config=config, taps=holder["taps"], plan=holder["plan"],
                          family=family, vae=vae, alphas_cumprod=alphas,
                          scheduler_config=sched_config, model_index=index)
    if need_text:
        parts.text_encoders, parts.tokenizers = family.load_text_stack(folder, index, torch_dtype)
    return parts


def _meta_unet(config: dict[str, Any], prune) -> nn.Module:
    import diffusers
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = getattr(diffusers, config["_class_name"]).from_config(config)
    prune(unet)
    return unet


def _meta_vae(folder: Path) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from .loading import vae_encoder_from

    config = json.loads((folder / "vae" / "config.json").read_text())
    with init_empty_weights():
        return vae_encoder_from(AutoencoderKL.from_config(config), config)
