"""Builders for the default model's parts, and loading them back.

The tokenizer vocabulary is made by the project for its captions; the text
encoder is a small randomly initialised (seeded) CLIP text model that stays
frozen; the U-Net is a small pixel-space ``UNet2DConditionModel``.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from . import CAPTION_PREFIX, CLASS_NAMES

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
MODEL_MAX_LENGTH = 8
# CLIP initialises token embeddings with std 0.02, far below what its random layers add,
# so a frozen random encoder would give nearly the same states for every caption; with
# std 1 each word's embedding dominates its position and the captions are well apart.
TOKEN_EMBEDDING_STD = 1.0

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 64,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def caption_words() -> tuple[str, ...]:
    """The whole-word tokens of the default model's captions (prefix words and digit names)."""
    return tuple(sorted(set(CAPTION_PREFIX.split()) | set(CLASS_NAMES)))


def _bpe_files(words: Sequence[str] | None = None) -> tuple[dict[str, int], list[str]]:
    """Makes a byte-level BPE vocabulary and merges covering the captions.

    Every lowercase letter and digit is a token (alone and word-final, with
    ``</w>``), and each caption word is built from its characters by a chain of
    left-to-right merges, so it becomes a single token.

    Args:
        words: The whole-word tokens, in order (default: :func:`caption_words`).
    """
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in string.ascii_lowercase + string.digits:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    for word in caption_words() if words is None else words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left += right
            vocab.setdefault(left, len(vocab))
    return vocab, merges


def write_bpe_files(folder: str | Path, words: Sequence[str] | None = None) -> None:
    """Writes the project's ``vocab.json`` and ``merges.txt`` into a folder.

    Args:
        folder: Target folder (must exist).
        words: The whole-word tokens (default: :func:`caption_words`).
    """
    vocab, merges = _bpe_files(words)
    (Path(folder) / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tokenizer(words: Sequence[str] | None = None,
                    model_max_length: int = MODEL_MAX_LENGTH):
    """Builds the project's ``CLIPTokenizer`` for the digit captions.

    Args:
        words: The whole-word tokens (default: the default model's, :func:`caption_words`).
        model_max_length: Token positions, start and end tokens included (default 8).

    Returns:
        A ``transformers.CLIPTokenizer`` with ``model_max_length`` positions that pads
        with ``<|endoftext|>``.
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_bpe_files(tmp, words)
        tok = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=model_max_length, pad_token="<|endoftext|>"
        )
    for key in ("is_local", "local_files_only", "name_or_path"):
        tok.init_kwargs.pop(key, None)
    return tok


def build_text_encoder(vocab_size: int, seed: int = 0, max_length: int = MODEL_MAX_LENGTH):
    """Builds the small, randomly initialised (seeded) CLIP text encoder.

    The token embeddings are redrawn with std ``TOKEN_EMBEDDING_STD`` (seeded)
    so that different words give clearly different hidden states.

    Args:
        vocab_size: Size of the tokenizer vocabulary.
        seed: Seed of the random initialisation.
        max_length: Position embeddings (the tokenizer's ``model_max_length``).

    Returns:
        A frozen ``transformers.CLIPTextModel`` in eval mode.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = {**TEXT_ENCODER_CONFIG, "max_position_embeddings": max_length}
    model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **config))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, TOKEN_EMBEDDING_STD)
    return model.eval().requires_grad_(False)


def build_unet(seed: int = 0):
    """Builds the pixel-space ``UNet2DConditionModel`` with seeded random weights.

    Args:
        seed: Seed of the random initialisation.

    Returns:
        A ``diffusers.UNet2DConditionModel``.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler():
    """Builds the ``DDPMScheduler`` the model is trained with (1000 linear-beta steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Encodes prompts into the text encoder's last hidden states.

    Args:
        tokenizer: The ``CLIPTokenizer``.
        text_encoder: The ``CLIPTextModel``.
        prompts: Captions; ``""`` is the null prompt.

    Returns:
        Tensor of shape (len(prompts), model_max_length, hidden_size).
    """
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids.to(text_encoder.device)
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state


def save_model(out: str | Path, unet, text_encoder, tokenizer, scheduler,
               words: Sequence[str] | None = None) -> Path:
    """Saves the parts in diffusers folder layout with a ``model_index.json``.

    Args:
        out: Target folder (created if needed).
        unet: The ``UNet2DConditionModel``.
        text_encoder: The ``CLIPTextModel``.
        tokenizer: The ``CLIPTokenizer``.
        scheduler: The ``DDPMScheduler``.
        words: The tokenizer's whole-word tokens (default: :func:`caption_words`).

    Returns:
        The folder as a ``Path``.
    """
    from diffperception.diffusers_folder import DiffusersFolderWriter

    writer = DiffusersFolderWriter(out, "DiffusionPipeline")
    writer.add("unet", unet)
    writer.add("text_encoder", text_encoder)
    writer.add("tokenizer", tokenizer)
    write_bpe_files(Path(out) / "tokenizer", words)  # for slow-tokenizer (transformers 4.x) loading
    writer.add("scheduler", scheduler)
    return writer.write_index()


def load_model(path: str | Path | None = None) -> dict[str, Any]:
    """Loads the default model's parts (offline, from local files only).

    Args:
        path: Model folder; defaults to the shipped ``DEFAULT_MODEL_PATH``.

    Returns:
        Dict with ``unet``, ``text_encoder``, ``tokenizer`` and ``scheduler``,
        the models in eval mode.
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from . import DEFAULT_MODEL_PATH

    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    kw: dict[str, Any] = {"local_files_only": True}
    return {
        "unet": UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", use_safetensors=True, **kw
        ).eval(),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
        "scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw),
    }
