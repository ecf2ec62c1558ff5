"""Run an exported diffperception model (ONNX or TensorRT engine) on images or latents.

Usage (installed with ``pip install ./export``; ``python -m export.run`` from the repository root)::

    diffperception-deploy run build/model.onnx images/*.png [--provider cpu|cuda] [--threads N] [--out out.npz]
        [--max-image-pixels N] [--max-array-mib N]
    diffperception-deploy run build/model.engine images/*.png
    python -m diffperception_deploy.run build/latent_model.onnx latents/*.npy

Input files are checked from their headers before they are decoded or read: an image may have at
most 89,478,485 pixels and a ``.npy`` file at most 1024 MiB of data unless the flags raise the limits;
a damaged, non-numeric or oversized file is an error naming it (exit status 2).
Outputs are keyed by the contract's output keys (a tap name such as ``"up_blocks.1"``, or
``"logits"`` / ``"embeddings"`` / ``"scores"``) and are float32.
Needs numpy, Pillow and onnxruntime (``tensorrt`` + ``cuda-python`` for engines);
never imports torch or diffusers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .build_engine import check_engine_compatible, cuda_call, gpu_environment, import_cudart, import_tensorrt
from .contract import (
    BUILD_COMMAND,
    Contract,
    InputItem,
    contract_from_sidecar,
    load_contract,
    load_sidecar,
    metadata_key,
    prepare_batch,
    validate_batch,
)
from .input_files import InputLimits, add_limit_arguments, limits_from_arguments

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)"}


class _Runner:
    """Shared input validation, output keying and batching of the runners."""

    contract: Contract

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run one model-ready NCHW batch.

        Args:
            inputs: Array of shape (N, C, H, W) already in the input's value range;
                cast to the contract's input dtype.

        Returns:
            Output key -> float32 output array.

        Raises:
            ValueError: Wrong shape / channels / batch size, or NaN values.
        """
        batch = validate_batch(inputs, self.contract)
        raw = self._run(batch)
        return {spec.key: np.asarray(raw[spec.name]).astype(np.float32, copy=False) for spec in self.contract.outputs}

    def run_images(
        self, items: InputItem | Sequence[InputItem], *, limits: InputLimits | None = None
    ) -> dict[str, np.ndarray]:
        """Load, preprocess and run images / ``.npy`` files / arrays in batches the model accepts.

        Inputs are split into chunks of at most ``batch_max``; a last chunk smaller than
        ``batch_min`` is padded by repeating its last item and the padding is dropped.

        Args:
            items: Image files, ``.npy`` files or arrays (see :func:`.contract.prepare_batch`).
            limits: Largest image / ``.npy`` file accepted (default: :class:`.InputLimits`).

        Returns:
            Output key -> float32 array with one row per input sample.

        Raises:
            FileNotFoundError: An input file does not exist.
            ValueError: An input is damaged, of the wrong kind or shape, or over ``limits``.
        """
        batch = prepare_batch(items, self.contract, limits=limits)  # type: ignore[arg-type]
        low, high = self.contract.batch_min, self.contract.batch_max
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, batch.shape[0], high):
            chunk = batch[start:start + high]
            count = chunk.shape[0]
            if count < low:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - count, axis=0)])
            parts.append({k: v[:count] for k, v in self(chunk).items()})
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(f"The onnxruntime package is not installed ({exc}): pip install onnxruntime.") from exc
    return onnxruntime


def _check_session(session: Any, contract: Contract, path: Path) -> None:
    """Check that the graph's inputs / outputs are the ones the contract declares."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    spec = contract.input
    missing = [o.name for o in contract.outputs if o.name not in outputs]
    if spec.name not in inputs or missing:
        raise ValueError(
            f"The contract of {path} does not match its graph (graph inputs {sorted(inputs)}, outputs "
            f"{sorted(outputs)}; contract input {spec.name!r}, missing outputs {missing}): re-export the model."
        )
    graph = inputs[spec.name]
    graph_batch = graph.shape[0] if graph.shape else None
    batch_ok = not isinstance(graph_batch, int) if contract.dynamic_batch else graph_batch == spec.shape[0]
    if graph.type != _ORT_TYPES[spec.dtype] or list(graph.shape[1:]) != list(spec.shape[1:]) or not batch_ok:
        raise ValueError(
            f"The graph input {spec.name!r} of {path} is {graph.type} {graph.shape} but the contract says "
            f"{spec.dtype} {list(spec.shape)}: re-export the model."
        )


class OnnxRunner(_Runner):
    """Run an ONNX model with onnxruntime.

    Attributes:
        contract: The validated model contract.
        session: The ``onnxruntime.InferenceSession``.
    """

    def __init__(
        self, path: str | Path, provider: str = "cpu", threads: int | None = None, *, device_id: int = 0
    ) -> None:
        """Load the model.

        Args:
            path: The ``.onnx`` file.
            provider: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu; runs with IOBinding).
            threads: ``intra_op_num_threads`` (default: onnxruntime's choice).
            device_id: CUDA device for ``provider="cuda"``.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Not an ONNX file, bad contract, or contract / graph mismatch.
            RuntimeError: The CUDA provider is not available.
        """
        if provider not in ("cpu", "cuda"):
            raise ValueError(f"The provider must be 'cpu' or 'cuda', got {provider!r}.")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"The thread count must be at least 1, got {threads}.")
        self.path, self.provider, self.device_id = Path(path), provider, int(device_id)
        self.contract = load_contract(self.path)
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = self._create_session(ort, options)
        _check_session(self.session, self.contract, self.path)

    def _create_session(self, ort: Any, options: Any) -> Any:
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.provider == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    f"This onnxruntime has no CUDAExecutionProvider (available: {available}): install "
                    "onnxruntime-gpu (pip install 'diffperception[gpu]') or use --provider cpu."
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise ValueError(
                f"ONNX Runtime cannot load {self.path} ({exc}). If the file is corrupted "
                "or truncated, export it again with diffperception."
            ) from None
        if self.provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"ONNX Runtime could not start CUDA (providers: {session.get_providers()}): "
                               "check the CUDA / cuDNN installation or use --provider cpu.")
        return session

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self.contract.outputs]
        if self.provider == "cuda":
            values = self._run_cuda(batch, names)
        else:
            values = self.session.run(names, {self.contract.input.name: batch})
        return dict(zip(names, values))

    def _run_cuda(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Run with IOBinding on the GPU. Untested in this repository's CI (no GPU available)."""
        ort = _import_onnxruntime()
        binding = self.session.io_binding()
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.device_id)
        binding.bind_ortvalue_input(self.contract.input.name, device_input)
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


class TensorRTRunner(_Runner):
    """Run a TensorRT 10 engine built by ``build_engine`` (buffers via cuda-python).

    The sidecar is checked against this machine's TensorRT / GPU before the engine is
    deserialised. Untested in this repository's CI (no GPU / tensorrt available).
    """

    def __init__(self, engine_path: str | Path, *, device: int = 0) -> None:
        """Check the sidecar, deserialise the engine and create a context and stream.

        The sidecar check runs first (it is unit-tested with a faked environment); the
        rest is untested in this repository's CI (no GPU / tensorrt available).

        Args:
            engine_path: The ``.engine`` file; ``<engine>.json`` must sit next to it.
            device: CUDA device index.

        Raises:
            FileNotFoundError: Engine or sidecar missing.
            RuntimeError: tensorrt / cuda-python missing, engine built for another
                GPU / TensorRT version, or the engine cannot be deserialised.
        """
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Engine file not found: {self.path}.")
        self.sidecar = load_sidecar(self.path)
        self.contract = contract_from_sidecar(self.sidecar, str(self.path))
        check_engine_compatible(self.sidecar, **gpu_environment(device))
        self._trt, self._cudart = import_tensorrt(), import_cudart()
        self._buffers: dict[str, tuple[int, int]] = {}
        cuda_call(self._cudart.cudaSetDevice(device))
        self._runtime = self._trt.Runtime(self._trt.Logger(self._trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.path}: rebuild it with "
                               f"`{BUILD_COMMAND} model.onnx`.")
        self._check_io()
        self.context = self.engine.create_execution_context()
        self._stream = cuda_call(self._cudart.cudaStreamCreate())

    def _check_io(self) -> None:
        """Check the engine's I/O tensors against the contract.

        Untested in this repository's CI (no GPU / tensorrt available).
        """
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT for n in names}
        wanted = {self.contract.input.name: True, **{o.name: False for o in self.contract.outputs}}
        if any(is_input.get(name) is not want for name, want in wanted.items()):
            raise RuntimeError(f"The engine tensors {is_input} of {self.path} do not match the sidecar contract: "
                               "rebuild it.")

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """Return a device buffer of at least ``nbytes`` for ``name`` (cached).

        Untested in this repository's CI (no GPU / tensorrt available).
        """
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                cuda_call(self._cudart.cudaFree(pointer))
            pointer = int(cuda_call(self._cudart.cudaMalloc(nbytes)))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Copy in, ``execute_async_v3``, copy out. Untested in this repository's CI (no GPU / tensorrt available)."""
        trt, cudart, name = self._trt, self._cudart, self.contract.input.name
        batch = np.ascontiguousarray(batch, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
        if not self.context.set_input_shape(name, batch.shape):
            raise ValueError(f"Input shape {batch.shape} is outside the profile of the engine {self.path}.")
        kind = cudart.cudaMemcpyKind
        pointer = self._device_buffer(name, batch.nbytes)
        cuda_call(cudart.cudaMemcpyAsync(pointer, batch.ctypes.data, batch.nbytes, kind.cudaMemcpyHostToDevice,
                                         self._stream))
        self.context.set_tensor_address(name, pointer)
        outputs = {}
        for spec in self.contract.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            outputs[spec.name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(spec.name)))
            self.context.set_tensor_address(spec.name, self._device_buffer(spec.name, outputs[spec.name].nbytes))
        if not self.context.execute_async_v3(self._stream):
            raise RuntimeError(f"TensorRT execution of {self.path} failed (see the log above).")
        for spec in self.contract.outputs:
            host = outputs[spec.name]
            cuda_call(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[spec.name][0], host.nbytes,
                                             kind.cudaMemcpyDeviceToHost, self._stream))
        cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream. Untested in this repository's CI (no GPU / tensorrt available)."""
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) is not None:
            try:
                self.close()
            except Exception:  # interpreter shutdown: nothing sensible left to do
                pass


def load_runner(path: str | Path, **kwargs: Any) -> OnnxRunner | TensorRTRunner:
    """Open a model by suffix: ``.onnx`` -> :class:`OnnxRunner`, ``.engine`` / ``.plan`` -> :class:`TensorRTRunner`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unknown suffix (and the runners' own errors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxRunner(path, **kwargs)
    if suffix in ENGINE_SUFFIXES:
        return TensorRTRunner(path, **kwargs)
    raise ValueError(f"Unknown model type {suffix!r} of {path}: pass an .onnx file or a TensorRT .engine.")


def _summary(runner: _Runner, count: int) -> str:
    spec, meta = runner.contract.input, runner.contract.metadata
    lines = [f"model: {runner.contract.source}",
             f"input: {spec.name} {list(spec.shape)} {spec.dtype}; {count} sample(s)"]
    lines.append(f"outputs: {json.dumps(runner.contract.output_keys)}")
    for name in ("source_repo", "timesteps", "labels", "precision"):
        if metadata_key(name) in meta:
            lines.append(f"{name}: {meta[metadata_key(name)]}")
    sidecar = getattr(runner, "sidecar", None)
    if sidecar:
        lines.append(f"engine: {sidecar.get('precision')} for {sidecar.get('gpu_name')}, "
                     f"TensorRT {sidecar.get('tensorrt_version')}, batch {sidecar.get('profile')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a usage / input error).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        prog: The command name shown in usage messages.
    """
    prog = prog or f"python -m {__package__ or 'export'}.run"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help=".onnx file or TensorRT .engine")
    parser.add_argument("inputs", nargs="+", help="image files (or .npy arrays for latent-input models)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime provider")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="save the outputs to this .npz file")
    add_limit_arguments(parser)
    args = parser.parse_args(argv)
    try:
        limits = limits_from_arguments(args)
        onnx_kwargs = {"provider": args.provider, "threads": args.threads}
        runner = load_runner(args.model, **(onnx_kwargs if args.model.suffix.lower() == ".onnx" else {}))
        outputs = runner.run_images(args.inputs, limits=limits)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_summary(runner, len(next(iter(outputs.values())))))
    for key, value in outputs.items():
        print(f"{key}: shape={tuple(value.shape)} dtype={value.dtype} mean={value.mean():.6g} std={value.std():.6g}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, **outputs)
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
