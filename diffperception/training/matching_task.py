"""Training an image-text matching model (Discffusion prompt learning, METHODS.md §2.6).

The shared loop trains what requires gradients: the K/V prompts (or LoRA) and, when enabled,
the head weights; the trunk, VAE and text encoder stay frozen. Each batch becomes a score table
``(B, M)`` with the positive in column 0, and the loss is ``training.matching_loss`` (the
hardest-negative triplet with margin ``task["margin"]``, or cross-entropy, ``task["loss"]``).
The recipe is the released code's: AdamW at 1e-4 (README), weight decay 1e-2.

Two kinds of training data:

- an image-caption split (``load_image_dataset``: ``image`` + a ``label`` whose class names
  are the captions, e.g. ``"digits"`` with the model's captions, ``"digit-pairs"``): each image
  is a query, its candidates are its caption and ``task["num_negatives"]`` other captions drawn
  per (seed, epoch, image) (the RefCOCOg protocol: one image, ten texts);
- ComVG rows (``data.matching.load_comvg``: sentence, positive image, negative image): each
  sentence is a query, its candidates are the two images (the released code's ComVG training).

The noise is the model's (the fixed bank at its timesteps): the released code draws one random
timestep and fresh noise per pair and step instead (``dsd_train.py:806``); build the model with
``noise="random"`` for fresh noise.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data import TransformedImages
from .matching_loss import matching_loss
from .task import StepOutput, TrainingTask, input_size, register_training_task

__all__ = ["ImageTextMatchingTask", "CaptionCandidates", "ComVGPairs", "DEFAULT_NEGATIVES"]

#: Negatives per image: ten candidate texts per image, as RefCOCOg's protocol.
DEFAULT_NEGATIVES = 9


class CaptionCandidates(torch.utils.data.Dataset):
    """Image-caption samples with candidate captions (positive first).

    Args:
        images: ``TransformedImages`` of the split.
        captions: The class names (captions) of its ``label`` column.
        num_negatives: Other captions per image (all others when there are fewer).
        seed: Seed of the negatives (with the epoch and the image's index).
    """

    def __init__(self, images: TransformedImages, captions: Sequence[str], num_negatives: int,
                 seed: int) -> None:
        self.images, self.captions = images, list(captions)
        self.num_negatives = min(num_negatives, len(self.captions) - 1)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.images, "set_epoch"):
            self.images.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.images[index])
        positive = int(sample["labels"])
        rng = np.random.default_rng((self.seed, self.epoch, index))
        others = [i for i in range(len(self.captions)) if i != positive]
        negatives = rng.choice(others, size=self.num_negatives, replace=False)
        sample["candidates"] = [self.captions[positive]] + [self.captions[i] for i in negatives]
        return sample


class ComVGPairs(torch.utils.data.Dataset):
    """ComVG rows as samples: the sentence and its (positive, negative) images ``(2, 3, S, S)``."""

    def __init__(self, rows: Sequence[Any], size: int) -> None:
        self.rows, self.size = list(rows), size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..data.matching import load_rgb

        row = self.rows[index]
        images = np.stack([load_rgb(row.positive_image, self.size),
                           load_rgb(row.negative_image, self.size)])
        return {"pixel_values": torch.from_numpy(images), "text": row.sentence, "index": index,
                "labels": 0}


def _is_comvg(dataset: Any) -> bool:
    return isinstance(dataset, (list, tuple)) and bool(dataset) and hasattr(dataset[0], "sentence")


@register_training_task("DiffusionPerceptionForImageTextMatching")
class ImageTextMatchingTask(TrainingTask):
    """Score tables with the positive first, the matching loss, and top-1 accuracy."""

    name = "image-text matching"
    metrics = ("accuracy",)

    def load_data(self, source: str, split: str, *, shots: int | None = None,
                  fraction: float | None = None, seed: int = 0) -> Any:
        """A ComVG folder (its CSV: ``comvg_train.csv`` for ``train``,
        ``compositional_visual_genome.csv`` for ``test``) as ComVG rows, ``fraction`` of them
        drawn with ``seed`` (the paper's 5% / 0.5% subsets, S002 §4.3); any other source as
        caption-labelled images.

        Raises:
            ValueError: ``shots`` with ComVG rows, or a ``fraction`` outside (0, 1].
        """
        from pathlib import Path

        root = Path(str(source)).expanduser()
        if root.is_dir() and any((root / name).is_file() for name in
                                 ("comvg_train.csv", "compositional_visual_genome.csv")):
            from ..data.matching import load_comvg

            if shots is not None:
                raise ValueError("--shots takes images per class; ComVG rows have no classes. "
                                 "Use --fraction (e.g. 0.05).")
            rows = load_comvg(root, split)
            if fraction is None:
                return rows
            if not 0 < fraction <= 1:
                raise ValueError(f"--fraction {fraction} is invalid: a number in (0, 1].")
            keep = max(1, round(fraction * len(rows)))
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
            return [rows[int(i)] for i in sorted(order[:keep].tolist())]
        return super().load_data(source, split, shots=shots, fraction=fraction, seed=seed)

    def recipe(self, model: nn.Module) -> dict[str, Any]:
        """AdamW at 1e-4 (the released code's README and ``dsd_train.py``)."""
        return {"optimizer": "adamw", "learning_rate": 1e-4}

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        if _is_comvg(dataset):
            return
        super().check_data(model, dataset, name)
        names = getattr(getattr(dataset, "features", {}).get("label"), "names", None) \
            if hasattr(dataset, "features") else None
        if not names or len(names) < 2:
            raise ValueError(f"The {name} data needs a ClassLabel 'label' column whose names are "
                             "the captions (at least two), or ComVG rows (load_comvg).")

    def view(self, model: nn.Module, dataset: Any, *, augment: str, seed: int, train: bool
             ) -> torch.utils.data.Dataset:
        size = input_size(model)
        if _is_comvg(dataset):
            return ComVGPairs(dataset, size)
        images = TransformedImages(dataset, size, augment if train else "none", seed)
        negatives = int(model.config.task.get("num_negatives", DEFAULT_NEGATIVES))
        return CaptionCandidates(images, dataset.features["label"].names, negatives, seed)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
                 "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}
        if "candidates" in samples[0]:
            batch["candidates"] = [s["candidates"] for s in samples]
        else:
            batch["texts"] = [s["text"] for s in samples]
        return batch

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """Scores ``(B, M)`` (texts per image, or the two images per ComVG sentence), the loss
        with the positive in column 0, and whether the positive scored highest."""
        if "candidates" in batch:
            scores = model(batch["pixel_values"], batch["candidates"]).scores  # (B, M)
        else:
            images = batch["pixel_values"]  # (B, 2, 3, S, S): positive, negative
            B = images.shape[0]
            texts = [t for t in batch["texts"] for _ in range(2)]
            scores = model.score_pairs(images.flatten(0, 1), texts).view(B, 2)
        task = model.task_settings
        loss = matching_loss(scores, 0, kind=task["loss"], margin=task["margin"])
        # ties count as wrong (METHODS §2.7): the positive must beat every negative
        right = (scores[:, :1] > scores[:, 1:]).all(dim=1).float()
        return StepOutput(loss, {"accuracy": right})
