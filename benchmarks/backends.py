"""Backends: ways of computing the same features, each as a ``build`` and a ``load`` step.

``build(scenario, folder, workdir)`` runs in its own process before the measurement: it exports
the artifact (when the backend has one) and counts the FLOPs of one call on the eager PyTorch
module the backend runs (for exported backends, the specialised module they were exported from).
``load(scenario, folder, built)`` runs in the measured process and returns a callable
``inputs -> {tap: tensor}``; its duration is the load time.

Backends:
    full_forward, block_cut_eager: the baselines (see ``baselines.py``).
    eager: ``DiffusionPerceptionForFeatureExtraction`` (pruned trunk, prompt encoded once).
    specialized: its ``specialize()`` module (timestep / prompt / noise folded into constants).
    compile: ``torch.compile`` (inductor) of the specialised module (compiled on the first call,
        the parity-check call, so compilation counts in ``first_call_s``, not in the timings).

Precision: a ``bfloat16`` scenario builds the model with ``dtype="bfloat16"`` and, with the
scenario option ``{"memory_format": "channels_last"}``, NHWC convolutions; exported backends
export it with ``precision="bf16"`` (float32 in and out, bf16 inside).
    torchscript, torch_export: the exported specialised module, loaded from file.
    onnxruntime: the ONNX export run by ONNX Runtime (CPU; CUDA when ``device == "cuda"``).
    onnxruntime_fused: the same with each attention fused into ORT's ``MultiHeadAttention``
        (a tiled, memory-efficient CPU kernel; see ``onnx_attention.py``).
    tensorrt: a TensorRT engine built from the ONNX export (untested in this repository's CI: it
        needs a CUDA device and the tensorrt package).
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from .baselines import BlockCutEager, FullForward, make_inputs
from .exporters import artifact_suffix, export_artifact, fuse_onnx_attention
from diffperception.features.cost import count_flops
from .scenario import Scenario

__all__ = ["build", "load", "library_model"]

Features = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def library_model(folder: Path, s: Scenario):
    """This project's feature extractor for a scenario (null prompt, fixed seeded noise)."""
    from diffperception import DiffusionPerceptionForFeatureExtraction

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        str(folder), taps=list(s.taps), timesteps=[s.timestep], ensemble=s.ensemble, seed=s.seed,
        prompt="", dtype=s.precision,
        memory_format=s.options.get("memory_format", "contiguous"))
    return model.to(s.device).eval()


def _eager_call(model, s: Scenario) -> Features:
    if s.view == "e2e":
        return lambda images: model(images)
    hw = (s.resolution, s.resolution)

    backbone = model.backbone

    def trunk(latent: torch.Tensor) -> dict[str, torch.Tensor]:
        z, timesteps = backbone.noisy_latents(latent)  # (E*B, C, h, w), (E*B,)
        context, added = backbone.conditioning(None, latent.shape[0], hw, z.shape[0])
        return backbone.reduce(backbone.trunk(z, timesteps, context, added), latent.shape[0])

    return trunk


def _specialized(folder: Path, s: Scenario):
    model = library_model(folder, s)
    special = model.specialize(size=(s.resolution, s.resolution), latent_input=s.view == "trunk")
    del model
    gc.collect()  # the task model's trunk and U-Net reference each other: free the cycle now
    return special


# ------------------------------------------------------------------------------------- build

def _count(fn: Features, s: Scenario, folder: Path) -> int:
    """FLOPs of one call, traced on fake tensors (no arithmetic is done; same count as a real
    call), or on the real input where fake tensors fail."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = make_inputs(s, folder)
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            return count_flops(fn, mode.from_tensor(x))
    except Exception:  # an op without a fake kernel: count on the real input instead
        return count_flops(fn, x)


def _vae_flops(s: Scenario, folder: Path) -> int | None:
    if s.view != "e2e" or not (folder / "vae").is_dir():
        return None
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae").eval().to(s.device)
    # the float32 VAE of the count: a low-precision scenario's images are cast up for it
    return _count(lambda x: vae.encode(x.float() * 2 - 1).latent_dist.mean, s, folder)


_EXPORT_FORMAT = {"torchscript": "torchscript", "torch_export": "torch_export",
                  "onnxruntime": "onnx", "onnxruntime_fused": "onnx", "tensorrt": "onnx"}


def build(s: Scenario, folder: Path, workdir: Path) -> dict[str, Any]:
    """Exports the backend's artifact (if any) and counts FLOPs; see the module docstring."""
    info: dict[str, Any] = {"artifact": None, "artifact_format": None, "artifact_bytes": None,
                            "build_s": None, "flops": None, "vae_flops": _vae_flops(s, folder),
                            "notes": {}}
    if s.backend in ("full_forward", "block_cut_eager"):
        runner = (FullForward if s.backend == "full_forward" else BlockCutEager)(folder, s)
        info["flops"] = _count(runner, s, folder)
        return info
    model = library_model(folder, s)
    if s.backend == "eager":
        info["flops"] = _count(_eager_call(model, s), s, folder)
        return info
    special = model.specialize(size=(s.resolution, s.resolution), latent_input=s.view == "trunk")
    del model
    info["flops"] = _count(special, s, folder)
    fmt = _EXPORT_FORMAT.get(s.backend)
    if fmt is None:
        return info
    exported = _export_once(fmt, special, s, workdir)
    info.update(artifact=exported["path"], artifact_format=fmt, build_s=exported["export_seconds"],
                artifact_bytes=exported["artifact_bytes"])
    info["notes"]["exporter"] = exported["exporter"]
    if s.backend == "onnxruntime_fused":
        fused = fuse_onnx_attention(Path(exported["path"]), workdir / "fused" / "model.onnx")
        info.update(artifact=fused["path"], build_s=info["build_s"] + fused["fuse_seconds"])
        info["artifact_bytes"] = _onnx_bytes(Path(fused["path"]))
        info["notes"]["fused_ops"] = fused["fused_ops"]
    if s.backend == "tensorrt":
        info.update(_build_engine(s, Path(info["artifact"]), workdir))
    return info


def _export_once(fmt: str, special, s: Scenario, workdir: Path) -> dict[str, Any]:
    """Exports, sharing one ONNX file between the ONNX Runtime / TensorRT backends."""
    if fmt != "onnx":
        return export_artifact(fmt, special, workdir / f"{s.backend}{artifact_suffix(fmt)}",
                               size=(s.resolution, s.resolution), batch=s.chunk or s.batch,
                               latent_input=s.view == "trunk",
                               precision="bf16" if s.precision == "bfloat16" else "fp32")
    # One file per static batch: a chunked scenario shares the file of its chunk size.
    shared = replace(s, backend="onnxruntime", options={}, batch=s.chunk or s.batch, chunk=0)
    folder = workdir.parent / f"{s.arch}-onnx-{shared.artifact_key()}"
    done = folder / "export.json"
    if done.is_file():
        return json.loads(done.read_text())
    exported = export_artifact("onnx", special, folder / "model.onnx",
                               size=(s.resolution, s.resolution), batch=s.chunk or s.batch,
                               latent_input=s.view == "trunk")
    done.write_text(json.dumps(exported))
    return exported


def _onnx_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


def _build_engine(s: Scenario, onnx_path: Path, workdir: Path) -> dict[str, Any]:
    """TensorRT engine from the ONNX export (untested in this repository's CI: needs CUDA)."""
    from diffperception.deploy.build_engine import build_engine

    start = time.perf_counter()
    engine = workdir / "model.engine"
    batch = s.chunk or s.batch
    build_engine(onnx_path, engine, precision="fp16" if s.precision == "float16" else "fp32",
                 min_batch=batch, opt_batch=batch, max_batch=batch)
    return {"artifact": str(engine), "artifact_format": "tensorrt",
            "artifact_bytes": engine.stat().st_size, "build_s": time.perf_counter() - start}


# -------------------------------------------------------------------------------------- load

def load(s: Scenario, folder: Path, built: dict[str, Any]) -> Features:
    """The callable the measured process times (see the module docstring)."""
    if s.backend == "full_forward":
        return FullForward(folder, s)
    if s.backend == "block_cut_eager":
        return BlockCutEager(folder, s)
    if s.backend == "eager":
        return _eager_call(library_model(folder, s), s)
    if s.backend == "specialized":
        return _specialized(folder, s)
    if s.backend == "compile":
        return torch.compile(_specialized(folder, s), **s.options.get("compile", {}))
    taps = list(s.taps)
    artifact = Path(built["artifact"])
    if s.backend == "torchscript":
        return _named(torch.jit.load(str(artifact), map_location=s.device).eval(), taps)
    if s.backend == "torch_export":
        return _named(torch.export.load(str(artifact)).module(), taps)
    if s.backend in ("onnxruntime", "onnxruntime_fused"):
        return _ort_session(artifact, s)
    if s.backend == "tensorrt":
        from diffperception.deploy.run import TensorRTRunner

        runner = TensorRTRunner(artifact)
        return lambda x: {k: torch.from_numpy(v) for k, v in runner(x.cpu().numpy()).items()}
    raise ValueError(f"Unknown backend {s.backend!r}.")


def _named(module: Callable, taps: list[str]) -> Features:
    def call(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = module(x)
        if isinstance(out, dict):
            return out
        out = out if isinstance(out, (tuple, list)) else (out,)
        return dict(zip(taps, out))

    return call


def _ort_session(path: Path, s: Scenario) -> Features:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = s.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = bool(s.options.get("mem_arena", True))
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if s.device == "cuda"
                 else ["CPUExecutionProvider"])
    session = ort.InferenceSession(str(path), options, providers=providers)
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    keys = names if set(s.taps) <= set(names) else list(s.taps)
    np_dtype = {"float32": "float32", "float16": "float16"}.get(s.precision, "float32")

    def call(x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = session.run(names, {input_name: x.detach().cpu().numpy().astype(np_dtype)})
        return {k: torch.from_numpy(v) for k, v in zip(keys, outputs)}

    return call


def chunked(fn: Features, chunk: int) -> Features:
    """Runs a batch as calls of at most ``chunk`` images and concatenates the features."""
    if chunk <= 0:
        return fn

    def call(x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = [fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    return call

