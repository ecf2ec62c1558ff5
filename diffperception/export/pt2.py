"""``torch.export`` export: an ``ExportedProgram`` of the specialised module saved as ``.pt2``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .contract import build_metadata
from .graph import prepare_export, restore_taps
from .parity import ExportResult, attach_parity, make_result, output_path, pt2_runner

__all__ = ["EXTRA_FILE", "load_pt2_metadata", "to_pt2"]

EXTRA_FILE = "diffperception.json"


def to_pt2(
    model: nn.Module,
    path: str | Path,
    *,
    size: Sequence[int] | None = None,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    include_resize: Sequence[int] | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a model with ``torch.export`` and save the program as a ``.pt2`` file.

    Load it with ``torch.export.load(path).module()``; the module takes one float32 batch and
    returns ``{tap name: tensor}``. The contract and metadata are stored as the extra file
    ``diffperception.json`` (read it with :func:`load_pt2_metadata`).

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.pt2`` file to write.
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        batch: Static batch size (without ``batch_range``).
        batch_range: ``(min, opt, max)``: the program's batch dimension is a
            ``torch.export.Dim`` with these bounds.
        latent_input: Take latents instead of images (no VAE encoder).
        include_resize: ``(H, W)`` of the images the program takes; resized to ``size`` inside.
        check: Compare the saved program with eager PyTorch (a failure raises).
        progress: Called with a line of text before slow steps.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: The parity check failed.

    Example:
        >>> to_pt2(model, "build/model.pt2", size=(512, 512), batch_range=(1, 4, 8))
        >>> feats = torch.export.load("build/model.pt2").module()(images)
    """
    path = output_path(path, ".pt2")
    started = time.perf_counter()
    prepared = prepare_export(model, size=size, batch=batch, batch_range=batch_range, latent_input=latent_input,
                              include_resize=include_resize, progress=progress)
    if progress:
        progress("exporting with torch.export")
    with torch.no_grad(), restore_taps(prepared.graph):
        program = torch.export.export(prepared.graph, (prepared.example,),
                                      dynamic_shapes=prepared.dynamic_shapes(), strict=False)
    metadata = build_metadata(prepared.special, prepared.contract, "fp32", input_size=prepared.input_size)
    extra = {EXTRA_FILE: json.dumps({"contract": prepared.contract, "metadata": metadata})}
    torch.export.save(program, str(path), extra_files=extra)
    result = make_result(path, "pt2", prepared, contract=prepared.contract, metadata=metadata,
                         precision="fp32", started=started)
    if check:
        attach_parity(result, pt2_runner(path, prepared.taps), prepared, progress=progress)
    return result


def load_pt2_metadata(path: str | Path) -> dict[str, Any]:
    """``{"contract": ..., "metadata": ...}`` stored in a ``.pt2`` file by :func:`to_pt2`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no diffperception contract.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".pt2 file not found: {path}")
    extra = {EXTRA_FILE: ""}
    torch.export.load(str(path), extra_files=extra)
    if not extra[EXTRA_FILE]:
        raise ValueError(f"{path} has no {EXTRA_FILE}: it was not exported by diffperception")
    return json.loads(extra[EXTRA_FILE])
