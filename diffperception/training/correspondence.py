"""Training GDF's conv aggregator (the ``correspondence`` head with ``aggregator="conv"``) on the
shared loop (METHODS.md §4.4, GDF ``task-corres.py``).

The data is a list of ``CorrespondencePair`` s (``diffperception.data.correspondence``:
``load_spair71k(root, "train")``, or the offline stand-ins). A sample is one pair, both images
resized to the network's ``S x S`` input (GDF's 512 x 512 load size, aspect not kept) and the
keypoints scaled with them; a batch is a list of pairs (GDF: one pair per step). The loss is the
model's ``correspondence_loss`` (symmetric cross-entropy over every target cell, logit scale
1/0.07), averaged over the pairs of the batch; the reported metric is each pair's PCK@0.1 at the
input size (cosine nearest neighbour, threshold 0.1 * S). The recipe's optimiser and learning
rate are GDF's (AdamW, 5e-4); GDF's weight decay 0.01 is ``TrainingArguments(weight_decay=0.01)``
(the loop's default is 0), and its 2 epochs of 5,000 random training pairs a list of that many.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.correspondence import load_pairs
from .task import StepOutput, TrainingTask, input_size, register_training_task

__all__ = ["CorrespondenceTask", "PairSamples", "load_pairs"]


def _square(image: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)[0].clamp(0, 1)  # (3, S, S)


class PairSamples(torch.utils.data.Dataset):
    """Pairs as ``{"source", "target": (3, S, S), "source_points", "target_points": (K, 2)
    in S x S pixels, "index"}``."""

    def __init__(self, pairs: Sequence[Any], size: int) -> None:
        self.pairs, self.size = list(pairs), int(size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[int(index)]
        source, target = pair.images()
        scale = lambda hw: np.array([self.size / hw[1], self.size / hw[0]])  # noqa: E731
        return {"source": _square(source, self.size), "target": _square(target, self.size),
                "source_points": torch.as_tensor(pair.source_points * scale(source.shape[:2]),
                                                 dtype=torch.float32),
                "target_points": torch.as_tensor(pair.target_points * scale(target.shape[:2]),
                                                 dtype=torch.float32),
                "index": int(index)}


@register_training_task("DiffusionPerceptionForSemanticCorrespondence")
class CorrespondenceTask(TrainingTask):
    """Keypoint pairs, GDF's symmetric contrastive loss, PCK@0.1 per pair."""

    name = "semantic correspondence"
    metrics = ("pck@0.1",)

    def load_data(self, source: str, split: str, *, shots: int | None = None,
                  fraction: float | None = None, seed: int = 0) -> Any:
        """Keypoint pairs (``data.correspondence.load_pairs``: SPair-71k, PF-WILLOW or the
        offline warped pairs), not labelled images.

        Raises:
            ValueError: ``shots`` / ``fraction`` (class subsets do not apply to pairs).
        """
        if shots is not None or fraction is not None:
            raise ValueError("--shots / --fraction take class-balanced subsets of labelled "
                             "images; a correspondence split is keypoint pairs.")
        return load_pairs(source, split)

    def recipe(self, model: nn.Module) -> dict[str, Any]:
        """AdamW at GDF's learning rate 5e-4."""
        return {"optimizer": "adamw", "learning_rate": 5e-4}

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        from ..data.correspondence import CorrespondencePair

        if not isinstance(dataset, Sequence) or not all(
                isinstance(p, CorrespondencePair) for p in dataset):
            raise ValueError(f"The {name} data must be a list of CorrespondencePair "
                             "(diffperception.data.correspondence: load_spair71k, ...).")
        if not any(len(p.source_points) for p in dataset):
            raise ValueError(f"The {name} data has no keypoints.")
        super().check_data(model, dataset, name)

    def view(self, model: nn.Module, dataset: Any, *, augment: str, seed: int, train: bool
             ) -> torch.utils.data.Dataset:
        return PairSamples([p for p in dataset if len(p.source_points)], input_size(model))

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"pairs": list(samples),
                "index": torch.tensor([s["index"] for s in samples], dtype=torch.long)}

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        from ..modeling.semantic_correspondence import correspondence_loss, match_descriptors

        pairs = batch["pairs"]
        images = torch.stack([torch.stack([p["source"], p["target"]]) for p in pairs])
        device = next(model.parameters()).device
        emb = model(images.flatten(0, 1).to(device)).embeddings  # (2N, D, h, w)
        scale = float(model.config.task.get("logit_scale", 1 / 0.07))
        losses, pck = [], []
        for i, pair in enumerate(pairs):
            src, tgt = emb[2 * i], emb[2 * i + 1]
            hw = tuple(pair["source"].shape[-2:])
            losses.append(correspondence_loss(src, tgt, pair["source_points"],
                                              pair["target_points"], hw, hw, scale))
            with torch.no_grad():
                found, _ = match_descriptors(src, tgt, pair["source_points"].to(src.device),
                                             hw, hw)
                dist = (found.cpu() - pair["target_points"]).norm(dim=1)
                pck.append((dist <= 0.1 * max(hw)).float().mean())
        return StepOutput(torch.stack(losses).mean(), {"pck@0.1": torch.stack(pck).to(device)})
