"""Winoground-style swaps on the pairs model (``diffperception:pairs``), zero-shot.

Each of the ``digit-pairs`` benchmark's test examples holds two drawings of digits ``a != b``
from the digits test split (never seen in training), as ``[a | b]`` and ``[b | a]``, and the
captions ``"a <a> to the left of a <b>"`` / ``"a <b> to the left of a <a>"``; the text / image
/ group scores (ties wrong) say whether the score reads the relation. Also the matching
accuracy of test pair images over all 90 captions (chance 1/90). Scores:

- ``noise_error (zero_shot.caption_errors)``: the library's diffusion-classifier rule
  (:class:`~diffperception.evaluation.matching.NoiseErrorMatcher`), every image under the same
  seeded noise;
- the ``discffusion-digits`` preset on the pairs model (``DiffusionPerceptionForImageTextMatching``):
  the attention score pooled over text tokens (released code) or image tokens (paper), and its
  own ``noise_error`` scorer, at the preset's timesteps (199/399/599/799) and at 600/700/800.

Accuracy only (no timing). Run from the repository root:

    python -m benchmarks.matching_pairs --out benchmarks/results/matching_pairs.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAPER_T, ZERO_SHOT_T = [199, 399, 599, 799], [600, 700, 800]


def matching_model(source: str, pool: str, timesteps: list[int]):
    """The ``discffusion-digits`` preset on ``source`` with the given pooling and timesteps."""
    from diffperception import AutoDiffusionPerception
    from diffperception.default_model.pairs import PAIR_CAPTIONS
    from diffperception.modeling.presets import load_preset

    config = load_preset("discffusion-digits")
    config["backbone"]["repo_id"] = source
    config["head"]["pool"] = pool
    config["features"]["timesteps"] = list(timesteps)
    config["labels"] = list(PAIR_CAPTIONS)
    return AutoDiffusionPerception.from_config(config).eval()


class _WithScorer:
    """A matching model whose ``score`` uses one named scorer."""

    def __init__(self, model: Any, scorer: str) -> None:
        self.model, self.scorer = model, scorer

    def score(self, images, texts):
        return self.model.score(images, texts, scorer=self.scorer)


def variants(source: str) -> list[tuple[str, Any]]:
    """``(name, factory of a matcher)``; factories so that one model lives at a time."""
    from diffperception.evaluation.matching import NoiseErrorMatcher

    out: list[tuple[str, Any]] = [
        ("noise_error (zero_shot.caption_errors), t=600/700/800",
         lambda: NoiseErrorMatcher(source, timesteps=ZERO_SHOT_T))]
    for t_name, ts in (("199/399/599/799", PAPER_T), ("600/700/800", ZERO_SHOT_T)):
        for pool, what in (("text", "released code"), ("image", "paper")):
            out.append((f"attention, pool={pool} ({what}), t={t_name}",
                        lambda p=pool, t=ts: _WithScorer(matching_model(source, p, t),
                                                         "attention")))
        out.append((f"noise_error (matching model), t={t_name}",
                    lambda t=ts: _WithScorer(matching_model(source, "text", t), "noise_error")))
    return out


def caption_accuracy(matcher: Any, num_images: int) -> float:
    """Fraction of test pair images whose best of the 90 captions is their own."""
    from diffperception.default_model.pairs import PAIR_CAPTIONS, load_digit_pairs

    data = load_digit_pairs("test", num_images, seed=0)
    with torch.no_grad():
        scores = torch.as_tensor(matcher.score(torch.from_numpy(data["images"]),
                                               list(PAIR_CAPTIONS)))
    return float((scores.argmax(1).numpy() == data["labels"]).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="diffperception:pairs")
    parser.add_argument("--num-examples", type=int, default=200, help="swap examples")
    parser.add_argument("--num-caption-images", type=int, default=100,
                        help="test pair images matched over the 90 captions (0: skip)")
    parser.add_argument("--only", default=None, help="run the variants whose name contains this")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    from diffperception.evaluation import get_benchmark

    torch.manual_seed(0)
    bench = get_benchmark("digit-pairs")
    results: dict[str, Any] = {"source": args.source, "num_examples": args.num_examples,
                               "num_caption_images": args.num_caption_images,
                               "chance": {"text_score": 0.25, "image_score": 0.25,
                                          "group_score": 1 / 6, "caption_accuracy": 1 / 90},
                               "variants": {}}
    for name, factory in variants(args.source):
        if args.only and args.only not in name:
            continue
        matcher = factory()
        res = bench.run(matcher, "digit-pairs", "test", num_examples=args.num_examples,
                        progress=False)
        row = dict(res.metrics)
        if args.num_caption_images:
            row["caption_accuracy"] = caption_accuracy(matcher, args.num_caption_images)
        results["variants"][name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
