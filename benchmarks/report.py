"""Turns result lines into ``REPORT.md`` (tables, goals, notes) and PNG plots.

Example:
    >>> from diffperception.benchmarks.report import write_report
    >>> write_report([Path("benchmarks/results/sd15.jsonl")], Path("benchmarks/results"))
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from .goals import goal_lines, goal_rows

__all__ = ["load_results", "write_report", "results_table", "group_key"]

BASELINES = ("full_forward", "block_cut_eager")


def load_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Result lines of the given JSONL files; a later line for the same key replaces an earlier."""
    by_key: dict[str, dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_key.pop(row["key"], None)
                by_key[row["key"]] = row
    return list(by_key.values())


def group_key(row: dict[str, Any]) -> tuple:
    """Rows with the same key compute the same features and are compared with each other."""
    s = row["scenario"]
    return (s["arch"], s["resolution"], s["view"], s["batch"], tuple(s["taps"]), s["timestep"],
            s["ensemble"], s["device"])


def _fmt(value: Any, spec: str = ".2f", scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return format(value * scale, spec)


def _backend_label(row: dict[str, Any]) -> str:
    s = row["scenario"]
    label = s["backend"]
    if s.get("chunk"):
        label += f" (chunks of {s['chunk']})"
    if s.get("options"):
        label += " " + ",".join(f"{k}={v}" for k, v in sorted(s["options"].items()))
    if s["precision"] != "float32":
        label += f" {s['precision']}"
    return label


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown table for rows of one group, fastest first, speed-ups vs the baselines."""
    base = {r["scenario"]["backend"]: r["p50_s"] for r in rows
            if r["scenario"]["backend"] in BASELINES and r["status"] == "ok"
            and not r["scenario"].get("chunk")}
    head = ("| backend | p50 s | p90 s | img/s | vs full fwd | vs block-cut | max RSS GB "
            "| run RSS GB | load s | build s | artifact GB | GFLOP | GFLOP/s | % matmul | rel. err |")
    columns = head.count("|") - 1
    lines = [head, "|" + "---|" * columns]
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["p50_s"])
    for r in ok:
        speed = [(f"{base[b] / r['p50_s']:.2f}x" if b in base else "-") for b in BASELINES]
        lines.append(
            f"| {_backend_label(r)} | {_fmt(r['p50_s'])} | {_fmt(r['p90_s'])} "
            f"| {_fmt(r['throughput_img_s'], '.3f')} | {speed[0]} | {speed[1]} "
            f"| {_fmt(r['max_rss_mb'], '.2f', 1 / 1024)} | {_fmt(r['run_max_rss_mb'], '.2f', 1 / 1024)} "
            f"| {_fmt(r['load_s'], '.1f')} "
            f"| {_fmt(r['build_s'], '.0f')} | {_fmt(r['artifact_bytes'], '.2f', 1 / 2**30)} "
            f"| {_fmt(r['flops'], '.4g', 1e-9)} | {_fmt(r['achieved_gflops'], '.1f')} "
            f"| {_fmt(r['frac_matmul_peak'], '.0f', 100)} | {_fmt(r['parity_max_rel'], '.1e')} |")
    for r in rows:
        if r["status"] != "ok":
            reason = (r.get("error") or "").strip().splitlines()
            why = reason[-1][:160] if reason else f"rel. err {_fmt(r['parity_max_rel'], '.1e')}"
            lines.append(f"| {_backend_label(r)} | {r['status']}: {why} |" + " |" * (columns - 2))
    return "\n".join(lines)


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """The README table: SD 1.5 goal scenarios, one row per backend (empty when not run)."""
    views = {"b1": goal_rows(rows, "trunk", 1), "b4": goal_rows(rows, "trunk", 4),
             "e2e": goal_rows(rows, "e2e", 1)}
    if not any(views.values()):
        return ""
    index = {v: {_backend_label(r): r for r in members} for v, members in views.items()}
    full = {v: index[v].get("full_forward") for v in views}
    names = sorted({n for members in index.values() for n in members},
                   key=lambda n: min(index[v][n]["p50_s"] for v in index if n in index[v]))
    lines = ["| backend | trunk b1 p50 s | vs full fwd | trunk b4 p50 s | vs full fwd "
             "| b4 peak RSS GB | image-in b1 p50 s | vs full fwd |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for v in ("b1", "b4"):
            r = index[v].get(name)
            cells += [_fmt(r["p50_s"]) if r else "-", _ratio(full[v], r)]
        r4 = index["b4"].get(name)
        cells.append(_fmt(r4["max_rss_mb"], ".2f", 1 / 1024) if r4 else "-")
        r = index["e2e"].get(name)
        cells += [_fmt(r["p50_s"]) if r else "-", _ratio(full["e2e"], r)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(base: dict[str, Any] | None, row: dict[str, Any] | None) -> str:
    return f"{base['p50_s'] / row['p50_s']:.2f}x" if base and row else "-"


def _group_title(key: tuple) -> str:
    arch, res, view, batch, taps, t, ens, device = key
    what = "trunk (latent in)" if view == "trunk" else "end to end (image in, VAE encoder included)"
    ens_text = f", ensemble {ens}" if ens > 1 else ""
    return (f"{arch}, {res} px, batch {batch}, taps {', '.join(taps)}, t={t}{ens_text}, "
            f"{what}, {device}")


def _header(rows: list[dict[str, Any]]) -> list[str]:
    machine = rows[0]["machine"] or {}
    peaks = sorted({r["machine"]["matmul_gflops"] for r in rows
                    if r.get("machine") and r["machine"].get("matmul_gflops")})
    peak_text = (f"{peaks[0]}" if len(peaks) == 1 else f"{peaks[0]} to {peaks[-1]}") if peaks else "?"
    dates = sorted(r["date"] for r in rows if r.get("date"))
    loads = [r["load_avg_start"] for r in rows if r.get("load_avg_start") is not None]
    versions = rows[0].get("versions") or {}
    return [
        "# Benchmarks: latency, memory and FLOPs of diffusion feature extraction",
        "",
        f"- Machine: **{machine.get('summary', '?')}**, {machine.get('memory_gb', '?')} GB RAM, "
        f"{machine.get('threads_used', '?')} threads (torch and ONNX Runtime).",
        f"- Peak fp32: measured matmul (4096x4096) **{peak_text} GFLOP/s** (measured at the start of "
        "each `bench` run; each row's % matmul uses its own run's figure); "
        f"theoretical {machine.get('theoretical_gflops')} GFLOP/s ({machine.get('cores')} cores x "
        f"{_fmt(machine.get('clock_ghz'))} GHz x {machine.get('flops_per_cycle')} FLOP/cycle).",
        f"- Date: {dates[0][:10] if dates else '?'}" + (f" to {dates[-1][:10]}" if dates and
                                                        dates[-1][:10] != dates[0][:10] else "")
        + (f"; 1-minute load average during the runs {min(loads):.1f} to {max(loads):.1f}"
           if loads else ""),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- Weights: seeded random values in the published architectures (timing, memory and FLOPs "
        "do not depend on weight values).",
        "- Every backend's features were checked against the full diffusers forward with hooks "
        "(rel. err = max abs error / max |reference|) before it was timed.",
        "- Columns: p50 / p90 of the timed calls; img/s = batch / p50; max RSS = peak resident "
        "memory of the scenario's own fresh process (loading included); run RSS = peak resident "
        "memory from the first call on (the peak mark is reset after loading); build = export time; "
        "GFLOP = FLOPs of one call counted with torch.utils.flop_counter (CPU attention included); "
        "% matmul = achieved FLOP/s / measured matmul peak.",
        "",
    ]


def write_report(paths: Sequence[Path], out_dir: Path, *, title_note: str = "") -> Path:
    """Writes ``REPORT.md`` and PNG plots under ``out_dir``; returns the report's path.

    Raises:
        FileNotFoundError: A results file does not exist.
        ValueError: The files hold no result lines.
    """
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Results file {path} does not exist; run `diffperception "
                                    "bench --suite ...` first.")
    rows = load_results(paths)
    if not rows:
        raise ValueError(f"No result lines in {list(map(str, paths))}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[group_key(row)].append(row)
    lines = _header(rows)
    if title_note:
        lines += [title_note, ""]
    summary = summary_table(rows)
    if summary:
        lines += ["## Summary (SD 1.5 architecture, 512 px, tap up_ft.1, t=261, fp32)", "", summary, ""]
    goals = goal_lines(rows)
    if goals:
        lines += ["## Goals (SD 1.5, 512 px, up_ft.1, t=261, fp32)", ""] + goals + [""]
    lines += ["## Results", ""]
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[1], k[3], k[4])):
        lines += [f"### {_group_title(key)}", "", results_table(groups[key]), ""]
    from .plots import write_plots

    images = write_plots(rows, out_dir)
    if images:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    report = out_dir / "REPORT.md"
    report.write_text("\n".join(lines))
    return report
