"""Evaluating an image classifier on a split: top-1 / top-5, confusion matrix, optional kNN.

Every image of the split is counted (the last batch may be short; the text-free paper's code
drops it, S001 code ``drop_last=True``, which we do not copy), and the evaluation is seeded: a
model whose noise is ``"random"`` draws it from the global torch generator, which is seeded with
``seed`` inside :func:`torch.random.fork_rng` (the caller's generator state is left as it was). A
model with ``"fixed"`` noise uses its own configured seed, as in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .knn import KNN_K, KNN_TEMPERATURE, knn_accuracy
from .metrics import accuracy, confusion_matrix, topk_accuracy
from .pooled import pooled_features
from .splits import image_batches, split_class_names

__all__ = ["ClassifierEvaluation", "evaluate_classifier", "classifier_logits", "label_indices"]


@dataclass
class ClassifierEvaluation:
    """What :func:`evaluate_classifier` measured.

    Attributes:
        top1: Top-1 accuracy in [0, 1].
        top5: Top-5 accuracy (1.0 when there are 5 classes or fewer).
        num_images: Images counted (all of the split).
        class_names: The model's labels, index order.
        confusion: ``(K, K)`` counts, row = true class, column = predicted class.
        seed: Seed of the evaluation's noise.
        knn: ``{k: {"top1", "top5"}}`` of weighted kNN on the backbone's pooled features (empty
            when not asked for).
        knn_settings: How the kNN was run (pool, temperature, weighting, train images, skipped k).
    """

    top1: float
    top5: float
    num_images: int
    class_names: list[str]
    confusion: np.ndarray
    seed: int
    knn: dict[int, dict[str, float]] = field(default_factory=dict)
    knn_settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (the confusion matrix as nested lists, kNN keys as strings)."""
        data = asdict(self)
        data["confusion"] = self.confusion.tolist()
        data["knn"] = {str(k): v for k, v in self.knn.items()}
        return data


def label_indices(model: Any, dataset: Any) -> np.ndarray:
    """Model label index of each class of the split, matched by name: ``(K_data,)`` int64.

    Raises:
        ValueError: A class of the split that the model does not know.
    """
    names, labels = split_class_names(dataset), list(model.config.labels)
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise ValueError(f"The data's classes {unknown} are not among the model's labels "
                         f"{labels}; evaluate on data with the classes the model was trained on.")
    return np.array([labels.index(n) for n in names], dtype=np.int64)


@torch.no_grad()
def classifier_logits(model: Any, dataset: Any, *, batch_size: int = 32, progress: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every image of a split and their labels in the model's label order.

    Args:
        model: A ``DiffusionPerceptionForImageClassification`` (``model(images).logits``).
        dataset: A ``datasets.Dataset`` with ``image`` and ``label`` columns.
        batch_size: Images per forward.
        progress: Show a tqdm progress bar.

    Returns:
        ``((N, K) float64 logits, (N,) int64 labels)``.

    Raises:
        ValueError: Classes the model does not know, or ``batch_size < 1``.
    """
    from tqdm import tqdm

    mapping = label_indices(model, dataset)
    model.eval()
    logits, labels = [], []
    total = -(-len(dataset) // batch_size)
    for images, batch_labels in tqdm(image_batches(dataset, batch_size), total=total,
                                     desc="evaluate", unit="batch", leave=False,
                                     disable=not progress):
        logits.append(model(images).logits.double().cpu().numpy())  # (b, K)
        labels.append(mapping[batch_labels])
    return np.concatenate(logits), np.concatenate(labels)


def _flatten(feats: dict[str, np.ndarray]) -> np.ndarray:
    """``{tap: (N, T, D)}`` -> ``(N, sum of T * D)``, taps in order."""
    return np.concatenate([f.reshape(len(f), -1) for f in feats.values()], axis=1)


def _knn(model: Any, train: Any, test: Any, ks: Sequence[int], batch_size: int, progress: bool
         ) -> tuple[dict[int, dict[str, float]], dict[str, Any]]:
    """kNN on the backbone's pool-1 features (every tap and timestep, concatenated)."""
    kw = dict(pool=1, batch_size=batch_size, progress=progress)
    train_feats, train_y = pooled_features(model.backbone, train, desc="kNN: train split", **kw)
    test_feats, test_y = pooled_features(model.backbone, test, desc="kNN: test split", **kw)
    usable = [int(k) for k in ks if k <= len(train_y)]
    settings = {"pool": 1, "temperature": KNN_TEMPERATURE, "num_train": int(len(train_y)),
                "weighting": "DINO: cosine similarity, weights exp(sim / T); not stated by S001",
                "skipped_k": [int(k) for k in ks if k > len(train_y)]}
    results = knn_accuracy(_flatten(train_feats), label_indices(model, train)[train_y],
                           _flatten(test_feats), label_indices(model, test)[test_y], ks=usable)
    return results, settings


def evaluate_classifier(model: Any, dataset: Any, *, batch_size: int = 32, seed: int = 0,
                        knn_train: Any = None, knn_ks: Sequence[int] = KNN_K,
                        progress: bool = True) -> ClassifierEvaluation:
    """Top-1 / top-5 accuracy and the confusion matrix of a classifier on a whole split.

    Args:
        model: A ``DiffusionPerceptionForImageClassification``.
        dataset: The evaluation split (``datasets.Dataset`` with ``image`` and ``label``).
        batch_size: Images per forward; every image is counted whatever the batch size.
        seed: Seed of the noise of a ``"random"``-noise model (module docstring).
        knn_train: A train split: also run weighted kNN (k in ``knn_ks``; a ``k`` above the
            train size is skipped and listed) on the backbone's pool-1 features.
        knn_ks: The kNN neighbour counts.
        progress: Show progress bars.

    Returns:
        A :class:`ClassifierEvaluation`.

    Raises:
        ValueError: Classes the model does not know, or a bad ``batch_size``.

    Example:
        >>> model = AutoDiffusionPerception.from_pretrained("runs/digits")
        >>> result = evaluate_classifier(model, load_split("digits", "test"))
        >>> result.top1, result.top5
    """
    num_classes = len(model.config.labels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        logits, labels = classifier_logits(model, dataset, batch_size=batch_size,
                                           progress=progress)
        knn, settings = ({}, {}) if knn_train is None else _knn(
            model, knn_train, dataset, knn_ks, batch_size, progress)
    return ClassifierEvaluation(
        top1=accuracy(logits, labels, num_classes=num_classes),
        top5=topk_accuracy(logits, labels, k=5), num_images=int(len(labels)),
        class_names=list(model.config.labels),
        confusion=confusion_matrix(logits, labels, num_classes), seed=int(seed), knn=knn,
        knn_settings=settings)
