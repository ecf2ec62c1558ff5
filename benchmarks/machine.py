"""The machine: its name, its theoretical fp32 peak and its measured matmul peak.

Theoretical peak = cores x clock x fp32 FLOPs per cycle per core. With AVX2 + FMA a core issues
2 FMA instructions per cycle on 8 fp32 lanes, each FMA counting 2 FLOPs: 32 FLOPs / cycle (Zen 2-4,
Intel since Haswell); AVX-512 doubles the lanes (16 x 2 x 2 = 64, assuming two FMA ports). The
measured peak is a large fp32 matmul (``torch.mm`` of 4096 x 4096 matrices) on the benchmark's
thread count: what a compute-bound kernel actually reaches here.

The instruction-set extensions that decide which kernels run are recorded from ``/proc/cpuinfo``
(``ISA_FLAGS``): AVX2, AVX-512 (``avx512f``), AVX512-BF16 (bf16 dot products) and AMX (Intel's
tile matrix unit; ``amx_bf16`` makes bf16 matmuls and convolutions several times faster than
fp32). A bf16 figure means little without them.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from typing import Any

import torch

__all__ = ["describe_machine", "theoretical_peak", "matmul_peak", "versions", "isa_flags", "ISA_FLAGS"]

# /proc/cpuinfo flag -> the name the report prints
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16",
             "amx_tile": "AMX", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def isa_flags(flags: str | None = None) -> dict[str, bool]:
    """Which of ``ISA_FLAGS`` the CPU has (``flags``: a cpuinfo ``flags`` line; default: this CPU)."""
    present = set((flags if flags is not None else _cpuinfo().get("flags", "")).split())
    return {flag: flag in present for flag in ISA_FLAGS}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    return info


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def theoretical_peak(cores: int | None = None) -> dict[str, Any]:
    """fp32 peak from core count, clock and SIMD width (see the module docstring)."""
    cpu, lscpu = _cpuinfo(), _lscpu()
    flags = cpu.get("flags", "").split()
    clock_mhz = None
    for key in ("CPU max MHz",):
        if lscpu.get(key):
            clock_mhz = float(lscpu[key])
    if clock_mhz is None and cpu.get("cpu MHz"):
        clock_mhz = float(cpu["cpu MHz"])
    if clock_mhz is None and cpu.get("bogomips"):
        clock_mhz = float(cpu["bogomips"]) / 2
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = 2 if "fma" in flags or "avx512f" in flags else 1
    per_cycle = lanes * 2 * fma  # 2 FMA ports (or 1 add + 1 mul without FMA) x lanes x 2 FLOPs
    cores = cores or int(lscpu.get("Core(s) per socket", os.cpu_count() or 1)) * int(
        lscpu.get("Socket(s)", 1))
    gflops = cores * (clock_mhz or 0) / 1000 * per_cycle
    return {"cores": cores, "clock_ghz": (clock_mhz or 0) / 1000, "flops_per_cycle": per_cycle,
            "simd": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse",
            "theoretical_gflops": round(gflops, 1)}


def matmul_peak(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of ``repeats`` ``size`` x ``size`` matmuls on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size ** 3 / best / 1e9


def versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "onnxruntime", "onnx", "tensorrt"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # not installed, or broken: simply not reported
            continue
    return found


def describe_machine(threads: int = 2, *, measure: bool = True) -> dict[str, Any]:
    """Name, core count, peaks and load of this machine (and the GPU when CUDA is present)."""
    cpu, lscpu = _cpuinfo(), _lscpu()
    name = lscpu.get("Model name") or cpu.get("model name") or platform.processor()
    peak = theoretical_peak()
    family = lscpu.get("CPU family", "")
    zen = {"23": "Zen/Zen2", "25": "Zen4" if peak["simd"] == "avx512" else "Zen3", "26": "Zen5"}
    microarch = zen.get(family, "") if "AMD" in (lscpu.get("Vendor ID", "") + name) else ""
    isa = isa_flags(cpu.get("flags", ""))
    machine: dict[str, Any] = {
        "cpu": re.sub(r"\s+", " ", name).strip(), "microarchitecture": microarch,
        "isa": isa,
        "threads_used": threads, "memory_gb": round(os.sysconf("SC_PAGE_SIZE")
                                                     * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        **peak,
        "matmul_gflops": round(matmul_peak(threads), 1) if measure else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "hostname": platform.node(),
    }
    machine["summary"] = (f"{machine['cpu']} {machine['microarchitecture']}".strip()
                          + f", {peak['cores']} cores @ {peak['clock_ghz']:.2f} GHz ("
                          + (", ".join(ISA_FLAGS[f] for f, ok in isa.items() if ok) or "no AVX2") + ")"
                          + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU"))
    return machine
