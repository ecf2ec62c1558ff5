"""Stable Diffusion 1.x / 2.x / XL (``UNet2DConditionModel`` + VAE + CLIP text encoder(s)).

Also covers text-conditioned pixel-space U-Nets with no VAE (such as the offline default model):
the VAE is optional. Prompts are encoded as the diffusers pipelines encode them: SD 1.x / 2.x take
the text encoder's last hidden state; SDXL concatenates the penultimate hidden states of both
encoders and adds the pooled projection of the second and the ``time_ids`` micro-conditions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import register_family
from .loading import load_text_encoder, load_tokenizer

__all__ = ["StableDiffusionFamily"]

_TEXT_SLOTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


@register_family("sd")
class StableDiffusionFamily:
    """Text-conditioned ``UNet2DConditionModel`` backbones."""

    unet_class = "UNet2DConditionModel"
    text_conditioned = True

    @staticmethod
    def check_unet_config(config: dict[str, Any]) -> None:
        """Rejects U-Net variants that need inputs a perception model does not have."""
        if config.get("num_class_embeds") or config.get("class_embed_type"):
            raise ValueError("Class-conditional UNet2DConditionModel is not supported.")
        kind = config.get("addition_embed_type")
        if kind not in (None, "text_time"):
            raise ValueError(
                f"addition_embed_type={kind!r} is not supported (SD 1.x/2.x have none, SDXL has "
                "'text_time')."
            )
        if config.get("encoder_hid_dim_type") not in (None, "text_proj"):
            raise ValueError(f"encoder_hid_dim_type={config['encoder_hid_dim_type']!r} is not supported.")

    @staticmethod
    def is_sdxl(config: dict[str, Any]) -> bool:
        return config.get("addition_embed_type") == "text_time"

    @staticmethod
    def load_text_stack(folder: Path, index: dict[str, Any], dtype: torch.dtype
                        ) -> tuple[dict[str, nn.Module], dict[str, Any]]:
        """Loads the text encoder(s) and tokenizer(s) named in ``model_index.json``."""
        encoders, tokenizers = {}, {}
        for enc_name, tok_name in _TEXT_SLOTS:
            entry = index.get(enc_name)
            if not entry or entry[1] is None:
                continue
            encoders[enc_name] = load_text_encoder(folder, enc_name, entry[1], dtype)
            tokenizers[enc_name] = load_tokenizer(folder, tok_name)
        if not encoders:
            raise FileNotFoundError(
                f"{folder} has no text_encoder in model_index.json, but the prompt needs one."
            )
        return encoders, tokenizers

    @staticmethod
    @torch.no_grad()
    def encode(texts: list[str], encoders: dict[str, nn.Module], tokenizers: dict[str, Any],
               sdxl: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts as the diffusers pipelines do.

        Returns:
            ``(context (B, L, D), pooled (B, P) or None)``.
        """
        contexts, pooled = [], None
        for name, encoder in encoders.items():
            tok = tokenizers[name]
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids.to(encoder.device)
            if sdxl:
                out = encoder(ids, output_hidden_states=True)
                contexts.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's pooled projection (text_embeds)
            else:
                contexts.append(encoder(ids)[0])
        return torch.cat(contexts, dim=-1), pooled

    @staticmethod
    def added_conditions(pooled: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
        """SDXL micro-conditions for an un-cropped image of ``height`` x ``width`` pixels."""
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype,
                                device=pooled.device)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], -1)}
