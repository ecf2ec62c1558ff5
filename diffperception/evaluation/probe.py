"""Linear probes on a feature extractor's activations.

What is ours and what is a library's:

- the solver is scikit-learn's (``StandardScaler`` + ``LogisticRegression``, lbfgs), and the
  accuracy is ``torchmetrics``' (:func:`~diffperception.evaluation.metrics.accuracy`);
- features come from the product API (``model(images)``), pooled with
  ``torch.nn.functional.adaptive_avg_pool2d``;
- by hand: batching the images through the model and stacking the pooled activations per
  timestep, and mapping arbitrary label values onto ``0..K-1`` for the metric. Neither library
  knows a feature extractor's ``{tap: (B, T, C, h, w)}`` output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import accuracy

__all__ = ["probe_features", "linear_probe", "probe_grid", "PROBE_C", "PROBE_MAX_ITER"]

# The regularisation and iteration cap of the probe behind the figures the README quotes.
PROBE_C = 0.5
PROBE_MAX_ITER = 2000


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor (N, 3, H, W) in [0, 1], "
                        f"got {type(images).__name__}.")
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty (N, 3, H, W) batch, got shape {images.shape}.")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}.")


@torch.no_grad()
def probe_features(model: torch.nn.Module, images: Any, *, pool: int = 2, batch_size: int = 64,
                   desc: str = "features", progress: bool = True) -> dict[str, np.ndarray]:
    """Average-pooled tap activations for every configured timestep.

    Args:
        model: A ``DiffusionPerceptionForFeatureExtraction`` (any module whose forward takes
            ``(B, 3, H, W)`` images and returns ``{tap: (B, C, h, w)}`` for one timestep or
            ``{tap: (B, T, C, h, w)}`` for several, and whose ``config.features.timesteps`` lists
            the timesteps).
        images: ``(N, 3, H, W)`` float in [0, 1] (numpy or torch).
        pool: Side ``p`` of the adaptive average pool applied to each activation map.
        batch_size: Images per forward.
        desc: Label of the progress bar.
        progress: Whether to show a progress bar (tqdm).

    Returns:
        ``{tap: (N, T, C * p * p)}`` float32 arrays, timesteps in the order the model lists them.

    Raises:
        TypeError: ``images`` is not an array or tensor.
        ValueError: ``images`` is not a non-empty 4-D batch, or ``pool`` / ``batch_size`` < 1.
    """
    from tqdm import tqdm

    images = _check_images(images)
    _check_positive(pool=pool, batch_size=batch_size)
    multi = len(model.config.features.timesteps) > 1
    out: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress):
        feats = model(torch.from_numpy(images[start: start + batch_size]))
        for name, value in feats.items():
            if not multi:
                value = value.unsqueeze(1)  # (B, 1, C, h, w)
            b, t = value.shape[:2]
            pooled = F.adaptive_avg_pool2d(value.flatten(0, 1).float().cpu(), pool)  # (B*T, C, p, p)
            out.setdefault(name, []).append(pooled.reshape(b, t, -1).numpy())
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def _check_table(x: Any, y: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{split}_x must be (N, ...) with N >= 1 samples, got shape {x.shape}.")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{split}_y must be (N,) with N = {len(x)} (one label per row of "
                         f"{split}_x), got shape {y.shape}.")
    return x.reshape(len(x), -1), y


def linear_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, C: float = PROBE_C,
                 max_iter: int = PROBE_MAX_ITER) -> float:
    """Test accuracy of a standardised logistic-regression probe fit on the train split.

    The probe is scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression(C=C,
    max_iter=max_iter))`` (lbfgs, multinomial); its test-split predictions are scored by
    :func:`~diffperception.evaluation.metrics.accuracy` (torchmetrics).

    Args:
        train_x: Train features ``(N, ...)``; trailing dimensions are flattened.
        train_y: Train labels ``(N,)`` (any hashable class values; at least two classes).
        test_x: Test features ``(M, ...)`` with the same trailing size as ``train_x``.
        test_y: Test labels ``(M,)``.
        C: Inverse L2 regularisation strength of the logistic regression.
        max_iter: Iteration cap of the solver.

    Returns:
        Test accuracy in ``[0, 1]``.

    Raises:
        ValueError: Mismatched shapes, fewer than two train classes, or a test label the probe
            never saw in training.

    Example:
        >>> linear_probe(feats["train"], y_train, feats["test"], y_test)
        0.98
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = _check_table(train_x, train_y, "train")
    test_x, test_y = _check_table(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} features per sample, test_x "
                         f"{test_x.shape[1]}.")
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise ValueError(f"A probe needs at least two classes in train_y, got {classes.tolist()}.")
    unseen = np.setdiff1d(np.unique(test_y), classes)
    if len(unseen):
        raise ValueError(f"test_y has labels {unseen.tolist()} that train_y lacks.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
    probe.fit(train_x, train_y)
    predicted = np.searchsorted(classes, probe.predict(test_x))
    return accuracy(predicted, np.searchsorted(classes, test_y), num_classes=len(classes))


def probe_grid(model: torch.nn.Module, train_images: Any, train_labels: Any, test_images: Any,
               test_labels: Any, *, pool: int = 2, batch_size: int = 64, desc: str = "features",
               progress: bool = True, **probe_options: Any) -> dict[str, dict[int, float]]:
    """A linear probe per (tap, timestep) of a feature extractor: fit on train, scored on test.

    Args:
        model: A ``DiffusionPerceptionForFeatureExtraction`` (see :func:`probe_features`).
        train_images: ``(N, 3, H, W)`` in [0, 1].
        train_labels: ``(N,)`` class labels.
        test_images: ``(M, 3, H, W)`` in [0, 1].
        test_labels: ``(M,)`` class labels.
        pool: Side of the adaptive average pool (see :func:`probe_features`).
        batch_size: Images per forward.
        desc: Prefix of the progress bars.
        progress: Whether to show progress bars.
        **probe_options: ``C`` / ``max_iter`` of :func:`linear_probe`.

    Returns:
        ``{tap: {timestep: test accuracy}}``.

    Raises:
        TypeError, ValueError: Bad images or labels (see :func:`probe_features`,
            :func:`linear_probe`).
    """
    kw = dict(pool=pool, batch_size=batch_size, progress=progress)
    train = probe_features(model, train_images, desc=f"{desc}: train split", **kw)
    test = probe_features(model, test_images, desc=f"{desc}: test split", **kw)
    timesteps = model.config.features.timesteps
    return {tap: {int(t): linear_probe(train[tap][:, i], train_labels, test[tap][:, i], test_labels,
                                       **probe_options)
                  for i, t in enumerate(timesteps)}
            for tap in train}
