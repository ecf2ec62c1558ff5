"""Parity of an exported artifact with eager PyTorch, and the result every exporter returns.

Each exporter runs its artifact (TorchScript, ``.pt2``, ONNX Runtime on the CPU, a TensorRT
engine) on seeded inputs next to the eager specialised module and reports, per output:

* ``max_abs``: the largest absolute difference;
* ``max_rel``: ``max_abs`` divided by the reference output's largest magnitude, so one
  tolerance serves outputs of any scale (a per-element relative error explodes where the
  reference crosses zero);
* ``tolerance``: the bound on ``max_rel`` for the artifact's precision (:data:`TOLERANCES`).

An output over its tolerance (or with a wrong shape, or NaN) makes the export fail with a
``RuntimeError``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .graph import PreparedExport, eager_outputs, example_input

__all__ = ["ExportResult", "TOLERANCES", "attach_parity", "check_parity", "compare_outputs", "files_size",
           "format_summary", "make_result", "onnx_runner", "output_path", "pt2_runner", "tensorrt_runner", "torchscript_runner"]

# Bounds on max_rel (max-abs error / the reference's largest magnitude) per artifact precision.
TOLERANCES = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
_TINY = 1e-12

Runner = Callable[[torch.Tensor], Mapping[str, Any]]


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        path: The artifact (``.pt``, ``.pt2``, ``.onnx`` or ``.engine``).
        format: ``"torchscript"``, ``"pt2"``, ``"onnx"`` or ``"tensorrt"``.
        size_bytes: Total size of ``files``.
        export_seconds: Wall time of specialising, exporting and saving (parity check excluded).
        parity: Tap name -> ``{"max_abs", "max_rel", "tolerance"}`` (empty when not checked).
        contract: The input / output contract (see ``diffperception.export.contract``).
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
    """Per-output errors of ``actual`` against ``expected`` (both keyed by tap name).

    A missing output or a shape mismatch is reported with infinite errors; NaN errors stay NaN.
    """
    report = {}
    for tap, ref in expected.items():
        ref_np = _as_numpy(ref).astype(np.float64)
        entry: dict[str, Any] = {"max_abs": math.inf, "max_rel": math.inf, "tolerance": tolerance}
        if tap not in actual:
            entry["problem"] = "missing from the artifact's outputs"
        else:
            got = _as_numpy(actual[tap]).astype(np.float64)
            if got.shape != ref_np.shape:
                entry["problem"] = f"shape {got.shape} != eager {ref_np.shape}"
            else:
                max_abs = float(np.max(np.abs(got - ref_np))) if got.size else 0.0
                scale = float(np.max(np.abs(ref_np))) if ref_np.size else 0.0
                entry.update(max_abs=max_abs, max_rel=max_abs / max(scale, _TINY))
        report[tap] = entry
    return report


def _passed(entry: Mapping[str, Any]) -> bool:
    return "problem" not in entry and bool(entry["max_rel"] <= entry["tolerance"])


def _severity(entry: Mapping[str, Any]) -> tuple[bool, bool, float]:
    rel = entry["max_rel"]
    return "problem" in entry, math.isnan(rel), 0.0 if math.isnan(rel) else rel


def _merge(total: dict[str, dict], report: dict[str, dict]) -> None:
    """Keep the worst entry per output over the checked batches."""
    for tap, entry in report.items():
        if tap not in total or _severity(entry) > _severity(total[tap]):
            total[tap] = entry


def check_parity(run: Runner, prepared: PreparedExport, *, precision: str, artifact: str | Path,
                 reference: Runner | None = None, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run the artifact next to eager PyTorch on seeded inputs and compare every output.

    Args:
        run: Runs the artifact on a float32 input batch; returns tap name -> array / tensor.
        prepared: The export (its contract sets the input shape, its graph the reference).
        precision: Artifact precision; picks the tolerance in :data:`TOLERANCES`.
        artifact: The artifact path (for messages).
        reference: Another reference than the eager graph (e.g. an fp32 ONNX file).
        seed: Seed of the inputs (batch ``b`` uses ``seed + b``).
        progress: Called with a line of text per checked batch.

    Returns:
        Tap name -> ``{"max_abs", "max_rel", "tolerance"}``, the worst over the checked batches.

    Raises:
        RuntimeError: An output is over its tolerance, has the wrong shape, is missing or NaN.
    """
    tolerance = TOLERANCES[precision]
    total: dict[str, dict] = {}
    for batch in prepared.check_batches():
        if progress:
            progress(f"parity check against eager PyTorch, batch {batch}")
        inputs = example_input(prepared.contract, batch, seed=seed + batch)
        expected = reference(inputs) if reference is not None else eager_outputs(prepared, inputs)
        expected = {tap: torch.as_tensor(_as_numpy(v)) for tap, v in expected.items()}
        _merge(total, compare_outputs(run(inputs), expected, tolerance))
    failing = {tap: entry for tap, entry in total.items() if not _passed(entry)}
    if failing:
        lines = [f"{tap}: " + entry.get("problem", f"max_abs={entry['max_abs']:.3g} max_rel={entry['max_rel']:.3g}")
                 for tap, entry in failing.items()]
        raise RuntimeError(
            f"parity check failed for {artifact} ({precision}, tolerance {tolerance:g} on max-abs error / "
            f"largest reference magnitude): " + "; ".join(lines) + ". The artifact does not compute what the "
            "eager model computes: do not deploy it. Try fp32, another opset, or report the model config."
        )
    return {tap: {k: entry[k] for k in ("max_abs", "max_rel", "tolerance")} for tap, entry in total.items()}


def attach_parity(result: ExportResult, run: Runner, prepared: PreparedExport, **kwargs: Any) -> ExportResult:
    """Run :func:`check_parity` on ``result``'s artifact; store ``parity`` and ``parity_seconds``."""
    start = time.perf_counter()
    result.parity = check_parity(run, prepared, precision=result.precision, artifact=result.path, **kwargs)
    result.parity_seconds = time.perf_counter() - start
    return result


def files_size(files: list[Path]) -> int:
    """Total size in bytes of the files that exist."""
    return sum(path.stat().st_size for path in files if path.is_file())


def make_result(path: Path, fmt: str, prepared: PreparedExport, *, contract: dict, metadata: dict[str, str],
                precision: str, started: float, files: list[Path] | None = None) -> ExportResult:
    """The :class:`ExportResult` of a saved artifact (``started``: ``time.perf_counter()`` at the start)."""
    files = files or [path]
    return ExportResult(path=path, format=fmt, size_bytes=files_size(files),
                        export_seconds=time.perf_counter() - started, parity={}, contract=contract,
                        precision=precision, files=files, metadata=metadata)


def output_path(path: str | Path, suffix: str) -> Path:
    """Check an artifact path (a file path, not a folder) and create its folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the artifact's file path, e.g. {path / ('model' + suffix)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- artifact runners -----------------------------------------------------------------------


def _keyed(outputs: Any, taps: list[str]) -> dict[str, Any]:
    if isinstance(outputs, Mapping):
        return dict(outputs)
    return dict(zip(taps, outputs))


def torchscript_runner(path: str | Path, taps: list[str]) -> Runner:
    """Runs a saved TorchScript file (``torch.jit.load``)."""
    module = torch.jit.load(str(path), map_location="cpu")

    def run(inputs: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            return _keyed(module(inputs), taps)

    return run


def pt2_runner(path: str | Path, taps: list[str]) -> Runner:
    """Runs a saved ``torch.export`` program (``torch.export.load(path).module()``)."""
    module = torch.export.load(str(path)).module()

    def run(inputs: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            return _keyed(module(inputs), taps)

    return run


def onnx_runner(path: str | Path, provider: str = "cpu") -> Runner:
    """Runs an ONNX file with the deployment kit's ``OnnxRunner`` (checks its contract, too)."""
    from ..deploy.run import OnnxRunner

    runner = OnnxRunner(path, provider=provider)
    return lambda inputs: runner(inputs.detach().cpu().numpy())


def tensorrt_runner(path: str | Path) -> Runner:
    """Runs a TensorRT engine with the kit's ``TensorRTRunner``.

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    from ..deploy.run import TensorRTRunner

    runner = TensorRTRunner(path)
    return lambda inputs: runner(inputs.detach().cpu().numpy())


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
    width = max(len(tap) for tap in result.parity)
    lines.append(f"parity:      {'output':<{width}}  {'max_abs':>10}  {'max_rel':>10}  {'tolerance':>9}")
    for tap, entry in result.parity.items():
        lines.append(f"{'':<12} {tap:<{width}}  {entry['max_abs']:>10.3g}  {entry['max_rel']:>10.3g}  "
                     f"{entry['tolerance']:>9.3g}")
    return "\n".join(lines)
