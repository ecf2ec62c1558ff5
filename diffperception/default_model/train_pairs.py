"""Trains the pairs model (``diffperception:pairs``) on digit pairs and ships it.

Run ``python -m diffperception.default_model.train_pairs --out <folder> [--steps N] [--seed 0]``.
The same recipe and code as the default model (:mod:`diffperception.default_model.train`:
frozen seeded random CLIP text encoder, pixel-space U-Net of the same configuration, min-SNR
epsilon MSE, caption dropout, EMA), on :mod:`diffperception.default_model.pairs` images with
the 90 relational captions (``"a three to the left of a five"``); the tokenizer knows the
captions' words and has 12 positions. After training the folder is loaded back offline and the
Winoground-style swap test (text / image / group scores of the noise-error score) is measured
on test-split drawings (:func:`evaluate_swaps`). On a shared CPU set ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .pairs import (NUM_TRAIN_PAIRS, PAIR_CAPTIONS, PAIR_MAX_LENGTH, digit_pair_swaps,
                    load_digit_pairs, pair_words)
from .train import TRAIN_DEFAULTS, machine_description, seed_everything, train_unet

#: The default model's recipe; more steps, since 90 relational captions are harder than 10.
PAIRS_TRAIN_DEFAULTS: dict[str, Any] = {**TRAIN_DEFAULTS, "steps": 1500}
#: Timesteps of the noise-error swap test (the default model's zero-shot timesteps).
SWAP_TIMESTEPS: tuple[int, ...] = (600, 700, 800)
NUM_SWAP_EXAMPLES = 200


def run(out: str | Path, steps: int = PAIRS_TRAIN_DEFAULTS["steps"], seed: int = 0,
        evaluate: bool = True, num_pairs: int = NUM_TRAIN_PAIRS, **settings: Any
        ) -> dict[str, Any]:
    """Builds, trains and saves the pairs model, then (optionally) evaluates it.

    Args:
        out: Output folder (diffusers layout).
        steps: Optimisation steps.
        seed: Seed of everything (initialisation, batches, noises; the data split is seed 0).
        evaluate: Whether to measure the swap test and write it into the card.
        num_pairs: Training images drawn (seeded) from the digits train split.
        **settings: Overrides of ``PAIRS_TRAIN_DEFAULTS``.

    Returns:
        The training info (also ``training_info.json``).
    """
    from .build import (build_scheduler, build_text_encoder, build_tokenizer, build_unet,
                        encode_prompts, save_model)

    seed_everything(seed)
    data = load_digit_pairs("train", num_pairs, seed=0)
    words = pair_words()
    tokenizer = build_tokenizer(words, PAIR_MAX_LENGTH)
    text_encoder = build_text_encoder(len(tokenizer), seed=seed, max_length=PAIR_MAX_LENGTH)
    unet, scheduler = build_unet(seed=seed), build_scheduler()
    cond_table = encode_prompts(tokenizer, text_encoder, [*PAIR_CAPTIONS, ""])  # (91, 12, 64)
    cfg = {**PAIRS_TRAIN_DEFAULTS, **settings, "steps": steps}
    info = train_unet(unet, scheduler, cond_table, data["images"], data["labels"], seed=seed,
                      **cfg)
    losses = info.pop("losses")
    info.update(settings={**cfg, "seed": seed, "num_pairs": num_pairs},
                machine=machine_description(),
                loss_curve={str(i + 50): float(np.mean(losses[i:i + 50]))
                            for i in range(0, len(losses), 50)})
    print(f"trained {steps} steps in {info['wall_time_s']:.1f} s; final loss "
          f"{info['final_loss']:.4f}")
    save_model(out, unet, text_encoder, tokenizer, scheduler, words=words)
    _save_info(out, info)
    if evaluate:
        info = evaluate_folder(out)
    write_pairs_card(out, info)
    return info


def _save_info(out: str | Path, info: dict[str, Any]) -> None:
    (Path(out) / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")


def evaluate_swaps(source: str | os.PathLike, *, num_examples: int = NUM_SWAP_EXAMPLES,
                   timesteps: Sequence[int] = SWAP_TIMESTEPS, seeds: int = 1,
                   split: str = "test", progress: bool = True) -> dict[str, Any]:
    """Winoground-style swap test of a model with the noise-error (diffusion-classifier) score.

    Args:
        source: Model folder or alias (``"diffperception:pairs"``).
        num_examples: Swap examples (:func:`~diffperception.default_model.pairs.digit_pair_swaps`).
        timesteps: Timesteps the noise-prediction error is averaged over.
        seeds: Noise draws per timestep.
        split: Digits split the drawings come from.
        progress: Show progress bars.

    Returns:
        ``{"text_score", "image_score", "group_score"}`` (fractions) and the settings.
    """
    from ..evaluation.matching import NoiseErrorMatcher, score_winoground_examples

    examples = digit_pair_swaps(num_examples, split=split, seed=0)
    matcher = NoiseErrorMatcher(source, timesteps=timesteps, seeds=seeds, progress=False)
    scores = score_winoground_examples(matcher, examples, progress=progress)
    from ..evaluation.matching import winoground_scores

    return {**winoground_scores(scores), "num_examples": num_examples, "split": split,
            "timesteps": list(timesteps), "seeds": seeds, "score": "noise_error"}


def evaluate_folder(out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Measures the swap test on a trained folder and records it in ``training_info.json``."""
    seed_everything(seed)
    info = json.loads((Path(out) / "training_info.json").read_text())
    start = time.perf_counter()
    info["swaps_noise_error"] = evaluate_swaps(out)
    info["eval_time_s"] = time.perf_counter() - start
    q = info["swaps_noise_error"]
    print(f"swap test (noise-error score, {q['num_examples']} test examples): text "
          f"{q['text_score']:.4f}, image {q['image_score']:.4f}, group {q['group_score']:.4f}")
    _save_info(out, info)
    return info


def write_pairs_card(out: str | Path, info: dict[str, Any]) -> Path:
    """Writes the pairs model's ``README.md`` from its training info."""
    s = info["settings"]
    swaps = info.get("swaps_noise_error")
    measured = "" if swaps is None else (
        f"\n## Measured (Winoground-style swaps, {swaps['num_examples']} test-split examples)\n\n"
        f"Noise-error score (timesteps {swaps['timesteps']}, {swaps['seeds']} seeded noise): "
        f"text {swaps['text_score']:.3f}, image {swaps['image_score']:.3f}, group "
        f"{swaps['group_score']:.3f} (chance: 0.25, 0.25, 1/6).\n")
    body = f"""---
library_name: diffperception
license: apache-2.0
tags: [diffusion, pixel-space, unet, digits, demonstration, diffperception]
---

# diffperception pairs model: a tiny text-conditioned pixel diffusion model on digit pairs

A demonstration model trained by the diffperception project, not Stable Diffusion. Same
architecture and recipe as the default model (`diffperception:default`): a pixel-space
`UNet2DConditionModel` on 3x32x32 images, a frozen seeded random `CLIPTextModel` (12 positions)
and a `DDPMScheduler`. Data: two scikit-learn digits side by side
(`diffperception.default_model.pairs`), captions `"a <left> to the left of a <right>"` (90
captions); {s['num_pairs']} seeded training images built from the digits train split only.

Training: {s['steps']} steps, batch {s['batch_size']}, AdamW lr {s['lr']}, seed {s['seed']};
{info['wall_time_s']:.0f} s on {info['machine']}; final loss {info['final_loss']:.4f}.
Reproduce: `python -m diffperception.default_model.train_pairs --out <folder> --steps {s['steps']}`.
{"".join(f"{chr(10)}- {note}" for note in info.get("notes", []))}
{measured}"""
    path = Path(out) / "README.md"
    path.write_text(body)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (diffusers layout)")
    parser.add_argument("--steps", type=int, default=PAIRS_TRAIN_DEFAULTS["steps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-pairs", type=int, default=NUM_TRAIN_PAIRS)
    parser.add_argument("--no-eval", action="store_true", help="skip the swap test")
    parser.add_argument("--eval-only", action="store_true",
                        help="only re-measure an already trained --out folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.eval_only:
        write_pairs_card(args.out, evaluate_folder(args.out, seed=args.seed))
    else:
        run(args.out, steps=args.steps, seed=args.seed, evaluate=not args.no_eval,
            num_pairs=args.num_pairs)


if __name__ == "__main__":
    main()
