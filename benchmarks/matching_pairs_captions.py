"""Zero-shot caption matching of test digit-pair images over the 90 captions (noise-error score).

On ``diffperception:pairs`` with the diffusion-classifier rule at t = 600/700/800: the exact
caption wins (ordered accuracy, chance 1/90), a caption naming the right two digits in either
order wins (unordered, chance 2/90), and the own caption scores above the swapped one (chance
1/2). Accuracy only (no timing). Run from the repository root:

    python -m benchmarks.matching_pairs_captions
"""

from __future__ import annotations

import numpy as np
import torch

from diffperception.default_model.pairs import (PAIR_CAPTIONS, PAIR_CLASSES, load_digit_pairs,
                                                pair_caption)
from diffperception.evaluation.matching import NoiseErrorMatcher


def main(num_images: int = 40) -> None:
    d = load_digit_pairs("test", num_images, seed=0)
    matcher = NoiseErrorMatcher("diffperception:pairs", timesteps=[600, 700, 800])
    s = matcher.score(torch.from_numpy(d["images"]), list(PAIR_CAPTIONS)).numpy()  # (N, 90)
    best = np.asarray(PAIR_CLASSES)[s.argmax(1)]
    truth = np.stack([d["left"], d["right"]], 1)
    ordered = (best == truth).all(1).mean()
    unordered = (np.sort(best, 1) == np.sort(truth, 1)).all(1).mean()
    swapped = [PAIR_CAPTIONS.index(pair_caption(b, a)) for a, b in truth]
    own_above = np.mean(s[np.arange(num_images), d["labels"]] > s[np.arange(num_images), swapped])
    print(f"{num_images} test pair images, 90 captions, noise-error t=600/700/800: ordered "
          f"accuracy {ordered:.4f}, unordered (right two digits) {unordered:.4f}, own caption "
          f"above swapped caption {own_above:.4f}")


if __name__ == "__main__":
    main()
