"""ONNX export of the specialised module (``torch.onnx`` dynamo exporter), with its contract.

The file has one input (``images`` in [0, 1], or ``latents``), one output per output key
(names sanitised, see :func:`~diffperception.export.contract.sanitize_output_names`), static
spatial shapes, and ``metadata_props`` carrying the contract, the preprocessing, the output
keys, timesteps, labels, noise seed, source repository and revision: the deployment kit
(``diffperception-deploy run``) needs nothing else. Files whose weights exceed 2 GB keep them
in ``<file>.onnx.data`` (ONNX external data), which must stay next to the ``.onnx`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.contract import PRECISION_DTYPES, metadata_key
from .contract import build_metadata, input_name
from .graph import PreparedExport, Runner, quiet_capture_warnings
from .options import ExportOptions, with_export_options
from .parity import ExportResult
from .registry import Exporter, export, register_exporter

__all__ = ["EXTERNAL_DATA_THRESHOLD", "MIN_OPSET", "OnnxExporter", "convert_to_fp16", "onnx_runner", "save_onnx",
           "to_onnx"]

MIN_OPSET = 17
# Protobuf cannot serialise a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}): "
                           "pip install 'diffperception[onnx]'.") from exc
    return onnx


def check_opset(opset: int) -> None:
    """Raise ValueError unless ``opset`` is an integer >= :data:`MIN_OPSET`."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"The ONNX opset must be an integer >= {MIN_OPSET}, got {opset!r}.")


def _export_proto(prepared: PreparedExport, opset: int) -> Any:
    """Run the dynamo exporter (with its optimiser: constant folding, dead code) -> ``ModelProto``."""
    with torch.no_grad(), quiet_capture_warnings(), prepared.graph.returning_tuple() as graph:
        program = torch.onnx.export(
            graph, (prepared.example,), dynamo=True, opset_version=opset, optimize=True, verbose=False,
            input_names=[input_name(prepared.contract.is_latent)], output_names=prepared.output_names,
            dynamic_shapes=prepared.dynamic_shapes(),
        )
    return program.model_proto


def convert_to_fp16(proto: Any) -> Any:
    """An fp16 copy of an fp32 ``ModelProto`` (inputs and outputs fp16 too), for GPU execution providers.

    Uses onnxruntime's ``convert_float_to_float16`` (ops it cannot run in fp16 stay fp32 behind
    casts) and re-sorts the graph topologically with ``onnx_ir`` (the converter can leave a
    cast after its consumer).
    """
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=False, disable_shape_infer=True)
    model = ir.serde.deserialize_model(half)
    model.graph.sort()
    return ir.serde.serialize_model(model)


def _initializer_bytes(proto: Any) -> int:
    return sum(tensor.ByteSize() for tensor in proto.graph.initializer)


def save_onnx(proto: Any, path: Path, external_data: bool | None = None) -> list[Path]:
    """Save ``proto`` to ``path``; weights go to ``<name>.data`` when forced or over 2 GB.

    Args:
        proto: The ``ModelProto`` (modified in place when saved with external data).
        path: The ``.onnx`` file.
        external_data: True forces external data, False forbids it, None decides by size.

    Returns:
        The written files (the ``.onnx`` file, then the external data file if any).

    Raises:
        ValueError: ``external_data=False`` for weights over 2 GB.
    """
    onnx = _import_onnx()
    data_path = path.with_name(f"{path.name}.data")
    if data_path.exists():
        data_path.unlink()  # onnx appends to an existing external data file
    large = _initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    if external_data is False and large:
        raise ValueError(f"The weights of {path.name} exceed 2 GB, which a single ONNX file cannot hold; "
                         "allow external data (external_data=None or True).")
    if external_data or large:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return [path] + ([data_path] if data_path.is_file() else [])


def onnx_runner(path: str | Path, provider: str = "cpu") -> Runner:
    """Runs an ONNX file with the deployment kit's ``OnnxRunner`` (checks its contract, too)."""
    from ..deploy.run import OnnxRunner

    runner = OnnxRunner(path, provider=provider)
    return lambda inputs: runner(inputs.detach().cpu().numpy())


@register_exporter("onnx", suffix=".onnx", precisions=("fp32", "fp16"))
class OnnxExporter(Exporter):
    """ONNX with the contract in ``metadata_props``; fp16 converts the graph, inputs and outputs too."""

    def validate(self, options: ExportOptions, *, opset: int = 18) -> None:
        check_opset(opset)
        _import_onnx()

    def write(self, prepared: PreparedExport, path: Path, *, precision: str, progress: Callable[[str], None],
              opset: int = 18, external_data: bool | None = None) -> tuple[list[Path], dict[str, str]]:
        """Export, convert to fp16 if asked, attach the metadata, save and check with ``onnx.checker``.

        Args:
            prepared: The prepared export.
            path: The ``.onnx`` file.
            precision: ``"fp32"`` or ``"fp16"``.
            progress: Called before slow steps.
            opset: ONNX opset, at least 17.
            external_data: None: weights in ``<path>.data`` when over 2 GB; True forces it,
                False forbids it.
        """
        onnx = _import_onnx()
        progress(f"exporting ONNX (torch.onnx dynamo exporter, opset {opset})")
        proto = _export_proto(prepared, opset)
        if precision == "fp16":
            progress("converting the graph to fp16")
            proto = convert_to_fp16(proto)
        metadata = build_metadata(prepared.special, prepared.contract.with_dtype(PRECISION_DTYPES[precision]),
                                  precision)
        onnx.helper.set_model_props(proto, metadata)
        proto.doc_string = f"diffperception export of {metadata[metadata_key('source_repo')]}"
        progress(f"saving {path} and checking it with onnx.checker")
        files = save_onnx(proto, path, external_data)
        del proto
        onnx.checker.check_model(str(path))  # the path form reads external data and files over 2 GB
        return files, metadata

    def runner(self, path: Path) -> Runner:
        """ONNX Runtime on the CPU, through the deployment kit."""
        return onnx_runner(path)

    def load_metadata(self, path: Path) -> dict[str, str]:
        """The file's ``metadata_props`` (read without loading the graph)."""
        from ..deploy.onnx_metadata import read_onnx_metadata

        return read_onnx_metadata(path)


@with_export_options(*OnnxExporter.format_parameters())
def to_onnx(model: nn.Module, path: str | Path, *, fp16: bool = False, **options: Any) -> ExportResult:
    """Export a model to ONNX with its contract in ``metadata_props`` (``export(model, "onnx", path)``).

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.onnx`` file to write.
        fp16: Shorthand for ``precision="fp16"``: the graph, inputs and outputs in fp16, for
            GPU execution providers.
        **options: :class:`~diffperception.export.options.ExportOptions` fields, plus
            ``opset`` (at least 17, default 18) and ``external_data`` (None: weights in
            ``<path>.data`` when over 2 GB; True forces it).

    Returns:
        The :class:`~diffperception.export.parity.ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: onnx / onnxscript missing, or the parity check failed.

    Example:
        >>> result = to_onnx(model, "build/model.onnx", size=(512, 512))
        >>> # diffperception-deploy run build/model.onnx images/*.png
    """
    if fp16:
        if options.get("precision", "fp16") != "fp16":
            raise ValueError(f"Pass fp16=True or precision=..., not both: fp16=True contradicts precision={options['precision']!r}.")
        options["precision"] = "fp16"
    return export(model, "onnx", path, **options)
