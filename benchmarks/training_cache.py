"""Training time per epoch with and without the feature cache, on the shipped digits model.

One scenario per setting (a dataclass, as the other benchmarks): the linear probe on
``diffperception:default`` (tap ``mid_block``, t = 50, pool 2) trained on the digits training split
with ``augment="none"``, once with ``feature_cache="off"`` (every epoch runs the trunk) and once
with ``feature_cache="on"`` (the first run fills the cache; the epochs then read it). The first
epoch of each run is a warm-up and is left out of the median; the cache-filling time is reported
apart. Results are appended to ``benchmarks/results/training_cache.jsonl`` with the machine's load
average, and the ratio is printed.

Run:
    python benchmarks/training_cache.py --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "training_cache.jsonl"


@dataclass(frozen=True)
class Scenario:
    """One training run.

    Attributes:
        feature_cache: ``"off"`` or ``"on"``.
        epochs: Epochs timed (the first is a warm-up).
        batch_size: Images per batch.
        threads: ``torch.set_num_threads``.
    """

    feature_cache: str
    epochs: int = 4
    batch_size: int = 32
    threads: int = 1


def run_scenario(scenario: Scenario, cache_dir: Path, out_dir: Path) -> dict:
    """Trains once; returns the per-epoch seconds, the median after warm-up and the fill time."""
    import torch

    from diffperception.modeling import load_preset
    from diffperception.training import TrainingArguments, class_names, classifier_from_config
    from diffperception.training import load_split, train

    torch.set_num_threads(scenario.threads)
    data = load_split("digits", "train")
    torch.manual_seed(0)
    model = classifier_from_config(load_preset("digits-default"), labels=class_names(data),
                                   head={"type": "linear", "pool": 2}, taps=["mid_block"],
                                   timesteps=[50])
    args = TrainingArguments(str(out_dir), epochs=scenario.epochs, augment="none",
                             batch_size=scenario.batch_size, feature_cache=scenario.feature_cache,
                             cache_dir=str(cache_dir), progress=False)
    began = time.perf_counter()
    history = train(model, data, args)
    total = time.perf_counter() - began
    seconds = [h["seconds"] for h in history]
    return {"scenario": asdict(scenario), "images": len(data), "epoch_seconds": seconds,
            "median_epoch_seconds": statistics.median(seconds[1:] or seconds),
            "total_seconds": total, "load_average": os.getloadavg(),
            "final_train_accuracy": history[-1]["train_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on", "on"):  # the second "on" run finds the cache full
            scenario = Scenario(mode, epochs=options.epochs, threads=options.threads)
            out = Path(tmp) / f"run-{len(results)}"
            results.append(run_scenario(scenario, Path(tmp) / "cache", out))
            results[-1]["cache_was_full"] = mode == "on" and len(results) == 3
    off, fill, warm = results
    ratio = off["median_epoch_seconds"] / warm["median_epoch_seconds"]
    summary = {"ratio_uncached_over_cached": ratio,
               "cache_fill_seconds": fill["total_seconds"] - warm["total_seconds"]}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        for result in results:
            handle.write(json.dumps(result) + "\n")
        handle.write(json.dumps({"summary": summary}) + "\n")
    for result in results:
        print(f"cache={result['scenario']['feature_cache']:>3}  epochs (s): "
              f"{[round(s, 3) for s in result['epoch_seconds']]}  median "
              f"{result['median_epoch_seconds']:.3f} s  run {result['total_seconds']:.1f} s  "
              f"load {tuple(round(x, 2) for x in result['load_average'])}")
    print(f"per-epoch time, uncached / cached: {ratio:.1f}x")


if __name__ == "__main__":
    main()
