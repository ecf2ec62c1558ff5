"""Few-shot K/V prompt learning on the pairs model, then the swap test again (before / after).

The ``discffusion-digits`` preset on ``diffperception:pairs`` (attention score, pooled over text
tokens, t = 199/399/599/799, K/V prompts zero-initialised so the untrained model is the base);
training data: the first ``fraction`` of the digit-pairs train split (5%: 1000 images, S002's
few-shot setting); each image's candidates are its own caption first, the swapped caption, and
``extra`` random other captions; loss: the hardest-negative triplet loss, margin 0.1
(:mod:`diffperception.training.matching_loss`); AdamW (weight decay 1e-2, grad-norm clip 1.0)
on the K/V prompts only, fresh noise every step (the preset's fixed noise bank is kept for
evaluation). Seeded. Accuracy only (no timing). Run from the repository root:

    python -m benchmarks.matching_pairs_prompts --steps 300 --out benchmarks/results/matching_pairs_prompts.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def build(source: str, noise_kind: str):
    from diffperception import AutoDiffusionPerception
    from diffperception.default_model.pairs import PAIR_CAPTIONS
    from diffperception.modeling.presets import load_preset

    config = load_preset("discffusion-digits")
    config["backbone"]["repo_id"] = source
    config["features"]["taps"] = [t for t in config["features"]["taps"] if t != "conv_out"]
    config["features"]["noise"]["kind"] = noise_kind
    config["labels"] = list(PAIR_CAPTIONS)
    return AutoDiffusionPerception.from_config(config)


def candidates(left: int, right: int, extra: int, rng: np.random.Generator) -> list[str]:
    """Own caption, swapped caption, then ``extra`` other captions."""
    from diffperception.default_model.pairs import PAIR_CAPTIONS, pair_caption

    own, swapped = pair_caption(left, right), pair_caption(right, left)
    others = [c for c in PAIR_CAPTIONS if c not in (own, swapped)]
    return [own, swapped] + [others[i] for i in rng.choice(len(others), extra, replace=False)]


def swap_scores(model, num_examples: int) -> dict:
    from diffperception.evaluation import get_benchmark

    model.eval()
    return get_benchmark("digit-pairs").run(model, "digit-pairs", "test",
                                            num_examples=num_examples, progress=False).metrics


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="diffperception:pairs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--extra", type=int, default=2, help="random other captions per image")
    parser.add_argument("--lr", type=float, default=1e-4, help="S002's 1e-4 by default")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--num-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from diffperception.default_model.pairs import NUM_TRAIN_PAIRS, load_digit_pairs
    from diffperception.training.matching_loss import matching_loss

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build(args.source, "fixed")
    before = swap_scores(model, args.num_examples)
    print(f"before: {before}", flush=True)
    train = load_digit_pairs("train", seed=0)
    n = int(round(args.fraction * NUM_TRAIN_PAIRS))
    images, left, right = train["images"][:n], train["left"][:n], train["right"][:n]
    trainer = build(args.source, "random")
    params = trainer.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    trainer.train()
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        idx = rng.choice(n, args.batch_size, replace=False)
        texts = [candidates(left[i], right[i], args.extra, rng) for i in idx]
        scores = trainer(torch.from_numpy(images[idx]), texts).scores  # (B, 2 + extra)
        loss = matching_loss(scores, 0, kind="triplet", margin=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {np.mean(losses[-25:]):.4f}", flush=True)
    model.load_state_dict(trainer.state_dict())
    after = swap_scores(model, args.num_examples)
    print(f"after: {after}", flush=True)
    result = {"source": args.source, "settings": vars(args) | {"out": None, "train_images": n},
              "before": before, "after": after, "train_wall_s": time.perf_counter() - start,
              "loss_curve": {str(i + 25): float(np.mean(losses[i:i + 25]))
                             for i in range(0, len(losses), 25)}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
