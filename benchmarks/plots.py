"""PNG plots of benchmark results: latency per backend, and scaling with batch and resolution."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

__all__ = ["write_plots"]


def _series_key(row: dict[str, Any]) -> str:
    s = row["scenario"]
    return (s["backend"] + (f"/chunk{s['chunk']}" if s["chunk"] else "")
            + (f" {s['precision']}" if s.get("precision", "float32") != "float32" else ""))


def _ok(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r.get("p50_s")]


def _latency_bars(rows: list[dict[str, Any]], out_dir: Path, plt) -> list[Path]:
    """One bar chart per (arch, resolution, view, batch) of the first tap set: p50 per backend."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        s = r["scenario"]
        groups[(s["arch"], s["resolution"], s["view"], s["batch"], tuple(s["taps"]))].append(r)
    paths = []
    for (arch, res, view, batch, taps), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["p50_s"])
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(members) + 1.2))
        ax.barh([_series_key(r) for r in members], [r["p50_s"] for r in members], color="#4c72b0")
        ax.invert_yaxis()
        ax.set_xlabel("p50 latency per call (s)")
        ax.set_title(f"{arch} {res}px batch {batch} {view} ({'+'.join(taps)})", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"latency_{arch}_{res}_{view}_b{batch}_{'+'.join(taps).replace(':', '~')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _scaling(rows: list[dict[str, Any]], out_dir: Path, plt, axis: str) -> list[Path]:
    """Latency per image and peak memory against ``axis`` (``batch`` or ``resolution``)."""
    other = "resolution" if axis == "batch" else "batch"
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        s = r["scenario"]
        key = (s["arch"], s["view"], tuple(s["taps"]), s[other])
        groups[key][_series_key(r)].append(r)
    paths = []
    for (arch, view, taps, fixed), series in sorted(groups.items()):
        if len({r["scenario"][axis] for rs in series.values() for r in rs}) < 2:
            continue
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for name, members in sorted(series.items()):
            members = sorted(members, key=lambda r: r["scenario"][axis])
            xs = [r["scenario"][axis] for r in members]
            ax_t.plot(xs, [r["p50_s"] / r["scenario"]["batch"] for r in members], "o-", label=name)
            ax_m.plot(xs, [r["max_rss_mb"] / 1024 for r in members], "o-", label=name)
        ax_t.set_ylabel("p50 latency per image (s)")
        ax_m.set_ylabel("peak RSS of the process (GB)")
        for ax in (ax_t, ax_m):
            ax.set_xlabel(axis)
            ax.grid(alpha=0.3)
        ax_t.legend(fontsize=7)
        fig.suptitle(f"{arch} {view} ({'+'.join(taps)}), {other} {fixed}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"scaling_{axis}_{arch}_{view}_{other}{fixed}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write_plots(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Writes the PNG plots for ``rows`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _ok(rows)
    if not ok:
        return []
    return (_latency_bars(ok, out_dir, plt) + _scaling(ok, out_dir, plt, "batch")
            + _scaling(ok, out_dir, plt, "resolution"))
