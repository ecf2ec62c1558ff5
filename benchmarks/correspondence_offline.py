"""PCK@0.1 on the offline correspondence stand-ins: the shipped digits model against the same
network with random weights, zero-shot (cosine nearest neighbour) and with GDF's 3x3 conv
aggregator fitted on training pairs, next to two baselines that need no network: "no motion"
(the target point is the source point, rescaled) and raw pixels as descriptors.

The aggregator is trained by the shared training loop (``diffperception.training.train``, the
correspondence task: GDF's AdamW, lr 5e-4, weight decay 0.01, one pair per step, symmetric
CLIP-style loss with logit scale 1/0.07, 2 epochs; METHODS.md §4.4) on pairs made from other
images / other warps than the evaluated ones: warped-digits trains on the train digits;
warped-photos and stereo train on warped photos of another seed.

Usage:
    python -m benchmarks.correspondence_offline --out benchmarks/results/correspondence_offline
    python -m benchmarks.correspondence_offline --quick     # a few pairs, to check it runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from diffperception import DiffusionPerceptionForSemanticCorrespondence
from diffperception.data.correspondence import (
    stereo_pairs,
    warped_digit_pairs,
    warped_photo_pairs,
)
from diffperception.default_model import DEFAULT_MODEL_PATH
from diffperception.evaluation import random_weight_copy
from diffperception.evaluation.correspondence import PCKMeter, evaluate_correspondence
from diffperception.modeling.semantic_correspondence import match_descriptors
from diffperception.training import TrainingArguments, train

TAPS = {"up_blocks.0": ["up_blocks.0"], "up_blocks.1": ["up_blocks.1"],
        "mid+up_blocks.1": ["mid_block", "up_blocks.1"]}
TIMESTEP = 50
SIZE = 32


def benchmark_pairs(quick: bool) -> dict[str, list]:
    n = 4 if quick else None
    return {
        "warped-digits": warped_digit_pairs(n or 200, seed=0),
        "warped-photos (affine)": warped_photo_pairs(n or 24, warp="affine", size=256, seed=0),
        "warped-photos (tps)": warped_photo_pairs(n or 24, warp="tps", size=256, seed=0),
        "stereo (160 px crops)": stereo_pairs(grid=8, crops=2 if quick else 12, seed=0)[1:],
    }


def training_pairs(name: str, quick: bool) -> list:
    n = 4 if quick else None
    if name == "warped-digits":
        return warped_digit_pairs(n or 300, split="train", seed=1)
    warp = "tps" if "tps" in name else "affine"
    return warped_photo_pairs(n or 60, warp=warp, size=256, seed=1)


def build(folder: Path, taps: list[str], aggregator: str = "none", seed: int = 0):
    torch.manual_seed(seed)
    return DiffusionPerceptionForSemanticCorrespondence({
        "architecture": "DiffusionPerceptionForSemanticCorrespondence",
        "backbone": {"repo_id": str(folder), "family": "sd"},
        "features": {"taps": taps, "timesteps": [TIMESTEP], "noise": {"kind": "fixed", "seed": 0}},
        "preprocess": {"size": [SIZE, SIZE], "crop": "none"},
        "head": {"type": "correspondence", "aggregator": aggregator},
    }).eval()


def fit_aggregator(model, pairs: list, folder: Path, epochs: int = 2) -> list[float]:
    """GDF's recipe on ``pairs`` through the shared training loop (the correspondence training
    task: AdamW 5e-4, one pair per step; weight decay 0.01); returns each epoch's mean loss."""
    history = train(model, pairs, TrainingArguments(
        output_dir=str(folder), epochs=epochs, batch_size=1, weight_decay=0.01, progress=False,
        cpu=True, feature_cache="off"))
    model.eval()
    return [record["train_loss"] for record in history]


def baseline(pairs: list, kind: str) -> dict[str, float]:
    meter = PCKMeter(alphas=(0.1,))
    for pair in pairs:
        source, target = pair.images()
        if kind == "no motion":
            found = pair.source_points * np.array([target.shape[1] / source.shape[1],
                                                   target.shape[0] / source.shape[0]])
        else:  # raw pixels at the network's input size as descriptors
            def small(im):
                x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255
                return torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                                       antialias=True)[0] - 0.5
            found, _ = match_descriptors(small(source), small(target),
                                         torch.from_numpy(pair.source_points),
                                         source.shape[:2], target.shape[:2])
            found = found.numpy()
        meter.add(found, pair.target_points, image_hw=target.shape[:2], bbox=pair.target_bbox,
                  category=pair.category)
    return meter.compute()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/correspondence_offline")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-conv", action="store_true", help="skip the aggregator fits")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sets = benchmark_pairs(args.quick)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"trained": Path(DEFAULT_MODEL_PATH),
                   "random": random_weight_copy(DEFAULT_MODEL_PATH, Path(tmp) / "random")}
        for name, pairs in sets.items():
            for kind in ("no motion", "pixels"):
                rows.append({"benchmark": name, "weights": "-", "taps": kind, "method": "baseline",
                             **baseline(pairs, kind)})
            for weights, folder in folders.items():
                for label, taps in TAPS.items():
                    model = build(folder, taps)
                    meter = evaluate_correspondence(model, pairs, progress=False)
                    rows.append({"benchmark": name, "weights": weights, "taps": label,
                                 "method": "nearest neighbour", **meter.compute()})
                    print(rows[-1], flush=True)
                    if args.no_conv or label != "mid+up_blocks.1":
                        continue
                    model = build(folder, taps, aggregator="conv")
                    history = fit_aggregator(model, training_pairs(name, args.quick),
                                             Path(tmp) / f"fit-{len(rows)}")
                    meter = evaluate_correspondence(model, pairs, progress=False)
                    rows.append({"benchmark": name, "weights": weights, "taps": label,
                                 "method": "conv aggregator", "train_loss": history,
                                 **meter.compute()})
                    print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"timestep": TIMESTEP, "size": SIZE, "noise": "fixed, seed 0", "quick": args.quick,
                "pairs": {k: len(v) for k, v in sets.items()},
                "keypoints": {k: int(sum(len(p.source_points) for p in v))
                              for k, v in sets.items()}}
    (out / "pck.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    lines = ["| benchmark | weights | taps | method | PCK@0.1 img | PCK@0.1 bbox "
             "| bbox per image |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['weights']} | {r['taps']} | {r['method']} | "
                     f"{100 * r['pck@0.1_img']:.1f} | {100 * r['pck@0.1_bbox']:.1f} | "
                     f"{100 * r['pck@0.1_bbox_per_image']:.1f} |")
    (out / "pck.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
