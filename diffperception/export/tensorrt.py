"""TensorRT engines built from the exported ONNX file (``diffperception.deploy.build_engine``).

The engine is saved with a ``<engine>.json`` sidecar (TensorRT version, GPU name, compute
capability, precision, ONNX sha256, contract); loading it on another GPU model or TensorRT
version raises an error that says to rebuild from the ONNX file.

Untested in this repository's CI (no GPU / tensorrt available there): only the argument
checks that run before TensorRT is imported are tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from .contract import normalize_batch
from .parity import ExportResult, check_parity, files_size, onnx_runner, output_path, tensorrt_runner

__all__ = ["to_tensorrt"]

PRECISIONS = ("fp32", "fp16", "bf16")


def _onnx_file(model_or_onnx_path: nn.Module | str | Path, engine_path: Path, *, size, batch, batch_range,
               latent_input, include_resize, opset, check, progress) -> Path:
    """The ONNX file to build from: the given one, or a fresh fp32 export next to the engine."""
    if isinstance(model_or_onnx_path, (str, Path)):
        onnx_path = Path(model_or_onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
        if size is not None or include_resize is not None or latent_input:
            raise ValueError("size / latent_input / include_resize apply when exporting a model; an ONNX "
                             "file already fixes them (pass the model instead)")
        return onnx_path
    from .onnx import to_onnx

    onnx_path = engine_path.with_suffix(".onnx")
    to_onnx(model_or_onnx_path, onnx_path, size=size, batch=batch, batch_range=batch_range,
            latent_input=latent_input, include_resize=include_resize, opset=opset, check=check,
            progress=progress)
    return onnx_path


def to_tensorrt(
    model_or_onnx_path: nn.Module | str | Path,
    path: str | Path,
    *,
    precision: str = "fp16",
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
    latent_input: bool = False,
    include_resize: Sequence[int] | None = None,
    opset: int = 18,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Build a TensorRT engine (plus its sidecar JSON) from a model or an exported ONNX file.

    Given a model, it is first exported to fp32 ONNX next to the engine (``model.onnx`` for
    ``model.engine``, parity-checked on the CPU); TensorRT then builds the engine with the
    precision flag. The parity check compares the engine with the fp32 ONNX file run by ONNX
    Runtime on the CPU on seeded inputs.

    Untested in this repository's CI (no GPU / tensorrt available). A graph exported with
    ``include_resize`` uses an antialiased ONNX ``Resize`` for bicubic / bilinear downscaling,
    which TensorRT may not parse; resize on the host for TensorRT deployments.

    Args:
        model_or_onnx_path: A task model / specialised module, or a diffperception ``.onnx`` file.
        path: The ``.engine`` file to write (``<path>.json`` is the sidecar).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        batch: Static batch size when exporting a model without ``batch_range``.
        batch_range: ``(min, opt, max)`` of the optimisation profile (exported as a dynamic
            batch axis when a model is given).
        size, latent_input, include_resize, opset: ONNX export options (models only).
        workspace_gib: Builder workspace limit in GiB.
        timing_cache: Timing cache file, read if present and written after the build.
        check: Parity-check the ONNX export and the engine (a failure raises).
        progress: Called with a line of text before slow steps.

    Returns:
        The :class:`ExportResult` (files: the engine and its sidecar).

    Raises:
        ValueError: Bad precision or batch range.
        FileNotFoundError: The ONNX file does not exist.
        RuntimeError: TensorRT / cuda-python missing, the build failed, or parity failed.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    low, opt, high = normalize_batch(batch, batch_range)
    path = output_path(path, ".engine")
    started = time.perf_counter()
    onnx_path = _onnx_file(model_or_onnx_path, path, size=size, batch=batch, batch_range=batch_range,
                           latent_input=latent_input, include_resize=include_resize, opset=opset, check=check,
                           progress=progress)
    if progress:
        progress(f"building the TensorRT engine ({precision}) from {onnx_path}")
    profile = {} if batch_range is None else {"min_batch": low, "opt_batch": opt, "max_batch": high}
    result = _build(onnx_path, path, precision, profile, workspace_gib, timing_cache, started)
    if check:
        result.parity, result.parity_seconds = _engine_parity(result.path, onnx_path, precision, progress)
    return result


def _build(onnx_path: Path, path: Path, precision: str, profile: dict[str, int], workspace_gib: float,
           timing_cache: str | Path | None, started: float) -> ExportResult:
    """Build the engine and describe it. Untested in this repository's CI (no GPU / tensorrt available)."""
    from ..deploy.build_engine import build_engine
    from ..deploy.contract import load_contract, sidecar_path

    engine = build_engine(onnx_path, path, precision=precision, workspace_gib=workspace_gib,
                          timing_cache=timing_cache, **profile)
    contract = load_contract(onnx_path)
    files = [engine, sidecar_path(engine)]
    return ExportResult(path=engine, format="tensorrt", size_bytes=files_size(files),
                        export_seconds=time.perf_counter() - started, parity={}, contract=contract.raw,
                        precision=precision, files=files, metadata=dict(contract.metadata))


def _engine_parity(engine: Path, onnx_path: Path, precision: str,
                   progress: Callable[[str], None] | None) -> tuple[dict[str, dict], float]:
    """Engine vs fp32 ONNX Runtime (CPU) on seeded inputs at both ends of the engine's profile.

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    from ..deploy.contract import contract_from_sidecar, load_sidecar

    started = time.perf_counter()
    contract = contract_from_sidecar(load_sidecar(engine), str(engine))
    prepared = _ContractOnly(contract.raw, (contract.batch_min, contract.batch_opt, contract.batch_max))
    parity = check_parity(tensorrt_runner(engine), prepared, precision=precision, artifact=engine,
                          reference=onnx_runner(onnx_path), progress=progress)  # type: ignore[arg-type]
    return parity, time.perf_counter() - started


class _ContractOnly:
    """The parts of a ``PreparedExport`` the parity check reads, for an ONNX-file reference."""

    def __init__(self, contract: dict, batch_range: tuple[int, int, int]) -> None:
        self.contract, self.batch_range = contract, batch_range

    def check_batches(self) -> list[int]:
        return sorted({self.batch_range[0], self.batch_range[2]})
