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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "ModelSource",
    "resolve_source",
    "read_model_index",
    "load_unet",
    "load_vae_encoder",
    "load_text_encoder",
    "load_tokenizer",
    "load_alphas_cumprod",
    "VaeEncoder",
]

_PATTERNS = [
    "model_index.json",
    "unet/config.json", "unet/*.safetensors", "unet/*.safetensors.index.json",
    "vae/config.json", "vae/*.safetensors",
    "text_encoder/*.json", "text_encoder/*.safetensors",
    "text_encoder_2/*.json", "text_encoder_2/*.safetensors",
    "tokenizer/*", "tokenizer_2/*", "scheduler/*",
]


# The name of the offline default model shipped inside the package (a diffusers folder).
DEFAULT_MODEL_ID = "diffperception:default"


@dataclass
class ModelSource:
    """A resolved diffusers model folder.

    Attributes:
        folder: Local folder in diffusers layout.
        repo_id: What the user named (repo id or path).
        revision: The resolved commit sha for Hub repos, else the requested revision (or None).
    """

    folder: Path
    repo_id: str
    revision: str | None


def resolve_source(
    repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> ModelSource:
    """Finds (downloading if needed) the files of a diffusers model.

    Args:
        repo_id: Hub repo id (``"stabilityai/stable-diffusion-2-1"``), a local folder, or
            ``"diffperception:default"`` for the offline default model shipped with the package.
        revision: Branch, tag or commit sha of a Hub repo.
        cache_dir: huggingface_hub cache folder.
        local_files_only: Never touch the network; use the cache only.
        token: Hub token for private repos.

    Returns:
        The local folder and the resolved commit sha.

    Raises:
        FileNotFoundError: The folder or repo does not exist, or it is not cached while offline.
    """
    if str(repo_id) == DEFAULT_MODEL_ID:
        from ..default_model import DEFAULT_MODEL_PATH

        return ModelSource(folder=DEFAULT_MODEL_PATH, repo_id=DEFAULT_MODEL_ID, revision=None)
    path = Path(repo_id).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise FileNotFoundError(
                f"{path} is a folder but not a diffusers model: it has no model_index.json and no "
                "unet/ subfolder. Point to the folder a diffusers pipeline's save_pretrained wrote."
            )
        return ModelSource(folder=path, repo_id=str(repo_id), revision=revision)
    if str(repo_id).startswith((".", "/", "~")) or os.sep in str(repo_id).strip("/").split("/", 1)[-1]:
        raise FileNotFoundError(f"Local folder {repo_id!r} does not exist.")
    return _snapshot(str(repo_id), revision, cache_dir, local_files_only, token)


def _snapshot(repo_id, revision, cache_dir, local_files_only, token) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token, allow_patterns=_PATTERNS,
        )
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"Hub repository {repo_id!r} was not found (or is private and no valid token was "
            "given). Check the id, or pass token=... / run `hf auth login`."
        ) from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(
            f"Revision {revision!r} of {repo_id!r} does not exist; pass an existing branch, tag or "
            "commit sha."
        ) from err
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{repo_id!r} at revision {revision or 'main'!r} is not in the local cache and the Hub "
            "cannot be reached (offline mode or no network). Download it once with network access "
            f"(`hf download {repo_id}" + (f" --revision {revision}" if revision else "")
            + "`) or point to a local folder."
        ) from err
    folder = Path(folder)
    return ModelSource(folder=folder, repo_id=repo_id, revision=folder.name)


def read_model_index(folder: Path) -> dict[str, Any]:
    """Reads ``model_index.json``; a folder without one is treated as U-Net only."""
    index = folder / "model_index.json"
    if index.is_file():
        return json.loads(index.read_text())
    return {"unet": ["diffusers", "UNet2DConditionModel"]}


def _weight_files(folder: Path, stem: str, variant: str | None) -> list[Path]:
    """Finds the safetensors files (single or sharded) of one component."""
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    others = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
    raise FileNotFoundError(
        f"No weights {name} (or a sharded {name}.index.json) in {folder}; found {others}. "
        "diffperception loads safetensors only: convert .bin weights with diffusers' "
        "save_pretrained(..., safe_serialization=True)."
    )


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


_UNET_CLASSES = {"UNet2DConditionModel", "UNet2DModel"}


def load_unet(
    folder: Path, prune: Callable[[nn.Module], None], dtype: torch.dtype,
    variant: str | None = None,
) -> nn.Module:
    """Loads the U-Net of a diffusers folder, pruned by ``prune`` before any weight is read."""
    import diffusers

    config = json.loads((folder / "unet" / "config.json").read_text())
    name = config.get("_class_name", "UNet2DConditionModel")
    if name not in _UNET_CLASSES:
        raise ValueError(
            f"{folder / 'unet'} holds a {name}; diffperception supports {sorted(_UNET_CLASSES)}."
        )
    cls = getattr(diffusers, name)
    files = _weight_files(folder / "unet", "diffusion_pytorch_model", variant)
    return load_pruned(lambda: cls.from_config(config), prune, files, dtype)


class VaeEncoder(nn.Module):
    """The encoder half of an ``AutoencoderKL``: image in [-1, 1] to scaled latent mean.

    Keeps diffusers' module names (``encoder.*``, ``quant_conv.*``) so the saved keys read
    ``vae.encoder.conv_in.weight`` as in the original checkpoint.
    """

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module | None, scaling_factor: float,
                 shift_factor: float | None = None, downsample_factor: int = 8) -> None:
        super().__init__()
        self.downsample_factor = int(downsample_factor)
        self.encoder = encoder
        self.quant_conv = quant_conv
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor) if shift_factor is not None else 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.encoder(images)  # (B, 2C, H/8, W/8)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean = h.chunk(2, dim=1)[0]  # (B, C, H/8, W/8): the posterior mean
        return (mean - self.shift_factor) * self.scaling_factor


def vae_encoder_from(vae: nn.Module, config: dict[str, Any]) -> VaeEncoder:
    """Takes the encoder half out of an ``AutoencoderKL`` (the decoder is dropped)."""
    factor = 2 ** (len(config.get("block_out_channels", (0, 0, 0, 0))) - 1)
    return VaeEncoder(vae.encoder, getattr(vae, "quant_conv", None),
                      config.get("scaling_factor", 0.18215), config.get("shift_factor"), factor)


def load_vae_encoder(folder: Path, dtype: torch.dtype, variant: str | None = None) -> VaeEncoder:
    """Loads the VAE encoder (never the decoder) of a latent diffusion model."""
    from diffusers import AutoencoderKL

    config = json.loads((folder / "vae" / "config.json").read_text())
    files = _weight_files(folder / "vae", "diffusion_pytorch_model", variant)

    def build() -> nn.Module:
        vae = AutoencoderKL.from_config(config)
        return vae_encoder_from(vae, config)

    return load_pruned(build, lambda m: None, files, dtype)


_TEXT_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


def load_text_encoder(folder: Path, subfolder: str, class_name: str, dtype: torch.dtype) -> nn.Module:
    """Loads a CLIP text encoder with transformers (safetensors only, no remote code)."""
    import transformers

    if class_name not in _TEXT_CLASSES:
        raise ValueError(
            f"{folder / subfolder} holds a {class_name}; supported text encoders: {_TEXT_CLASSES}."
        )
    cls = getattr(transformers, class_name)
    model = cls.from_pretrained(str(folder / subfolder), use_safetensors=True, dtype=dtype)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path, subfolder: str):
    """Loads a CLIP tokenizer from a diffusers folder."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder / subfolder))


def load_alphas_cumprod(folder: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Returns the scheduler's ``alphas_cumprod`` (float64 on CPU) and its config."""
    from diffusers import DDPMScheduler

    sched_dir = folder / "scheduler"
    if not (sched_dir / "scheduler_config.json").is_file():
        raise FileNotFoundError(
            f"{sched_dir / 'scheduler_config.json'} is missing; the noise schedule is needed to "
            "noise the latent."
        )
    config = json.loads((sched_dir / "scheduler_config.json").read_text())
    keep = {k: v for k, v in config.items()
            if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                     "trained_betas", "rescale_betas_zero_snr")}
    scheduler = DDPMScheduler.from_config(keep)
    return scheduler.alphas_cumprod.to(torch.float64), config


def find_component_weights(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files (single or sharded) of one diffusers component folder."""
    return _weight_files(folder, "diffusion_pytorch_model", variant)


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
    for enc_name, tok_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        entry = index.get(enc_name)
        if not entry or entry[1] is None:
            continue
        if load_weights:
            encoders[enc_name] = load_text_encoder(folder, enc_name, entry[1], dtype)
        else:
            if entry[1] not in _TEXT_CLASSES:
                raise ValueError(f"{folder / enc_name} holds a {entry[1]}; supported text "
                                 f"encoders: {_TEXT_CLASSES}.")
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
