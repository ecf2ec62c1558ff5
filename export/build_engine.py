"""Build a TensorRT engine (plus its ``<engine>.json`` sidecar) from an exported ONNX file.

Usage (installed with ``pip install ./export``; ``python -m export.build_engine`` from the repository root)::

    diffperception-deploy build-engine build/model.onnx --fp16 --min-batch 1 --opt-batch 4 --max-batch 8

The pure-Python parts (precision flags, optimisation profile, sidecar, compatibility
check) need no TensorRT and are unit-tested. The TensorRT-touching code is kept thin
and imports ``tensorrt`` / ``cuda-python`` lazily; it is untested in this repository's
CI (no GPU / tensorrt available there).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .contract import BUILD_COMMAND, Contract, load_contract, metadata_key, sidecar_path

PRECISIONS = ("fp32", "fp16", "bf16")
INSTALL_HINT = "install tensorrt>=10 and cuda-python (pip install 'diffperception[gpu]')"
_COMPAT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


def select_precision_flags(precision: str, *, platform_has_fast_fp16: bool = True) -> tuple[list[str], list[str]]:
    """Pick the ``trt.BuilderFlag`` names for a precision.

    Args:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        platform_has_fast_fp16: ``builder.platform_has_fast_fp16`` of the build GPU.

    Returns:
        The flag names (``[]``, ``["FP16"]`` or ``["BF16"]``) and notes to print.

    Raises:
        ValueError: Unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"The precision must be one of {PRECISIONS}, got {precision!r}.")
    notes = []
    if precision == "fp16" and not platform_has_fast_fp16:
        notes.append("this GPU has no fast fp16 (platform_has_fast_fp16 is False): the fp16 "
                     "engine may be no faster than fp32; consider --fp32")
    return {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"]}[precision], notes


def compute_profile(
    contract: Contract, min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None
) -> dict[str, Any]:
    """Compute the optimisation profile shapes from the contract and a requested batch range.

    Unset values default to the contract's ``batch`` range; ``opt`` is clamped into
    ``[min, max]`` when only the bounds are given.

    Returns:
        ``{"input", "dynamic", "min", "opt", "max"}``; the shapes are full NCHW lists.

    Raises:
        ValueError: ``1 <= min <= opt <= max`` does not hold, or a range other than the
            static batch is requested for an ONNX file exported with a static batch.
    """
    spec = contract.input
    if not contract.dynamic_batch:
        static = int(spec.shape[0])
        asked = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if asked - {static}:
            raise ValueError(
                f"The ONNX file {contract.source} was exported with a static batch of {static}, so no batch "
                f"range ({min_batch}, {opt_batch}, {max_batch}) can be built; re-export the ONNX "
                "file with a batch range (dynamic 'batch' dimension) or drop the batch options."
            )
    low = contract.batch_min if min_batch is None else int(min_batch)
    high = contract.batch_max if max_batch is None else int(max_batch)
    opt = min(max(contract.batch_opt, low), high) if opt_batch is None else int(opt_batch)
    if not 1 <= low <= opt <= high:
        raise ValueError(f"The batch range must satisfy 1 <= min <= opt <= max, got min={low} opt={opt} max={high}.")
    sample = list(contract.sample_shape)
    return {"input": spec.name, "dynamic": contract.dynamic_batch,
            "min": [low, *sample], "opt": [opt, *sample], "max": [high, *sample]}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_sidecar(
    onnx_path: str | Path,
    contract: Contract,
    *,
    precision: str,
    profile: dict[str, Any],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    built_at: str | None = None,
) -> dict[str, Any]:
    """Create the sidecar describing an engine: build environment, profile and contract."""
    return {
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "onnx_file": Path(onnx_path).name,
        "onnx_sha256": file_sha256(onnx_path),
        "profile": {k: profile[k][0] for k in ("min", "opt", "max")},
        "contract": contract.to_dict(),
        "metadata": {**contract.to_metadata(), metadata_key("precision"): precision},
        "built_at": built_at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_engine_compatible(
    sidecar: dict[str, Any], *, tensorrt_version: str, gpu_name: str, compute_capability: str
) -> None:
    """Check that an engine's sidecar matches this machine's TensorRT and GPU.

    Raises:
        RuntimeError: A field differs (or is missing); the message names the field and
            says how to rebuild the engine from the ONNX file.
    """
    here = {"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "compute_capability": compute_capability}
    labels = {"tensorrt_version": "TensorRT version", "gpu_name": "GPU name",
              "compute_capability": "compute capability"}
    problems = [
        f"{labels[key]} ({key}): engine built with {sidecar.get(key)!r}, this machine has {here[key]!r}"
        for key in _COMPAT_FIELDS if str(sidecar.get(key)) != str(here[key])
    ]
    if problems:
        onnx_name = sidecar.get("onnx_file") or "model.onnx"
        raise RuntimeError(
            "TensorRT engine does not match this machine: " + "; ".join(problems) + ". TensorRT "
            f"engines are specific to the GPU and TensorRT version: rebuild the engine from the ONNX "
            f"file with `{BUILD_COMMAND} {onnx_name}` on this machine."
        )


def needs_explicit_batch_flag(tensorrt_version: str) -> bool:
    """Whether ``create_network`` needs the EXPLICIT_BATCH flag (TensorRT < 10; it is the default from 10 on)."""
    return int(tensorrt_version.split(".")[0]) < 10


# --- thin TensorRT / CUDA layer: untested in this repository's CI (no GPU / tensorrt) ---------


def import_tensorrt() -> Any:
    """Import ``tensorrt`` or raise a RuntimeError saying what to install.

    The success path is untested in this repository's CI (no GPU / tensorrt available).
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeError(f"TensorRT is not available ({exc}): {INSTALL_HINT}.") from exc
    return tensorrt


def import_cudart() -> Any:
    """Import the CUDA runtime bindings of cuda-python (new and old module layouts).

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise RuntimeError(f"The cuda-python package is not available ({exc}): {INSTALL_HINT}.") from exc
    return cudart


def cuda_call(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple, raising RuntimeError on an error code.

    Untested in this repository's CI (no GPU / tensorrt / cuda-python available).
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if getattr(err, "value", err) != 0:
        raise RuntimeError(f"A CUDA call failed: {err}.")
    return values[0] if len(values) == 1 else tuple(values) or None


def gpu_environment(device: int = 0) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of ``device``.

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    trt, cudart = import_tensorrt(), import_cudart()
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt_version": trt.__version__, "gpu_name": name.rstrip("\x00").strip(),
            "compute_capability": f"{props.major}.{props.minor}"}


def _parse_network(trt: Any, builder: Any, onnx_path: Path, logger: Any) -> Any:
    """Parse the ONNX file into a network, reporting every parser error.

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    flags = 0
    if needs_explicit_batch_flag(trt.__version__):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(f"  - {parser.get_error(i)}" for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}.\n{errors or '  (no parser message)'}")
    return network, parser


def _configure(trt: Any, builder: Any, flags: list[str], profile: dict[str, Any], workspace_gib: float) -> Any:
    """Create the builder config: workspace, precision flags, optimisation profile.

    Untested in this repository's CI (no GPU / tensorrt available).
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in flags:
        if not hasattr(trt.BuilderFlag, flag):
            raise RuntimeError(f"This TensorRT {trt.__version__} has no BuilderFlag.{flag}: {INSTALL_HINT}.")
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if profile["dynamic"]:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(profile["input"], profile["min"], profile["opt"], profile["max"])
        config.add_optimization_profile(opt_profile)
    return config


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    precision: str = "fp16",
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
) -> Path:
    """Build a TensorRT engine and its ``<engine>.json`` sidecar from a diffperception ONNX file.

    The contract and batch range are validated before TensorRT is imported. The
    TensorRT build itself is untested in this repository's CI (no GPU / tensorrt available).

    Args:
        onnx_path: The exported ONNX file (with its contract metadata).
        engine_path: Output engine; defaults to the ONNX path with suffix ``.engine``.
        precision: ``"fp16"``, ``"bf16"`` or ``"fp32"``.
        min_batch: Smallest batch of the optimisation profile (default: the contract's).
        opt_batch: Batch TensorRT tunes for (default: the contract's, clamped).
        max_batch: Largest batch of the optimisation profile (default: the contract's).
        workspace_gib: Builder workspace memory pool limit in GiB.
        timing_cache: File to load the timing cache from (if it exists) and save it to.

    Returns:
        The engine path.

    Raises:
        ValueError: Bad contract, precision or batch range.
        RuntimeError: TensorRT missing, ONNX parse errors, or the build failed.
    """
    onnx_path = Path(onnx_path)
    contract = load_contract(onnx_path)
    profile = compute_profile(contract, min_batch, opt_batch, max_batch)
    flags, _ = select_precision_flags(precision)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_network(trt, builder, onnx_path, logger)
    fast_fp16 = getattr(builder, "platform_has_fast_fp16", True)  # deprecated in TensorRT 10, still present
    _, notes = select_precision_flags(precision, platform_has_fast_fp16=fast_fp16)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    config = _configure(trt, builder, flags, profile, workspace_gib)
    cache_file = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above).")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache_file is not None:
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    sidecar = make_sidecar(onnx_path, contract, precision=precision, profile=profile, **gpu_environment())
    sidecar_path(engine_path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return engine_path


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a usage / input error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        prog: The command name shown in usage messages.
    """
    parser = argparse.ArgumentParser(prog=prog or BUILD_COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("onnx", type=Path, help="exported .onnx file")
    parser.add_argument("--out", type=Path, default=None, help="engine path (default: MODEL.engine)")
    group = parser.add_mutually_exclusive_group()
    for name in PRECISIONS:
        group.add_argument(f"--{name}", dest="precision", action="store_const", const=name)
    for name in ("min", "opt", "max"):
        parser.add_argument(f"--{name}-batch", type=int, default=None)
    parser.add_argument("--workspace-gib", type=float, default=4.0)
    parser.add_argument("--timing-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        engine = build_engine(args.onnx, args.out, precision=args.precision or "fp16", min_batch=args.min_batch,
                              opt_batch=args.opt_batch, max_batch=args.max_batch,
                              workspace_gib=args.workspace_gib, timing_cache=args.timing_cache)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"engine: {engine}\nsidecar: {sidecar_path(engine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
