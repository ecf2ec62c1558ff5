"""Figures of an evaluation: the confusion matrix and the (tap, timestep) accuracy heatmap.

matplotlib with the Agg backend (no display needed); each function writes one PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["save_confusion_matrix", "save_accuracy_heatmap"]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(width, height))


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (parent folders created) and closes it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          *, title: str = "") -> Path:
    """Writes a confusion matrix (rows: true class, columns: predicted class) as a PNG.

    Args:
        matrix: ``(K, K)`` counts.
        class_names: ``K`` names, index order.
        path: The PNG to write (parent folders are created).
        title: Figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``matrix`` is not ``(K, K)`` for the ``K`` names.
    """
    matrix = np.asarray(matrix)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} class names, got {matrix.shape}.")
    side = min(3 + 0.45 * k, 30)
    plt, (fig, ax) = _figure(side + 1, side)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=90)
    ax.set_yticklabels(class_names)
    if k <= 30:  # counts are legible up to about this many classes
        high = matrix.max() if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=8,
                    color="white" if count > high / 2 else "black")
    return _save(plt, fig, path)


def save_accuracy_heatmap(accuracy: np.ndarray, taps: Sequence[str], timesteps: Sequence[int],
                          path: str | os.PathLike, *, title: str = "") -> Path:
    """Writes a taps x timesteps heatmap of accuracies (in [0, 1], shown in %) as a PNG.

    Args:
        accuracy: ``(len(taps), len(timesteps))`` accuracies.
        taps: Row labels.
        timesteps: Column labels.
        path: The PNG to write (parent folders are created).
        title: Figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``accuracy`` does not match the labels.
    """
    accuracy = np.asarray(accuracy, dtype=np.float64)
    if accuracy.shape != (len(taps), len(timesteps)):
        raise ValueError(f"accuracy must be ({len(taps)}, {len(timesteps)}) for the taps and "
                         f"timesteps, got {accuracy.shape}.")
    plt, (fig, ax) = _figure(max(6.0, 2.4 + 1.0 * len(timesteps)), 1.6 + 0.6 * len(taps))
    image = ax.imshow(100 * accuracy, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set(xticks=range(len(timesteps)), yticks=range(len(taps)), xlabel="timestep t",
           ylabel="tap")
    ax.set_title(title, fontsize=9)
    ax.set_xticklabels([str(t) for t in timesteps])
    ax.set_yticklabels(list(taps))
    best = np.unravel_index(np.argmax(accuracy), accuracy.shape)
    middle = 100 * (accuracy.min() + accuracy.max()) / 2
    for (i, j), value in np.ndenumerate(accuracy):
        text = f"{100 * value:.1f}" + ("*" if (i, j) == best else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=9,
                color="black" if 100 * value > middle else "white")
    return _save(plt, fig, path)
