"""Presets: complete task model configs shipped in ``hub_configs/`` (the file stem is the name).

A preset is a ``config.json`` minus trained weights. The files are installed with the package as
``diffperception.hub_configs`` (package data), so ``list_presets()`` works after a plain
``pip install .``; from a source checkout they are read from ``hub_configs/`` next to the package.

Example:
    >>> list_presets()
    ['dift-sd21', 'sd15-features', 'sdxl-features']
    >>> config = preset_config("dift-sd21", repo_id="path/to/local/sd21", size=(512, 512))
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..config import TaskConfig

__all__ = ["list_presets", "load_preset", "preset_config", "presets_folder"]


def presets_folder():
    """The folder of the preset JSON files (a ``Traversable``: installed package data or source)."""
    from importlib import resources

    try:
        folder = resources.files("diffperception.hub_configs")
        if any(p.name.endswith(".json") for p in folder.iterdir()):
            return folder
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    return Path(__file__).resolve().parents[2] / "hub_configs"  # a source checkout


def _files() -> dict[str, Any]:
    folder = presets_folder()
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {p.name[: -len(".json")]: p for p in entries if p.name.endswith(".json")}


def list_presets(filter: str = "") -> list[str]:  # noqa: A002 - timm's name
    """Names of the shipped presets, sorted; ``filter`` is an fnmatch pattern (``"*sdxl*"``)."""
    names = sorted(_files())
    return [n for n in names if fnmatch.fnmatchcase(n, filter)] if filter else names


def load_preset(name: str) -> dict[str, Any]:
    """The preset's config dict, validated.

    Raises:
        ValueError: Unknown preset (the message suggests close names) or an invalid file.
    """
    files = _files()
    if name not in files:
        close = difflib.get_close_matches(str(name), list(files), n=3, cutoff=0.4)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"Unknown preset {name!r}.{hint} Available presets: {sorted(files)}.")
    try:
        data = json.loads(files[name].read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"Preset file {name}.json is not valid JSON: {err}.") from err
    try:
        TaskConfig.from_dict(data)
    except ValueError as err:
        raise ValueError(f"Preset {name!r} is invalid: {err}") from err
    return data


def preset_config(
    name: str,
    *,
    repo_id: str | os.PathLike | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    variant: str | None = None,
    taps: Sequence[str] | None = None,
    timesteps: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
    labels: Sequence[str] | None = None,
) -> TaskConfig:
    """A preset's ``TaskConfig`` with overrides.

    Args:
        name: Preset name (``list_presets()``).
        repo_id: Another base model (Hub repo id or local folder) of the same family; the
            preset's revision is then dropped unless ``revision`` is given.
        revision: Base model revision (branch, tag or commit sha).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        variant: Weight file variant of the base model (``"fp16"``).
        taps: Other tap names.
        timesteps: Other timesteps.
        size: ``(H, W)`` images are resized to.
        labels: Class names (classification presets whose labels are left to the user, such
            as the ADM-256 ones).

    Raises:
        ValueError: Unknown preset, or an override that makes the config invalid.
    """
    data = copy.deepcopy(load_preset(name))
    backbone = data["backbone"]
    if repo_id is not None:
        backbone["repo_id"], backbone["revision"] = str(repo_id), None
    for key, value in (("revision", revision), ("dtype", dtype), ("variant", variant)):
        if value is not None:
            backbone[key] = value
    if taps is not None:
        data["features"]["taps"] = list(taps)
    if timesteps is not None:
        data["features"]["timesteps"] = [int(t) for t in timesteps]
    if size is not None:
        data.setdefault("preprocess", {})["size"] = [int(s) for s in size]
    if labels is not None:
        data["labels"] = list(labels)
    return TaskConfig.from_dict(data)
