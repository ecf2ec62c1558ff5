"""Text-free pixel-space U-Nets (``UNet2DModel``: DDPM, ADM-like after conversion)."""

from __future__ import annotations

from typing import Any

from .base import register_family
from .unet import UNetFamily

__all__ = ["PixelFamily"]


@register_family("pixel")
class PixelFamily(UNetFamily):
    """``UNet2DModel`` on pixels: no VAE, no text, no added conditions."""

    network_classes = ("UNet2DModel",)
    text_conditioned = False

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Rejects ``UNet2DModel`` variants whose forward the trunk does not reproduce."""
        if config.get("time_embedding_type", "positional") != "positional":
            raise ValueError(
                f"UNet2DModel with time_embedding_type={config['time_embedding_type']!r} is not "
                "supported; only 'positional' (DDPM / ADM) is."
            )
        blocks = list(config.get("down_block_types", [])) + list(config.get("up_block_types", []))
        skip = [b for b in blocks if "Skip" in b]
        if skip:
            raise ValueError(f"UNet2DModel skip blocks {skip} are not supported.")
        if config.get("num_class_embeds") or config.get("class_embed_type"):
            raise ValueError("Class-conditional UNet2DModel is not supported (it needs labels).")
