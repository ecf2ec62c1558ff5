"""Vermouth on the offline digit stand-ins: short training runs and the unseen-class figures.

Accuracy figures only (no timing). Each run trains the head of a ``vermouth-digits-*`` preset
with ``diffperception.training.train`` and evaluates it with the project's protocols:

- ``sbir``: ZS-SBIR on ``digits-sketch`` (train on digits 0-6, test on unseen 7-9), rows: add
  baseline / + fuse (caption prompts), and null / shuffled / caption prompts (+ fuse);
- ``fewshot``: 16 digits per class, top-1 on held-out digits;
- ``segmentation``: ``digits-canvas`` mIoU on seen and unseen classes (set_labels to all ten).

Usage: ``python benchmarks/vermouth_digits.py sbir --epochs 3`` (JSON lines appended to
``benchmarks/results/vermouth_digits/results.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from diffperception.config import PromptConfig
from diffperception.data import few_shot, load_image_dataset
from diffperception.features.captions import CaptionCache, NoisePredictionCaptioner
from diffperception.modeling import AutoDiffusionPerception
from diffperception.modeling.presets import preset_config
from diffperception.training import TrainingArguments, train

RESULTS = Path(__file__).parent / "results" / "vermouth_digits" / "results.jsonl"
_CAPTIONS: dict[str, CaptionCache] = {}


def build(preset: str, *, prompt: str = "caption", fuse: str | None = None, size=None):
    config = preset_config(preset, size=size)
    candidates = config.features.prompt.text
    if prompt == "null":
        config.features.prompt = PromptConfig(kind="null")
    elif prompt == "shuffled":
        config.features.prompt = PromptConfig(kind="shuffled", text=list(candidates))
    if fuse is not None:
        config.head.kwargs["fuse"] = fuse
    model = AutoDiffusionPerception.from_config(config)
    if prompt == "caption":  # one caption cache shared by every run (captions do not change)
        if preset not in _CAPTIONS:
            # one timestep (700) instead of the default 600-800: a third of the cost
            _CAPTIONS[preset] = CaptionCache(NoisePredictionCaptioner(
                model.backbone, candidates, timesteps=(700,)))
        model.backbone.set_captioner(_CAPTIONS[preset])
    return model


def fit(model, data, epochs: int, lr: float, batch_size: int = 32):
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        train(model, data, TrainingArguments(
            output_dir=out, epochs=epochs, learning_rate=lr, optimizer="adamw",
            weight_decay=5e-4, batch_size=batch_size, augment="none", feature_cache="off",
            progress=False, lr_step_epochs=10_000))
    return model.eval()


def record(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_sbir(epochs: int, lr: float) -> None:
    from diffperception.evaluation.sbir import evaluate_retrieval

    train_data = load_image_dataset("digits-sketch", "train")
    test = load_image_dataset("digits-sketch", "test")
    for prompt, fuse in (("null", "fuse"), ("shuffled", "fuse"), ("caption", "add"),
                         ("caption", "fuse")):
        start = time.time()
        model = build("vermouth-digits-sbir", prompt=prompt, fuse=fuse)
        with torch.no_grad():
            before = evaluate_retrieval(model, test, progress=False)["metrics"]
        fit(model, train_data, epochs, lr)
        with torch.no_grad():
            metrics = evaluate_retrieval(model, test, progress=False)["metrics"]
        record({"task": "sbir", "prompt": prompt, "fuse": fuse, "expert": None,
                "epochs": epochs, "lr": lr, "untrained_map@all": before.get("map@all"),
                **{k: v for k, v in metrics.items() if isinstance(v, float)},
                "wall_s_loaded_machine": round(time.time() - start)})


def run_fewshot(epochs: int, lr: float, limit: int = 300) -> None:
    import numpy as np

    from diffperception.evaluation.metrics import accuracy

    train_data = few_shot(load_image_dataset("digits", "train"), 16)
    test = load_image_dataset("digits", "test")
    test = test.select(range(min(limit, len(test))))
    for prompt in ("null", "caption"):
        model = fit(build("vermouth-digits-classification", prompt=prompt), train_data,
                    epochs, lr, batch_size=32)
        from diffperception.evaluation.splits import image_batches

        logits, labels = [], []
        with torch.no_grad():
            for images, y in image_batches(test, 50):
                logits.append(model(images).logits)
                labels.append(y)
        acc = accuracy(torch.cat(logits).numpy(), np.concatenate(labels), num_classes=10)
        record({"task": "fewshot", "shots": 16, "prompt": prompt, "epochs": epochs, "lr": lr,
                "test_images": len(test), "top1": acc})


def run_segmentation(epochs: int, lr: float) -> None:
    from diffperception.evaluation.open_vocabulary import DigitsCanvas

    train_data = load_image_dataset("digits-canvas", "train")
    for prompt in ("null",):
        model = fit(build("vermouth-digits-segmentation", prompt=prompt), train_data, epochs, lr,
                    batch_size=16)
        result = DigitsCanvas().run(model, "digits-canvas", "test")
        metrics = result.metrics if hasattr(result, "metrics") else result
        record({"task": "segmentation", "prompt": prompt, "epochs": epochs, "lr": lr,
                "train_norms": True, **{k: v for k, v in dict(metrics).items()
                                        if isinstance(v, float)}})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["sbir", "fewshot", "segmentation"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    {"sbir": run_sbir, "fewshot": run_fewshot, "segmentation": run_segmentation}[args.task](
        args.epochs, args.lr)
