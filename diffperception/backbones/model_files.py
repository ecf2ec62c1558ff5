"""What a model may read: files inside its own folder, bounded JSON configs, safetensors weights.

Everything a model reads comes from inside its own folder or Hub repository. :func:`check_inside`
resolves a path (symlinks too) and refuses one that leaves the model's folder; a huggingface_hub
snapshot's files are links into the repo's own ``blobs/`` cache, and those count as inside.
:func:`read_json_object` is the one reader of JSON configs: bounded in size, and a config that is
not a JSON object (a string diffusers would take for a Hub repo to fetch, a list) is an error
naming the file. :func:`find_weight_files` is the one finder of single or sharded safetensors
weights: an index may name only files next to it, and in a Hub snapshot only the files it names
are downloaded (never another variant's).

It imports nothing of diffperception but :mod:`diffperception.hub`.

Example:
    >>> from diffperception.backbones.model_files import find_weight_files
    >>> find_weight_files("sd21/unet", "diffusion_pytorch_model", root="sd21")
    [PosixPath('sd21/unet/diffusion_pytorch_model.safetensors')]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..hub import fetch_files

__all__ = ["MAX_CONFIG_BYTES", "check_inside", "check_links_inside", "find_weight_files",
           "read_json_object"]

#: Largest JSON config read (bytes): a config is kilobytes; a bigger file is refused unread.
MAX_CONFIG_BYTES = 16 * 2**20


def _allowed_roots(root: Path) -> list[Path]:
    """``root`` resolved, plus the repo's ``blobs/`` when ``root`` is a huggingface_hub snapshot."""
    real = root.resolve()
    roots = [real]
    for folder in (root, *root.parents):
        blobs = folder.parent.parent / "blobs"
        if folder.parent.name == "snapshots" and blobs.is_dir() and not blobs.is_symlink():
            roots.append(blobs.resolve())
            break
    return roots


def check_inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` resolved (symlinks too), checked to lie inside the model folder ``root``.

    A huggingface_hub snapshot's files are links into the repo's ``blobs/`` cache: those count as
    inside.

    Args:
        path: A file (or folder) the package is about to read.
        root: The model's own folder (a local folder, or a Hub snapshot).

    Returns:
        The resolved path.

    Raises:
        ValueError: The path (or a link on the way) leads outside ``root``.
    """
    real = Path(path).resolve()
    roots = _allowed_roots(Path(root))
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise ValueError(
            f"{path} leads to {real}, outside the model folder {roots[0]}: diffperception reads "
            "only files inside a model's own folder or repository. Replace the link by a copy of "
            "the file, or load the folder that holds it.")
    return real


def check_links_inside(root: str | os.PathLike, paths: Sequence[str | os.PathLike]) -> None:
    """Checks files and whole folders (every entry, links included) to lie inside ``root``.

    Args:
        root: The model folder.
        paths: Files or folders that may be read (paths that do not exist are skipped).

    Raises:
        ValueError: A file, folder or link that leads outside ``root`` (see :func:`check_inside`).
    """
    for top in map(Path, paths):
        if not (top.is_symlink() or top.exists()):
            continue
        check_inside(top, root)
        if top.is_dir():
            for folder, dirs, files in os.walk(top):  # never follows links: each one is checked
                for name in dirs + files:
                    check_inside(Path(folder) / name, root)


def read_json_object(path: str | os.PathLike, *, fix: str = "download or save it again") -> dict:
    """Reads a JSON config that must be an object, with errors naming the file and the fix.

    Args:
        path: The file.
        fix: What the user should do, ending the message.

    Returns:
        The object.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Larger than ``MAX_CONFIG_BYTES``, not UTF-8 JSON (or nested too deep), or not
            a JSON object (a string, a list, a number).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {fix}.")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than a config can be ({MAX_CONFIG_BYTES}); "
                         f"it is not a config file: {fix}.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({type(err).__name__}: {err}); {fix}.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got a {type(data).__name__} "
                         f"({json.dumps(data)[:60]}); {fix}.")
    return data


def find_weight_files(folder: str | os.PathLike, stem: str, *, variant: str | None = None,
                      hint: str | None = None, root: str | os.PathLike | None = None) -> list[Path]:
    """The safetensors files of one model: a single file, or every shard an index names.

    Looks for ``{stem}[.{variant}].safetensors``, then for a shard index: diffusers' and
    transformers' ``{stem}.safetensors.index[.{variant}].json`` or
    ``{stem}.{variant}.safetensors.index.json``. Shards must sit next to their index, and every
    file must resolve inside ``root``. In a Hub snapshot only these files are downloaded (never
    another variant's).

    Args:
        folder: The folder (a diffusers component such as ``unet/``, or a saved task model).
        stem: ``"diffusion_pytorch_model"`` (diffusers components) or ``"model"`` (task models).
        variant: A weight variant such as ``"fp16"``; no fall-back to the plain files.
        hint: How to get safetensors weights, appended to the "not found" message.
        root: The model folder the files must lie in (default: ``folder``).

    Returns:
        The files to read, shards sorted by name.

    Raises:
        FileNotFoundError: No such weights (the message lists what the folder holds), or an index
            naming a shard that is missing.
        ValueError: An index that is not a JSON object with a ``weight_map`` of file names, one
            naming files outside its folder, or a weight file that is a link leading outside
            ``root``.

    Example:
        >>> find_weight_files("sd21/unet", "diffusion_pytorch_model", variant="fp16")
        [PosixPath('sd21/unet/diffusion_pytorch_model.fp16.safetensors')]
    """
    folder = Path(folder)
    root = Path(root) if root is not None else folder
    single = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    indexes = ([f"{stem}.safetensors.index.{variant}.json", f"{single}.index.json"] if variant
               else [f"{single}.index.json"])
    fetch_files(folder, [single, *indexes])
    if (folder / single).is_file():
        check_inside(folder / single, root)
        return [folder / single]
    for index in indexes:
        if (folder / index).is_file():
            return _shards(folder / index, root)
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing (no folder)"
    plain = f" It has {stem}.safetensors: pass variant=None." if (
        variant and (folder / f"{stem}.safetensors").is_file()) else ""
    fix = hint or ("convert .bin weights with diffusers' save_pretrained(..., "
                   "safe_serialization=True).")
    raise FileNotFoundError(
        f"No weights {single} (or a sharded {indexes[0]}) in {folder}; found {found}.{plain} "
        f"diffperception loads safetensors only: {fix}")


def _shards(index: Path, root: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, checked to be file names next to it."""
    check_inside(index, root)
    fix = "download or save the weights again"
    weight_map = read_json_object(index, fix=fix).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} is not a valid shard index: it needs a 'weight_map' object "
                         f"(tensor name -> shard file), got {type(weight_map).__name__}; {fix}.")
    shards = sorted({s for s in weight_map.values() if isinstance(s, str)})
    bad = [s for s in weight_map.values() if not isinstance(s, str)]
    outside = [s for s in shards if Path(s).name != s or s in ("", ".", "..") or "\\" in s]
    if bad or outside:
        raise ValueError(f"{index} names shard(s) {(outside + bad)[:5]} that are not file names "
                         "next to it (a path outside its folder, or not text): only file names "
                         f"in {index.parent} are read; {fix}.")
    fetch_files(index.parent, shards)
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{index} names shard(s) {missing} that are not in {index.parent}; "
                                f"{fix}.")
    for shard in shards:
        check_inside(index.parent / shard, root)
    return [index.parent / s for s in shards]
