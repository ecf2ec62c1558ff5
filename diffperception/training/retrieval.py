"""Training image-retrieval models on the shared loop (Vermouth's ZS-SBIR recipe, METHODS.md §3.8).

A split is an image-label dataset (``image``, ``label``; a ``domain`` column, photos and sketches
mixed, is ignored): the training classes' photos and sketches. The loss is the model's own:
cross-entropy of the cosine logits against the training classes' text features (the released
code's ``CE(cos * 4.6052 / 0.2)`` with the SBIR presets); the metric is top-1 accuracy over the
training classes. Recipe: AdamW at 1e-4 (the released code's; its 5e-4 weight decay is
``--weight-decay 5e-4``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .task import ClassificationTask, StepOutput, register_training_task

__all__ = ["RetrievalTask"]


@register_training_task("DiffusionPerceptionForImageRetrieval")
class RetrievalTask(ClassificationTask):
    """Retrieval training: images and class labels, the model's cosine-logit cross-entropy."""

    name = "image retrieval"
    metrics = ("accuracy",)

    def recipe(self, model: nn.Module) -> dict[str, Any]:
        """AdamW at 1e-4 (METHODS.md §3.8)."""
        return {"optimizer": "adamw", "learning_rate": 1e-4}

    def cacheable(self, model: nn.Module) -> tuple[bool, str]:
        return False, "retrieval training runs the whole model (the head may read the images)"

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["pixel_values"], labels=batch["labels"])
        right = (out.logits.argmax(-1) == batch["labels"]).float()
        return StepOutput(out.loss, {"accuracy": right})
