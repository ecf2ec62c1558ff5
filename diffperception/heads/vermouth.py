"""Vermouth heads (S000 §3; METHODS.md §3.1-3.6): stage features, an optional Adapted-Expert,
the U-head, and a text classifier.

- ``vermouth`` (classification, retrieval): scales (``StageAssembler``) -> expert fused at the
  scales below the lowest (channel-wise L2-normalised concatenation, §3.3) -> global flow
  (``fuse``: the U-head's down-sample flow; ``add``: the Table 6 baseline; ``none``: only the
  lowest scale) with attention pooling -> ``embeddings`` (L2-normalised, ``(B, embed_dim)``) and
  ``logits`` (cosine with the class text features / tau).
- ``vermouth_dense`` (open-vocabulary segmentation, §3.5): scales -> expert -> dense flow ->
  per-pixel cosine logits ``(B, K, h, w)`` at the finest scale.

The text features come from a CLIP text encoder (``text_model``) and are a buffer: loaded and
encoded when the model is built fresh or ``set_labels`` is called, read from the saved weights
otherwise; the text encoder is never part of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..features.stages import StageAssembler
from ..features.taps import FeatureInfo
from .base import Head, HeadOutput, register_head
from .expert import AdaptedExpert
from .text_classifier import TextClassifier, class_prompts, encode_class_prompts, load_text_model
from .uhead import AddFlow, DenseFlow, GlobalFlow

__all__ = ["VermouthHead", "VermouthDenseHead", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = ["a photo of a {}."]
FUSE_MODES = ("fuse", "add", "none")
EXPERT_WEIGHTS = ("timm", "none")


class _VermouthBase(Head):
    """Shared parts: stages, expert, text classifier, label encoding."""

    task_arguments = ("num_labels",)

    def _build_common(self, feature_info, num_labels, *, stages, cross_attention,
                      attention_channels, attention_min_stride, expert, expert_indices,
                      expert_size, expert_weights, text_model, projection, templates,
                      temperature, logit_scale, embed_dim) -> list[int]:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels = {num_labels!r} is invalid: an integer >= 1.")
        self.stages = StageAssembler(feature_info, stages, cross_attention=cross_attention,
                                     attention_channels=attention_channels,
                                     attention_min_stride=attention_min_stride)
        channels = list(self.stages.channels)
        self.expert = None
        if expert is not None:
            if expert_weights not in EXPERT_WEIGHTS and not str(expert_weights).endswith(
                    ".safetensors"):
                raise ValueError(f"config['head']['expert_weights'] = {expert_weights!r} is "
                                 f"invalid: one of {EXPERT_WEIGHTS} or a .safetensors path.")
            self.expert = AdaptedExpert(expert, expert_indices, image_size=expert_size)
            if len(self.expert.channels) > len(channels) - 1:
                raise ValueError(f"The expert gives {len(self.expert.channels)} levels but only "
                                 f"{len(channels) - 1} scales take one (all but the lowest); "
                                 "use fewer config['head']['expert_indices'].")
            for i, c in enumerate(self.expert.channels):
                channels[i + 1] += c
        self.expert_weights = expert_weights
        self.text_model, self.projection = text_model, bool(projection)
        self.templates = list(templates)
        class_prompts(["x"], self.templates)  # validates the templates
        self.classifier = TextClassifier(num_labels, embed_dim, temperature=temperature,
                                         logit_scale=logit_scale)
        return channels

    @property
    def takes_images(self) -> bool:
        """Whether the forward needs the images (for the expert)."""
        return self.expert is not None

    def train(self, mode: bool = True) -> "_VermouthBase":
        super().train(mode)
        if self.expert is not None:
            self.expert.model.eval()
        return self

    def prepare_weights(self, base_folder: Path | None, labels: Sequence[str]) -> None:
        """Loads what a freshly built head needs from outside: the expert's pretrained weights
        and the label text features (a saved model has both in its weights)."""
        if self.expert is not None and self.expert_weights != "none":
            self.expert.load_expert_weights(self.expert_weights)
        self.set_labels(labels, base_folder)

    def set_labels(self, labels: Sequence[str], base_folder: Path | None) -> None:
        """Encodes ``labels`` with the text encoder and makes them the classes (open vocabulary).

        Raises:
            ValueError: A text feature width other than ``embed_dim``, or bad templates.
        """
        model, tokenizer = load_text_model(self.text_model, base_folder,
                                           projection=self.projection)
        features = encode_class_prompts(class_prompts(labels, self.templates), model, tokenizer,
                                        projection=self.projection)
        self.classifier.set_text_features(features)

    def scales(self, features: Mapping[str, torch.Tensor], images: torch.Tensor | None
               ) -> list[torch.Tensor]:
        """Stage scales with the expert fused in (normalised concatenation, §3.3)."""
        scales = self.stages(features)
        if self.expert is None:
            return scales
        if images is None:
            raise ValueError("This head has an Adapted-Expert: it needs the images "
                             "(head(features, images=...)).")
        for i, e in enumerate(self.expert(images)):
            s = scales[i + 1]
            if tuple(e.shape[-2:]) != tuple(s.shape[-2:]):
                e = F.interpolate(e, size=tuple(s.shape[-2:]), mode="bilinear",
                                  align_corners=False)
            scales[i + 1] = torch.cat([F.normalize(s, dim=1), F.normalize(e.to(s), dim=1)], dim=1)
        return scales


@register_head("vermouth")
class VermouthHead(_VermouthBase):
    """Vermouth's global head: U-head down-sample flow, attention pooling, text classifier.

    Args:
        feature_info: The backbone's ``{tap: FeatureInfo}`` (``features.stages.stage_taps``).
        num_labels: Number of classes (from the task model's labels).
        stages: ``"mid+down"`` (classification) or ``"mid+up"`` (retrieval, segmentation).
        fuse: ``"fuse"`` (U-head), ``"add"`` (Table 6 baseline) or ``"none"`` (lowest scale only).
        widths: Fuse widths per scale, low to high ("tiny": ``[1024, 768, 512, 256]``).
        add_width: Width of the ``add`` baseline's convolutions (512).
        pool_size: Grid side before attention pooling (4).
        num_heads: Attention pooling heads (8).
        embed_dim: Output width = text feature width (768 for CLIP ViT-L/14).
        cross_attention: Concatenate the up-stage cross-attention maps (§3.1).
        attention_channels: The text length ``L`` (77 for SD).
        attention_min_stride: Finest cross-attention maps used, in pixels per cell (16).
        expert: A timm model name (``"resnet18"``) for the Adapted-Expert, or None.
        expert_indices: Its timm feature levels (``[2, 3, 4]``).
        expert_size: ``[H, W]`` the expert's input is resized to (None: the model's input).
        expert_weights: ``"timm"`` (timm's Hub weights), ``"none"`` (random), or a local
            ``.safetensors`` path; read when the model is built fresh.
        text_model: ``"base"`` (the diffusion model's text encoder) or a CLIP repo / folder.
        projection: Text features with the projection (``text_embeds``) or without.
        templates: Prompt templates averaged per class.
        temperature: Cosine temperature tau (0.2).
        logit_scale: Linear logit factor (1; 4.6052 in the released ZS-SBIR code).

    Returns (forward):
        ``HeadOutput(loss, logits (B, K), embeddings (B, embed_dim) L2-normalised)``.

    Raises:
        ValueError: Bad settings or taps that do not give the stages.
    """

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 stages: str = "mid+up", fuse: str = "fuse",
                 widths: Sequence[int] = (1024, 768, 512, 256), add_width: int = 512,
                 pool_size: int = 4, num_heads: int = 8, embed_dim: int = 768,
                 cross_attention: bool = False, attention_channels: int = 77,
                 attention_min_stride: int = 16, expert: str | None = None,
                 expert_indices: Sequence[int] = (2, 3, 4),
                 expert_size: Sequence[int] | None = None, expert_weights: str = "timm",
                 text_model: str = "base", projection: bool = False,
                 templates: Sequence[str] = tuple(DEFAULT_TEMPLATES), temperature: float = 0.2,
                 logit_scale: float = 1.0) -> None:
        super().__init__(feature_info)
        if fuse not in FUSE_MODES:
            raise ValueError(f"config['head']['fuse'] = {fuse!r} is invalid: one of {FUSE_MODES}.")
        channels = self._build_common(
            feature_info, num_labels, stages=stages, cross_attention=cross_attention,
            attention_channels=attention_channels, attention_min_stride=attention_min_stride,
            expert=expert, expert_indices=expert_indices, expert_size=expert_size,
            expert_weights=expert_weights, text_model=text_model, projection=projection,
            templates=templates, temperature=temperature, logit_scale=logit_scale,
            embed_dim=embed_dim)
        if fuse == "add":
            self.flow = AddFlow(channels, add_width, pool_size=pool_size, num_heads=num_heads,
                                output_dim=embed_dim)
        else:
            self.flow = GlobalFlow(channels, list(widths), pool_size=pool_size,
                                   num_heads=num_heads, output_dim=embed_dim,
                                   fuse=fuse == "fuse")

    def forward(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                images: torch.Tensor | None = None) -> HeadOutput:
        v = self.flow(self.scales(features, images))  # (B, embed_dim)
        logits = self.classifier(v)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return HeadOutput(loss=loss, logits=logits, embeddings=F.normalize(v, dim=-1))


@register_head("vermouth_dense")
class VermouthDenseHead(_VermouthBase):
    """Vermouth's dense head: U-head up-sample flow and per-pixel cosine logits (§3.5).

    Args: as ``VermouthHead`` (no ``fuse``, ``add_width``, ``pool_size``, ``num_heads``).

    Returns (forward):
        ``HeadOutput(logits=(B, K, h, w))`` at the finest scale (the task model upsamples).
    """

    def __init__(self, feature_info: Mapping[str, FeatureInfo], num_labels: int,
                 stages: str = "mid+up", widths: Sequence[int] = (1024, 768, 512, 256),
                 embed_dim: int = 768, cross_attention: bool = False,
                 attention_channels: int = 77, attention_min_stride: int = 16,
                 expert: str | None = None, expert_indices: Sequence[int] = (2, 3, 4),
                 expert_size: Sequence[int] | None = None, expert_weights: str = "timm",
                 text_model: str = "base", projection: bool = False,
                 templates: Sequence[str] = tuple(DEFAULT_TEMPLATES), temperature: float = 0.2,
                 logit_scale: float = 1.0) -> None:
        super().__init__(feature_info)
        channels = self._build_common(
            feature_info, num_labels, stages=stages, cross_attention=cross_attention,
            attention_channels=attention_channels, attention_min_stride=attention_min_stride,
            expert=expert, expert_indices=expert_indices, expert_size=expert_size,
            expert_weights=expert_weights, text_model=text_model, projection=projection,
            templates=templates, temperature=temperature, logit_scale=logit_scale,
            embed_dim=embed_dim)
        self.flow = DenseFlow(channels, list(widths), output_dim=embed_dim)

    def forward(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                images: torch.Tensor | None = None) -> HeadOutput:
        v = self.flow(self.scales(features, images))  # (B, embed_dim, h, w)
        return HeadOutput(logits=self.classifier(v))
