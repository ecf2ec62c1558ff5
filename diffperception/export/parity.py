"""Parity of an exported artifact with eager PyTorch, and the result every exporter returns.

The export flow runs each artifact (TorchScript, ``.pt2``, ONNX Runtime on the CPU, a TensorRT
engine) with its exporter's ``runner`` on seeded inputs next to the reference (the eager
specialised module; for an engine, the fp32 ONNX file it was built from) and reports, per output:

* ``max_abs``: the largest absolute difference;
* ``max_rel``: ``max_abs`` divided by the reference output's largest magnitude, so one
  tolerance serves outputs of any scale (a per-element relative error explodes where the
  reference crosses zero);
* ``tolerance``: the bound on ``max_rel`` for the artifact's precision (:data:`TOLERANCES`).

An output over its tolerance (or with a wrong shape, or NaN) makes the export fail with a
``RuntimeError``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.contract import CONTRACT_KEY
from .graph import PreparedExport, Runner, example_input

__all__ = ["ExportResult", "TOLERANCES", "attach_parity", "check_parity", "compare_outputs", "files_size",
           "format_summary", "human_size", "make_result", "output_path"]

# Bounds on max_rel (max-abs error / the reference's largest magnitude) per artifact precision.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
_TINY = 1e-12


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        path: The artifact (``.pt``, ``.pt2``, ``.onnx`` or ``.engine``).
        format: The exporter's registered name (``"torchscript"``, ``"pt2"``, ``"onnx"``, ``"tensorrt"``).
        size_bytes: Total size of ``files``.
        export_seconds: Wall time of specialising, exporting and saving (parity check excluded).
        parity: Output key -> ``{"max_abs", "max_rel", "tolerance"}`` (empty when not checked).
        contract: The contract's JSON form (``diffperception.deploy.contract.Contract.to_dict``).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        files: The artifact and the files it needs (ONNX external data, engine sidecar).
        parity_seconds: Wall time of the parity check.
        metadata: The ``diffperception.*`` metadata entries stored with the artifact.
    """

    path: Path
    format: str
    size_bytes: int
    export_seconds: float
    parity: dict[str, dict]
    contract: dict
    precision: str = "fp32"
    files: list[Path] = field(default_factory=list)
    parity_seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """A human-readable table (see :func:`format_summary`)."""
        return format_summary(self)


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def compare_outputs(actual: Mapping[str, Any], expected: Mapping[str, torch.Tensor],
                    tolerance: float) -> dict[str, dict]:
    """Per-output errors of ``actual`` against ``expected`` (both keyed by output key).

    A missing output or a shape mismatch is reported with infinite errors; NaN errors stay NaN.
    """
    report = {}
    for key, ref in expected.items():
        ref_np = _as_numpy(ref).astype(np.float64)
        entry: dict[str, Any] = {"max_abs": math.inf, "max_rel": math.inf, "tolerance": tolerance}
        if key not in actual:
            entry["problem"] = "missing from the artifact's outputs"
        else:
            got = _as_numpy(actual[key]).astype(np.float64)
            if got.shape != ref_np.shape:
                entry["problem"] = f"shape {got.shape} != eager {ref_np.shape}"
            else:
                max_abs = float(np.max(np.abs(got - ref_np))) if got.size else 0.0
                scale = float(np.max(np.abs(ref_np))) if ref_np.size else 0.0
                entry.update(max_abs=max_abs, max_rel=max_abs / max(scale, _TINY))
        report[key] = entry
    return report


def _passed(entry: Mapping[str, Any]) -> bool:
    return "problem" not in entry and bool(entry["max_rel"] <= entry["tolerance"])


def _severity(entry: Mapping[str, Any]) -> tuple[bool, bool, float]:
    rel = entry["max_rel"]
    return "problem" in entry, math.isnan(rel), 0.0 if math.isnan(rel) else rel


def _merge(total: dict[str, dict], report: dict[str, dict]) -> None:
    """Keep the worst entry per output over the checked batches."""
    for key, entry in report.items():
        if key not in total or _severity(entry) > _severity(total[key]):
            total[key] = entry


def check_parity(run: Runner, prepared: PreparedExport, *, precision: str, artifact: str | Path, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run the artifact next to its reference on seeded inputs and compare every output.

    Args:
        run: Runs the artifact on a float32 input batch; returns output key -> array / tensor.
        prepared: The export (its contract sets the input shape and the batches,
            :meth:`PreparedExport.expected` the reference: eager PyTorch, or an fp32 ONNX file).
        precision: Artifact precision; picks the tolerance in :data:`TOLERANCES`.
        artifact: The artifact path (for messages).
        seed: Seed of the inputs (batch ``b`` uses ``seed + b``).
        progress: Called with a line of text per checked batch.

    Returns:
        Output key -> ``{"max_abs", "max_rel", "tolerance"}``, the worst over the checked batches.

    Raises:
        RuntimeError: An output is over its tolerance, has the wrong shape, is missing or NaN.
    """
    tolerance = TOLERANCES[precision]
    total: dict[str, dict] = {}
    for batch in prepared.check_batches():
        if progress:
            progress(f"parity check against {'eager PyTorch' if prepared.reference is None else 'the reference'}, "
                     f"batch {batch}")
        inputs = example_input(prepared.contract, batch, seed=seed + batch)
        expected = {key: torch.as_tensor(_as_numpy(v)) for key, v in prepared.expected(inputs).items()}
        _merge(total, compare_outputs(run(inputs), expected, tolerance))
    failing = {key: entry for key, entry in total.items() if not _passed(entry)}
    if failing:
        lines = [f"{key}: " + entry.get("problem", f"max_abs={entry['max_abs']:.3g} max_rel={entry['max_rel']:.3g}")
                 for key, entry in failing.items()]
        raise RuntimeError(
            f"The parity check failed for {artifact} ({precision}, tolerance {tolerance:g} on max-abs error / "
            f"largest reference magnitude): " + "; ".join(lines) + ". The artifact does not compute what the "
            "eager model computes: do not deploy it. Try fp32, another opset, or report the model config."
        )
    return {key: {k: entry[k] for k in ("max_abs", "max_rel", "tolerance")} for key, entry in total.items()}


def attach_parity(result: ExportResult, run: Runner, prepared: PreparedExport, **kwargs: Any) -> ExportResult:
    """Run :func:`check_parity` on ``result``'s artifact; store ``parity`` and ``parity_seconds``."""
    start = time.perf_counter()
    result.parity = check_parity(run, prepared, precision=result.precision, artifact=result.path, **kwargs)
    result.parity_seconds = time.perf_counter() - start
    return result


def files_size(files: list[Path]) -> int:
    """Total size in bytes of the files that exist."""
    return sum(path.stat().st_size for path in files if path.is_file())


def make_result(path: Path, fmt: str, *, files: list[Path], metadata: dict[str, str], precision: str,
                started: float) -> ExportResult:
    """The :class:`ExportResult` of a saved artifact (its contract is read from ``metadata``).

    Args:
        path: The artifact.
        fmt: The exporter's name.
        files: The artifact and the files it needs.
        metadata: The ``diffperception.*`` entries stored with it.
        precision: Its precision.
        started: ``time.perf_counter()`` at the start of the export.
    """
    files = files or [path]
    return ExportResult(path=path, format=fmt, size_bytes=files_size(files),
                        export_seconds=time.perf_counter() - started, parity={},
                        contract=json.loads(metadata[CONTRACT_KEY]), precision=precision, files=files,
                        metadata=metadata)


def output_path(path: str | Path, suffix: str) -> Path:
    """Check an artifact path (a file path, not a folder) and create its folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"The path {path} is a folder; pass the artifact's file path, e.g. "
                         f"{path / ('model' + suffix)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- summary --------------------------------------------------------------------------------


def human_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_summary(result: ExportResult) -> str:
    """The final summary: artifact files and sizes, export time, parity errors per output."""
    lines = [f"format:      {result.format} ({result.precision})"]
    for index, path in enumerate(result.files or [result.path]):
        size = path.stat().st_size if path.is_file() else 0
        lines.append(f"{'files:' if index == 0 else '':<12} {path}  ({human_size(size)})")
    lines.append(f"total size:  {human_size(result.size_bytes)}")
    lines.append(f"export time: {result.export_seconds:.1f} s (parity check {result.parity_seconds:.1f} s)")
    if not result.parity:
        lines.append("parity:      not checked")
        return "\n".join(lines)
    width = max(len(key) for key in result.parity)
    lines.append(f"parity:      {'output':<{width}}  {'max_abs':>10}  {'max_rel':>10}  {'tolerance':>9}")
    for key, entry in result.parity.items():
        lines.append(f"{'':<12} {key:<{width}}  {entry['max_abs']:>10.3g}  {entry['max_rel']:>10.3g}  "
                     f"{entry['tolerance']:>9.3g}")
    return "\n".join(lines)
