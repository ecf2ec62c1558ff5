"""Runs scenarios, each step in a fresh process, and appends one JSON line per scenario.

Per scenario: ``prepare`` (full-forward reference features, export, FLOPs; all cached) and
``measure`` (load, parity check, warm-up, timing, peak memory). A failing step gives a line with
``status`` ``error`` (or ``parity_failed``) and the message; the other scenarios still run.

Example:
    >>> from diffperception.benchmarks import Scenario
    >>> from diffperception.benchmarks.runner import run_scenarios
    >>> run_scenarios([Scenario("tiny", 64, backend="specialized")], Path("results/tiny.jsonl"),
    ...               cache_dir=Path("/tmp/bench"))
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .scenario import RESULT_FIELDS, Scenario, empty_result

__all__ = ["run_scenarios", "run_scenario", "default_cache_dir", "append_result"]


def default_cache_dir() -> Path:
    """Where materialised models, references and artifacts are kept between runs."""
    return Path(os.environ.get("DIFFPERCEPTION_BENCH_CACHE",
                               Path(tempfile.gettempdir()) / "diffperception-bench"))


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _step(step: str, s: Scenario, cache_dir: Path, workdir: Path,
          build_info: Path | None = None, timeout: float | None = None) -> dict[str, Any]:
    scenario_file = workdir / "scenario.json"
    scenario_file.write_text(json.dumps(s.to_dict()))
    out = workdir / f"{step}.json"
    cmd = [sys.executable, "-m", "diffperception.benchmarks.run_one", step,
           "--scenario", str(scenario_file), "--cache-dir", str(cache_dir), "--out", str(out)]
    if build_info is not None:
        cmd += ["--build-info", str(build_info)]
    env = dict(os.environ, OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"step {step!r} failed (exit {proc.returncode}): " + "\n".join(tail))
    return json.loads(out.read_text())


def _flop_rates(result: dict[str, Any], machine: dict[str, Any]) -> None:
    if not result.get("flops") or not result.get("p50_s"):
        return
    achieved = result["flops"] / result["p50_s"] / 1e9
    result["achieved_gflops"] = achieved
    if machine.get("matmul_gflops"):
        result["frac_matmul_peak"] = achieved / machine["matmul_gflops"]
    if machine.get("theoretical_gflops"):
        result["frac_theoretical_peak"] = achieved / machine["theoretical_gflops"]


def run_scenario(s: Scenario, cache_dir: Path, machine: dict[str, Any],
                 timeout: float | None = None) -> dict[str, Any]:
    """Runs the three steps of one scenario and returns its complete result line."""
    from .machine import versions

    result = empty_result(s)
    result.update(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  machine=machine, load_avg_start=_load_avg(), versions=versions())
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        try:
            built = _step("prepare", s, cache_dir, workdir, timeout=timeout)
            result.update(flops=built.get("flops"), vae_flops=built.get("vae_flops"),
                          build_s=built.get("build_s"), artifact_bytes=built.get("artifact_bytes"),
                          artifact_format=built.get("artifact_format"), notes=built.get("notes"))
            measured = _step("measure", s, cache_dir, workdir, workdir / "prepare.json",
                             timeout=timeout)
            result.update({k: v for k, v in measured.items() if k in RESULT_FIELDS})
            result["status"] = "ok" if result["parity_ok"] else "parity_failed"
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            result.update(status="error", error=str(err)[-2000:])
    result["load_avg_end"] = _load_avg()
    _flop_rates(result, machine)
    return result


def append_result(result: dict[str, Any], out: Path) -> None:
    """Appends one JSON line (every ``RESULT_FIELDS`` key, in order)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    line = {name: result.get(name) for name in RESULT_FIELDS}
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


def run_scenarios(scenarios: Sequence[Scenario], out: Path, *, cache_dir: Path | None = None,
                  machine: dict[str, Any] | None = None, timeout: float | None = None,
                  log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Runs scenarios one after the other, appending each result line to ``out`` as it ends."""
    from .machine import describe_machine

    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    if machine is None:
        threads = max((s.threads for s in scenarios), default=2)
        machine = describe_machine(threads)
        log(f"machine: {machine['summary']}; matmul {machine['matmul_gflops']} GFLOP/s, "
            f"theoretical {machine['theoretical_gflops']} GFLOP/s")
    results = []
    for i, s in enumerate(scenarios, 1):
        log(f"[{i}/{len(scenarios)}] {s.label} ...")
        result = run_scenario(s, cache_dir, machine, timeout=timeout)
        append_result(result, out)
        results.append(result)
        if result["status"] == "ok":
            log(f"    p50 {result['p50_s']:.3f} s, max RSS {result['max_rss_mb']:.0f} MB, "
                f"parity rel {result['parity_max_rel']:.1e}")
        else:
            log(f"    {result['status']}: {(result['error'] or '')[-300:]}"
                f"{'' if result['parity_max_rel'] is None else ' rel err %.2e' % result['parity_max_rel']}")
    return results
