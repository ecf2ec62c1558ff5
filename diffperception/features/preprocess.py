"""Images at the public edge: PIL / numpy / torch to a checked ``(B, 3, H, W)`` tensor in [0, 1],
then resize / crop / scale as ``config.preprocess`` says."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PreprocessConfig

__all__ = ["to_image_tensor", "resize_and_crop", "check_size", "scale_range"]


def _from_pil(images: Sequence[Any]) -> torch.Tensor:
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0 for img in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"PIL images of different sizes {sorted(sizes)} cannot form a batch; set "
            "preprocess.size (or resize them to one size first)."
        )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W)


def _to_tensor(images: Any, value_range: tuple[float, float] | None) -> torch.Tensor:
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("Got an empty list of images; pass at least one image.")
        if all(isinstance(i, Image.Image) for i in images):
            return _from_pil(images)
        images = np.stack([np.asarray(i) for i in images])
    if isinstance(images, np.ndarray):
        # (..., H, W, C) with C in 1..4 and a larger H: channels last (RGBA is refused below)
        channels_last = (images.ndim >= 3 and images.shape[-1] in (1, 2, 3, 4)
                         and images.shape[-3] not in (1, 2, 3, 4))
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        if channels_last:
            tensor = tensor.movedim(-1, -3)
        images = tensor
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"Images must be a torch.Tensor (B, 3, H, W), a numpy array, a PIL image or a list of "
            f"PIL images; got {type(images).__name__}."
        )
    if not images.is_floating_point():
        if value_range is None:
            raise TypeError(
                f"Got integer images ({images.dtype}) without a stated range. Pass "
                "value_range=(0, 255) for 8-bit images, or float images in [0, 1]."
            )
        low, high = value_range
        images = (images.float() - low) / (high - low)
    elif value_range is not None:
        low, high = value_range
        images = (images - low) / (high - low)
    return images


# Float images may overshoot [0, 1] a little (resampling, colour conversion); beyond this they
# are in another range and need value_range.
_RANGE_SLACK = 0.05


def to_image_tensor(images: Any, *, value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Converts and checks images.

    Args:
        images: ``(B, 3, H, W)`` / ``(3, H, W)`` float tensor in [0, 1], numpy array (channels
            first or last), PIL image(s).
        value_range: The range the values are in, required for integer inputs (e.g. (0, 255)).

    Returns:
        Float tensor ``(B, 3, H, W)`` with values in [0, 1].

    Raises:
        TypeError: Unsupported type, or integer images without ``value_range``.
        ValueError: Empty batch, wrong number of channels, NaN / inf values, float values
            outside [0, 1] (beyond a 0.05 slack) without ``value_range``.
    """
    images = _to_tensor(images, value_range)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(
            f"Images must have shape (B, 3, H, W); got a tensor of shape {tuple(images.shape)}."
        )
    if images.shape[0] == 0:
        raise ValueError("Got an empty batch (B = 0); pass at least one image.")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(
            f"Images must have 3 (RGB) channels in dimension 1; got {images.shape[1]} channels "
            f"(shape {tuple(images.shape)}). Convert RGBA/other images to RGB first."
        )
    if not torch.isfinite(images).all():
        raise ValueError("Images contain NaN or inf values; clean the input before extraction.")
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(
            f"Float images must be in [0, 1]; these span [{low:.3g}, {high:.3g}]. Pass "
            "value_range=(0, 255) for 8-bit values (or the range they are in)."
        )
    return images


def resize_and_crop(images: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Resizes (shorter side, then centre crop; or directly) to ``config.size``."""
    if config.size is None:
        return images
    height, width = config.size
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    # "nearest" samples pixel centres, as Pillow's NEAREST (the deployment kit) does
    mode = "nearest-exact" if config.resize == "nearest" else config.resize
    kw = {"antialias": True, "align_corners": False} if mode in ("bicubic", "bilinear") else {}
    if config.crop == "center":
        scale = max(height / h, width / w)
        new = (max(height, round(h * scale)), max(width, round(w * scale)))
        images = F.interpolate(images, size=new, mode=mode, **kw)
        top, left = (new[0] - height) // 2, (new[1] - width) // 2
        images = images[..., top: top + height, left: left + width]
    else:
        images = F.interpolate(images, size=(height, width), mode=mode, **kw)
    return images.clamp(0.0, 1.0)


def check_size(images: torch.Tensor, multiple: int) -> None:
    """Raises a ValueError when H or W is not a multiple the network accepts."""
    h, w = images.shape[-2:]
    if h % multiple or w % multiple:
        fix_h, fix_w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        raise ValueError(
            f"Image size {h}x{w} is not accepted: height and width must be multiples of "
            f"{multiple} for this network. Resize to e.g. {fix_h}x{fix_w}, or set "
            "preprocess.size."
        )


def scale_range(images: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    """Maps [0, 1] images onto ``value_range`` (diffusers models take [-1, 1])."""
    low, high = float(value_range[0]), float(value_range[1])
    return images * (high - low) + low
