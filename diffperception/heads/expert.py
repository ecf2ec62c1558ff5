"""Vermouth's Adapted-Expert (S000 §3.4; METHODS.md §3.3): a frozen timm image model with a
small adapter per output level.

The expert is any timm model created with ``features_only=True`` (default ``resnet18``, the
paper's; ``out_indices=(2, 3, 4)`` gives ``layer2..layer4`` at strides 8, 16, 32). Its weights
are frozen and it stays in eval mode (the released code leaves its BatchNorm statistics updating,
§3.10 item 5; here they never change). Each level gets ``Adapter``: ``Conv2d(C, C/4, 1,
bias=False) -> ReLU -> Conv2d(C/4, C, 1, bias=False)``, no residual connection, as released.
Input: images in [0, 1], normalised with the model's own mean / std (ImageNet for resnet18).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Adapter", "AdaptedExpert"]


class Adapter(nn.Sequential):
    """``Conv2d(C, C // reduction, 1) -> ReLU -> Conv2d(C // reduction, C, 1)``, no biases, no
    residual (METHODS.md §3.3)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        hidden = max(1, channels // reduction)
        super().__init__(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(hidden, channels, 1, bias=False))


class AdaptedExpert(nn.Module):
    """A frozen timm ``features_only`` model with per-level adapters.

    Args:
        name: A timm model name (``timm.list_models()``), default ``"resnet18"``.
        out_indices: timm feature levels to use (resnet18: 2, 3, 4 = layer2..layer4).
        image_size: ``(H, W)`` the images are resized to (bilinear) before the expert; None keeps
            the input size (the released code runs the expert at the diffusion input size).
        reduction: Adapter bottleneck ratio (4).

    Shapes:
        images ``(B, 3, H, W)`` in [0, 1] -> list of ``(B, C_i, H/r_i, W/r_i)``, deepest level
        first.

    Raises:
        ValueError: An unknown timm model name.
    """

    def __init__(self, name: str = "resnet18", out_indices: Sequence[int] = (2, 3, 4), *,
                 image_size: Sequence[int] | None = None, reduction: int = 4) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(f"config['head']['expert'] = {name!r} is not a timm model; see "
                             "timm.list_models() (e.g. 'resnet18').")
        self.name, self.out_indices = name, tuple(int(i) for i in out_indices)
        self.model = timm.create_model(name, pretrained=False, features_only=True,
                                       out_indices=self.out_indices)
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))
                                                  ).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))
                                                 ).view(1, 3, 1, 1), persistent=False)
        self.image_size = tuple(int(s) for s in image_size) if image_size else None
        channels = self.model.feature_info.channels()
        self.adapters = nn.ModuleList(Adapter(c, reduction) for c in channels[::-1])

    @property
    def channels(self) -> list[int]:
        """Channels of the outputs, deepest level first."""
        return self.model.feature_info.channels()[::-1]

    @property
    def reductions(self) -> list[int]:
        """Strides (input pixels per cell) of the outputs, deepest level first."""
        return self.model.feature_info.reduction()[::-1]

    def train(self, mode: bool = True) -> "AdaptedExpert":
        super().train(mode)
        self.model.eval()  # frozen: BatchNorm statistics never update
        return self

    def load_expert_weights(self, weights: str) -> None:
        """Loads the expert's pretrained weights.

        Args:
            weights: ``"timm"`` (timm's own Hub weights for ``name``, downloaded by timm),
                or the path of a local ``.safetensors`` file of the timm model's state dict
                (classifier keys such as ``fc.*`` are ignored; every feature key must be there).

        Raises:
            FileNotFoundError: A missing file.
            ValueError: A file that is not safetensors.
            RuntimeError: Missing or mis-shaped keys.
        """
        import timm

        if weights == "timm":
            source = timm.create_model(self.name, pretrained=True, features_only=True,
                                       out_indices=self.out_indices)
            state = source.state_dict()
        else:
            from safetensors.torch import load_file

            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"Expert weights {path} not found; give a .safetensors "
                                        "file of the timm model's state dict, or 'timm'.")
            if path.suffix != ".safetensors":
                raise ValueError(f"Expert weights {path} must be a .safetensors file.")
            state = load_file(str(path))
        own = self.model.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(state))
        if missing:
            raise RuntimeError(f"Expert weights lack {len(missing)} tensor(s) of {self.name}: "
                               f"{missing[:5]}")
        self.model.load_state_dict(state, strict=True)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.float()
        if self.image_size and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        with torch.no_grad():
            feats = self.model(x)[::-1]  # deepest first
        return [adapter(f.to(images.dtype) if images.is_floating_point() else f)
                for adapter, f in zip(self.adapters, feats)]
