"""Top-level helpers that work on a repo id, a local folder or a loaded model."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

__all__ = ["list_taps"]


def list_taps(model: str | os.PathLike | nn.Module, *, include_kinds: bool = False,
              revision: str | None = None, **hub_kwargs: Any) -> list[str]:
    """Every valid tap name of a diffusers model.

    Reads the network's ``config.json`` only: from the Hub, configs are downloaded, never
    weights; the network is built on the meta device.

    Args:
        model: Hub repo id, local diffusers folder, a diffusers network, a ``DiffusionBackbone``
            or a task model (whose kept trunk is listed).
        include_kinds: Also list ``:in`` variants and ``:attn`` taps of attention modules.
        revision: Hub revision (repo ids only).
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token``.

    Returns:
        The tap names, in module order.

    Raises:
        FileNotFoundError: No such folder or repo, or not a diffusers model.
        ValueError: A folder or config that fails the checks of
            ``diffperception.backbones.loading.check_diffusers_folder`` (files outside the
            folder, configs that are not JSON objects, impossible sizes).

    Example:
        >>> list_taps("stabilityai/stable-diffusion-2-1")[:3]
        ['conv_in', 'time_proj', 'time_embedding']
    """
    from .features.taps import list_taps as _list

    if isinstance(model, nn.Module):
        backbone = getattr(model, "backbone", model)
        if callable(getattr(backbone, "list_taps", None)):
            return backbone.list_taps(include_kinds=include_kinds)
        return _list(backbone, include_kinds=include_kinds)  # a bare diffusers network
    from .backbones.loading import resolve_source
    from .features.backbone import folder_taps

    source = resolve_source(model, revision=revision, **hub_kwargs)
    return folder_taps(source.folder, include_kinds=include_kinds)
