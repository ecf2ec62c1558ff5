"""TensorRT engines built from the exported ONNX file (``diffperception.deploy.build_engine``).

The engine is saved with a ``<engine>.json`` sidecar (TensorRT version, GPU name, compute
capability, precision, ONNX sha256, contract); loading it on another GPU model or TensorRT
version raises an error that says to rebuild from the ONNX file. The parity reference of an
engine is the fp32 ONNX file it was built from, run by ONNX Runtime on the CPU.

The engine build and run need a GPU with tensorrt; without one only the argument checks that
run before TensorRT is imported are tested.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.contract import load_contract, sidecar_path
from .graph import PreparedExport, Runner
from .onnx import check_opset, onnx_runner
from .options import ExportOptions, with_export_options
from .parity import ExportResult
from .registry import Exporter, export, register_exporter

__all__ = ["TensorRTExporter", "tensorrt_runner", "to_tensorrt"]


def tensorrt_runner(path: str | Path) -> Runner:
    """Runs a TensorRT engine with the kit's ``TensorRTRunner`` (needs a GPU with tensorrt)."""
    from ..deploy.run import TensorRTRunner

    runner = TensorRTRunner(path)
    return lambda inputs: runner(inputs.detach().cpu().numpy())


def _lazy_onnx_reference(onnx_path: Path) -> Runner:
    """The fp32 ONNX file run by ONNX Runtime, opened on the first parity batch."""
    opened: list[Runner] = []

    def run(inputs: torch.Tensor) -> Any:
        if not opened:
            opened.append(onnx_runner(onnx_path))
        return opened[0](inputs)

    return run


@register_exporter("tensorrt", suffix=".engine", precisions=("fp32", "fp16", "bf16"))
class TensorRTExporter(Exporter):
    """A TensorRT engine plus its sidecar, built from a fresh fp32 ONNX export or a given ``.onnx`` file."""

    def validate(self, options: ExportOptions, *, opset: int = 18) -> None:
        check_opset(opset)

    def prepare(self, model: nn.Module | str | Path, path: Path, options: ExportOptions, *,
                opset: int = 18) -> PreparedExport:
        """The ONNX file to build from (given, or exported next to the engine) and its contract.

        Raises:
            FileNotFoundError: A given ONNX file does not exist.
            ValueError: Model-only options with an ONNX file, or a batch range it cannot serve.
        """
        from ..deploy.build_engine import compute_profile

        if isinstance(model, (str, Path)):
            onnx_path = Path(model)
            if not onnx_path.is_file():
                raise FileNotFoundError(f"ONNX file not found: {onnx_path}.")
            if options.size is not None or options.include_resize is not None or options.latent_input:
                raise ValueError("The options size / latent_input / include_resize apply when exporting a model; an ONNX "
                                 "file already fixes them (pass the model instead).")
        else:
            onnx_path = path.with_suffix(".onnx")
            export(model, "onnx", onnx_path, size=options.size, batch=options.batch,
                   batch_range=options.batch_range, latent_input=options.latent_input,
                   include_resize=options.include_resize, opset=opset, check=options.check,
                   progress=options.progress)
        contract = load_contract(onnx_path)
        asked = options.batch_range or (None, None, None)
        profile = compute_profile(contract, *asked)
        contract = contract.with_batch_range(profile["min"][0], profile["opt"][0], profile["max"][0])
        return PreparedExport(contract, reference=_lazy_onnx_reference(onnx_path), source=onnx_path)

    def write(self, prepared: PreparedExport, path: Path, *, precision: str, progress: Callable[[str], None],
              workspace_gib: float = 4.0, timing_cache: str | Path | None = None
              ) -> tuple[list[Path], dict[str, str]]:
        """Build the engine and its sidecar (needs a GPU with tensorrt).

        Args:
            prepared: The prepared export (``source`` is the ONNX file).
            path: The ``.engine`` file.
            precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
            progress: Called before slow steps.
            workspace_gib: Builder workspace limit in GiB.
            timing_cache: Timing cache file, read if present and written after the build.
        """
        from ..deploy.build_engine import build_engine

        progress(f"building the TensorRT engine ({precision}) from {prepared.source}")
        low, opt, high = prepared.batch_range
        engine = build_engine(prepared.source, path, precision=precision, min_batch=low, opt_batch=opt,
                              max_batch=high, workspace_gib=workspace_gib, timing_cache=timing_cache)
        return [engine, sidecar_path(engine)], self.load_metadata(engine)

    def runner(self, path: Path) -> Runner:
        """The engine run by the kit's ``TensorRTRunner``."""
        return tensorrt_runner(path)

    def load_metadata(self, path: Path) -> dict[str, str]:
        """The metadata entries copied into the engine's sidecar."""
        from ..deploy.contract import contract_from_sidecar, load_sidecar

        return contract_from_sidecar(load_sidecar(path), str(path)).to_metadata()


@with_export_options(*TensorRTExporter.format_parameters())
def to_tensorrt(model_or_onnx_path: nn.Module | str | Path, path: str | Path, *, precision: str = "fp16",
                **options: Any) -> ExportResult:
    """Build a TensorRT engine (plus its sidecar JSON) from a model or an exported ONNX file.

    Given a model, it is first exported to fp32 ONNX next to the engine (``model.onnx`` for
    ``model.engine``, parity-checked on the CPU); TensorRT then builds the engine with the
    precision flag. The parity check compares the engine with the fp32 ONNX file run by ONNX
    Runtime on the CPU on seeded inputs. A graph exported with ``include_resize`` uses an
    antialiased ONNX ``Resize`` for bicubic / bilinear downscaling, which TensorRT may not
    parse; resize on the host for TensorRT deployments.

    Args:
        model_or_onnx_path: A task model / specialised module, or a diffperception ``.onnx`` file.
        path: The ``.engine`` file to write (``<path>.json`` is the sidecar).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        **options: :class:`~diffperception.export.options.ExportOptions` fields (``size``,
            ``latent_input`` and ``include_resize`` for models only; ``batch_range`` is the
            optimisation profile), plus ``opset``, ``workspace_gib`` and ``timing_cache``.

    Returns:
        The :class:`~diffperception.export.parity.ExportResult` (files: the engine and its sidecar).

    Raises:
        ValueError: Bad precision or batch range.
        FileNotFoundError: The ONNX file does not exist.
        RuntimeError: TensorRT / cuda-python missing, the build failed, or parity failed.
    """
    return export(model_or_onnx_path, "tensorrt", path, precision=precision, **options)
