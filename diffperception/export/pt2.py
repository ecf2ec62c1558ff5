"""``torch.export`` export: an ``ExportedProgram`` of the specialised module saved as ``.pt2``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph import PreparedExport, quiet_capture_warnings
from .options import with_export_options
from .parity import ExportResult
from .registry import export, register_exporter
from .torch_program import TorchProgramExporter, stored_contract

__all__ = ["Pt2Exporter", "load_pt2_metadata", "to_pt2"]


@register_exporter("pt2", suffix=".pt2", precisions=("fp32", "bf16"))
class Pt2Exporter(TorchProgramExporter):
    """A ``torch.export`` program (``.pt2``); a batch range becomes a ``torch.export.Dim``."""

    kind = ".pt2"

    def save(self, prepared: PreparedExport, path: Path, extra_files: dict[str, str],
             progress: Callable[[str], None]) -> None:
        progress("exporting with torch.export")
        with torch.no_grad(), quiet_capture_warnings():
            program = torch.export.export(prepared.graph, (prepared.example,),
                                          dynamic_shapes=prepared.dynamic_shapes(), strict=False)
        torch.export.save(program, str(path), extra_files=extra_files)

    def load(self, path: Path, extra_files: dict[str, str] | None = None) -> nn.Module:
        return torch.export.load(str(path), extra_files=extra_files).module()


@with_export_options()
def to_pt2(model: nn.Module, path: str | Path, **options: Any) -> ExportResult:
    """Export a model with ``torch.export`` and save the program as ``.pt2`` (``export(model, "pt2", path)``).

    Load it with ``torch.export.load(path).module()``; the module takes one float32 batch and
    returns ``{output key: tensor}``. The metadata is stored as the extra file
    ``diffperception.json`` (read it with :func:`load_pt2_metadata`).

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.pt2`` file to write.
        **options: :class:`~diffperception.export.options.ExportOptions` fields; a
            ``batch_range`` makes the program's batch dimension a ``torch.export.Dim``.

    Returns:
        The :class:`~diffperception.export.parity.ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: The parity check failed.

    Example:
        >>> to_pt2(model, "build/model.pt2", size=(512, 512), batch_range=(1, 4, 8))
        >>> feats = torch.export.load("build/model.pt2").module()(images)
    """
    return export(model, "pt2", path, **options)


def load_pt2_metadata(path: str | Path) -> dict[str, Any]:
    """``{"contract": ..., "metadata": ...}`` stored in a ``.pt2`` file by :func:`to_pt2`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no diffperception contract.
    """
    return stored_contract(Pt2Exporter(), path)
