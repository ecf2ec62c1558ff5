"""The goals, evaluated on measured results (reported, never asserted in a test).

Goals (SD 1.5 architecture, 512 px, tap ``up_ft.1``, t=261, CPU; every speed-up is against the
fp32 full forward, any precision of this project's backends counts if its features keep a cosine
>= ``MIN_COSINE`` against the fp32 full forward):
- trunk, batch 1: the fastest backend >= 3x faster (and its FLOP/s against the measured matmul
  peak, for information);
- trunk, batch 4: >= 2x faster;
- end to end (image in, VAE encoder included), batch 1: >= 2.5x faster; the VAE encoder's share
  of the FLOPs and of the time;
- peak memory (max RSS of the scenario's process, loading included) of every one of this
  project's backends <= the full forward's, at batch 1 and batch 4.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["goal_lines", "goal_rows", "fastest", "GOAL_SCENARIO"]

GOAL_SCENARIO = {"arch": "sd15", "resolution": 512, "taps": ["up_ft.1"], "timestep": 261,
                 "device": "cpu", "ensemble": 1}
MIN_COSINE = 0.999
GOALS = {"b1": 3.0, "b4": 2.0, "e2e": 2.5}
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
    """This project's fastest row (baselines excluded) among those whose features keep a cosine
    of at least ``MIN_COSINE`` against the fp32 full forward (rows without a cosine count)."""
    ours = [r for r in rows if r["scenario"]["backend"] not in BASELINES
            and (r.get("parity_cosine") is None or r["parity_cosine"] >= MIN_COSINE)]
    return min(ours, key=lambda r: r["p50_s"]) if ours else None


def _baseline(rows: Sequence[dict[str, Any]], backend: str) -> dict[str, Any] | None:
    found = [r for r in rows if r["scenario"]["backend"] == backend and not r["scenario"]["chunk"]
             and r["scenario"].get("precision", "float32") == "float32"]
    return found[0] if found else None


def _name(row: dict[str, Any]) -> str:
    s = row["scenario"]
    precision = s.get("precision", "float32")
    return (s["backend"] + (f" (chunks of {s['chunk']})" if s["chunk"] else "")
            + (f" {precision}" if precision != "float32" else ""))


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _speed_line(best, base, target: float, what: str) -> str:
    if best is None or base is None:
        return f"- {what}: not measured."
    ratio = base["p50_s"] / best["p50_s"]
    cos = best.get("parity_cosine")
    cos_text = f", feature cosine {cos:.5f} vs fp32" if cos is not None else ""
    return (f"- {what}: {_name(best)} {best['p50_s']:.2f} s vs {base['scenario']['backend']} "
            f"{base['p50_s']:.2f} s = {ratio:.2f}x{cos_text} (goal {target}x): "
            f"{_verdict(ratio >= target)}")


def goal_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown bullet lines, one per goal (empty when no goal scenario was run)."""
    b1, b4 = goal_rows(rows, "trunk", 1), goal_rows(rows, "trunk", 4)
    e2e = goal_rows(rows, "e2e", 1)
    if not (b1 or b4 or e2e):
        return []
    lines = []
    best1 = fastest(b1)
    lines.append(_speed_line(best1, _baseline(b1, "full_forward"), GOALS["b1"],
                             "Trunk, batch 1, vs full forward"))
    if best1 is not None and best1.get("frac_matmul_peak") is not None:
        frac = best1["frac_matmul_peak"]
        lines.append(f"- Trunk, batch 1, FLOP/s (information): {_name(best1)} "
                     f"{best1['achieved_gflops']:.1f} GFLOP/s = {frac:.0%} of the measured fp32 matmul "
                     f"peak ({best1['machine']['matmul_gflops']} GFLOP/s)")
    lines.append(_speed_line(fastest(b4), _baseline(b4, "full_forward"), GOALS["b4"],
                             "Trunk, batch 4, vs full forward"))
    lines.append(_speed_line(fastest(e2e), _baseline(e2e, "full_forward"), GOALS["e2e"],
                             "End to end, batch 1, vs full forward"))
    for label, members in (("batch 1", b1), ("batch 4", b4)):
        lines.append(_memory_line(members, label))
    lines += _vae_lines(e2e, b1)
    return lines


def _memory_line(rows: Sequence[dict[str, Any]], label: str) -> str:
    full = _baseline(rows, "full_forward")
    ours = [r for r in rows if r["scenario"]["backend"] not in BASELINES and r.get("max_rss_mb")]
    if full is None or not ours:
        return f"- Trunk, {label}, peak memory: not measured."
    over = [r for r in ours if r["max_rss_mb"] > full["max_rss_mb"]]
    worst = max(ours, key=lambda r: r["max_rss_mb"])
    text = (f"- Trunk, {label}, peak memory of every backend <= full forward "
            f"({full['max_rss_mb'] / 1024:.2f} GB): highest {_name(worst)} "
            f"{worst['max_rss_mb'] / 1024:.2f} GB: {_verdict(not over)}")
    if over:
        text += " (over: " + ", ".join(f"{_name(r)} {r['max_rss_mb'] / 1024:.2f} GB" for r in over) + ")"
    return text


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
