"""Tiny diffusion transformers (PixArt, SD3.5-like) saved in the diffusers folder layout.

Seeded random weights, with ``model_index.json`` and the text stacks their pipelines use (T5 for
PixArt; CLIP-L, CLIP-G and T5 for SD3), so they load through the same path as a Hub repository
and through diffusers' own ``PixArtAlphaPipeline`` / ``StableDiffusion3Pipeline`` (the reference).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from .tiny_models import TINY_VAE, _text_config

PIXART = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
    cross_attention_dim=16, caption_channels=32, sample_size=8, patch_size=2,
    norm_type="ada_norm_single", num_embeds_ada_norm=1000, norm_elementwise_affine=False,
    norm_eps=1e-6, activation_fn="gelu-approximate",
)
# SD3.5-like: a dual-attention block (SD35AdaLayerNormZeroX) and RMS q/k norms
SD3 = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
    attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
    caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16,
    dual_attention_layers=(0,), qk_norm="rms_norm",
)


def save_t5_tokenizer(folder: Path, max_length: int = 512):
    """A T5 tokenizer (unigram) whose pieces are single characters, saved in ``folder``."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_letters + string.digits + ".,!?'-"]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def make_pixart(folder: Path, pipeline: str = "PixArtAlphaPipeline") -> Path:
    """Saves a tiny PixArt folder (64 px images, 8x8 latents, 4x4 tokens, 3 blocks)."""
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel

    from diffperception.diffusers_folder import DiffusersFolderWriter

    folder = Path(folder)
    writer = DiffusersFolderWriter(folder, pipeline)
    torch.manual_seed(0)
    writer.add("transformer", PixArtTransformer2DModel(**PIXART))
    torch.manual_seed(1)
    writer.add("vae", AutoencoderKL(**TINY_VAE))
    writer.add("scheduler", DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    tokenizer = save_t5_tokenizer(folder / "tokenizer")
    writer.add("tokenizer", tokenizer, save=False)
    torch.manual_seed(2)
    writer.add("text_encoder", _t5(tokenizer, PIXART["caption_channels"]))
    return writer.write_index()


def make_sd3(folder: Path, *, t5: bool = True) -> Path:
    """Saves a tiny SD3.5-like folder (64 px images, 8x8 latents, 3 joint blocks, flow matching)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from diffperception.diffusers_folder import DiffusersFolderWriter, save_char_tokenizer

    folder = Path(folder)
    writer = DiffusersFolderWriter(folder, "StableDiffusion3Pipeline")
    torch.manual_seed(0)
    writer.add("transformer", SD3Transformer2DModel(**SD3))
    torch.manual_seed(1)
    writer.add("vae", AutoencoderKL(**TINY_VAE, scaling_factor=1.5305, shift_factor=0.0609))
    writer.add("scheduler", FlowMatchEulerDiscreteScheduler(shift=3.0))
    for i, slot in enumerate(("", "_2")):
        writer.add(f"tokenizer{slot}", save_char_tokenizer(folder / f"tokenizer{slot}", max_length=16),
                   save=False)
        torch.manual_seed(2 + i)
        config = _text_config(folder / f"tokenizer{slot}", hidden=8, projection=32)
        writer.add(f"text_encoder{slot}", CLIPTextModelWithProjection(config))
    if t5:
        tokenizer = save_t5_tokenizer(folder / "tokenizer_3")
        writer.add("tokenizer_3", tokenizer, save=False)
        torch.manual_seed(4)
        writer.add("text_encoder_3", _t5(tokenizer, SD3["joint_attention_dim"]))
    else:
        writer.entries.update(tokenizer_3=[None, None], text_encoder_3=[None, None])
    return writer.write_index(image_encoder=[None, None], feature_extractor=[None, None])


def reference_pipeline(folder: Path):
    """The folder loaded by diffusers' own pipeline class (the test reference)."""
    import diffusers

    name = __import__("json").loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(str(folder))


# FLUX-dev-like: guidance embedding, 1 double-stream and 2 single-stream blocks
FLUX = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


def make_flux(folder: Path) -> Path:
    """Saves a tiny FLUX folder (64 px images, 8x8 latents of 4 channels packed into 4x4 tokens)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from diffperception.diffusers_folder import DiffusersFolderWriter, save_char_tokenizer

    folder = Path(folder)
    writer = DiffusersFolderWriter(folder, "FluxPipeline")
    torch.manual_seed(0)
    writer.add("transformer", FluxTransformer2DModel(**FLUX))
    torch.manual_seed(1)
    writer.add("vae", AutoencoderKL(**TINY_VAE, scaling_factor=0.3611, shift_factor=0.1159))
    writer.add("scheduler", FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True))
    writer.add("tokenizer", save_char_tokenizer(folder / "tokenizer", max_length=16), save=False)
    torch.manual_seed(2)
    writer.add("text_encoder", CLIPTextModel(_text_config(folder / "tokenizer", hidden=32)))
    tokenizer = save_t5_tokenizer(folder / "tokenizer_2")
    writer.add("tokenizer_2", tokenizer, save=False)
    torch.manual_seed(3)
    writer.add("text_encoder_2", _t5(tokenizer, FLUX["joint_attention_dim"]))
    return writer.write_index(image_encoder=[None, None], feature_extractor=[None, None])
