"""Resolving a diffusers model (Hub repo id or local folder) and loading its components.

Only safetensors are read. Network classes come from an allow-list of diffusers / transformers
classes: a name in ``model_index.json`` never makes us import or execute anything else.
The U-Net and the VAE encoder are built on the meta device and only the tensors of the modules
that are kept are read from disk (``safetensors.safe_open``), so unreached modules and the VAE
decoder are never loaded.

What is read, and from where: a Hub repo is downloaded with its configs and tokenizers only
(``DIFFUSERS_PATTERNS``); each weight file is downloaded when it is read (only the variant asked
for). Before anything is built, :func:`check_diffusers_folder` checks the folder: every file read
lies inside it (links too), every config is a JSON object (a string would make diffusers fetch a
config from the Hub by that name), ``model_index.json`` names ``[library, class]`` pairs, and a
tokenizer's ``model_max_length`` fits its text encoder. transformers is only ever given local
folders, with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..hub import ModelSource, resolve_folder
from .model_files import MAX_CONFIG_BYTES, check_links_inside, find_weight_files, read_json_object

__all__ = [
    "DIFFUSERS_PATTERNS",
    "MAX_PROMPT_TOKENS",
    "ModelSource",
    "TEXT_ENCODER_CLASSES",
    "TEXT_SLOTS",
    "TOKENIZER_CLASSES",
    "check_diffusers_folder",
    "resolve_source",
    "read_model_index",
    "find_component_weights",
    "load_text_stack",
    "network_components",
    "load_text_encoder",
    "load_tokenizer",
]

#: The text-encoder slots of a diffusers folder, ``(encoder folder, tokenizer folder)``: SD 1.x /
#: 2.x and PixArt use the first, SDXL two, SD3 three (CLIP-L, CLIP-G, T5).
TEXT_SLOTS: tuple[tuple[str, str], ...] = (("text_encoder", "tokenizer"),
                                           ("text_encoder_2", "tokenizer_2"),
                                           ("text_encoder_3", "tokenizer_3"))
#: The transformers classes a text encoder may be (``model_index.json`` names one per slot).
TEXT_ENCODER_CLASSES: tuple[str, ...] = ("CLIPTextModel", "CLIPTextModelWithProjection",
                                         "T5EncoderModel")
#: The transformers tokenizer classes a tokenizer may be (CLIP's BPE, T5's unigram).
TOKENIZER_CLASSES: tuple[str, ...] = ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer",
                                      "T5TokenizerFast")
#: Largest tokenizer ``model_max_length`` accepted when no text encoder config bounds it.
MAX_PROMPT_TOKENS = 4096

# What resolve_source downloads of a Hub repo: configs (and shard indexes) and tokenizers, never
# weights (fetched when read, see find_weight_files). The network's own folder (unet/,
# transformer/) comes from the family registry.
DIFFUSERS_PATTERNS: tuple[str, ...] = (
    "model_index.json", "README.md", "scheduler/*.json", "vae/*.json",
    *(p for encoder, tokenizer in TEXT_SLOTS for p in (f"{encoder}/*.json", f"{tokenizer}/*")),
)
# Tokenizer files (vocab, merges, tokenizer.json) are larger than configs, but bounded too.
_MAX_TOKENIZER_FILE_BYTES = 4 * MAX_CONFIG_BYTES


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
    hub_only: bool = False,
) -> ModelSource:
    """Finds (downloading if needed) the configs of a diffusers model, and checks them.

    ``repo_id`` is resolved by ``diffperception.hub.source_kind``'s rule: a registered source
    alias (``"diffperception:default"``: the offline default model shipped with the package), an
    existing local folder, or a Hub repo id (only the configs and tokenizers are downloaded; each
    weight file is downloaded when it is read). The folder is then checked
    (:func:`check_diffusers_folder`).

    Args:
        repo_id: Hub repo id (``"stabilityai/stable-diffusion-2-1"``), a local folder, or a source
            alias.
        revision: Branch, tag or commit sha of a Hub repo.
        cache_dir: huggingface_hub cache folder.
        local_files_only: Never touch the network; use the cache only.
        token: Hub token for private repos.
        hub_only: ``repo_id`` must be a Hub repo id (it was read from a downloaded file).

    Returns:
        The local folder and the resolved commit sha.

    Raises:
        FileNotFoundError: The folder or repo does not exist, it is not a diffusers model, or it
            is not cached while offline.
        ValueError: An alias-shaped name (``"scheme:name"``) that is not registered; with
            ``hub_only``, a name that is no Hub repo id; a folder that fails the checks.
        RuntimeError: The Hub refused the download (e.g. an invalid token).
    """
    components = network_components()
    patterns = (*DIFFUSERS_PATTERNS, *(f"{c}/*.json" for c in components))
    source = resolve_folder(repo_id, allow_patterns=patterns, revision=revision,
                            cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                            hub_only=hub_only)
    folder = source.folder
    if not (folder / "model_index.json").is_file() and not any((folder / c).is_dir()
                                                               for c in components):
        where = str(folder) if Path(source.repo_id).expanduser() == folder else (
            f"{source.repo_id} (revision {source.revision}, files in {folder})")
        raise FileNotFoundError(
            f"{where} is not a diffusers model: it has no model_index.json and none of "
            f"{[c + '/' for c in components]}. Point to the folder a diffusers pipeline's save_pretrained wrote."
        )
    check_diffusers_folder(folder)
    return source


def check_diffusers_folder(folder: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Checks a diffusers folder before anything is built from it.

    Every file the package or transformers reads (``model_index.json``, ``README.md``, and all
    of ``scheduler/``, the network folder, ``vae/``, ``text_encoder*/``, ``tokenizer*/``) must lie
    inside ``root`` (links resolved); every config must be a JSON object of bounded size;
    ``model_index.json`` must name ``[library, class]`` pairs; a tokenizer's ``model_max_length``
    must be an integer no larger than its text encoder's ``max_position_embeddings``.

    Args:
        folder: The diffusers folder (a base model, or a saved task model's ``backbone/``).
        root: The folder files must lie in (default: ``folder``; a saved task model's own folder
            for its ``backbone/``).

    Raises:
        ValueError: Naming the file, what is wrong and the fix.
    """
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    slots = [name for pair in TEXT_SLOTS for name in pair]
    entries = ["model_index.json", "README.md", "scheduler", *network_components(), "vae", *slots]
    check_links_inside(root, [folder / entry for entry in entries])
    fix = "repair or re-download the model's files"
    read_model_index(folder)
    for sub in (*network_components(), "vae", "scheduler", *(e for e, _ in TEXT_SLOTS)):
        for config in sorted((folder / sub).glob("*.json")) if (folder / sub).is_dir() else ():
            read_json_object(config, fix=fix)
    for encoder, tokenizer in TEXT_SLOTS:
        _check_tokenizer(folder / tokenizer, folder / encoder / "config.json")


def _check_tokenizer(folder: Path, encoder_config: Path) -> None:
    """Bounds a tokenizer's files and its ``model_max_length`` (prompts are padded to it)."""
    if not folder.is_dir():
        return
    for file in folder.iterdir():
        if file.is_file() and file.stat().st_size > _MAX_TOKENIZER_FILE_BYTES:
            raise ValueError(f"{file} is {file.stat().st_size} bytes, more than a tokenizer file "
                             f"can be ({_MAX_TOKENIZER_FILE_BYTES}); repair or re-download it.")
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return
    config = read_json_object(config_path, fix="repair or re-download the tokenizer")
    limit, why = MAX_PROMPT_TOKENS, f"at most {MAX_PROMPT_TOKENS}"
    if encoder_config.is_file():
        positions = read_json_object(encoder_config).get("max_position_embeddings")
        if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0:
            limit = min(limit, positions)
            why = f"{encoder_config.parent.name}'s max_position_embeddings is {positions}"
    length = config.get("model_max_length")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= limit:
        raise ValueError(
            f"{config_path}: model_max_length = {length!r} is invalid: prompts are padded to it, "
            f"so it must be an integer from 1 to {limit} ({why}). Set it to the text encoder's "
            "max_position_embeddings (77 for CLIP).")


def read_model_index(folder: Path) -> dict[str, Any]:
    """Reads ``model_index.json``; a folder without one is treated as U-Net only.

    Raises:
        ValueError: Not a JSON object, or an entry of a component the package reads (network,
            ``vae``, ``scheduler``, text encoders, tokenizers) that is not ``[library, class]``
            (strings, or ``null`` for an absent component).
    """
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        return {"unet": ["diffusers", "UNet2DConditionModel"]}
    index = read_json_object(path, fix="repair or re-download the model's files")
    read = {*network_components(), "vae", "scheduler", *(n for pair in TEXT_SLOTS for n in pair)}
    for name, entry in index.items():
        if name not in read or entry is None:
            continue  # metadata ("_class_name") and pipeline options are not read
        if not (isinstance(entry, list) and len(entry) == 2
                and all(v is None or isinstance(v, str) for v in entry)):
            raise ValueError(
                f"{path}: {name!r} = {json_preview(entry)} is invalid: a component entry is "
                '[library, class] (e.g. ["diffusers", "AutoencoderKL"], or [null, null] when '
                "absent). Repair the file, or re-download the model.")
    return index


def json_preview(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for an error message."""
    import json

    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
    """Loads a CLIP text encoder with transformers (safetensors only, no remote code).

    Its weight files are found (and, from the Hub, downloaded) and checked first: transformers
    would follow a shard index to any path it names.
    """
    import transformers

    if class_name not in TEXT_ENCODER_CLASSES:
        raise ValueError(f"{folder / subfolder} holds a {class_name}; supported text encoders: "
                         f"{list(TEXT_ENCODER_CLASSES)}.")
    find_weight_files(Path(folder) / subfolder, "model", root=folder)
    cls = getattr(transformers, class_name)
    model = cls.from_pretrained(str(folder / subfolder), use_safetensors=True, dtype=dtype,
                                local_files_only=True)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder: Path, subfolder: str, class_name: str | None = None):
    """Loads a CLIP or T5 tokenizer from a diffusers folder (checked by
    :func:`check_diffusers_folder`).

    Args:
        folder: The diffusers folder.
        subfolder: ``tokenizer``, ``tokenizer_2`` or ``tokenizer_3``.
        class_name: The class ``model_index.json`` names (default ``CLIPTokenizer``).

    Raises:
        ValueError: A class outside ``TOKENIZER_CLASSES``, or a ``model_max_length`` above
            ``MAX_PROMPT_TOKENS`` (prompts are padded to it).
    """
    import transformers

    class_name = class_name or "CLIPTokenizer"
    if class_name not in TOKENIZER_CLASSES:
        raise ValueError(f"{folder / subfolder} holds a {class_name}; supported tokenizers: "
                         f"{list(TOKENIZER_CLASSES)}.")
    cls = getattr(transformers, class_name)
    tokenizer = cls.from_pretrained(str(folder / subfolder), local_files_only=True)
    if not 1 <= tokenizer.model_max_length <= MAX_PROMPT_TOKENS:
        raise ValueError(
            f"{folder / subfolder}: model_max_length = {tokenizer.model_max_length} is invalid: "
            f"prompts are padded to it, so it must be from 1 to {MAX_PROMPT_TOKENS}. Set it in "
            "tokenizer_config.json to the text encoder's max_position_embeddings (77 for CLIP).")
    return tokenizer


def find_component_weights(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files (single or sharded) of one diffusers component folder.

    Files must lie inside the model folder (the component's parent); in a Hub snapshot only the
    files of ``variant`` are downloaded.
    """
    return find_weight_files(folder, "diffusion_pytorch_model", variant=variant,
                             root=Path(folder).parent)


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
                encoder = cls(cls.config_class.from_pretrained(str(folder / enc_name),
                                                               local_files_only=True))
            encoders[enc_name] = encoder.to(dtype).eval().requires_grad_(False)
        tok_entry = index.get(tok_name) or [None, None]
        tokenizers[enc_name] = load_tokenizer(folder, tok_name, tok_entry[1])
    if not encoders:
        raise FileNotFoundError(
            f"{folder} has no text_encoder in model_index.json, but the prompt needs one."
        )
    return encoders, tokenizers
