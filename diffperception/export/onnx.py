"""ONNX export of the specialised module (``torch.onnx`` dynamo exporter), with its contract.

The file has one input (``images`` in [0, 1], or ``latents``), one output per tap (names
sanitised, see :func:`~diffperception.export.contract.sanitize_output_names`), static spatial
shapes, and ``metadata_props`` carrying the contract, the preprocessing, the taps, timesteps,
noise seed, source repository and revision: the deployment kit (``python -m export.run``) needs
nothing else. Files whose weights exceed 2 GB keep them in ``<file>.onnx.data`` (ONNX external
data), which must stay next to the ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .contract import build_metadata, input_name, with_dtype
from .graph import ExportGraph, PreparedExport, prepare_export, restore_taps
from .parity import ExportResult, attach_parity, make_result, onnx_runner, output_path

__all__ = ["EXTERNAL_DATA_THRESHOLD", "MIN_OPSET", "convert_to_fp16", "save_onnx", "to_onnx"]

MIN_OPSET = 17
# Protobuf cannot serialise a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}): "
                           "pip install 'diffperception[onnx]'") from exc
    return onnx


@contextlib.contextmanager
def _tuple_outputs(graph: ExportGraph) -> Iterator[None]:
    previous, graph.as_tuple = graph.as_tuple, True
    try:
        yield
    finally:
        graph.as_tuple = previous


def _export_proto(prepared: PreparedExport, opset: int) -> Any:
    """Run the dynamo exporter (with its optimiser: constant folding, dead code) -> ``ModelProto``."""
    graph = prepared.graph
    with torch.no_grad(), restore_taps(graph), _tuple_outputs(graph):
        program = torch.onnx.export(
            graph, (prepared.example,), dynamo=True, opset_version=opset, optimize=True, verbose=False,
            input_names=[input_name(prepared.latent_input)], output_names=prepared.output_names,
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
        raise ValueError(f"the weights of {path.name} exceed 2 GB, which a single ONNX file cannot hold; "
                         "allow external data (external_data=None or True)")
    if external_data or large:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_path.name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return [path] + ([data_path] if data_path.is_file() else [])


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    size: Sequence[int] | None = None,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    include_resize: Sequence[int] | None = None,
    fp16: bool = False,
    opset: int = 18,
    external_data: bool | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a model to ONNX with its contract in ``metadata_props``.

    Args:
        model: A task model (specialised here) or a specialised module.
        path: The ``.onnx`` file to write.
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        batch: Static batch size (without ``batch_range``).
        batch_range: ``(min, opt, max)``: a dynamic ``batch`` axis with these bounds (the
            range is stored in the contract; TensorRT builds its profile from it).
        latent_input: Take latents instead of images (no VAE encoder in the graph).
        include_resize: ``(H, W)`` of the images the graph takes; resized (and cropped, as
            the model's ``preprocess`` says) to ``size`` inside the graph.
        fp16: Convert the graph to fp16 (inputs and outputs too), for GPU execution providers.
        opset: ONNX opset, at least 17.
        external_data: None: weights in ``<path>.data`` when over 2 GB; True forces it.
        check: Run the file with ONNX Runtime (CPU) next to eager PyTorch (a failure raises).
        progress: Called with a line of text before slow steps.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: Bad options.
        RuntimeError: onnx / onnxscript missing, or the parity check failed.

    Example:
        >>> result = to_onnx(model, "build/model.onnx", size=(512, 512))
        >>> # python -m export.run build/model.onnx images/*.png
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    _import_onnx()
    path = output_path(path, ".onnx")
    started = time.perf_counter()
    prepared = prepare_export(model, size=size, batch=batch, batch_range=batch_range, latent_input=latent_input,
                              include_resize=include_resize, progress=progress)
    precision = "fp16" if fp16 else "fp32"
    contract, metadata, files = _write_onnx(prepared, path, precision=precision, opset=opset,
                                            external_data=external_data, progress=progress)
    result = make_result(path, "onnx", prepared, contract=contract, metadata=metadata, precision=precision,
                         started=started, files=files)
    if check:
        attach_parity(result, onnx_runner(path), prepared, progress=progress)
    return result


def _write_onnx(prepared: PreparedExport, path: Path, *, precision: str, opset: int, external_data: bool | None,
                progress: Callable[[str], None] | None) -> tuple[dict[str, Any], dict[str, str], list[Path]]:
    """Export, convert to fp16 if asked, attach the metadata, save and check: (contract, metadata, files)."""
    onnx = _import_onnx()
    say = progress or (lambda _: None)
    say(f"exporting ONNX (torch.onnx dynamo exporter, opset {opset})")
    proto = _export_proto(prepared, opset)
    contract = with_dtype(prepared.contract, "float16" if precision == "fp16" else "float32")
    if precision == "fp16":
        say("converting the graph to fp16")
        proto = convert_to_fp16(proto)
    metadata = build_metadata(prepared.special, contract, precision, input_size=prepared.input_size)
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"diffperception export of {metadata['diffperception.source_repo']}"
    say(f"saving {path} and checking it with onnx.checker")
    files = save_onnx(proto, path, external_data)
    del proto
    onnx.checker.check_model(str(path))  # the path form reads external data and files over 2 GB
    return contract, metadata, files
