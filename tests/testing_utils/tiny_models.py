"""Tiny diffusers models shaped like SD 1.x, SD 2.x, SDXL and a pixel-space UNet2DModel.

Seeded random weights, saved in the diffusers folder layout with ``model_index.json`` so that
they load through the same path as a Hub repository. The ``*_pipeline`` helpers load the same
folder with diffusers' own pipelines: the reference the tests compare against.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _text_config(tokenizer_dir: Path, hidden: int = 32, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    kw = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **kw,
    )


TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1, norm_num_groups=4, sample_size=64,
)


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear")


UNET_SD1 = dict(
    block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=8, in_channels=4,
    out_channels=4, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
UNET_SD2 = dict(UNET_SD1, attention_head_dim=(2, 4, 8), use_linear_projection=True,
                upcast_attention=True)
UNET_SDXL = dict(
    block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=8, in_channels=4,
    out_channels=4, norm_num_groups=8, cross_attention_dim=64, attention_head_dim=(2, 4, 8),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=8 * 6 + 32,
)


# METHODS.md §0.3 item 1: the ADM-256 unconditional layout in diffusers (UNet2DModel)
ADM256_CONFIG = dict(
    sample_size=256, in_channels=3, out_channels=6, layers_per_block=2,
    block_out_channels=(256, 256, 512, 512, 1024, 1024),
    down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
    up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
    downsample_type="resnet", upsample_type="resnet", attention_head_dim=64,
    resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32, norm_num_groups=32,
    norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, time_embedding_type="positional",
    num_class_embeds=None)


def make_sd(folder: Path, kind: str = "sd1") -> Path:
    """Saves a tiny SD-1/2/XL-shaped pipeline folder (64 px images, 8x8 latents)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from diffperception.diffusers_folder import DiffusersFolderWriter, save_char_tokenizer

    folder = Path(folder)
    config = {"sd1": UNET_SD1, "sd2": UNET_SD2, "sdxl": UNET_SDXL}[kind]
    pipeline = "StableDiffusionXLPipeline" if kind == "sdxl" else "StableDiffusionPipeline"
    writer = DiffusersFolderWriter(folder, pipeline)
    torch.manual_seed(0)
    writer.add("unet", UNet2DConditionModel(**config))
    torch.manual_seed(1)
    writer.add("vae", AutoencoderKL(**TINY_VAE))
    writer.add("scheduler", _scheduler())
    writer.add("tokenizer", save_char_tokenizer(folder / "tokenizer", max_length=16), save=False)
    torch.manual_seed(2)
    writer.add("text_encoder", CLIPTextModel(_text_config(folder / "tokenizer")))
    if kind != "sdxl":
        return writer.write_index(safety_checker=[None, None], feature_extractor=[None, None],
                                  requires_safety_checker=False)
    writer.add("tokenizer_2", save_char_tokenizer(folder / "tokenizer_2", max_length=16), save=False)
    torch.manual_seed(3)
    writer.add("text_encoder_2",
               CLIPTextModelWithProjection(_text_config(folder / "tokenizer_2", projection=32)))
    return writer.write_index(force_zeros_for_empty_prompt=False)


def make_pixel(folder: Path) -> Path:
    """Saves a tiny text-free pixel-space DDPM folder (32 px images)."""
    from diffusers import UNet2DModel

    from diffperception.diffusers_folder import DiffusersFolderWriter

    writer = DiffusersFolderWriter(folder, "DDPMPipeline")
    torch.manual_seed(0)
    writer.add("unet", UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 32, 64),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ))
    writer.add("scheduler", _scheduler())
    return writer.write_index()


def reference_pipeline(folder: Path, kind: str):
    """The folder loaded by diffusers' own pipeline class (the test reference)."""
    import diffusers

    if kind == "pixel":
        return diffusers.DDPMPipeline.from_pretrained(str(folder))
    cls = diffusers.StableDiffusionXLPipeline if kind == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if kind == "sdxl" else {"safety_checker": None, "feature_extractor": None,
                                       "requires_safety_checker": False}
    return cls.from_pretrained(str(folder), **extra)
