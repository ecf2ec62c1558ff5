"""Test accuracy of the text-free paper's four heads on the shipped digits model.

Each of the presets ``gd-linear-digits``, ``attention-digits``, ``difformer-digits`` and
``diffeed-digits`` (METHODS §1.2-1.5; taps and timesteps chosen for the shipped model) is trained
with the training loop's recipe (METHODS §1.6: SGD without momentum, the head's learning rate,
batch 32, StepLR every 7 epochs by 0.1) on the digits training split, once with every label
(1,198 images) and once with 5 labels per class (a seeded class-balanced subset, 50 images), on
the shipped network's trained weights and on its random-weight twin
(``evaluation.random_weight_copy``: the same U-Net config, freshly initialised, seed 0): 16 runs.
Each trained classifier is scored by ``evaluation.evaluate_classifier`` on the whole digits test
split (599 images, top-1, seeded noise).

Two settings differ from the loop's defaults, and both are recorded in the output:

- ``--epochs`` (default 7, the recipe's first StepLR stage; the recipe has 28): the DifFormer
  head (3 timesteps x 193 tokens) takes 1-3 minutes per full-label epoch on one thread of the
  2-core development machine, so 28 epochs for its two full-label runs would take hours.
  The same number of epochs is used for every head.
- ``--augment`` (default ``none``: resize + centre crop, the evaluation transform; the recipe's is
  ``code``, random scale-crop + horizontal flip): a mirrored digit is not the same digit, and
  fixed features let the linear, Attention and DifFormer heads train on the feature cache
  (DifFeed's feedback changes the trunk, so it always runs the trunk).

Resumable: each finished run is written to the JSON at once and skipped when the script is run
again with the same settings; a run killed half-way continues from its last epoch checkpoint
(``TrainingArguments(resume=True)``) in ``--work-dir``.

Run (from the repository root; what produced ``benchmarks/results/heads_digits.{json,md}``):
    OMP_NUM_THREADS=1 python benchmarks/heads_digits.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRESETS = ("gd-linear-digits", "attention-digits", "difformer-digits", "diffeed-digits")
RUN_ORDER = ("gd-linear-digits", "attention-digits", "diffeed-digits", "difformer-digits")
WEIGHTS = ("trained", "random")
SHOTS: tuple[int | None, ...] = (None, 5)  # None: every label
HEAD_NAMES = {"gd-linear-digits": "linear (GD)", "attention-digits": "Attention",
              "difformer-digits": "DifFormer", "diffeed-digits": "DifFeed"}


@dataclass(frozen=True)
class Scenario:
    """One training + evaluation run.

    Attributes:
        preset: The classifier preset (one of ``PRESETS``).
        weights: ``"trained"`` (the shipped network) or ``"random"`` (its random-weight twin).
        shots: Labelled training images per class; None: the whole training split.
        epochs: Training epochs.
        augment: The training augmentation (``"none"``, ``"code"`` or ``"paper"``).
        seed: Seeds the subset, the head's initialisation, the shuffling and the evaluation.
        batch_size: Images per batch (training and evaluation).
    """

    preset: str
    weights: str
    shots: int | None
    epochs: int = 7
    augment: str = "none"
    seed: int = 0
    batch_size: int = 32

    @property
    def labels(self) -> str:
        return "full" if self.shots is None else f"{self.shots}-shot"

    @property
    def key(self) -> str:
        return f"{self.preset}/{self.weights}/{self.labels}"


def scenarios(epochs: int, augment: str, seed: int, batch_size: int,
              presets: Sequence[str] = PRESETS) -> list[Scenario]:
    """The runs in the order they are run: cheap heads first (DifFormer, the slowest, last)."""
    order = sorted(presets, key=lambda p: RUN_ORDER.index(p) if p in RUN_ORDER else 99)
    return [Scenario(p, w, s, epochs, augment, seed, batch_size)
            for p in order for s in SHOTS for w in WEIGHTS]


def random_weights_folder(work_dir: Path, seed: int = 0) -> Path:
    """The shipped model's random-weight twin in ``work_dir`` (made once, then reused)."""
    from diffperception.default_model import DEFAULT_MODEL_PATH
    from diffperception.evaluation import random_weight_copy

    folder = work_dir / f"random-weights-seed{seed}"
    if not (folder / "unet" / "config.json").is_file() or not any((folder / "unet").glob(
            "*.safetensors")):
        tmp = folder.with_name(folder.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        random_weight_copy(DEFAULT_MODEL_PATH, tmp, seed=seed)
        tmp.rename(folder)
    return folder


def run_scenario(scenario: Scenario, work_dir: Path, cache_dir: Path, *,
                 test_limit: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Trains one head (resuming a killed run) and scores it on the digits test split.

    Args:
        scenario: What to run.
        work_dir: Holds the run folders (checkpoints, model) and the random-weight copy.
        cache_dir: The feature cache's root.
        test_limit: Score a seeded class-balanced subset of this many test images (None: all
            599; only the smoke test sets it).
        progress: Show tqdm bars.

    Returns:
        The run's record: accuracy, images counted, the training history's last epoch and the
        settings.
    """
    import torch
    from accelerate.utils import set_seed

    from diffperception.evaluation import evaluate_classifier, load_split as load_eval_split
    from diffperception.modeling import load_preset
    from diffperception.training import (TrainingArguments, class_names, classifier_from_config,
                                         load_split, recipe_learning_rate, train)

    repo = None if scenario.weights == "trained" else random_weights_folder(work_dir)
    train_data = load_split("digits", "train", shots=scenario.shots, seed=scenario.seed)
    test_data = load_eval_split("digits", "test", limit=test_limit, seed=scenario.seed)
    set_seed(scenario.seed)  # the head's initialisation, as `diffperception train` does
    model = classifier_from_config(load_preset(scenario.preset), labels=class_names(train_data),
                                   repo_id=repo)
    out = work_dir / "runs" / scenario.key.replace("/", "__")
    args = TrainingArguments(str(out), epochs=scenario.epochs, augment=scenario.augment,
                             seed=scenario.seed, batch_size=scenario.batch_size,
                             cache_dir=str(cache_dir), resume=True, progress=progress)
    began = time.perf_counter()
    history = train(model, train_data, args)
    train_seconds = time.perf_counter() - began
    result = evaluate_classifier(model, test_data, batch_size=scenario.batch_size,
                                 seed=scenario.seed, progress=progress)
    head_type = model.config.head.type
    return {
        "scenario": asdict(scenario), "head": head_type,
        "base_model": "diffperception:default" if repo is None else str(repo),
        "learning_rate": recipe_learning_rate(head_type),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_images": len(train_data), "test_images": result.num_images,
        "top1": result.top1, "correct": round(result.top1 * result.num_images),
        "top5": result.top5, "last_epoch": history[-1] if history else None,
        "feature_cache_used": bool(history and history[-1].get("cached")),
        "train_seconds_this_call": train_seconds, "load_average": os.getloadavg(),
    }


def markdown_table(runs: dict[str, dict[str, Any]], presets: Sequence[str] = PRESETS) -> str:
    """Top-1 (%) per head (rows) and labels x weights (columns); missing runs are ``-``."""
    columns = [(s, w) for s in SHOTS for w in WEIGHTS]

    def name(shots: int | None, weights: str) -> str:
        return f"{'all labels' if shots is None else f'{shots} per class'}, {weights} weights"

    lines = ["| head | " + " | ".join(name(s, w) for s, w in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for preset in presets:
        cells = []
        for shots, weights in columns:
            run = runs.get(Scenario(preset, weights, shots).key)
            cells.append("-" if run is None else f"{100 * run['top1']:.1f}")
        lines.append(f"| {HEAD_NAMES.get(preset, preset)} (`{preset}`) | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7,
                        help="epochs per run (the recipe has 28; see the module docstring)")
    parser.add_argument("--augment", default="none", choices=["none", "code", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--work-dir", default="runs/heads_digits",
                        help="run folders, checkpoints and the random-weight copy")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default WORK/cache)")
    parser.add_argument("--results", default=str(RESULTS_DIR / "heads_digits"),
                        help="output stem: STEM.json and STEM.md")
    parser.add_argument("--progress", action="store_true")
    options = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(options.threads))
    import torch

    torch.set_num_threads(options.threads)
    from diffperception.benchmarks.machine import describe_machine

    presets = [p.strip() for p in options.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"--presets {unknown} unknown: choose from {list(PRESETS)}.")
    work_dir = Path(options.work_dir).expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(options.cache_dir) if options.cache_dir else work_dir / "cache"
    json_path, md_path = Path(options.results + ".json"), Path(options.results + ".md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"epochs": options.epochs, "augment": options.augment, "seed": options.seed,
                "batch_size": options.batch_size, "threads": options.threads,
                "optimizer": "sgd (momentum 0, weight decay 0)",
                "lr_schedule": "StepLR every 7 epochs by 0.1",
                "learning_rates": "the recipe's per head (training.RECIPE_LEARNING_RATES)",
                "shots": [s for s in SHOTS], "weights": list(WEIGHTS),
                "random_weights": "evaluation.random_weight_copy(DEFAULT_MODEL_PATH, seed=0)",
                "evaluation": "evaluation.evaluate_classifier on the whole digits test split, "
                              "top-1, noise seeded (the presets' fixed noise, seed 0)"}
    data: dict[str, Any] = {"settings": settings, "runs": {}}
    if json_path.is_file():
        previous = json.loads(json_path.read_text())
        if previous.get("settings") == settings:
            data = previous
        else:
            print(f"{json_path} holds runs of other settings; starting afresh.", file=sys.stderr)
    data["command"] = ("OMP_NUM_THREADS=" + os.environ["OMP_NUM_THREADS"] + " python "
                       + shlex.join(["benchmarks/heads_digits.py", *(argv if argv is not None
                                                                     else sys.argv[1:])]))
    data["machine"] = describe_machine(options.threads, measure=False)
    data["versions"] = {"torch": torch.__version__}
    todo = [s for s in scenarios(options.epochs, options.augment, options.seed,
                                 options.batch_size, presets) if s.key not in data["runs"]]
    for number, scenario in enumerate(todo, 1):
        print(f"[{number}/{len(todo)}] {scenario.key}", flush=True)
        record = run_scenario(scenario, work_dir, cache_dir, progress=options.progress)
        record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        data["runs"][scenario.key] = record
        _write_json(json_path, data)
        print(f"    top-1 {100 * record['top1']:.1f}% ({record['correct']} of "
              f"{record['test_images']})", flush=True)
    _write_json(json_path, data)
    table = markdown_table(data["runs"], presets)
    header = (f"Top-1 accuracy (%) on the whole digits test split (599 images) of each head "
              f"trained for {options.epochs} epochs (augment `{options.augment}`, seed "
              f"{options.seed}) on the shipped model `diffperception:default` and on its "
              "random-weight copy.\n\n")
    md_path.write_text(header + table + "\n\n`" + data["command"] + "`\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
