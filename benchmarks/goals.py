"""The issue's goals, evaluated on measured results (reported, never asserted in a test).

Goals (SD 1.5 architecture, 512 px, tap ``up_ft.1``, t=261, fp32, CPU):
- trunk, batch 1: this project's fastest backend >= 2.5x faster than the full forward and
  >= 1.5x faster than block-cut eager, at >= 90% of the measured matmul FLOP/s;
- trunk, batch 4: >= 2x faster than the full forward, with a peak memory no higher than the
  full forward's;
- end to end: the VAE encoder's share of the FLOPs and of the time.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["goal_lines", "goal_rows", "fastest", "GOAL_SCENARIO"]

GOAL_SCENARIO = {"arch": "sd15", "resolution": 512, "taps": ["up_ft.1"], "timestep": 261,
                 "precision": "float32", "device": "cpu", "ensemble": 1}
BASELINES = ("full_forward", "block_cut_eager")


def goal_rows(rows: Sequence[dict[str, Any]], view: str, batch: int) -> list[dict[str, Any]]:
    """The successful rows of the goal scenario (SD 1.5, 512 px, ...) for a view and batch."""
    out = []
    for row in rows:
        s = row["scenario"]
        if row["status"] != "ok" or s["view"] != view or s["batch"] != batch:
            continue
        if all(s[k] == v for k, v in GOAL_SCENARIO.items()):
            out.append(row)
    return out


def fastest(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """This project's fastest row (baselines excluded)."""
    ours = [r for r in rows if r["scenario"]["backend"] not in BASELINES]
    return min(ours, key=lambda r: r["p50_s"]) if ours else None


def _baseline(rows: Sequence[dict[str, Any]], backend: str) -> dict[str, Any] | None:
    found = [r for r in rows if r["scenario"]["backend"] == backend and not r["scenario"]["chunk"]]
    return found[0] if found else None


def _name(row: dict[str, Any]) -> str:
    s = row["scenario"]
    return s["backend"] + (f" (chunks of {s['chunk']})" if s["chunk"] else "")


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _speed_line(best, base, target: float, what: str) -> str:
    if best is None or base is None:
        return f"- {what}: not measured."
    ratio = base["p50_s"] / best["p50_s"]
    return (f"- {what}: {_name(best)} {best['p50_s']:.2f} s vs {base['scenario']['backend']} "
            f"{base['p50_s']:.2f} s = {ratio:.2f}x (goal {target}x): {_verdict(ratio >= target)}")


def goal_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines, one per goal (empty when no goal scenario was run)."""
    b1, b4 = goal_rows(rows, "trunk", 1), goal_rows(rows, "trunk", 4)
    e2e = goal_rows(rows, "e2e", 1)
    if not (b1 or b4 or e2e):
        return []
    lines = []
    best1 = fastest(b1)
    lines.append(_speed_line(best1, _baseline(b1, "full_forward"), 2.5, "Trunk, batch 1, vs full forward"))
    lines.append(_speed_line(best1, _baseline(b1, "block_cut_eager"), 1.5,
                             "Trunk, batch 1, vs block-cut eager"))
    if best1 is not None and best1.get("frac_matmul_peak") is not None:
        frac = best1["frac_matmul_peak"]
        lines.append(f"- Trunk, batch 1, FLOP/s: {_name(best1)} {best1['achieved_gflops']:.1f} "
                     f"GFLOP/s = {frac:.0%} of the measured matmul peak "
                     f"({best1['machine']['matmul_gflops']} GFLOP/s) and "
                     f"{best1['frac_theoretical_peak']:.0%} of the theoretical "
                     f"({best1['machine']['theoretical_gflops']} GFLOP/s) (goal 90% of matmul): "
                     f"{_verdict(frac >= 0.9)}")
    best4, full4 = fastest(b4), _baseline(b4, "full_forward")
    lines.append(_speed_line(best4, full4, 2.0, "Trunk, batch 4, vs full forward"))
    if best4 is not None and full4 is not None:
        ok = best4["max_rss_mb"] <= full4["max_rss_mb"]
        lines.append(f"- Trunk, batch 4, peak memory: {_name(best4)} {best4['max_rss_mb'] / 1024:.2f} "
                     f"GB vs full forward {full4['max_rss_mb'] / 1024:.2f} GB: {_verdict(ok)}")
    lines += _vae_lines(e2e, b1)
    return lines


def _vae_lines(e2e: Sequence[dict[str, Any]], trunk: Sequence[dict[str, Any]]) -> list[str]:
    best = fastest(e2e)
    if best is None or not best.get("vae_flops"):
        return ["- End to end: not measured."]
    share = best["vae_flops"] / best["flops"]
    line = (f"- End to end, batch 1: the VAE encoder is {best['vae_flops'] / 1e9:.0f} of "
            f"{best['flops'] / 1e9:.0f} GFLOP ({share:.0%}) of {_name(best)}")
    same = [r for r in trunk if r["scenario"]["backend"] == best["scenario"]["backend"]
            and r["scenario"]["chunk"] == best["scenario"]["chunk"]]
    full = _baseline(e2e, "full_forward")
    if same:
        vae_s = best["p50_s"] - same[0]["p50_s"]
        line += (f"; time {best['p50_s']:.2f} s end to end vs {same[0]['p50_s']:.2f} s trunk only, "
                 f"so the encoder takes about {vae_s:.2f} s ({vae_s / best['p50_s']:.0%})")
        if full is not None:
            line += (f". Speed-up over the full forward end to end: "
                     f"{full['p50_s'] / best['p50_s']:.2f}x; with a free encoder it would be "
                     f"{full['p50_s'] / same[0]['p50_s']:.2f}x")
    return [line + "."]
