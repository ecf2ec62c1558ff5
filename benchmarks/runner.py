"""Runs scenarios, each step in a fresh process, and appends one JSON line per scenario.

Per scenario: ``prepare`` (full-forward reference features, export, FLOPs; all cached) and
``measure`` (load, parity check, warm-up, timing, peak memory). A failing step gives a line with
``status`` ``error`` (or ``parity_failed``) and the message; the other scenarios still run.

**Measured under load.** Timings taken while other work shares the cores are not comparable
(on a 2-core machine a second job can double a latency). The runner measures the CPU time that
*other* processes use while a scenario's ``measure`` step runs: the busy time of all CPUs in
``/proc/stat`` (user, nice, system, irq, softirq and steal, which is time a hypervisor gave to
other guests) minus the CPU time of the benchmark's own processes (``getrusage``), divided by the
wall time, in cores (``foreign_cores``); the same over ``QUIET_SAMPLE_S`` seconds just before the
step (``foreign_cores_before``). A scenario is marked ``loaded`` when either exceeds
``LOAD_LIMIT_CORES`` (0.15 cores, ``--load-limit``). The 1-minute load averages before and after
each scenario are recorded too (``load_avg_start`` / ``load_avg_end``), but they are not the rule:
they lag by a minute and count the benchmark's own previous scenario. Where ``/proc/stat`` is
missing, ``loaded`` is null and the report falls back to the load-average rule for lines written
before this field existed (``report.is_loaded``). The report and the README tables quote timings
of unmarked scenarios only.

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
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .scenario import RESULT_FIELDS, Scenario, empty_result

__all__ = ["run_scenarios", "run_scenario", "default_cache_dir", "append_result"]


def default_cache_dir() -> Path:
    """Where materialised models, references and artifacts are kept between runs."""
    return Path(os.environ.get("DIFFPERCEPTION_BENCH_CACHE",
                               Path(tempfile.gettempdir()) / "diffperception-bench"))


#: Other processes' average CPU use (cores) above which a scenario counts as measured under load.
LOAD_LIMIT_CORES = 0.15
#: Seconds of foreign CPU use sampled just before each measure step.
QUIET_SAMPLE_S = 3.0


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all CPUs), from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = sum(values[i] for i in (0, 1, 2, 5, 6, 7) if i < len(values))
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ForeignLoad:
    """Average CPU use (cores) of processes other than this one and its children, over a window.

    Example:
        >>> with ForeignLoad() as load:
        ...     run_the_step()
        >>> load.cores   # None where /proc/stat is missing
    """

    def __enter__(self) -> "ForeignLoad":
        self.cores: float | None = None
        self._busy, self._own, self._wall = _cpu_busy_s(), _own_cpu_s(), time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, wall = _cpu_busy_s(), time.monotonic() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return
        foreign = (busy - self._busy) - (_own_cpu_s() - self._own)
        self.cores = max(foreign, 0.0) / wall


def foreign_cores_now(seconds: float = QUIET_SAMPLE_S) -> float | None:
    """Other processes' CPU use (cores) over the next ``seconds`` (this process sleeps)."""
    with ForeignLoad() as load:
        time.sleep(seconds)
    return load.cores


def is_loaded(foreign: Sequence[float | None], limit: float = LOAD_LIMIT_CORES) -> bool | None:
    """The rule of the module docstring: any measured foreign load above ``limit`` (None: unknown)."""
    known = [f for f in foreign if f is not None]
    if not known:
        return None
    return max(known) > limit


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
                 timeout: float | None = None, load_limit: float = LOAD_LIMIT_CORES,
                 quiet_sample_s: float = QUIET_SAMPLE_S) -> dict[str, Any]:
    """Runs the steps of one scenario and returns its complete result line (``loaded`` set by
    the rule of the module docstring)."""
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
            result["foreign_cores_before"] = (foreign_cores_now(quiet_sample_s)
                                              if quiet_sample_s > 0 else None)
            with ForeignLoad() as load:
                measured = _step("measure", s, cache_dir, workdir, workdir / "prepare.json",
                                 timeout=timeout)
            result["foreign_cores"] = load.cores
            result["loaded"] = is_loaded([load.cores, result["foreign_cores_before"]], load_limit)
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
                  log: Callable[[str], None] = print, load_limit: float = LOAD_LIMIT_CORES,
                  quiet_sample_s: float = QUIET_SAMPLE_S) -> list[dict[str, Any]]:
    """Runs scenarios one after the other, appending each result line to ``out`` as it ends.

    Each line says whether the scenario was measured under load (``loaded``, see the module
    docstring); the log marks such lines ``LOADED``.
    """
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
        result = run_scenario(s, cache_dir, machine, timeout=timeout, load_limit=load_limit,
                              quiet_sample_s=quiet_sample_s)
        append_result(result, out)
        results.append(result)
        mark = ""
        if result.get("foreign_cores") is not None:
            mark = (f"; other processes {result['foreign_cores']:.2f} cores"
                    + (" -> LOADED (timings not quoted)" if result["loaded"] else ""))
        if result["status"] == "ok":
            log(f"    p50 {result['p50_s']:.3f} s, max RSS {result['max_rss_mb']:.0f} MB, "
                f"parity rel {result['parity_max_rel']:.1e}, cos {result['parity_cosine']:.6f}{mark}")
        else:
            log(f"    {result['status']}: {(result['error'] or '')[-300:]}"
                f"{'' if result['parity_max_rel'] is None else ' rel err %.2e' % result['parity_max_rel']}")
    return results
