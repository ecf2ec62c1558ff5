"""Task-model outputs (dataclasses, indexable like transformers' ``ModelOutput``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

__all__ = ["ImageClassifierOutput", "SemanticSegmenterOutput"]


@dataclass
class ImageClassifierOutput(ModelOutput):
    """Output of ``DiffusionPerceptionForImageClassification``.

    Attributes:
        loss: Mean cross-entropy over the batch, when labels were given.
        logits: ``(B, num_labels)`` class scores (before softmax).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    """Output of ``DiffusionPerceptionForSemanticSegmentation``.

    Attributes:
        loss: Mean per-pixel cross-entropy (``ignore_index`` pixels left out), when labels were
            given.
        logits: ``(B, num_labels, H, W)`` class scores at the input image's size (pixels).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
