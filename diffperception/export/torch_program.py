"""What the TorchScript and torch.export exporters share: a PyTorch program file with its metadata.

Both save the program with the extra file ``diffperception.json`` holding the
``diffperception.*`` metadata entries (the contract among them), read it back the same way,
and run the loaded module (one float32 batch in, ``{output key: tensor}`` out) for the
parity check. A subclass says how to save and load its kind of program.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..deploy.contract import CONTRACT_KEY
from .contract import build_metadata
from .graph import PreparedExport, Runner
from .registry import Exporter

__all__ = ["EXTRA_FILE", "TorchProgramExporter"]

EXTRA_FILE = "diffperception.json"


class TorchProgramExporter(Exporter):
    """A PyTorch program file (fp32) carrying its metadata as the extra file :data:`EXTRA_FILE`."""

    kind: ClassVar[str] = "PyTorch program"

    def save(self, prepared: PreparedExport, path: Path, extra_files: dict[str, str],
             progress: Callable[[str], None]) -> None:
        """Build the program from ``prepared.graph`` and save it with ``extra_files``."""
        raise NotImplementedError

    def load(self, path: Path, extra_files: dict[str, str] | None = None) -> nn.Module:
        """Load the program as a callable module (filling ``extra_files`` in place)."""
        raise NotImplementedError

    def write(self, prepared: PreparedExport, path: Path, *, precision: str,
              progress: Callable[[str], None]) -> tuple[list[Path], dict[str, str]]:
        """Save the program with its metadata; returns ``([path], metadata)``."""
        metadata = build_metadata(prepared.special, prepared.contract, precision)
        self.save(prepared, path, {EXTRA_FILE: json.dumps({"metadata": metadata})}, progress)
        return [path], metadata

    def runner(self, path: Path) -> Runner:
        """Runs the saved program under ``torch.no_grad()``."""
        module = self.load(path)

        def run(inputs: torch.Tensor) -> dict[str, Any]:
            with torch.no_grad():
                return dict(module(inputs))

        return run

    def load_metadata(self, path: Path) -> dict[str, str]:
        """The metadata entries stored in the program's extra file.

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file has no diffperception extra file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"The {self.kind} file {path} was not found.")
        extra = {EXTRA_FILE: ""}
        self.load(path, extra)
        if not extra[EXTRA_FILE]:
            raise ValueError(f"The file {path} has no {EXTRA_FILE}: it was not exported by diffperception.")
        return dict(json.loads(extra[EXTRA_FILE])["metadata"])


def stored_contract(exporter: TorchProgramExporter, path: str | Path) -> dict[str, Any]:
    """``{"contract": ..., "metadata": ...}`` stored in a program file by ``exporter``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no diffperception contract.
    """
    metadata = exporter.load_metadata(Path(path))
    return {"contract": json.loads(metadata[CONTRACT_KEY]), "metadata": metadata}
