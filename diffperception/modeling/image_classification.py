"""``DiffusionPerceptionForImageClassification``: images in, class logits out.

The backbone with a classification head (``linear`` by default: the "GD" linear probe of the
text-free diffusion-features paper, S001 §4.1; ``attention``, ``difformer`` and ``diffeed`` are
its other heads, S001 §3); labels live in the config (``id2label``). A head with feedback
(``diffeed``) makes the forward run the trunk twice (``DiffusionBackbone.forward_two_pass``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import TaskConfig
from .base import DiffusionPerceptionModel
from .outputs import ImageClassifierOutput
from .registry import register_model

__all__ = ["DiffusionPerceptionForImageClassification"]


@register_model
class DiffusionPerceptionForImageClassification(DiffusionPerceptionModel,
                                                pipeline_tag="image-classification"):
    """A diffusion backbone and a classification head.

    Args:
        config: A ``TaskConfig`` (or its dict) with ``architecture`` set to this class's name,
            ``labels`` the class names and ``head`` a classification head
            (``{"type": "linear", "pool": 2}`` when null).
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Raises:
        ValueError: No labels, duplicate labels, or a head that gives no logits.

    Example:
        >>> model = DiffusionPerceptionForImageClassification.from_diffusers(
        ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261],
        ...     head={"type": "linear", "pool": 2}, labels=["cat", "dog"])
        >>> out = model(images, labels=torch.tensor([0, 1]))
        >>> out.logits.shape, out.loss           # (2, 2), cross-entropy
    """

    default_head = {"type": "linear", "pool": 2}

    def check_config(self, config: TaskConfig) -> None:
        self.require_labels(config, "config['labels'] is missing: an image classifier needs the "
                                    "class names (labels=['cat', 'dog', ...]).")

    def head_arguments(self) -> dict[str, Any]:
        """``num_labels`` (from the labels) and ``image_size``: the ``(H, W)`` the model runs at,
        ``config.preprocess.size`` else the network's native size (the token heads size their
        tokenizers from it)."""
        size = self.config.preprocess.size or self.backbone.native_size
        return {"num_labels": len(self.config.labels), "image_size": [int(s) for s in size]}

    def _check_labels(self, labels: Any, batch: int) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor of class indices, got "
                            f"{type(labels).__name__}.")
        if labels.shape != (batch,) or labels.is_floating_point():
            raise ValueError(f"labels must be integer class indices of shape ({batch},), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}.")
        bad = labels[(labels < 0) | (labels >= len(self.config.labels))]
        if bad.numel():
            raise ValueError(f"labels {bad.tolist()} are outside [0, {len(self.config.labels)}); "
                             f"model.label2id maps names to indices.")
        return labels.long()

    def forward(self, images: Any, labels: torch.Tensor | None = None, *,
                noise: torch.Tensor | None = None, prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> ImageClassifierOutput:
        """Class logits, and the cross-entropy loss when labels are given.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            labels: ``(B,)`` class indices (``model.label2id``).
            noise, prompt, value_range: As for the feature extractor.

        Returns:
            ``ImageClassifierOutput(loss, logits (B, num_labels))``.

        Raises:
            TypeError / ValueError: Labels of the wrong type, shape or range.
        """
        if getattr(self.head, "two_pass", False):
            # DifFeed (S001 §3.3): pass 1 without gradients feeds the head's layers, whose
            # output is added to the encoder blocks of pass 2 on the same noisy input
            feats = self.backbone.forward_two_pass(
                images, self.head.feedback, first_taps=self.head.first_taps, taps=self.head.taps,
                noise=noise, prompt=prompt, value_range=value_range)
        else:
            feats = self.backbone(images, noise=noise, prompt=prompt, value_range=value_range)
        batch = next(iter(feats.values())).shape[0]
        if labels is not None:
            labels = self._check_labels(labels, batch).to(next(iter(feats.values())).device)
        out = self.head(feats, labels=labels, **self.head_inputs(images, value_range))
        return ImageClassifierOutput(loss=out.loss, logits=out.logits)

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id, body=(
            "with torch.no_grad():\n"
            "    logits = model(images).logits  # (B, num_labels)\n"
            "print(model.id2label[int(logits.argmax(-1)[0])])\n"))
