"""Stable Diffusion 1.x / 2.x / XL (``UNet2DConditionModel`` + VAE + CLIP text encoder(s)).

Also covers text-conditioned pixel-space U-Nets with no VAE (such as the offline default model):
the VAE is optional. Prompts are encoded as the diffusers pipelines encode them: SD 1.x / 2.x take
the text encoder's last hidden state; SDXL concatenates the penultimate hidden states of both
encoders and adds the pooled projection of the second and the ``time_ids`` micro-conditions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import register_family
from .unet import UNetFamily

__all__ = ["StableDiffusionFamily"]

logger = logging.getLogger(__name__)


def _warn_truncation(tokenizer: Any, texts: list[str]) -> None:
    """Warns, as diffusers' pipelines do, when a prompt is longer than the tokenizer's limit."""
    limit = tokenizer.model_max_length
    for text in texts:
        ids = tokenizer(text, truncation=False).input_ids
        if len(ids) > limit:
            cut = tokenizer.decode(ids[limit - 1: -1])
            logger.warning("The following part of your input was truncated because the text "
                           "encoder can only handle sequences up to %d tokens: %s", limit, cut)


@register_family("sd")
class StableDiffusionFamily(UNetFamily):
    """Text-conditioned ``UNet2DConditionModel`` backbones."""

    network_classes = ("UNet2DConditionModel",)
    text_conditioned = True

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
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
        """Whether the U-Net takes SDXL's added conditions (``text_time``)."""
        return config.get("addition_embed_type") == "text_time"

    @classmethod
    def context_shape(cls, folder: Path, config: dict[str, Any]
                      ) -> tuple[tuple[int, int], int | None]:
        """``((L, D), P)``: tokenizer length x cross-attention width, SDXL pooled width or None."""
        tok = Path(folder) / "tokenizer" / "tokenizer_config.json"
        length = int(json.loads(tok.read_text()).get("model_max_length", 77)) if tok.is_file() else 77
        pooled = None
        if cls.is_sdxl(config):
            pooled = (int(config["projection_class_embeddings_input_dim"])
                      - 6 * int(config["addition_time_embed_dim"]))
        return (length, int(config["cross_attention_dim"])), pooled

    @classmethod
    @torch.no_grad()
    def encode_prompt(cls, texts: list[str], encoders: dict[str, nn.Module],
                      tokenizers: dict[str, Any], config: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts as the diffusers pipelines do.

        Returns:
            ``(context (B, L, D), pooled (B, P) or None)``.
        """
        sdxl = cls.is_sdxl(config)
        contexts, pooled = [], None
        for name, encoder in encoders.items():
            tok = tokenizers[name]
            _warn_truncation(tok, texts)
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length,
                      truncation=True, return_tensors="pt").input_ids.to(encoder.device)
            if sdxl:
                out = encoder(ids, output_hidden_states=True)
                contexts.append(out.hidden_states[-2])
                pooled = out[0]  # the last encoder's pooled projection (text_embeds)
            else:
                contexts.append(encoder(ids)[0])
        return torch.cat(contexts, dim=-1), pooled

    @classmethod
    def added_conditions(cls, pooled: torch.Tensor | None, height: int, width: int,
                         config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """SDXL micro-conditions for an un-cropped image of ``height`` x ``width`` pixels."""
        if not cls.is_sdxl(config):
            return None
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype,
                                device=pooled.device)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], -1)}

    @classmethod
    def added_conditions_like(cls, pooled_dim, latent_hw, device):
        if pooled_dim is None:
            return None
        return {"text_embeds": torch.empty(1, pooled_dim, device=device),
                "time_ids": torch.empty(1, 6, device=device)}
