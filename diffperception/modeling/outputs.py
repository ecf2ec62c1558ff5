"""Task-model outputs (dataclasses, indexable like transformers' ``ModelOutput``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = ["ImageClassifierOutput"]


@dataclass
class ImageClassifierOutput(ModelOutput):
    """Output of ``DiffusionPerceptionForImageClassification``.

    Attributes:
        loss: Mean cross-entropy over the batch, when labels were given.
        logits: ``(B, num_labels)`` class scores (before softmax).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
