"""``DiffusionPerceptionForImageRetrieval``: images in, L2-normalised embeddings out.

The backbone with an embedding head (``vermouth`` by default: Vermouth's U-head and attention
pooling, S000 §3, METHODS.md §3.4); the head's text classifier over the training classes
(``labels``) gives the training loss (ZS-SBIR: ``CE(cos * 4.6052 / 0.2)``, §3.6, §3.8), and
retrieval ranks a gallery by cosine similarity of the embeddings (§3.9: the released code ranks
by Euclidean distance of the L2-normalised vectors, the same order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..config import TaskConfig
from .base import DiffusionPerceptionModel
from .outputs import ModelOutput
from .registry import register_model

__all__ = ["DiffusionPerceptionForImageRetrieval", "ImageRetrievalOutput", "search"]


@dataclass
class ImageRetrievalOutput(ModelOutput):
    """Attributes:
        loss: Cross-entropy over the training classes, when labels are given.
        embeddings: ``(B, D)`` L2-normalised embeddings.
        logits: ``(B, num_labels)`` cosine logits against the label text features.
    """

    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def search(queries: torch.Tensor, gallery: torch.Tensor, top_k: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks the gallery for each query by cosine similarity.

    Args:
        queries: ``(Q, D)`` embeddings.
        gallery: ``(G, D)`` embeddings.
        top_k: Keep the best ``top_k`` (default: the whole gallery).

    Returns:
        ``(scores (Q, k), indices (Q, k))``, best first; ties keep gallery order.

    Raises:
        ValueError: Embeddings of different widths.
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} must "
                         "be (N, D) embeddings of the same width D.")
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    scores = q @ g.t()  # (Q, G)
    k = scores.shape[1] if top_k is None else min(int(top_k), scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    return order.values[:, :k], order.indices[:, :k]


@register_model
class DiffusionPerceptionForImageRetrieval(DiffusionPerceptionModel,
                                           pipeline_tag="image-feature-extraction"):
    """A diffusion backbone and an embedding head for (zero-shot, cross-domain) retrieval.

    Args:
        config: A ``TaskConfig`` (or its dict); ``labels`` the training classes (the loss),
            ``head`` an embedding head (``vermouth`` when null).
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Raises:
        ValueError: No labels, duplicate labels, or a head that gives no embeddings.

    Example:
        >>> model = AutoDiffusionPerception.from_preset("vermouth-digits-sbir")
        >>> gallery = model.encode(photos)                # (G, D)
        >>> scores, idx = model.search(model.encode(sketches), gallery, top_k=200)
    """

    default_head = {"type": "vermouth"}

    def __init__(self, config: TaskConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.head.output_key = "embeddings"  # what a specialised / exported model returns

    def check_config(self, config: TaskConfig) -> None:
        self.require_labels(config, "config['labels'] is missing: a retrieval model is trained on "
                                    "the names of its training classes (labels=['cat', 'dog', "
                                    "...]).")

    def head_arguments(self) -> dict[str, Any]:
        """``num_labels`` and ``image_size`` (the ``(H, W)`` the model runs at)."""
        size = self.config.preprocess.size or self.backbone.native_size
        return {"num_labels": len(self.config.labels), "image_size": [int(s) for s in size]}

    def forward(self, images: Any, labels: torch.Tensor | None = None, *,
                noise: torch.Tensor | None = None, prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> ImageRetrievalOutput:
        """Embeddings, and the training loss when labels are given.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            labels: ``(B,)`` training-class indices.
            noise, prompt, value_range: As for the feature extractor.

        Returns:
            ``ImageRetrievalOutput(loss, embeddings (B, D), logits (B, num_labels))``.

        Raises:
            TypeError / ValueError: Labels of the wrong type, shape or range.
        """
        feats = self.backbone(images, noise=noise, prompt=prompt, value_range=value_range)
        batch = next(iter(feats.values())).shape[0]
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                raise TypeError(f"labels must be a torch.Tensor of class indices, got "
                                f"{type(labels).__name__}.")
            if labels.shape != (batch,) or labels.is_floating_point() or bool(
                    ((labels < 0) | (labels >= len(self.config.labels))).any()):
                raise ValueError(f"labels must be ({batch},) integer indices in [0, "
                                 f"{len(self.config.labels)}), got {labels.dtype} "
                                 f"{tuple(labels.shape)}.")
            labels = labels.long().to(next(iter(feats.values())).device)
        out = self.head(feats, labels=labels, **self.head_inputs(images, value_range))
        if out.embeddings is None:
            raise ValueError(f"The {self.config.head.type!r} head gives no embeddings; use an "
                             "embedding head such as 'vermouth'.")
        return ImageRetrievalOutput(loss=out.loss, embeddings=out.embeddings, logits=out.logits)

    @torch.no_grad()
    def encode(self, images: Any, *, batch_size: int = 32) -> torch.Tensor:
        """``(N, D)`` embeddings of ``(N, 3, H, W)`` images in [0, 1], in batches."""
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        parts = [self(images[i: i + batch_size]).embeddings
                 for i in range(0, len(images), batch_size)]
        return torch.cat(parts)

    search = staticmethod(search)

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id, body=(
            "with torch.no_grad():\n"
            "    emb = model(images).embeddings  # (B, D), L2-normalised\n"
            "scores, idx = model.search(emb, emb, top_k=1)\n"))
