"""Writes the default model's model card (``README.md``) with measured numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .build import (MODEL_MAX_LENGTH, SCHEDULER_CONFIG, TEXT_ENCODER_CONFIG,
                    TOKEN_EMBEDDING_STD, UNET_CONFIG)

FRONT_MATTER = """---
library_name: diffperception
license: apache-2.0
tags:
- diffusion
- text-to-image
- pixel-space
- unet
- digits
- demonstration
- diffperception
---
"""


def _size_mb(folder: Path) -> float:
    """Total size of the files under a folder in MB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def _quality_section(q: dict[str, Any]) -> str:
    """Markdown for the measured accuracies."""
    zs = q["zero_shot_settings"]
    rows = "\n".join(
        f"| `{key.split('@')[0]}` | {key.split('=')[1]} | {acc:.3f} "
        f"| {q['probe_random'][key]:.3f} |"
        for key, acc in q["probe_trained"].items()
    )
    return f"""## Measured quality (test split, 599 images)

- **Zero-shot accuracy: {q['zero_shot']:.3f}** (chance 0.100). Diffusion-classifier
  rule: for each image and each of the ten captions, the mean squared noise-prediction
  error at timesteps {list(zs['timesteps'])} with {zs['seeds']} seeded noise(s) per
  timestep (the same noise for every caption); the caption with the lowest error wins
  (`diffperception.default_model.evaluate.zero_shot_accuracy`). The timesteps were
  chosen on 200 train-split images, never on the test split.
- Linear probes (`evaluate.probe_check`, on `diffperception.evaluation`): standardised
  logistic regression (C 0.5, max_iter 2000) fit on the train split, scored on the test
  split. Features are the feature extractor's tap outputs at timestep t with fixed
  seeded noise (shared by all images), null prompt `""`, adaptive-average-pooled to
  2x2 and flattened. "Random" is the same architecture with seeded random weights.

| tap | t | trained | random weights |
|---|---|---|---|
{rows}

Raw pixels (32x32 gray, flattened) under the same probe: {q['probe_pixels']:.3f}.
"""


def _notes(info: dict[str, Any]) -> str:
    """Free-text notes recorded in ``training_info.json`` (key ``notes``), as bullets."""
    return "".join(f"- {note}\n" for note in info.get("notes", []))


def _eval_time(info: dict[str, Any]) -> str:
    """One line on how long the quality checks took, if they ran."""
    if "eval_time_s" not in info:
        return ""
    return f"All quality checks above took {info['eval_time_s']:.0f} s on the same machine.\n"


def write_model_card(out: str | Path, info: dict[str, Any]) -> Path:
    """Writes ``README.md`` into the model folder.

    Args:
        out: Model folder.
        info: Output of :func:`diffperception.default_model.train.run` (training
            settings, loss, wall time, machine and optionally ``quality``).

    Returns:
        Path of the written card.
    """
    out = Path(out)
    s = info["settings"]
    quality = _quality_section(info["quality"]) if "quality" in info else ""
    body = f"""
# diffperception default model: a tiny text-conditioned pixel diffusion model on digits

This is a small **demonstration model trained by the diffperception project** on
scikit-learn's 8x8 handwritten digits. It is **not Stable Diffusion** and has nothing
of its weights or data; it exists so that the package has an offline default backbone
with the same parts and folder layout as a diffusers text-to-image model
(`unet`, `text_encoder`, `tokenizer`, `scheduler`, `model_index.json`), but no VAE:
the U-Net works directly on 3x32x32 pixels scaled to [-1, 1].

## Architecture

- `unet`: diffusers `UNet2DConditionModel`, epsilon prediction,
  `{json.dumps(UNET_CONFIG)}`. Note `attention_head_dim` is diffusers' legacy name for
  the number of heads. The attention blocks (self- and cross-attention) sit only at
  8x8 resolution (down block 2, mid block, up block 0), which keeps CPU training fast.
- `text_encoder`: transformers `CLIPTextModel`, `{json.dumps(TEXT_ENCODER_CONFIG)}`,
  **random initialisation (seed {s['seed']}), frozen** (never trained); the U-Net
  learns to read its last hidden states. The token embeddings are drawn with std
  {TOKEN_EMBEDDING_STD} instead of CLIP's 0.02, so that each caption word dominates its
  position's state (with 0.02 all captions encode almost alike and conditioning is
  learned far more slowly).
- `tokenizer`: `CLIPTokenizer` with a byte-level BPE vocabulary built by the project
  for its captions: special tokens, a-z and 0-9 (plain and word-final), and whole-word
  tokens for `a handwritten digit zero ... nine`; `model_max_length` {MODEL_MAX_LENGTH},
  padded with `<|endoftext|>`. Other words fall back to single characters.
- `scheduler`: `DDPMScheduler` `{json.dumps(SCHEDULER_CONFIG)}`.

## Data and split

`sklearn.datasets.load_digits` (1797 images, values 0..16), divided by 16, upsampled
to 32x32 with bicubic interpolation, clipped to [0, 1], gray replicated to 3 channels
(`diffperception.default_model.load_digits_split`). Split: `train_test_split` with
`stratify=labels`, `test_size=1/3`, `random_state=0` -> 1198 train / 599 test images.
The test split is never used in training.

## Training

Captions `"a handwritten digit <word>"`, replaced by the null prompt `""` with
probability {s['caption_dropout']}; random timesteps, a fraction {s['high_t_fraction']} of
them drawn from the upper 60% of the schedule (t >= 400) and the rest uniformly;
epsilon-prediction MSE with min-SNR weighting (gamma {s['min_snr_gamma']}: weight
min(SNR, gamma) / SNR, which down-weights only the least noisy timesteps). Both make
the class caption matter in training: on upsampled 8x8 digits the class is ambiguous
only at high noise, where the plain epsilon loss is small, so without them the U-Net
learned to use the caption only weakly in the time budget.
AdamW (lr {s['lr']}, weight decay {s['weight_decay']}), {s['warmup_steps']} warm-up steps
then cosine decay to 10%; batch {s['batch_size']}; {s['steps']} steps; no augmentation;
EMA of the weights (decay {s['ema_decay']}) is what is saved. Seed {s['seed']}.

- Wall time: {info['wall_time_s']:.0f} s ({info['wall_time_s'] / 60:.1f} min) on
  {info['machine']}.
{_notes(info)}- Final training loss (min-SNR-weighted epsilon MSE, mean of the last 100
  steps): {info['final_loss']:.4f}.
- Weights folder size: {_size_mb(out):.1f} MB (fp32 safetensors).

Reproduce:
`python -m diffperception.default_model.train --out <folder> --steps {s['steps']} --seed {s['seed']}`
(on a CPU shared with other jobs, prefix `OMP_WAIT_POLICY=PASSIVE`; re-measure a folder
with `--eval-only`).

{quality}{_eval_time(info)}
`training_info.json` holds the settings, the loss curve (means over 50 steps) and
these numbers in machine-readable form.

## Use

```python
from diffperception.default_model import DEFAULT_MODEL_PATH
from diffperception.default_model.build import load_model
parts = load_model(DEFAULT_MODEL_PATH)  # unet, text_encoder, tokenizer, scheduler
```
"""
    path = out / "README.md"
    path.write_text(FRONT_MATTER + body)
    return path
