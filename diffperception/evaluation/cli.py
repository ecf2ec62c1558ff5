"""``diffperception evaluate`` and ``diffperception sweep``.

``evaluate`` loads a saved classifier (``AutoDiffusionPerception.from_pretrained``), measures
top-1 / top-5 (and weighted kNN with ``--knn``) on a whole split, writes ``eval_<split>.json`` and
``confusion_<split>.png`` next to the model and the results into its card's ``model-index``.

``sweep`` fits a linear probe per (tap, timestep) of a grid from one batched backbone pass per
batch of images, and writes a table, a heatmap PNG and a JSON.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["add_evaluate_arguments", "run_evaluate", "add_sweep_arguments", "run_sweep"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers "
                                         "(e.g. 10,50,100).") from None


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer.")
    return value


# ----------------------------------------------------------------------------------- evaluate

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffperception evaluate``."""
    parser.add_argument("model", nargs="?", default=None,
                        help="saved model folder (save_pretrained) or Hub repo id")
    parser.add_argument("--preset", default=None,
                        help="evaluate a preset's untrained model instead (zero-shot protocols, "
                             "e.g. --preset dift-sd21 --benchmark spair71k)")
    parser.add_argument("--benchmark", default=None,
                        help="a registered benchmark (diffperception.evaluation.list_benchmarks()) "
                             "reading its own layout under --data; default: the classification "
                             "protocol (top-1 / top-5 / kNN) for image classifiers")
    parser.add_argument("--benchmark-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a benchmark setting (VALUE read as JSON, else as a string); repeat "
                             "for several")
    parser.add_argument("--data", required=True,
                        help="'digits', an image folder (<root>/<split>/<class>/...) or a folder "
                             "written by datasets' save_to_disk")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--batch-size", type=_positive, default=32)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the noise of a random-noise model (default: 0)")
    parser.add_argument("--knn", action="store_true",
                        help="also weighted kNN (DINO's rule, T=0.07) on the backbone's pooled "
                             "features, with the --knn-split split as the memory bank")
    parser.add_argument("--knn-split", default="train")
    parser.add_argument("--knn-k", type=_int_list, default=[20, 200],
                        help="neighbour counts (default: 20,200)")
    parser.add_argument("--out", default=None,
                        help="folder for eval_<split>.json and the PNG (default: the model "
                             "folder; required for a Hub repo id)")
    parser.add_argument("--no-card", action="store_true",
                        help="do not write the results into the model card's model-index")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no-progress", action="store_true")


def _load_classifier(name: str, device: str | None):
    import torch

    from ..modeling import AutoDiffusionPerception, DiffusionPerceptionForImageClassification

    model = AutoDiffusionPerception.from_pretrained(name)
    if not isinstance(model, DiffusionPerceptionForImageClassification):
        raise ValueError(f"{name} holds a {type(model).__name__}; `diffperception evaluate` "
                         "evaluates image classifiers (DiffusionPerceptionForImageClassification).")
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def _print_evaluation(result, split: str) -> None:
    right = int(round(result.top1 * result.num_images))
    print(f"{split} split, {result.num_images} images, seed {result.seed}")
    print(f"top-1: {100 * result.top1:.2f}% ({right} of {result.num_images})")
    print(f"top-5: {100 * result.top5:.2f}%")
    for k, values in sorted(result.knn.items()):
        print(f"kNN k={k} (T=0.07, DINO weighting): top-1 {100 * values['top1']:.2f}%, "
              f"top-5 {100 * values['top5']:.2f}%")
    for k in result.knn_settings.get("skipped_k", []):
        print(f"kNN k={k} skipped: only {result.knn_settings['num_train']} train images")


def _benchmark_options(pairs: list[str]) -> dict:
    import json

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--benchmark-option {pair!r} is not KEY=VALUE.")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            options[key.strip().replace("-", "_")] = value
    return options


def _load_model(args: argparse.Namespace):
    import torch

    from ..modeling import AutoDiffusionPerception

    if (args.model is None) == (args.preset is None):
        raise ValueError("pass a saved model (folder or repo id) or --preset NAME, not both "
                         "and not neither.")
    if args.preset is not None:
        model = AutoDiffusionPerception.from_preset(args.preset)
    else:
        model = AutoDiffusionPerception.from_pretrained(args.model)
    return model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def run_benchmark(args: argparse.Namespace) -> int:
    """Runs ``diffperception evaluate --benchmark NAME``; returns the exit status."""
    from .benchmarks import card_entries, get_benchmark, write_benchmark_result
    from .results import update_model_card

    if (args.model is None) == (args.preset is None):
        raise ValueError("pass a saved model (folder or repo id) or --preset NAME, not both "
                         "and not neither.")
    benchmark = get_benchmark(args.benchmark)
    options = _benchmark_options(args.benchmark_option)
    local = args.model is not None and Path(args.model).expanduser().is_dir()
    if args.out is None and not local:
        raise ValueError("the results need a folder: pass --out DIR (a preset or a Hub repo id "
                         "has no local folder).")
    model = _load_model(args)
    result = benchmark.run(model, args.data, args.split, batch_size=args.batch_size,
                           seed=args.seed, progress=not args.no_progress, **options)
    print(benchmark.format(result))
    model_id = args.model if args.model is not None else f"preset:{args.preset}"
    path = write_benchmark_result(result, args.out or args.model, task_type=benchmark.task_type,
                                  source=args.data, model_id=model_id,
                                  extra={"batch_size": args.batch_size, "seed": args.seed,
                                         "options": options})
    print(f"wrote {path}")
    if local and not args.no_card:
        card = update_model_card(args.model, card_entries(result, benchmark.task_type,
                                                          args.benchmark), model=model)
        print(f"model-index of {card} updated")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Runs ``diffperception evaluate``; returns the exit status."""
    if args.benchmark is not None:
        return run_benchmark(args)
    if args.model is None:
        raise ValueError("the classification protocol evaluates a saved classifier: pass its "
                         "folder or repo id (--preset needs --benchmark).")
    from .classification import evaluate_classifier
    from .results import card_metrics, update_model_card, write_evaluation
    from .splits import load_split

    folder = Path(args.model).expanduser()
    local = folder.is_dir()
    if args.out is None and not local:
        raise ValueError(f"{args.model} is no local folder: pass --out DIR for the results.")
    model = _load_classifier(args.model, args.device)
    test = load_split(args.data, args.split)
    knn_train = load_split(args.data, args.knn_split) if args.knn else None
    result = evaluate_classifier(model, test, batch_size=args.batch_size, seed=args.seed,
                                 knn_train=knn_train, knn_ks=args.knn_k,
                                 progress=not args.no_progress)
    _print_evaluation(result, args.split)
    paths = write_evaluation(result, args.out or folder, split=args.split, source=args.data,
                             model_id=args.model, extra={"batch_size": args.batch_size})
    print(f"wrote {paths['json']} and {paths['confusion']}")
    if local and not args.no_card:
        card = update_model_card(folder, card_metrics(result, args.data, args.split), model=model)
        print(f"model-index of {card} updated")
    return 0


# -------------------------------------------------------------------------------------- sweep

def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffperception sweep``."""
    parser.add_argument("model", help="diffusers repo id or folder, or diffperception:default")
    parser.add_argument("--data", required=True,
                        help="'digits', an image folder or a folder written by save_to_disk")
    parser.add_argument("--taps", type=_name_list, required=True,
                        help="comma-separated map taps, e.g. down_blocks.1,mid_block,up_blocks.0")
    parser.add_argument("--timesteps", type=_int_list, required=True,
                        help="comma-separated timesteps, e.g. 10,50,100,200,400,700")
    parser.add_argument("--split-train", default="train")
    parser.add_argument("--split-test", default="test")
    parser.add_argument("--pool", type=_positive, default=2, help="average-pool side (default 2)")
    parser.add_argument("--limit", type=_positive, default=None,
                        help="at most N images per split (a seeded subset)")
    parser.add_argument("--batch-size", type=_positive, default=64,
                        help="images per backbone call; each gives one trunk sample per timestep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and the subset")
    parser.add_argument("--n-jobs", type=int, default=1, help="probes fitted in parallel")
    parser.add_argument("--cache-dir", default=None,
                        help="pooled-feature cache (default: OUT/cache; reused by a re-run)")
    parser.add_argument("--out", default="sweep_output",
                        help="folder for sweep.json, sweep.md and sweep_heatmap.png")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--no-progress", action="store_true")


def run_sweep(args: argparse.Namespace) -> int:
    """Runs ``diffperception sweep``; returns the exit status."""
    from .splits import load_split
    from .sweep import run_sweep as sweep_grid
    from .sweep import write_sweep

    out = Path(args.out)
    train = load_split(args.data, args.split_train, limit=args.limit, seed=args.seed)
    test = load_split(args.data, args.split_test, limit=args.limit, seed=args.seed)
    result = sweep_grid(args.model, train, test, taps=args.taps, timesteps=args.timesteps,
                        pool=args.pool, batch_size=args.batch_size, seed=args.seed,
                        cache_dir=args.cache_dir or out / "cache", device=args.device,
                        n_jobs=args.n_jobs, progress=not args.no_progress)
    command = "diffperception sweep " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "sweep" else None
    paths = write_sweep(result, out, extra={
        "data": str(args.data), "splits": {"train": args.split_train, "test": args.split_test},
        "limit": args.limit, "command": command})
    tap, t, acc = result.best()
    print(f"linear-probe test accuracy (%), {result.num_train} train / {result.num_test} test "
          f"images, pool {result.pool}, seed {result.seed}:\n")
    print(result.table())
    print(f"\nbest: {tap} at t={t}: {100 * acc:.1f}%")
    print(f"features {result.seconds['features']:.1f} s (cache: "
          f"{result.cache['train']['status']} / {result.cache['test']['status']}), "
          f"probes {result.seconds['probes']:.1f} s")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
