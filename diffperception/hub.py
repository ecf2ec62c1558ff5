"""Where model files come from: source aliases, local folders and Hub snapshots.

This module is the one place that decides whether a model name is a local folder or a Hub repo id,
the one wrapper around ``huggingface_hub.snapshot_download`` (its errors become
``FileNotFoundError`` / ``RuntimeError`` messages naming repo, revision and the fix) and the one
finder of single or sharded safetensors weights. It sits at the bottom of the package next to
``config``: it imports nothing else of diffperception, and ``huggingface_hub`` only when called.

A name is resolved by one rule (:func:`source_kind`):

1. a registered source alias (``"diffperception:default"``, see :func:`register_source_alias`);
2. an existing local folder (a folder wins over a repo id spelled the same, as in
   ``huggingface_hub`` and diffusers);
3. anything written as a path (absolute, ``./``, ``../``, ``~``, a trailing or second ``/``) or
   passed as a ``pathlib.Path``: a local folder that does not exist, ``FileNotFoundError``;
4. a valid Hub repo id (``"namespace/name"`` or ``"name"``): downloaded with :func:`snapshot`.

Anything else is an error that says what the name would have to look like.

Example:
    >>> from diffperception.hub import resolve_folder
    >>> source = resolve_folder("stabilityai/stable-diffusion-2-1", allow_patterns=["unet/*"])
    >>> source.folder, source.revision          # the cached snapshot and its commit sha
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "HubKwargs",
    "ModelSource",
    "SourceKind",
    "find_weight_files",
    "is_hub_repo_id",
    "list_source_aliases",
    "register_source_alias",
    "resolve_folder",
    "resolve_source_alias",
    "snapshot",
    "source_kind",
]

#: What a model name refers to (see :func:`source_kind`).
SourceKind = Literal["alias", "folder", "repo"]

# "scheme:name": the colon keeps an alias from ever being a valid Hub repo id or a bare folder name.
_ALIAS_RE = re.compile(r"[A-Za-z][\w.-]*:[\w./-]+")
_ALIASES: dict[str, Callable[[], str | os.PathLike]] = {}


class HubKwargs(TypedDict, total=False):
    """The Hub keywords every loader takes (``**hub_kwargs: Unpack[HubKwargs]``).

    Attributes:
        revision: Branch, tag or commit sha of a Hub repo.
        cache_dir: huggingface_hub cache folder.
        local_files_only: Never touch the network; use the cache only (also implied by
            ``HF_HUB_OFFLINE=1``).
        token: Hub token for private or gated repos (False: send none).
        force_download: Download again even when cached.
    """

    revision: str | None
    cache_dir: str | os.PathLike | None
    local_files_only: bool
    token: str | bool | None
    force_download: bool


@dataclass
class ModelSource:
    """A model name resolved to a local folder.

    Attributes:
        folder: The local folder holding the files.
        repo_id: What the user named (Hub repo id, folder path or source alias).
        revision: The commit sha of a Hub snapshot; for a local folder the revision that was asked
            for (recorded, not checked); None for a source alias.
    """

    folder: Path
    repo_id: str
    revision: str | None


# -------------------------------------------------------------------------------- aliases

def register_source_alias(name: str, resolver: Callable[[], str | os.PathLike], *,
                          replace: bool = False) -> None:
    """Registers a name that resolves to a local folder wherever a model name is accepted.

    Args:
        name: ``"scheme:name"`` (letters, digits, ``_ . -`` before the colon); the colon keeps it
            apart from Hub repo ids and folder names.
        resolver: Called at resolution time; returns the folder (which must exist then).
        replace: Replace an alias of the same name instead of refusing it.

    Raises:
        ValueError: A malformed name, or a name already registered (without ``replace``).
        TypeError: ``resolver`` is not callable.

    Example:
        >>> register_source_alias("myorg:digits", lambda: Path("/models/digits"))
        >>> DiffusionPerceptionForFeatureExtraction.from_diffusers("myorg:digits", taps=["mid_block"])
    """
    if not isinstance(name, str) or not _ALIAS_RE.fullmatch(name):
        raise ValueError(f"Source alias {name!r} must look like 'scheme:name' (letters, digits, "
                         "'_', '.', '-'; a colon after the scheme), e.g. 'myorg:digits'.")
    if not callable(resolver):
        raise TypeError(f"The resolver of source alias {name!r} must be callable, got "
                        f"{type(resolver).__name__}.")
    if name in _ALIASES and not replace:
        raise ValueError(f"Source alias {name!r} is already registered; pass replace=True to "
                         "replace it.")
    _ALIASES[name] = resolver


def list_source_aliases() -> list[str]:
    """The registered source aliases, sorted."""
    return sorted(_ALIASES)


def resolve_source_alias(name: str) -> Path:
    """The folder a registered source alias points to.

    Raises:
        ValueError: ``name`` is not a registered alias (the message lists close ones).
        FileNotFoundError: The alias points to a folder that does not exist.
    """
    if name not in _ALIASES:
        raise _unknown_alias(name)
    folder = Path(_ALIASES[name]()).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Source alias {name!r} points to {folder}, which is not a folder; "
                                "reinstall the package that registered it.")
    return folder


def _unknown_alias(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_ALIASES), n=3)
    hint = f" Did you mean {close}?" if close else ""
    return ValueError(f"Unknown source alias {name!r}.{hint} Registered aliases: "
                      f"{list_source_aliases()}. A local folder named like this does not exist "
                      "either.")


# ------------------------------------------------------------------------ path or repo id

def _written_as_path(text: str) -> bool:
    """True for names only a path is written like (never a valid Hub repo id)."""
    seps = {"/", os.sep, os.altsep} - {None}
    return (text.startswith((".", "~")) or text.endswith(tuple(seps)) or Path(text).is_absolute()
            or text.count("/") > 1 or any(s in text for s in seps - {"/"}))


def source_kind(name: str | os.PathLike) -> SourceKind:
    """Says whether a model name is a source alias, a local folder or a Hub repo id.

    The rule, in order: a registered alias; an existing folder; a name written as a path (or a
    ``pathlib.Path``) that does not exist is an error; a valid Hub repo id; anything else is an
    error. Nothing is downloaded.

    Args:
        name: What the user passed: ``"org/name"``, ``"./models/sd"``, ``Path(...)``,
            ``"diffperception:default"``.

    Returns:
        ``"alias"``, ``"folder"`` or ``"repo"``.

    Raises:
        TypeError: ``name`` is not a string or a path.
        FileNotFoundError: A local path that does not exist or is a file, or a name that is neither
            an existing folder nor a valid Hub repo id.
        ValueError: An empty name, or an alias-shaped name (``"scheme:name"``) nobody registered.

    Example:
        >>> source_kind("stabilityai/stable-diffusion-2-1")
        'repo'
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"A model name must be a Hub repo id or a folder path (str or "
                        f"os.PathLike), got {type(name).__name__}.")
    text = os.fspath(name)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Model name {name!r} is empty or not text; pass a Hub repo id "
                         "('namespace/name') or a local folder.")
    if isinstance(name, str) and name in _ALIASES:
        return "alias"
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        raise FileNotFoundError(f"{text!r} is a file, not a folder; pass the folder that holds the "
                                "model (its config.json / model_index.json).")
    if not isinstance(name, str) or _written_as_path(text):
        raise FileNotFoundError(f"Local folder {text!r} does not exist (looked in {path.absolute()}"
                                "). Check the path, or pass a Hub repo id 'namespace/name'.")
    if _ALIAS_RE.fullmatch(text):
        raise _unknown_alias(text)
    return _check_repo_id(text)


def _check_repo_id(text: str) -> SourceKind:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{text!r} is neither an existing local folder nor a valid Hub repo id: {err} Pass a "
            "folder that exists, or a repo id 'namespace/name' of letters, digits, '-', '_', '.'."
        ) from err
    return "repo"


def is_hub_repo_id(name: str | os.PathLike) -> bool:
    """True when ``name`` would be fetched from the Hub (:func:`source_kind` is ``"repo"``).

    Never raises: a missing folder, an alias or an invalid name is simply not a Hub repo id.
    """
    try:
        return source_kind(name) == "repo"
    except (TypeError, ValueError, FileNotFoundError):
        return False


# -------------------------------------------------------------------------------- snapshots

def resolve_folder(
    name: str | os.PathLike,
    *,
    allow_patterns: Sequence[str] | None = None,
    **hub_kwargs: Unpack[HubKwargs],
) -> ModelSource:
    """The local folder of a model name: an alias's folder, a folder as is, or a Hub snapshot.

    Args:
        name: Source alias, local folder or Hub repo id (the rule of :func:`source_kind`).
        allow_patterns: Files of a Hub repo to download (all when None).
        **hub_kwargs: ``revision`` (recorded as is for a folder, ignored for an alias),
            ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` (:class:`HubKwargs`).

    Returns:
        The folder, the name and the revision (a Hub snapshot's commit sha).

    Raises:
        FileNotFoundError: See :func:`source_kind` and :func:`snapshot`.
        ValueError: See :func:`source_kind`.
        TypeError: An unknown keyword.
        RuntimeError: See :func:`snapshot`.
    """
    unknown = sorted(set(hub_kwargs) - set(HubKwargs.__annotations__))
    if unknown:
        raise TypeError(f"Unknown Hub keyword(s) {unknown}; allowed: "
                        f"{sorted(HubKwargs.__annotations__)}.")
    kind = source_kind(name)
    if kind == "alias":
        return ModelSource(folder=resolve_source_alias(str(name)), repo_id=str(name), revision=None)
    if kind == "folder":
        return ModelSource(folder=Path(name).expanduser(), repo_id=os.fspath(name),
                           revision=hub_kwargs.get("revision"))
    folder = snapshot(str(name), allow_patterns=allow_patterns, **hub_kwargs)
    return ModelSource(folder=folder, repo_id=str(name), revision=folder.name)


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Downloads (or finds in the cache) a Hub repo's files, with errors that name the fix.

    Args:
        repo_id: ``"namespace/name"``.
        revision, cache_dir, local_files_only, token, force_download, allow_patterns: As for
            ``huggingface_hub.snapshot_download``.

    Returns:
        The snapshot folder in the cache; its name is the commit sha.

    Raises:
        FileNotFoundError: The repo does not exist (or is private or gated without a valid
            token), the revision does not exist, or the files are not (completely) cached while
            the Hub may not be contacted.
        RuntimeError: The Hub refused the request for another reason (e.g. an invalid token).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            token=token, force_download=force_download,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None)
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        raise _translate_hub_error(err, repo_id, revision, cache_dir) from err
    return Path(folder)


def _translate_hub_error(err: Exception, repo_id: str, revision: str | None,
                         cache_dir: str | os.PathLike | None) -> Exception:
    """The ``FileNotFoundError`` / ``RuntimeError`` a huggingface_hub error becomes."""
    from huggingface_hub.errors import (
        GatedRepoError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    download = f"`hf download {repo_id} --revision {rev}" + (
        f" --cache-dir {cache_dir}`" if cache_dir is not None else "`")
    login = "pass token=... (or run `hf auth login`)"
    if isinstance(err, GatedRepoError):
        return FileNotFoundError(f"Hub repository {repo_id!r} is gated: accept its conditions on its "
                                 f"Hub page with your account, then {login}.")
    if isinstance(err, RepositoryNotFoundError):
        return FileNotFoundError(f"Hub repository {repo_id!r} was not found, or it is private and no "
                                 f"valid token was given. Check the id, or {login}.")
    if isinstance(err, RevisionNotFoundError):
        return FileNotFoundError(
            f"Revision {revision!r} of {repo_id!r} does not exist; pass an existing branch, tag or "
            f"commit sha (HfApi().list_repo_refs({repo_id!r}) lists them).")
    offline = ("the Hub may not be contacted (HF_HUB_OFFLINE=1 or local_files_only=True, or no "
               "network")
    if isinstance(err, IncompleteSnapshotError):
        return FileNotFoundError(
            f"The cached copy of {repo_id!r} at revision {rev!r} is incomplete (an interrupted "
            f"download?) and {offline}). Download it again with network access: {download}.")
    if isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__
        why = f"; the last attempt failed with {type(cause).__name__}" if cause is not None else ""
        return FileNotFoundError(
            f"{repo_id!r} at revision {rev!r} is not in the local cache and {offline}{why}). "
            f"Download it once with network access: {download} (or load it without "
            "local_files_only), or pass a local folder.")
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    return RuntimeError(f"The Hub refused to send {repo_id!r} at revision {rev!r}: {message}. Check "
                        f"the token ({login}), or retry later.")


# ----------------------------------------------------------------------------- weight files

def find_weight_files(folder: str | os.PathLike, stem: str, *, variant: str | None = None,
                      hint: str | None = None) -> list[Path]:
    """The safetensors files of one model: a single file, or every shard an index names.

    Looks for ``{stem}[.{variant}].safetensors``, then for a shard index: diffusers' and
    transformers' ``{stem}.safetensors.index[.{variant}].json`` or
    ``{stem}.{variant}.safetensors.index.json``. Shards must sit next to their index.

    Args:
        folder: The folder (a diffusers component such as ``unet/``, or a saved task model).
        stem: ``"diffusion_pytorch_model"`` (diffusers components) or ``"model"`` (task models).
        variant: A weight variant such as ``"fp16"``; no fall-back to the plain files.
        hint: How to get safetensors weights, appended to the "not found" message.

    Returns:
        The files to read, shards sorted by name.

    Raises:
        FileNotFoundError: No such weights (the message lists what the folder holds), or an index
            naming a shard that is missing.
        RuntimeError: An index that is not valid JSON or names files outside the folder.

    Example:
        >>> find_weight_files("sd21/unet", "diffusion_pytorch_model", variant="fp16")
        [PosixPath('sd21/unet/diffusion_pytorch_model.fp16.safetensors')]
    """
    folder = Path(folder)
    single = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    indexes = ([f"{stem}.safetensors.index.{variant}.json", f"{single}.index.json"] if variant
               else [f"{single}.index.json"])
    if (folder / single).is_file():
        return [folder / single]
    for index in indexes:
        if (folder / index).is_file():
            return _shards(folder / index)
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing (no folder)"
    plain = f" It has {stem}.safetensors: pass variant=None." if (
        variant and (folder / f"{stem}.safetensors").is_file()) else ""
    fix = hint or ("convert .bin weights with diffusers' save_pretrained(..., "
                   "safe_serialization=True).")
    raise FileNotFoundError(
        f"No weights {single} (or a sharded {indexes[0]}) in {folder}; found {found}.{plain} "
        f"diffperception loads safetensors only: {fix}")


def _shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, checked to exist next to it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise RuntimeError(f"{index} is not a valid shard index (a JSON object with a "
                           f"'weight_map'): {err!r}. Download or save the weights again.") from err
    outside = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
    if outside:
        raise RuntimeError(f"{index} names shard(s) {outside} outside its folder; only file names "
                           "next to the index are read.")
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{index} names shard(s) {missing} that are not in {index.parent}; "
                                "download or save the weights again.")
    return [index.parent / s for s in shards]
