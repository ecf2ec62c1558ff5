"""``DiffusionPerceptionForSemanticSegmentation``: images in, per-pixel class logits out.

The backbone with a dense head (``linear_segmentation`` by default; the method heads register
next to it). The head's logits are upsampled (bilinear) to the input image's size, as
transformers' ``UperNetForSemanticSegmentation`` does, and the loss is the per-pixel
cross-entropy with ``config.task["ignore_index"]`` (255 by default, the ADE20K / COCO-Stuff
convention) left out.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..config import TaskConfig
from ..heads.segmentation import segmentation_loss
from .base import DiffusionPerceptionModel
from .outputs import SemanticSegmenterOutput
from .registry import register_model

__all__ = ["DiffusionPerceptionForSemanticSegmentation"]

DEFAULT_IGNORE_INDEX = 255


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(),) + tuple(args[1:]) if args else args


@register_model
class DiffusionPerceptionForSemanticSegmentation(DiffusionPerceptionModel,
                                                 pipeline_tag="image-segmentation"):
    """A diffusion backbone and a dense head.

    Args:
        config: A ``TaskConfig`` (or its dict) with ``labels`` the class names, ``head`` a dense
            head (``{"type": "linear_segmentation"}`` when null) and optionally
            ``task={"ignore_index": int}``.
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Raises:
        ValueError: No labels, duplicate labels, a bad ``ignore_index``, or an unknown task key.

    Example:
        >>> model = DiffusionPerceptionForSemanticSegmentation.from_diffusers(
        ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1", "up_ft.2"], timesteps=[261],
        ...     head={"type": "linear_segmentation"}, labels=["sky", "tree", "road"])
        >>> out = model(images, labels=masks)     # images (B, 3, H, W), masks (B, H, W)
        >>> out.logits.shape                      # (B, 3, H, W)
    """

    default_head = {"type": "linear_segmentation"}
    task_keys = ("ignore_index", "train_norms")

    def __init__(self, config: TaskConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if self.config.task.get("train_norms", False):
            # S000 Table 3: the U-Net's normalisation layers are fine-tuned with the head; they
            # stay in the trunk, so a save bundles them and an export bakes them in
            for module in self.backbone.network.modules():
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                    module.requires_grad_(True)
                    # torch 2.13's CPU GroupNorm backward crashes on a channels-last input
                    module.register_forward_pre_hook(_contiguous_input)
            self.head.trains_through_trunk = True

    def _check_unbundled_base(self) -> None:
        if self.config.task.get("train_norms", False):
            raise ValueError("This model trains the U-Net's normalisation parameters, which live "
                             "in the trunk; save it with bundle_trunk=True.")
        super()._check_unbundled_base()

    def check_config(self, config: TaskConfig) -> None:
        self.require_labels(config, "config['labels'] is missing: a segmentation model needs the "
                                    "class names (labels=['sky', 'tree', ...]).")
        labels = config.labels
        unknown = sorted(set(config.task) - set(self.task_keys))
        if unknown:
            raise ValueError(f"config['task'] has unknown keys {unknown}; a segmentation model "
                             f"takes {list(self.task_keys)}.")
        if not isinstance(config.task.get("train_norms", False), bool):
            raise ValueError(f"config['task']['train_norms'] = {config.task['train_norms']!r} is "
                             "invalid: true or false.")
        ignore = config.task.get("ignore_index", DEFAULT_IGNORE_INDEX)
        if isinstance(ignore, bool) or not isinstance(ignore, int) or 0 <= ignore < len(labels):
            raise ValueError(f"config['task']['ignore_index'] = {ignore!r} is invalid: an integer "
                             f"outside [0, {len(labels)}) (255 by default).")

    def head_arguments(self) -> dict[str, Any]:
        """``num_labels`` and ``image_size`` (the ``(H, W)`` the model runs at)."""
        size = self.config.preprocess.size or self.backbone.native_size
        return {"num_labels": len(self.config.labels), "image_size": [int(s) for s in size]}

    @property
    def ignore_index(self) -> int:
        """Label value of pixels left out of the loss and the metrics."""
        return int(self.config.task.get("ignore_index", DEFAULT_IGNORE_INDEX))

    def specialized_postprocess(self, size: tuple[int, int]) -> torch.nn.Module:
        """Bilinear upsampling of the logits to the specialised model's image ``size``."""
        return torch.nn.Upsample(size=tuple(int(s) for s in size), mode="bilinear",
                                 align_corners=False)

    def output_size(self, images: Any) -> tuple[int, int]:
        """``(H, W)`` of the logits: the input tensor's size, else the size the model runs at."""
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return int(images.shape[-2]), int(images.shape[-1])
        size = self.config.preprocess.size or self.backbone.native_size
        return int(size[0]), int(size[1])

    def _check_labels(self, labels: Any, batch: int, size: tuple[int, int]) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor of per-pixel class indices, got "
                            f"{type(labels).__name__}.")
        if labels.shape != (batch, *size) or labels.is_floating_point():
            raise ValueError(f"labels must be integer class indices of shape ({batch}, {size[0]}, "
                             f"{size[1]}) (the images' size), got {labels.dtype} of shape "
                             f"{tuple(labels.shape)}.")
        valid = labels != self.ignore_index
        bad = labels[valid & ((labels < 0) | (labels >= len(self.config.labels)))]
        if bad.numel():
            raise ValueError(f"labels hold {sorted(set(bad.tolist()))[:10]}, outside [0, "
                             f"{len(self.config.labels)}) and not the ignore_index "
                             f"{self.ignore_index}.")
        return labels.long()

    def forward(self, images: Any, labels: torch.Tensor | None = None, *,
                noise: torch.Tensor | None = None, prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> SemanticSegmenterOutput:
        """Per-pixel class logits at the image size, and the loss when labels are given.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            labels: ``(B, H, W)`` class indices; ``ignore_index`` pixels are left out.
            noise, prompt, value_range: As for the feature extractor.

        Returns:
            ``SemanticSegmenterOutput(loss, logits (B, num_labels, H, W))``.

        Raises:
            TypeError / ValueError: Labels of the wrong type, shape or range.
        """
        feats = self.backbone(images, noise=noise, prompt=prompt, value_range=value_range)
        batch = next(iter(feats.values())).shape[0]
        size = self.output_size(images)
        if labels is not None:
            labels = self._check_labels(labels, batch, size)
        out = self.head(feats, **self.head_inputs(images, value_range))
        logits = out.logits
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            loss = segmentation_loss(logits, labels.to(logits.device), self.ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits)

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id, body=(
            "with torch.no_grad():\n"
            "    logits = model(images).logits  # (B, num_labels, H, W)\n"
            "mask = logits.argmax(1)  # (B, H, W) class indices, model.id2label names them\n"))
