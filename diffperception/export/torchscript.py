"""TorchScript export: ``torch.jit.trace`` + ``torch.jit.freeze`` of the specialised module.

Upstream PyTorch now recommends ``torch.export`` (see :mod:`diffperception.export.pt2`) over
TorchScript, which is in maintenance mode; TorchScript stays here because a frozen trace runs
from C++ (``torch::jit::load``) and was the fastest PyTorch runtime in MEASURED.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .contract import build_metadata
from .graph import prepare_export
from .parity import ExportResult, attach_parity, make_result, output_path, torchscript_runner

__all__ = ["EXTRA_FILE", "load_torchscript_metadata", "to_torchscript"]

EXTRA_FILE = "diffperception.json"


def to_torchscript(
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
    """Export a model as a frozen TorchScript trace.

    Upstream PyTorch recommends ``torch.export`` (:func:`~diffperception.export.to_pt2`) for
    new deployments; TorchScript is in maintenance mode.

    The file holds the contract and metadata as the extra file ``diffperception.json``
    (read it with :func:`load_torchscript_metadata`). The loaded module takes one float32
    batch and returns ``{tap name: tensor}``.

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.pt`` file to write.
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        batch: Batch size of the trace.
        batch_range: ``(min, opt, max)`` the contract declares; the trace is checked at
            ``min`` and ``max``.
        latent_input: Take latents instead of images (no VAE encoder).
        include_resize: ``(H, W)`` of the images the module takes; resized to ``size`` inside.
        check: Compare the saved file with eager PyTorch (a failure raises).
        progress: Called with a line of text before slow steps.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: The parity check failed.

    Example:
        >>> result = to_torchscript(model, "build/model.pt", size=(512, 512))
        >>> feats = torch.jit.load("build/model.pt")(images)  # {"up_ft.1": ...}
    """
    path = output_path(path, ".pt")
    started = time.perf_counter()
    prepared = prepare_export(model, size=size, batch=batch, batch_range=batch_range, latent_input=latent_input,
                              include_resize=include_resize, progress=progress)
    if progress:
        progress("tracing with torch.jit.trace and freezing")
    with torch.no_grad():
        traced = torch.jit.trace(prepared.graph, (prepared.example,), strict=False, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
    metadata = build_metadata(prepared.special, prepared.contract, "fp32", input_size=prepared.input_size)
    extra = {EXTRA_FILE: json.dumps({"contract": prepared.contract, "metadata": metadata})}
    torch.jit.save(frozen, str(path), _extra_files=extra)
    result = make_result(path, "torchscript", prepared, contract=prepared.contract, metadata=metadata,
                         precision="fp32", started=started)
    if check:
        attach_parity(result, torchscript_runner(path, prepared.taps), prepared, progress=progress)
    return result


def load_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """``{"contract": ..., "metadata": ...}`` stored in a TorchScript file by :func:`to_torchscript`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no diffperception contract.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript file not found: {path}")
    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[EXTRA_FILE]:
        raise ValueError(f"{path} has no {EXTRA_FILE}: it was not exported by diffperception")
    return json.loads(extra[EXTRA_FILE])
