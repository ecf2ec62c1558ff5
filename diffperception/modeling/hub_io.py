"""The files of a saved task model: names, finding them, reading them, pushing them.

What a saved task model folder (or Hub repository) holds::

    config.json              the TaskConfig dict; backbone.revision pins the base model's commit
    model.safetensors        the trunk and the head, strictly loaded; sharded
                             (model-0000k-of-0000n.safetensors + index) above 5 GB
    backbone/                the base model's diffusers configs (model_index.json, unet/config.json,
                             vae/config.json, scheduler/, tokenizer*/, text_encoder*/config.json),
                             no weights: the trunk is rebuilt from them without the base repo
    README.md                the generated model card

``TASK_MODEL_FILES`` is what a pull downloads and a push uploads; ``STALE_FILES`` is what a push
deletes first in the same commit (the shards and ``backbone/`` of an earlier push). Both
``DiffusionPerceptionModel.push_to_hub`` and ``diffperception push`` upload through
:func:`upload_model_folder`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..backbones.loading import TEXT_SLOTS
from ..hub import HubKwargs, find_weight_files, resolve_folder

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo
    from typing_extensions import Unpack

__all__ = [
    "BACKBONE_CONFIGS",
    "BACKBONE_DIR",
    "CARD_NAME",
    "CONFIG_NAME",
    "STALE_FILES",
    "TASK_MODEL_FILES",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "backbone_config_files",
    "check_state_dict",
    "create_model_repo",
    "format_keys",
    "read_config",
    "resolve_model_folder",
    "saved_weight_files",
    "upload_model_folder",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CARD_NAME = "README.md"
BACKBONE_DIR = "backbone"
#: The base model's files copied into ``backbone/`` (README.md: its card, kept for its license).
#: ``{component}`` is the family's network folder (``unet``, ``transformer``).
BACKBONE_CONFIGS = ("model_index.json", "{component}/config.json", "vae/config.json",
                    "scheduler/scheduler_config.json", "README.md")
#: The files of a task model on the Hub: downloaded by a pull, uploaded by a push.
TASK_MODEL_FILES = (CONFIG_NAME, "model*.safetensors", "model*.safetensors.index.json", CARD_NAME,
                    f"{BACKBONE_DIR}/*")
#: Deleted by a push in the same commit, unless uploaded again (old shards, an old backbone/).
STALE_FILES = ("model*.safetensors", "model*.safetensors.index.json", f"{BACKBONE_DIR}/**")


# ------------------------------------------------------------------------------------ reading

def resolve_model_folder(name_or_path: str | os.PathLike, **hub_kwargs: Unpack[HubKwargs]) -> Path:
    """The local folder of a saved task model: a folder as is, or a Hub repo's snapshot.

    Args:
        name_or_path: Folder written by ``save_pretrained`` or a Hub repo id
            (``diffperception.hub.source_kind``'s rule).
        **hub_kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
            ``force_download`` (``diffperception.hub.HubKwargs``).

    Returns:
        The folder holding ``config.json``.

    Raises:
        FileNotFoundError: No such folder or repo (or private without a token), no such revision,
            not cached while offline, or no ``config.json``.
        ValueError: An alias-shaped name nobody registered.
        RuntimeError: The Hub refused the download (e.g. an invalid token).
    """
    source = resolve_folder(name_or_path, allow_patterns=TASK_MODEL_FILES, **hub_kwargs)
    if not (source.folder / CONFIG_NAME).is_file():
        where = (str(source.folder) if Path(source.repo_id).expanduser() == source.folder
                 else f"{source.repo_id} (revision {source.revision or 'main'})")
        raise FileNotFoundError(
            f"{where} has no {CONFIG_NAME}: it is not a saved diffperception model. For a "
            "diffusers model use DiffusionPerceptionForFeatureExtraction.from_diffusers."
        )
    return source.folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Reads ``config.json`` of a saved task model.

    Raises:
        ValueError: The file is not valid JSON or not an object.
    """
    path = Path(folder) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save or re-download it.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def saved_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a saved task model: ``model.safetensors`` or every shard.

    Raises:
        FileNotFoundError: Neither file nor index, or an index naming a missing shard.
        RuntimeError: A broken index.
    """
    return find_weight_files(folder, "model", hint="a task model's weights are saved as "
                             "safetensors by save_pretrained; save the model again.")


def format_keys(keys: Sequence[str], limit: int = 20) -> str:
    """``"a, b, c ... and 7 more"``: state-dict keys for an error message, sorted."""
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(expected: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor],
                     where: str) -> None:
    """Raises unless ``loaded`` has exactly the keys and shapes of ``expected``.

    Args:
        expected: The model's state dict (or the part of it the file should hold).
        loaded: The tensors read from the file(s).
        where: The file(s), for the message.

    Raises:
        RuntimeError: Listing the missing, unexpected and mis-shaped tensors by key.
    """
    missing = [k for k in expected if k not in loaded]
    unexpected = [k for k in loaded if k not in expected]
    shapes = [f"{k} (file {tuple(loaded[k].shape)}, model {tuple(expected[k].shape)})"
              for k in expected if k in loaded and loaded[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {format_keys(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped tensor(s): {format_keys(shapes)}")
    if problems:
        raise RuntimeError(
            f"{where} does not match the model its config.json describes: " + "; ".join(problems)
            + ". The weights were saved from another model or config, or the files were edited; "
            "save the model again with save_pretrained."
        )


def backbone_config_files(folder: str | os.PathLike, keep_text_encoders: bool,
                          component: str = "unet") -> dict[str, bytes]:
    """The diffusers config files (never weights) a trunk is rebuilt from, by relative name.

    Args:
        folder: The base model's diffusers folder.
        keep_text_encoders: Also take ``text_encoder*/config.json`` (the trunk keeps them).
        component: The network's folder (the family's ``component``).

    Returns:
        ``{"unet/config.json": b"...", "tokenizer/vocab.json": b"...", ...}``.
    """
    folder = Path(folder)
    names = [n.format(component=component) for n in BACKBONE_CONFIGS]
    names = [n for n in names if (folder / n).is_file()]
    for encoder, tokenizer in TEXT_SLOTS:
        if (folder / tokenizer).is_dir():
            names += [f"{tokenizer}/{p.name}" for p in sorted((folder / tokenizer).iterdir())
                      if p.is_file()]
        if keep_text_encoders and (folder / encoder / "config.json").is_file():
            names.append(f"{encoder}/config.json")
    return {name: (folder / name).read_bytes() for name in names}


# ------------------------------------------------------------------------------------ pushing

def create_model_repo(repo_id: str, *, token: str | bool | None = None,
                      private: bool | None = None) -> str:
    """Creates the Hub model repo if it does not exist; returns its full id.

    Args:
        repo_id: ``"namespace/name"`` (or ``"name"``: the token's user is the namespace).
        token: Hub token with write access (default: the logged-in one; False: none).
        private: Create it private (an existing repo keeps its visibility).

    Returns:
        The full ``"namespace/name"``.

    Raises:
        RuntimeError: The Hub refused (no or a read-only token, a namespace that is not yours).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id
    except HfHubHTTPError as err:
        raise _push_refused(repo_id, err) from err


def upload_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    commit_message: str = "Upload diffperception task model",
    branch: str | None = None,
    create_pr: bool | None = None,
) -> CommitInfo:
    """Uploads a saved task model folder in one commit that also drops stale files.

    Only ``TASK_MODEL_FILES`` are uploaded; ``STALE_FILES`` not uploaded again (the shards or the
    ``backbone/`` of an earlier push) are deleted in the same commit.

    Args:
        folder: Folder written by ``save_pretrained``.
        repo_id: An existing repo (see :func:`create_model_repo`).
        token, commit_message, branch, create_pr: As for ``HfApi.upload_folder`` (``branch`` is
            its ``revision``).

    Returns:
        The ``CommitInfo`` (``.oid`` the commit sha, ``.commit_url``).

    Raises:
        RuntimeError: The Hub refused the commit.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi(token=token).upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=branch,
            create_pr=create_pr, allow_patterns=list(TASK_MODEL_FILES),
            delete_patterns=list(STALE_FILES))
    except HfHubHTTPError as err:
        raise _push_refused(repo_id, err) from err


def _push_refused(repo_id: str, err: Exception) -> RuntimeError:
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return RuntimeError(f"The Hub refused the push to {repo_id!r}: {message}. Pass a token with "
                        "write access to that namespace (token=... / --token, or `hf auth login`).")
