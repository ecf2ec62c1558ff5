"""Zero-shot caption matching of the shipped digits model with the Discffusion scores.

Every test-split digit (scikit-learn digits, the split the shipped model never trained on) is
scored against the ten training captions ("a handwritten digit zero" ... "nine") with the
``discffusion-digits`` preset; the accuracy is the fraction whose best caption is its own.
Variants: the attention score pooled over text tokens (the released code) and over image tokens
(the paper), and the noise-error (diffusion-classifier) score, at the preset's timesteps
(199/399/599/799) and at the shipped model's zero-shot timesteps (600/700/800).

Accuracy only (no timing). Run from the repository root:

    python -m benchmarks.matching_digits --out benchmarks/results/matching_digits.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def variants() -> list[tuple[str, dict, str]]:
    """``(name, preset overrides, scorer)``."""
    paper_t, zero_shot_t = [199, 399, 599, 799], [600, 700, 800]
    return [
        ("noise_error, t=199/399/599/799", {"timesteps": paper_t}, "noise_error"),
        ("attention, pool=text (released code), t=199/399/599/799", {"pool": "text"}, "attention"),
        ("attention, pool=image (paper), t=199/399/599/799", {"pool": "image"}, "attention"),
        ("noise_error, t=600/700/800", {"timesteps": zero_shot_t}, "noise_error"),
        ("attention, pool=text, t=600/700/800", {"pool": "text", "timesteps": zero_shot_t},
         "attention"),
        ("attention, pool=image, t=600/700/800", {"pool": "image", "timesteps": zero_shot_t},
         "attention"),
    ]


def build(overrides: dict):
    from diffperception import AutoDiffusionPerception
    from diffperception.modeling.presets import load_preset

    config = load_preset("discffusion-digits")
    if "pool" in overrides:
        config["head"]["pool"] = overrides["pool"]
    if "timesteps" in overrides:
        config["features"]["timesteps"] = overrides["timesteps"]
    return AutoDiffusionPerception.from_config(config)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="score the first N test images")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--variants", default=None,
                        help="comma-separated indices of the variants to run (default: all)")
    args = parser.parse_args(argv)
    from diffperception.default_model import load_digits_split

    torch.manual_seed(0)
    data = load_digits_split()
    images, labels = data["test_images"], data["test_labels"]
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    results = {"num_images": int(len(labels)), "chance": 0.1, "accuracy": {}}
    chosen = variants()
    if args.variants:
        chosen = [chosen[int(i)] for i in args.variants.split(",")]
    if args.out and args.out.is_file():  # keep the variants measured earlier with this script
        results["accuracy"] = json.loads(args.out.read_text()).get("accuracy", {})
    for name, overrides, scorer in chosen:
        model = build(overrides)
        scores = model.score(torch.from_numpy(images), scorer=scorer, batch_size=args.batch_size)
        accuracy = float((scores.argmax(1).numpy() == labels).mean())
        results["accuracy"][name] = accuracy
        print(f"{accuracy:.4f}  {name}", flush=True)
        if args.out:  # after every variant: a long run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
