"""The scikit-learn digits data set, prepared for the default diffusion model.

The 8x8 digit images (values 0..16) are scaled to [0, 1], upsampled to 32x32
with bicubic interpolation, clipped to [0, 1] and replicated to 3 channels.
A fixed, seeded, class-balanced split keeps one third of every class as the
test split, which is never used in training.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32
TEST_FRACTION = 1.0 / 3.0


def upsample_digits(images_8x8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Turns raw 8x8 digits into float32 RGB images in [0, 1].

    Args:
        images_8x8: Array of shape (N, 8, 8) or (N, 64) with values 0..16.
        size: Output side length in pixels.

    Returns:
        Array of shape (N, 3, size, size), float32, values in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(images_8x8, dtype=np.float32).reshape(-1, 1, 8, 8)) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.clamp_(0.0, 1.0).repeat(1, 3, 1, 1)
    return x.numpy().astype(np.float32)


def raw_digits_split(seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    """scikit-learn's digits ``Bunch`` and the train and test indices of the fixed split.

    Args:
        seed: ``random_state`` of the stratified split (0: the shipped models' split).

    Returns:
        ``(digits, idx_train, idx_test)``; ``digits.images`` are the raw 8x8 values 0..16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=seed
    )
    return digits, idx_train, idx_test


def load_digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Loads the digits and splits them into fixed train and test parts.

    Args:
        seed: ``random_state`` of the stratified split; 0 is the split the
            shipped default model was trained with.

    Returns:
        Dict with ``train_images``, ``test_images`` (float32, (N, 3, 32, 32),
        in [0, 1]) and ``train_labels``, ``test_labels`` (int64, (N,)).
    """
    digits, idx_train, idx_test = raw_digits_split(seed)
    labels = digits.target.astype(np.int64)
    images = upsample_digits(digits.images)
    return {
        "train_images": images[idx_train],
        "train_labels": labels[idx_train],
        "test_images": images[idx_test],
        "test_labels": labels[idx_test],
    }
