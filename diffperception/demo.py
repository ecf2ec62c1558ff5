"""``diffperception demo``: the whole product on real data, offline, on a CPU, in minutes.

On the shipped default model (a small text-conditioned pixel diffusion model trained by this
project on scikit-learn's digits) it
1. extracts features of both splits for a grid of taps and timesteps;
2. fits a linear probe per (tap, timestep) on the train split and reports test accuracy, next to
   the same probe on raw pixels and on the same architecture with random weights;
3. classifies the test split zero-shot by image-text matching (noise-prediction error of each
   class caption, as diffusion classifiers do);
4. plots accuracy against timestep, one line per tap;
5. says where to go next.
Every number printed is measured in the run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["DemoResult", "run_demo", "plot_accuracy", "format_table", "add_arguments", "run"]

DEFAULT_TAPS = ("down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1")
DEFAULT_TIMESTEPS = (10, 50, 100, 200, 400, 700)
# Diffusion classifiers average the error over many noise levels: on the default model these 8
# give 90.3% on the first 300 test images (README, "The offline default model and the demo").
ZERO_SHOT_TIMESTEPS = (50, 100, 200, 300, 400, 500, 600, 800)
ZERO_SHOT_LIMIT = 300


@dataclass
class DemoResult:
    """What the demo measured (also written as ``demo_results.json``)."""

    taps: list[str]
    timesteps: list[int]
    trained: dict[str, dict[int, float]]
    random: dict[str, dict[int, float]]
    pixels: float
    zero_shot: float | None
    zero_shot_settings: dict = field(default_factory=dict)
    plot: str | None = None
    seconds: float = 0.0


def run_demo(*, taps: Sequence[str] = DEFAULT_TAPS, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
             zero_shot_timesteps: Sequence[int] = ZERO_SHOT_TIMESTEPS, zero_shot_seeds: int = 1,
             zero_shot_limit: int | None = None, out_dir: str | Path = "demo_output",
             model_path: str | Path | None = None) -> DemoResult:
    """Runs the demo (see the module docstring) and returns what it measured.

    Args:
        taps: Tap names of the default model to probe.
        timesteps: Timesteps to probe.
        zero_shot_timesteps: Timesteps the caption errors are averaged over (empty: skip).
        zero_shot_seeds: Noise draws per timestep for zero-shot matching.
        zero_shot_limit: Score only the first N test images (None: all).
        out_dir: Where the plot and ``demo_results.json`` go.
        model_path: Diffusers folder of the model (default: the shipped default model).
    """
    from .default_model import CLASS_NAMES, DEFAULT_MODEL_PATH, caption_for, load_digits_split
    from .evaluation import probe_against_baselines, zero_shot_accuracy

    started = time.perf_counter()
    path = Path(model_path or DEFAULT_MODEL_PATH)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_digits_split()
    y_test = data["test_labels"]
    probes = probe_against_baselines(path, data["train_images"], data["train_labels"],
                                     data["test_images"], y_test, taps=taps, timesteps=timesteps,
                                     seed=0)
    zero_shot = None
    if zero_shot_timesteps:
        captions = [caption_for(i) for i in range(len(CLASS_NAMES))]
        zero_shot = zero_shot_accuracy(path, data["test_images"][:zero_shot_limit],
                                       y_test[:zero_shot_limit], captions,
                                       timesteps=zero_shot_timesteps, seeds=zero_shot_seeds)
    result = DemoResult(
        taps=list(taps), timesteps=list(timesteps), trained=probes.trained, random=probes.random,
        pixels=probes.pixels,
        zero_shot=zero_shot,
        zero_shot_settings={"timesteps": list(zero_shot_timesteps), "seeds": zero_shot_seeds,
                            "images": int(len(y_test) if zero_shot_limit is None
                                          else min(zero_shot_limit, len(y_test)))})
    result.plot = str(plot_accuracy(result, out_dir / "probe_accuracy.png"))
    result.seconds = time.perf_counter() - started
    (out_dir / "demo_results.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def plot_accuracy(result: DemoResult, path: Path) -> Path:
    """Accuracy against timestep, one line per tap (trained solid, random dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, tap in enumerate(result.taps):
        color = f"C{i}"
        ax.plot(result.timesteps, [result.trained[tap][t] for t in result.timesteps],
                marker="o", color=color, label=f"{tap} (trained)")
        ax.plot(result.timesteps, [result.random[tap][t] for t in result.timesteps],
                ls="--", color=color, alpha=0.6, label=f"{tap} (random weights)")
    ax.axhline(result.pixels, color="k", ls=":", label="raw pixels")
    if result.zero_shot is not None:
        ax.axhline(result.zero_shot, color="C7", ls="-.", label="zero-shot (no probe)")
    ax.set(xlabel="timestep t", ylabel="test accuracy (digits)", xscale="log",
           title="Linear probe on diffusion features, default model")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(result: DemoResult) -> str:
    """The printed result table (markdown)."""
    head = "| tap | weights | " + " | ".join(f"t={t}" for t in result.timesteps) + " |"
    lines = [head, "|" + "---|" * (len(result.timesteps) + 2)]
    for tap in result.taps:
        for label, grid in (("trained", result.trained), ("random", result.random)):
            cells = " | ".join(f"{100 * grid[tap][t]:.1f}" for t in result.timesteps)
            lines.append(f"| {tap} | {label} | {cells} |")
    lines.append(f"| raw pixels | - | {100 * result.pixels:.1f} |" + " |" * (len(result.timesteps) - 1))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", default=",".join(DEFAULT_TAPS), help="comma-separated taps")
    parser.add_argument("--timesteps", default=",".join(map(str, DEFAULT_TIMESTEPS)))
    parser.add_argument("--zero-shot-timesteps", default=",".join(map(str, ZERO_SHOT_TIMESTEPS)),
                        help="comma-separated; empty to skip zero-shot matching")
    parser.add_argument("--zero-shot-seeds", type=int, default=1)
    parser.add_argument("--zero-shot-limit", type=int, default=ZERO_SHOT_LIMIT,
                        help="score only the first N test images (0: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small grid (2 taps, 2 timesteps, at most 100 zero-shot images)")
    parser.add_argument("--out", default="demo_output", help="folder for the plot and JSON")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    taps = [t for t in args.taps.split(",") if t]
    timesteps, zs = _ints(args.timesteps), _ints(args.zero_shot_timesteps)
    limit = args.zero_shot_limit or None
    if args.quick:
        taps, timesteps, limit = ["mid_block", "up_blocks.1"], [50, 200], min(limit or 100, 100)
    print(f"diffperception demo: default model, digits (1797 images, 10 classes), taps {taps}, "
          f"timesteps {timesteps}")
    result = run_demo(taps=taps, timesteps=timesteps, zero_shot_timesteps=zs,
                      zero_shot_seeds=args.zero_shot_seeds, zero_shot_limit=limit, out_dir=args.out)
    print("\nLinear-probe test accuracy (%), features of the trained model vs. random weights:\n")
    print(format_table(result))
    best = max(((tap, t) for tap in result.taps for t in result.timesteps),
               key=lambda k: result.trained[k[0]][k[1]])
    print(f"\nbest: {best[0]} at t={best[1]}: trained {100 * result.trained[best[0]][best[1]]:.1f}% "
          f"vs random weights {100 * result.random[best[0]][best[1]]:.1f}% "
          f"vs raw pixels {100 * result.pixels:.1f}%")
    if result.zero_shot is not None:
        s = result.zero_shot_settings
        print(f"zero-shot image-text matching (no probe, {s['images']} test images, timesteps "
              f"{s['timesteps']}, {s['seeds']} noise draw(s)): {100 * result.zero_shot:.1f}% "
              "(chance 10.0%)")
    print(f"\nplot: {result.plot}\nresults: {Path(args.out) / 'demo_results.json'}"
          f"\ntime: {result.seconds:.0f} s")
    print("\nNext: `python -c \"import diffperception; print(diffperception.list_presets())\"` for "
          "presets; `diffperception export --help` to export ONNX/TorchScript/TensorRT; "
          "`diffperception bench --help` for latency and memory benchmarks; README.md for more.")
    return 0
