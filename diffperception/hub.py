"""Where model files come from: source aliases, local folders and Hub snapshots.

This module is the one place that decides whether a model name is a local folder or a Hub repo id,
the one wrapper around ``huggingface_hub.snapshot_download`` (its errors become
``FileNotFoundError`` / ``RuntimeError`` messages naming repo, revision and the fix) and the one
fetcher of more files of a snapshot. It sits at the bottom of the package next to
``config``: it imports nothing else of diffperception, and ``huggingface_hub`` only when called.

A name is resolved by one rule (:func:`source_kind`):

1. a registered source alias (``"diffperception:default"``, see :func:`register_source_alias`);
2. an existing local folder (a folder wins over a repo id spelled the same, as in
   ``huggingface_hub`` and diffusers);
3. anything written as a path (absolute, ``./``, ``../``, ``~``, a trailing or second ``/``) or
   passed as a ``pathlib.Path``: a local folder that does not exist, ``FileNotFoundError``;
4. a valid Hub repo id (``"namespace/name"`` or ``"name"``): downloaded with :func:`snapshot`.

Anything else is an error that says what the name would have to look like.

A Hub snapshot may first be downloaded in part (configs only): :func:`fetch_files` downloads
more of it later, at the same commit, so only the weight files that are read are downloaded
(``diffperception.backbones.model_files.find_weight_files``). :func:`public_base_name` is the one rule for
naming a base model without publishing a local path.

Example:
    >>> from diffperception.hub import resolve_folder
    >>> source = resolve_folder("stabilityai/stable-diffusion-2-1", allow_patterns=["unet/*"])
    >>> source.folder, source.revision          # the cached snapshot and its commit sha
"""

from __future__ import annotations

import difflib
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
    "fetch_files",
    "glob_escape",
    "is_hub_repo_id",
    "list_source_aliases",
    "public_base_name",
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
    hub_only: bool = False,
    **hub_kwargs: Unpack[HubKwargs],
) -> ModelSource:
    """The local folder of a model name: an alias's folder, a folder as is, or a Hub snapshot.

    Args:
        name: Source alias, local folder or Hub repo id (the rule of :func:`source_kind`).
        allow_patterns: Files of a Hub repo to download (all when None); others are fetched
            later by :func:`fetch_files` / :func:`find_weight_files`.
        hub_only: ``name`` must be a Hub repo id, never a folder, path or alias (a name read
            from a downloaded file: what a repository names must come from the Hub).
        **hub_kwargs: ``revision`` (recorded as is for a folder, ignored for an alias),
            ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` (:class:`HubKwargs`).

    Returns:
        The folder, the name and the revision (a Hub snapshot's commit sha).

    Raises:
        FileNotFoundError: See :func:`source_kind` and :func:`snapshot`.
        ValueError: See :func:`source_kind`; with ``hub_only``, a name that is no Hub repo id.
        TypeError: An unknown keyword.
        RuntimeError: See :func:`snapshot`.
    """
    unknown = sorted(set(hub_kwargs) - set(HubKwargs.__annotations__))
    if unknown:
        raise TypeError(f"Unknown Hub keyword(s) {unknown}; allowed: "
                        f"{sorted(HubKwargs.__annotations__)}.")
    if hub_only:
        kind = _hub_only_kind(name)
    else:
        kind = source_kind(name)
    if kind == "alias":
        return ModelSource(folder=resolve_source_alias(str(name)), repo_id=str(name), revision=None)
    if kind == "folder":
        return ModelSource(folder=Path(name).expanduser(), repo_id=os.fspath(name),
                           revision=hub_kwargs.get("revision"))
    folder = snapshot(str(name), allow_patterns=allow_patterns, **hub_kwargs)
    return ModelSource(folder=folder, repo_id=str(name), revision=folder.name)


def _hub_only_kind(name: str | os.PathLike) -> SourceKind:
    """``"repo"`` for a valid Hub repo id; a ValueError for a path, folder or alias."""
    text = name if isinstance(name, str) else None
    if text is None or _written_as_path(text) or _ALIAS_RE.fullmatch(text) or not _valid_id(text):
        raise ValueError(
            f"{name!r} is not a Hub repo id: a model downloaded from the Hub may name only a Hub "
            "repository ('namespace/name') as its base, never a local folder, path or alias. "
            "Ask its author to push it with bundle_trunk=True, or load a local copy.")
    return "repo"


def _valid_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


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
    _SNAPSHOTS[os.path.abspath(folder)] = dict(
        repo_id=repo_id, revision=Path(folder).name, cache_dir=cache_dir,
        local_files_only=local_files_only, token=token, force_download=force_download)
    return Path(folder)


# Snapshot folder -> how to download more of its files (the commit is pinned by the folder name).
_SNAPSHOTS: dict[str, dict] = {}


def fetch_files(folder: str | os.PathLike, names: Sequence[str]) -> None:
    """Downloads the named files of a Hub snapshot folder, if missing (nothing for local folders).

    Args:
        folder: A folder returned by :func:`snapshot`, or one inside it (``.../unet``).
        names: File names relative to ``folder``; names the repo does not have are skipped.

    Raises:
        FileNotFoundError / RuntimeError: As for :func:`snapshot` (offline and not cached, ...).
    """
    here = os.path.abspath(folder)
    for root, remote in _SNAPSHOTS.items():
        if here == root or here.startswith(root + os.sep):
            rel = Path(os.path.relpath(here, root)).as_posix()
            wanted = [n if rel == "." else f"{rel}/{n}" for n in names]
            missing = [w for w in wanted if not (Path(root) / w).is_file()]
            if missing:
                snapshot(remote["repo_id"], revision=remote["revision"], cache_dir=remote["cache_dir"],
                         local_files_only=remote["local_files_only"], token=remote["token"],
                         force_download=remote["force_download"],
                         allow_patterns=[glob_escape(m) for m in missing])
            return


def glob_escape(name: str) -> str:
    """``name`` as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def public_base_name(repo_id: str) -> str:
    """The base model's name as it may be published: no local path.

    A Hub repo id or a source alias is kept; a local folder becomes ``"local:<folder name>"``
    (never a Hub repo id, never a path), so a pushed config, card or export names no local path.

    Example:
        >>> public_base_name("/home/me/models/sd21")
        'local:sd21'
    """
    if repo_id.startswith("local:") or repo_id in _ALIASES or (
            isinstance(repo_id, str) and not _written_as_path(repo_id)
            and not Path(repo_id).expanduser().exists() and _valid_id(repo_id)):
        return repo_id
    if _ALIAS_RE.fullmatch(repo_id) and not _written_as_path(repo_id):
        return repo_id  # an alias registered elsewhere: a name, not a path
    return "local:" + (Path(repo_id).expanduser().resolve().name or "model")


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
