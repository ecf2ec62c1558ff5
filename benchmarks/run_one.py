"""One step of one scenario, in a fresh process (so peak memory belongs to that scenario).

    python -m diffperception.benchmarks.run_one prepare --scenario S.json --cache-dir D --out B.json
    python -m diffperception.benchmarks.run_one measure --scenario S.json --cache-dir D --out M.json \
        --build-info B.json

``prepare`` computes the full-forward reference features (once per reference key, cached as
safetensors), then exports the artifact and counts FLOPs (once per artifact key); ``measure``
loads the backend, checks its features against the reference, then times it and reads peak
memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .scenario import Scenario

__all__ = ["reference_path", "step_reference", "step_build", "step_measure", "main"]

# Relative tolerance (of the reference's largest magnitude) a backend's features must meet; the
# reference is always the fp32 full forward, so a bf16 row's error is its error against fp32
# (bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few roundings deep; measured 0.4-1.1% on the
# shipped model, see benchmarks/results/precision/).
PARITY_RTOL = {"float32": 1e-3, "float16": 3e-2, "bfloat16": 5e-2}


def _folder(s: Scenario, cache_dir: Path) -> Path:
    from .architectures import materialize

    return materialize(s.arch, cache_dir / "models")


def reference_path(s: Scenario, cache_dir: Path) -> Path:
    return cache_dir / "references" / f"{s.arch}-{s.reference_key()}.safetensors"


@torch.no_grad()
def step_reference(s: Scenario, cache_dir: Path) -> dict[str, Any]:
    """Full-forward fp32 features for the scenario's inputs (computed once per key)."""
    from safetensors.torch import save_file

    from .baselines import FullForward, make_inputs

    path = reference_path(s, cache_dir)
    if not path.is_file():
        ref = replace(s, backend="full_forward", precision="float32")
        folder = _folder(ref, cache_dir)
        torch.set_num_threads(s.threads)
        feats = FullForward(folder, ref)(make_inputs(ref, folder))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in feats.items()}, str(path))
    return {"reference": str(path)}


def step_build(s: Scenario, cache_dir: Path) -> dict[str, Any]:
    """Exports / counts FLOPs, reusing an earlier build of the same artifact key."""
    from .backends import build

    workdir = cache_dir / "artifacts" / f"{s.arch}-{s.backend}-{s.artifact_key()}"
    done = workdir / "build.json"
    if done.is_file():
        info = json.loads(done.read_text())
        info["notes"]["reused_build"] = True
        return info
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.threads)
    info = build(s, _folder(s, cache_dir), workdir)
    done.write_text(json.dumps(info, indent=1))
    return info


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Returns freed heap memory to the OS (glibc), so that memory freed while loading (e.g. the
    unspecialised model a specialised copy was made from) is not counted as in use afterwards."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(s: Scenario) -> None:
    if s.device == "cuda":
        torch.cuda.synchronize()


def parity(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], precision: str
           ) -> dict[str, Any]:
    """Max abs / relative error over taps, whether it is within ``PARITY_RTOL``, and the lowest
    cosine similarity between an image's flattened features and the reference's."""
    if set(out) != set(ref):
        raise RuntimeError(f"The backend returned taps {sorted(out)}, expected {sorted(ref)}.")
    max_abs, scale, cosine = 0.0, 0.0, 1.0
    for name, r in ref.items():
        o = out[name].detach().float().cpu()
        if o.shape != r.shape:
            raise RuntimeError(f"Tap {name}: shape {tuple(o.shape)} != reference {tuple(r.shape)}.")
        max_abs = max(max_abs, (o - r).abs().max().item())
        scale = max(scale, r.abs().max().item())
        cos = torch.nn.functional.cosine_similarity(o.double().reshape(o.shape[0], -1),
                                                    r.double().reshape(r.shape[0], -1), dim=1)
        cosine = min(cosine, cos.min().item())
    rel = max_abs / max(scale, 1e-12)
    return {"parity_max_abs": max_abs, "parity_max_rel": rel, "parity_cosine": cosine,
            "parity_tol": PARITY_RTOL[precision],
            "parity_ok": bool(rel <= PARITY_RTOL[precision])}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@torch.inference_mode()
def step_measure(s: Scenario, cache_dir: Path, built: dict[str, Any]) -> dict[str, Any]:
    """Load, check parity, warm up, time; peak memory of this process."""
    from safetensors.torch import load_file

    from .backends import chunked, load
    from .baselines import make_inputs

    torch.set_num_threads(s.threads)
    folder = _folder(s, cache_dir)
    ref = load_file(str(reference_path(s, cache_dir)))
    x = make_inputs(s, folder)
    start = time.perf_counter()
    fn = chunked(load(s, folder, built), s.chunk)
    result: dict[str, Any] = {"load_s": time.perf_counter() - start}
    result["load_max_rss_mb"] = _max_rss_mb()
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _trim_heap()
    reset = _reset_peak_rss()
    start = time.perf_counter()
    out = fn(x)
    _sync(s)
    result["first_call_s"] = time.perf_counter() - start
    result.update(parity(out, ref, s.precision))
    del out
    if result["parity_ok"]:
        for _ in range(s.warmup):
            fn(x)
        _sync(s)
        times = []
        for _ in range(s.iters):
            start = time.perf_counter()
            fn(x)
            _sync(s)
            times.append(time.perf_counter() - start)
        p50 = _percentile(times, 0.5)
        result.update(times_s=times, p50_s=p50, p90_s=_percentile(times, 0.9),
                      p99_s=_percentile(times, 0.99), mean_s=sum(times) / len(times),
                      throughput_img_s=s.batch / p50)
    run_peak = _max_rss_mb()
    result["run_max_rss_mb"] = run_peak if reset else None
    result["max_rss_mb"] = max(result["load_max_rss_mb"], run_peak)
    if s.device == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("prepare", "measure"))
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--build-info", type=Path)
    args = parser.parse_args(argv)
    s = Scenario.from_dict(json.loads(args.scenario.read_text()))
    if args.step == "prepare":
        step_reference(s, args.cache_dir)
        result = step_build(s, args.cache_dir)
    else:
        built = json.loads(args.build_info.read_text()) if args.build_info else {}
        result = step_measure(s, args.cache_dir, built)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
