"""The training log: one JSON record per epoch, and a PNG of the loss and accuracy curves."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["write_log", "plot_curves", "LOG_NAME", "CURVES_NAME"]

LOG_NAME = "training_log.json"
CURVES_NAME = "training_curves.png"


def write_log(output_dir: str | os.PathLike, history: Sequence[dict[str, Any]],
              arguments: dict[str, Any]) -> Path:
    """Writes ``training_log.json``: the options and one record per epoch.

    Args:
        output_dir: The run's folder.
        history: Per epoch ``{"epoch", "lr", "train_loss", "train_accuracy", "eval_loss"?,
            "eval_accuracy"?, "seconds"}``.
        arguments: The resolved training options.

    Returns:
        The file written.
    """
    path = Path(output_dir) / LOG_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"arguments": arguments, "epochs": list(history)}, indent=2))
    os.replace(tmp, path)
    return path


def plot_curves(output_dir: str | os.PathLike, history: Sequence[dict[str, Any]]) -> Path:
    """Draws loss and accuracy per epoch (train, and evaluation when present) to a PNG.

    Returns:
        The file written (``training_curves.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "eval"):
        if any(f"{split}_loss" in h for h in history):
            loss_ax.plot(epochs, [h.get(f"{split}_loss") for h in history], "o-", label=split)
            acc_ax.plot(epochs, [h.get(f"{split}_accuracy") for h in history], "o-", label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(output_dir) / CURVES_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
