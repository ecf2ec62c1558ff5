"""``diffperception train``: train a preset's (or a config's) head on an image-classification split.

Example:
    diffperception train --preset diffeed-digits --data digits --out runs/digits
    diffperception train --preset difformer-adm256 --repo adm256/ --data /data/cub --out runs/cub \
        --epochs 28 --batch-size 32 --augment code --seed 0
    diffperception train --out runs/digits --resume ...     # after a kill: continues, loses nothing
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name (diffperception.list_presets())")
    source.add_argument("--config", help="a config.json to start from instead of a preset")
    parser.add_argument("--repo", default=None, help="another base model (Hub id or folder)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--head", default=None, help="JSON head config replacing the preset's")
    parser.add_argument("--taps", default=None, help="comma-separated taps replacing the preset's")
    parser.add_argument("--timesteps", default=None, help="comma-separated timesteps")
    parser.add_argument("--data", required=True, help="'digits', an image folder or a saved dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--eval-split", default=None, help="split evaluated after every epoch")
    subset = parser.add_mutually_exclusive_group()
    subset.add_argument("--shots", type=int, default=None, help="images per class (k-shot)")
    subset.add_argument("--fraction", type=float, default=None, help="fraction of the labels")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, log, model)")
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's per head")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", default=None, choices=["sgd", "adam", "adamw"],
                        help="default: the task's recipe (sgd for the classification heads)")
    parser.add_argument("--augment", default="code", choices=["code", "paper", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--feature-cache", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--cache-dir", default=None, help="feature cache root")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--no-bundle-trunk", action="store_true",
                        help="save only what training changed; loading reads the base model")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _split_list(text: str | None, kind: type = str) -> list | None:
    return None if text is None else [kind(x.strip()) for x in text.split(",") if x.strip()]


def _config(args: argparse.Namespace) -> dict:
    from ..modeling import load_preset

    if args.preset is not None:
        return load_preset(args.preset)
    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist.")
    return json.loads(path.read_text())


def _has_class_labels(dataset) -> bool:
    feature = getattr(dataset, "features", {}).get("label") if hasattr(dataset, "features") \
        else None
    return getattr(feature, "names", None) is not None


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from . import TrainingArguments, class_names, model_from_config, train
    from .task import task_for_architecture

    head = json.loads(args.head) if args.head else None
    config = _config(args)
    if config.get("architecture") == "DiffusionPerceptionForFeatureExtraction" and head is None:
        raise ValueError(f"{args.preset or args.config} is a feature extractor: there is nothing "
                         "to train. Give it a head with --head, e.g. --head "
                         "'{\"type\": \"linear\", \"pool\": 2}', or pick a task preset.")
    architecture = config.get("architecture")
    if architecture == "DiffusionPerceptionForFeatureExtraction":
        architecture = "DiffusionPerceptionForImageClassification"  # with --head
    task = task_for_architecture(architecture)  # the task says what its data is
    train_data = task.load_data(args.data, args.split, shots=args.shots,
                                fraction=args.fraction, seed=args.seed)
    eval_data = task.load_data(args.data, args.eval_split) if args.eval_split else None
    options = TrainingArguments(
        output_dir=args.out, epochs=args.epochs, learning_rate=args.lr,
        batch_size=args.batch_size, optimizer=args.optimizer, augment=args.augment,
        seed=args.seed, mixed_precision=args.mixed_precision, feature_cache=args.feature_cache,
        cache_dir=args.cache_dir, resume=args.resume, num_workers=args.num_workers,
        bundle_trunk=not args.no_bundle_trunk, progress=not args.quiet, cpu=args.cpu)
    options.validate()
    set_seed(args.seed)  # the head's initialisation
    # class names come from the data when its "label" column names classes
    labels = class_names(train_data) if _has_class_labels(train_data) else None
    model = model_from_config(
        config, labels=labels, repo_id=args.repo, revision=args.revision,
        head=head, taps=_split_list(args.taps), timesteps=_split_list(args.timesteps, int))
    history = train(model, train_data, options, eval_data=eval_data)
    last = history[-1] if history else {}
    if PartialState().is_main_process:
        print(f"trained {len(history)} epochs; last: {json.dumps(last)}; model saved to {args.out}")
    return 0
