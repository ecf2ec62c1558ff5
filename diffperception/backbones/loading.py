"""Resolving a diffusers model (Hub repo id or local folder) and loading its components.

Only safetensors are read. Network classes come from an allow-list of diffusers / transformers
classes: a name in ``model_index.json`` never makes us import or execute anything else.
The U-Net and the VAE encoder are built on the meta device and only the tensors of the modules
that are kept are read from disk (``safetensors.safe_open``), so unreached modules and the VAE
decoder are never loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..hub import ModelSource, find_weight_files, resolve_folder

__all__ = [
    "DIFFUSERS_PATTERNS",
    "ModelSource",
    "TEXT_ENCODER_CLASSES",
    "TEXT_SLOTS",
    "resolve_source",
    "read_model_index",
    "find_component_weights",
    "load_text_stack",
    "network_components",
    "load_text_encoder",
    "load_tokenizer",
]

#: The text-encoder slots of a diffusers folder, ``(encoder folder, tokenizer folder)``: SD 1.x /
#: 2.x use the first, SDXL both.
TEXT_SLOTS: tuple[tuple[str, str], ...] = (("text_encoder", "tokenizer"),
                                           ("text_encoder_2", "tokenizer_2"))
#: The transformers classes a text encoder may be (``model_index.json`` names one per slot).
TEXT_ENCODER_CLASSES: tuple[str, ...] = ("CLIPTextModel", "CLIPTextModelWithProjection")

# "*.json" also takes the shard indexes, "*.safetensors" every shard; never .bin / .ckpt files.
# The network's own folder (unet/, transformer/) comes from the family registry.
DIFFUSERS_PATTERNS: tuple[str, ...] = (
    "model_index.json", "scheduler/*", "vae/*.json", "vae/*.safetensors",
    *(p for encoder, tokenizer in TEXT_SLOTS
      for p in (f"{encoder}/*.json", f"{encoder}/*.safetensors", f"{tokenizer}/*")),
)


def network_components() -> list[str]:
    """The network folders of the registered families (``["unet"]``, later ``"transformer"``)."""
    from .base import list_components

    return list_components()


def resolve_source(
    repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> ModelSource:
    """Finds (downloading if needed) the files of a diffusers model.

    ``repo_id`` is resolved by ``diffperception.hub.source_kind``'s rule: a registered source
    alias (``"diffperception:default"``: the offline default model shipped with the package), an
    existing local folder, or a Hub repo id (only the configs, tokenizers and safetensors weights
    are downloaded).

    Args:
        repo_id: Hub repo id (``"stabilityai/stable-diffusion-2-1"``), a local folder, or a source
            alias.
        revision: Branch, tag or commit sha of a Hub repo.
        cache_dir: huggingface_hub cache folder.
        local_files_only: Never touch the network; use the cache only.
        token: Hub token for private repos.

    Returns:
        The local folder and the resolved commit sha.

    Raises:
        FileNotFoundError: The folder or repo does not exist, it is not a diffusers model, or it
            is not cached while offline.
        ValueError: An alias-shaped name (``"scheme:name"``) that is not registered.
        RuntimeError: The Hub refused the download (e.g. an invalid token).
    """
    components = network_components()
    patterns = (*DIFFUSERS_PATTERNS, *(f"{c}/*.{ext}" for c in components
                                       for ext in ("json", "safetensors")))
    source = resolve_folder(repo_id, allow_patterns=patterns, revision=revision,
                            cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    folder = source.folder
    if not (folder / "model_index.json").is_file() and not any((folder / c).is_dir()
                                                               for c in components):
        where = str(folder) if Path(source.repo_id).expanduser() == folder else (
            f"{source.repo_id} (revision {source.revision}, files in {folder})")
        raise FileNotFoundError(
            f"{where} is not a diffusers model: it has no model_index.json and none of "
            f"{[c + '/' for c in components]}. Point to the folder a diffusers pipeline's save_pretrained wrote."
        )
    return source


def read_model_index(folder: Path) -> dict[str, Any]:
    """Reads ``model_index.json``; a folder without one is treated as U-Net only."""
    index = folder / "model_index.json"
    if index.is_file():
        return json.loads(index.read_text())
    return {"unet": ["diffusers", "UNet2DConditionModel"]}


def read_tensors(files: list[Path], keys: set[str] | None) -> dict[str, torch.Tensor]:
    """Reads the tensors named in ``keys`` (all when None) from safetensors files."""
    from safetensors import safe_open
    from safetensors import SafetensorError

    out: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if keys is None or key in keys:
                        # clone: own, 64-byte aligned memory. Views into the file sit at any
                        # 8-byte offset, and CPU kernels round differently on misaligned data
                        # (1e-6 apart), so a saved and reloaded model would not be bit-identical.
                        out[key] = f.get_tensor(key).clone()
        except (SafetensorError, OSError) as err:
            raise RuntimeError(
                f"Could not read {file}: {err}. The file is truncated or not a safetensors file; "
                "delete it and download it again."
            ) from err
    return out


def load_pruned(
    build: Callable[[], nn.Module],
    prune: Callable[[nn.Module], None],
    files: list[Path],
    dtype: torch.dtype,
) -> nn.Module:
    """Builds a module on the meta device, prunes it, then loads only the kept tensors strictly."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = build()
    prune(module)
    wanted = set(module.state_dict().keys())
    tensors = read_tensors(files, wanted)
    missing = sorted(wanted - set(tensors))
    if missing:
        raise RuntimeError(
            f"The weight files {[f.name for f in files]} lack {len(missing)} tensor(s) the model "
            f"needs, e.g. {missing[:5]}. The files do not match their config.json."
        )
    module.load_state_dict(tensors, strict=True, assign=True)
    if any(p.dtype != dtype for p in module.parameters()):
        module = module.to(dtype)
    return module


def load_text_encoder(folder: Path, subfolder: str, class_name: str, dtype: torch.dtype) -> nn.Module:
    """Loads a CLIP text encoder with transformers (safetensors only, no remote code)."""
    import transformers

    if class_name not in TEXT_ENCODER_CLASSES:
        raise ValueError(f"{folder / subfolder} holds a {class_name}; supported text encoders: "
                         f"{list(TEXT_ENCODER_CLASSES)}.")
    cls = getattr(transformers, class_name)
    model = cls.from_pretrained(str(folder / subfolder), use_safetensors=True, dtype=dtype)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path, subfolder: str):
    """Loads a CLIP tokenizer from a diffusers folder."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder / subfolder))


def find_component_weights(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files (single or sharded) of one diffusers component folder."""
    return find_weight_files(folder, "diffusion_pytorch_model", variant=variant)


def load_text_stack(folder: Path, index: dict[str, Any], dtype: torch.dtype, *,
                    load_weights: bool = True) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The text encoder(s) and tokenizer(s) named in ``model_index.json``.

    Args:
        folder: The diffusers folder.
        index: Its ``model_index.json``.
        dtype: Weight dtype.
        load_weights: False builds the encoders on the meta device from their configs (their
            weights then come from a saved task model).

    Returns:
        ``({slot: encoder}, {slot: tokenizer})`` keyed ``text_encoder`` / ``text_encoder_2``.

    Raises:
        ValueError: A text encoder class outside the allow-list.
        FileNotFoundError: No text encoder in ``model_index.json``.
    """
    import transformers
    from accelerate import init_empty_weights

    encoders, tokenizers = {}, {}
    for enc_name, tok_name in TEXT_SLOTS:
        entry = index.get(enc_name)
        if not entry or entry[1] is None:
            continue
        if load_weights:
            encoders[enc_name] = load_text_encoder(folder, enc_name, entry[1], dtype)
        else:
            if entry[1] not in TEXT_ENCODER_CLASSES:
                raise ValueError(f"{folder / enc_name} holds a {entry[1]}; supported text "
                                 f"encoders: {list(TEXT_ENCODER_CLASSES)}.")
            cls = getattr(transformers, entry[1])
            with init_empty_weights():
                encoder = cls(cls.config_class.from_pretrained(str(folder / enc_name)))
            encoders[enc_name] = encoder.to(dtype).eval().requires_grad_(False)
        tokenizers[enc_name] = load_tokenizer(folder, tok_name)
    if not encoders:
        raise FileNotFoundError(
            f"{folder} has no text_encoder in model_index.json, but the prompt needs one."
        )
    return encoders, tokenizers
