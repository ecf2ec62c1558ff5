"""TorchScript export: ``torch.jit.trace`` + ``torch.jit.freeze`` of the specialised module.

Upstream PyTorch now recommends ``torch.export`` (see :mod:`diffperception.export.pt2`) over
TorchScript, which is in maintenance mode; TorchScript stays here because a frozen trace runs
from C++ (``torch::jit::load``) and was the fastest PyTorch runtime in MEASURED.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import PreparedExport
from .options import with_export_options
from .parity import ExportResult
from .registry import export, register_exporter
from .torch_program import TorchProgramExporter, stored_contract

__all__ = ["TorchScriptExporter", "load_torchscript_metadata", "to_torchscript"]


@register_exporter("torchscript", suffix=".pt", precisions=("fp32", "bf16"))
class TorchScriptExporter(TorchProgramExporter):
    """A frozen ``torch.jit.trace`` (``.pt``); the batch range is checked at both ends."""

    kind = "TorchScript"

    def save(self, prepared: PreparedExport, path: Path, extra_files: dict[str, str],
             progress: Callable[[str], None]) -> None:
        progress("tracing with torch.jit.trace and freezing")
        with torch.no_grad():
            traced = torch.jit.trace(prepared.graph, (prepared.example,), strict=False, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, str(path), _extra_files=extra_files)

    def load(self, path: Path, extra_files: dict[str, str] | None = None) -> nn.Module:
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


@with_export_options()
def to_torchscript(model: nn.Module, path: str | Path, **options: Any) -> ExportResult:
    """Export a model as a frozen TorchScript trace (``export(model, "torchscript", path)``).

    Upstream PyTorch recommends ``torch.export`` (:func:`~diffperception.export.to_pt2`) for
    new deployments; TorchScript is in maintenance mode. The file holds the metadata as the
    extra file ``diffperception.json`` (read it with :func:`load_torchscript_metadata`). The
    loaded module takes one float32 batch and returns ``{output key: tensor}``.

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.pt`` file to write.
        **options: :class:`~diffperception.export.options.ExportOptions` fields; the trace
            has the batch ``batch`` (a ``batch_range`` is declared and checked at both ends).

    Returns:
        The :class:`~diffperception.export.parity.ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: The parity check failed.

    Example:
        >>> result = to_torchscript(model, "build/model.pt", size=(512, 512))
        >>> feats = torch.jit.load("build/model.pt")(images)  # {"up_ft.1": ...}
    """
    return export(model, "torchscript", path, **options)


def load_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """``{"contract": ..., "metadata": ...}`` stored in a TorchScript file by :func:`to_torchscript`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no diffperception contract.
    """
    return stored_contract(TorchScriptExporter(), path)
