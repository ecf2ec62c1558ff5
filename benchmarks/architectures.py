"""Benchmark architectures: the published configs of SD 1.5, SD 2.1 and SDXL, as data.

``materialize(name, root)`` builds a diffusers folder (U-Net, VAE, CLIP text encoder(s) at their
real sizes, a scheduler and a tokenizer) with seeded random weights. Timing does not depend on
weight values, so random weights measure the same latency, memory and FLOPs as the released
checkpoints (which cannot be downloaded here). The tokenizer is character-level with
``model_max_length`` 77: prompts tokenize to different ids than CLIP's BPE, but the text encoder
always runs on 77 positions, as in the real pipelines.

Example:
    >>> folder = materialize("sd15", Path("/tmp/bench-models"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffperception.diffusers_folder import DiffusersFolderWriter

__all__ = ["Architecture", "ARCHITECTURES", "get_architecture", "materialize"]

_SD_UNET_COMMON: dict[str, Any] = dict(
    act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
    freq_shift=0, in_channels=4, out_channels=4, layers_per_block=2, mid_block_scale_factor=1,
    norm_eps=1e-5, norm_num_groups=32, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"],
)

# runwayml/stable-diffusion-v1-5, unet/config.json
SD15_UNET = dict(_SD_UNET_COMMON, attention_head_dim=8, cross_attention_dim=768, sample_size=64)
# stabilityai/stable-diffusion-2-1, unet/config.json
SD21_UNET = dict(_SD_UNET_COMMON, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                 sample_size=96, use_linear_projection=True, upcast_attention=True)
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280], center_input_sample=False, cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
# The SD VAE (sd-vae-ft-mse / SD 2.1 / SDXL share the architecture).
SD_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025)

# CLIP text towers: ViT-L/14 (SD 1.x, SDXL's first), OpenCLIP ViT-H/14 (SD 2.x, 23 of 24 layers
# as shipped), OpenCLIP ViT-bigG/14 (SDXL's second, with projection).
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
              num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                  num_hidden_layers=23, hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                     num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)

# A tiny SD-1-shaped model for tests and quick runs (64 px images, 8x8 latents).
TINY_UNET = dict(
    block_out_channels=[32, 32, 64], layers_per_block=2, sample_size=8, in_channels=4,
    out_channels=4, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=1, norm_num_groups=4, sample_size=64,
)
TINY_CLIP = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 hidden_act="quick_gelu", projection_dim=32)


@dataclass(frozen=True)
class Architecture:
    """A benchmarked model: configs (or a shipped folder) and its default image size.

    Attributes:
        name: Short name used in scenarios (``sd15``, ``sd21``, ``sdxl``, ``tiny``, ``default``).
        title: Human name for reports.
        resolution: The image size the model was trained at (pixels, square).
        unet: ``UNet2DConditionModel`` config; empty for a shipped folder.
        vae: ``AutoencoderKL`` config, or None for pixel-space models.
        text: CLIP text configs, one per encoder (the last one with projection for SDXL).
        folder: A ready diffusers folder (the offline default model) instead of configs.
    """

    name: str
    title: str
    resolution: int
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] | None = None
    text: tuple[dict[str, Any], ...] = ()
    folder: str | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.unet.get("addition_embed_type") == "text_time"


def _default_model_folder() -> str | None:
    try:
        from diffperception.default_model import DEFAULT_MODEL_PATH
    except ImportError:
        return None
    return str(DEFAULT_MODEL_PATH)


ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture("sd15", "SD 1.5", 512, SD15_UNET, SD_VAE, (CLIP_L,)),
    "sd21": Architecture("sd21", "SD 2.1", 768, SD21_UNET, SD_VAE, (OPENCLIP_H,)),
    "sdxl": Architecture("sdxl", "SDXL", 1024, SDXL_UNET, SDXL_VAE, (CLIP_L, OPENCLIP_BIGG)),
    "tiny": Architecture("tiny", "tiny SD-1-shaped", 64, TINY_UNET, TINY_VAE, (TINY_CLIP,)),
}


def get_architecture(name: str) -> Architecture:
    """Looks an architecture up by name (``default`` is the shipped offline model).

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    if name == "default":
        folder = _default_model_folder()
        return Architecture("default", "offline default model", 32, folder=folder)
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; choose one of "
                         f"{sorted(ARCHITECTURES) + ['default']}.")
    return ARCHITECTURES[name]


def _config_hash(arch: Architecture) -> str:
    import hashlib

    blob = json.dumps([arch.unet, arch.vae, list(arch.text), 77], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def materialize(name: str, root: Path) -> Path:
    """Returns a diffusers folder for an architecture, building it once under ``root``.

    Weights are seeded random values saved as safetensors; a folder already built for the same
    configs is reused.

    Raises:
        FileNotFoundError: ``default`` was asked for but the offline default model is not built.
    """
    arch = get_architecture(name)
    if arch.folder is not None or name == "default":
        folder = Path(arch.folder or "")
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(
                f"The offline default model is not built ({folder}/model_index.json is missing); "
                "build it with diffperception.default_model.build first.")
        return folder
    folder = Path(root) / f"{name}-{_config_hash(arch)}"
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    _build_folder(arch, tmp)
    tmp.rename(folder)
    return folder


def _build_folder(arch: Architecture, folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from diffperception.diffusers_folder import DiffusersFolderWriter

    pipeline = "StableDiffusionXLPipeline" if arch.is_sdxl else "StableDiffusionPipeline"
    writer = DiffusersFolderWriter(folder, pipeline)
    torch.manual_seed(0)
    writer.add("unet", UNet2DConditionModel.from_config(arch.unet))  # freed before the next part
    torch.manual_seed(1)
    writer.add("vae", AutoencoderKL.from_config(arch.vae))
    writer.add("scheduler", DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085,
                                          beta_end=0.012, beta_schedule="scaled_linear"))
    slots = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))
    for i, (text_config, (enc_name, tok_name)) in enumerate(zip(arch.text, slots)):
        with_projection = arch.is_sdxl and i == len(arch.text) - 1
        _add_text_encoder(writer, enc_name, tok_name, text_config, with_projection, seed=2 + i)
    writer.write_index()


def _add_text_encoder(writer: DiffusersFolderWriter, enc_name: str, tok_name: str, config: dict[str, Any],
                      with_projection: bool, seed: int) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffperception.diffusers_folder import save_char_tokenizer

    tokenizer = save_char_tokenizer(writer.folder / tok_name, max_length=77)
    writer.add(tok_name, tokenizer, save=False)
    text_config = CLIPTextConfig(
        vocab_size=max(49408, len(tokenizer)), max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **config)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    writer.add(enc_name, cls(text_config))
