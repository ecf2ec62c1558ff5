"""The VAE encoder of a latent diffusion model: image in [-1, 1] -> the latent ``z_0`` the
network was trained on, as diffusers' pipelines compute it.

- ``z_0`` is the posterior mean, or a posterior sample ``mean + std * n`` for given noise ``n``
  (DIFT, generic-diffusion-feature and Discffusion sample it; ``std = exp(logvar / 2)`` with
  ``logvar`` clamped to [-30, 20], as diffusers' ``DiagonalGaussianDistribution``);
- normalisation: ``(z - latents_mean) * scaling_factor / latents_std`` when the VAE config has
  ``latents_mean`` and ``latents_std`` (the SDXL pipelines' rule), else
  ``(z - shift_factor) * scaling_factor`` (``shift_factor`` 0 when absent);
- precision: a VAE whose config says ``force_upcast`` is kept and run in float32 when the model is
  float16, and its latent cast back (the SDXL pipelines' rule).
Only the encoder half is built and read; the decoder never is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["VaeEncoder", "vae_dtype", "vae_encoder_from", "load_vae_encoder", "meta_vae_encoder"]

#: VAE config fields read here (every other field only shapes the encoder's modules).
READ_FIELDS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
               "block_out_channels")


def vae_dtype(config: dict[str, Any], dtype: torch.dtype) -> torch.dtype:
    """The dtype the VAE runs in: float32 for a ``force_upcast`` VAE of a float16 model."""
    return torch.float32 if config.get("force_upcast") and dtype == torch.float16 else dtype


def _channel_stat(values: Any, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"vae/config.json {name} = {values!r} is invalid: a list of per-channel "
                         "numbers.")
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)


class VaeEncoder(nn.Module):
    """The encoder half of an ``AutoencoderKL``: image ``(B, 3, H, W)`` in [-1, 1] to ``z_0``
    ``(B, C, H/f, W/f)``.

    Keeps diffusers' module names (``encoder.*``, ``quant_conv.*``) so the saved keys read
    ``backbone.vae.encoder.conv_in.weight`` as in the original checkpoint.

    Args:
        encoder, quant_conv: The ``AutoencoderKL``'s modules.
        config: The VAE's ``config.json`` (see the module docstring for the fields read).
    """

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module | None,
                 config: dict[str, Any]) -> None:
        super().__init__()
        self.encoder, self.quant_conv = encoder, quant_conv
        self.downsample_factor = 2 ** (len(config.get("block_out_channels", (0, 0, 0, 0))) - 1)
        self.scaling_factor = float(config.get("scaling_factor", 0.18215))
        self.shift_factor = float(config.get("shift_factor") or 0.0)
        self.force_upcast = bool(config.get("force_upcast", False))
        mean = _channel_stat(config.get("latents_mean"), "latents_mean")
        std = _channel_stat(config.get("latents_std"), "latents_std")
        self.normalize_by_stats = mean is not None and std is not None
        # from the config, not weights: not in the state dict
        self.register_buffer("latents_mean", mean if self.normalize_by_stats else None, persistent=False)
        self.register_buffer("latents_std", std if self.normalize_by_stats else None, persistent=False)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of the posterior, each ``(B, C, H/f, W/f)``, in the VAE's dtype."""
        x = images.to(next(self.encoder.parameters()).dtype)
        h = self.encoder(x)  # (B, 2C, H/f, W/f)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``z_0`` in ``images.dtype``: the normalised posterior mean, or sample for ``noise``.

        Args:
            images: ``(B, 3, H, W)`` in [-1, 1].
            noise: ``(B or 1, C, H/f, W/f)`` standard normal noise of a posterior sample.
        """
        mean, logvar = self.posterior(images)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        if self.normalize_by_stats:
            z = (z - self.latents_mean.to(z)) * self.scaling_factor / self.latents_std.to(z)
        else:
            z = (z - self.shift_factor) * self.scaling_factor
        return z.to(images.dtype)


def vae_encoder_from(vae: nn.Module, config: dict[str, Any]) -> VaeEncoder:
    """Takes the encoder half out of an ``AutoencoderKL`` (the decoder is dropped)."""
    return VaeEncoder(vae.encoder, getattr(vae, "quant_conv", None), config)


def _config(folder: Path) -> dict[str, Any]:
    """``vae/config.json``, checked before the encoder is built.

    Raises:
        ValueError: Not a JSON object (a string would make diffusers fetch a config from the Hub
            by that name), an impossible size, or a scaling / shift factor that is no number.
    """
    from .base import check_network_fields
    from .model_files import read_json_object

    path = Path(folder) / "vae" / "config.json"
    config = read_json_object(path, fix="repair or re-download the model's files")
    check_network_fields(config, path)
    for key in ("scaling_factor", "shift_factor"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: {key} = {value!r} is invalid: a number; repair the file, or "
                             "re-download the model.")
    return config


def load_vae_encoder(folder: Path, dtype: torch.dtype, variant: str | None = None) -> VaeEncoder:
    """Loads the VAE encoder (never the decoder) of a latent diffusion model, in
    ``vae_dtype(config, dtype)``."""
    from diffusers import AutoencoderKL

    from .loading import find_component_weights, load_pruned

    config = _config(folder)
    files = find_component_weights(Path(folder) / "vae", variant)
    return load_pruned(lambda: vae_encoder_from(AutoencoderKL.from_config(config), config),
                       lambda m: None, files, vae_dtype(config, dtype))


def meta_vae_encoder(folder: Path, dtype: torch.dtype) -> VaeEncoder:
    """The VAE encoder on the meta device (its weights come from a saved task model)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    config = _config(folder)
    with init_empty_weights():
        encoder = vae_encoder_from(AutoencoderKL.from_config(config), config)
    return encoder.to(vae_dtype(config, dtype))
