"""Evaluation as library code: metrics, linear probes, zero-shot scoring.

- :func:`accuracy`, :func:`topk_accuracy`, :func:`confusion_matrix`: top-1 / top-k accuracy and
  confusion counts (torchmetrics).
- :func:`knn_accuracy`, :func:`knn_scores`: DINO's weighted kNN (k = 20, 200; T = 0.07) on pooled
  features.
- :func:`evaluate_classifier`: a classifier on a whole split (seeded, every image counted);
  :func:`write_evaluation`, :func:`update_model_card`: its JSON, confusion PNG and card
  ``model-index``.
- :func:`run_sweep`, :func:`write_sweep`: a linear probe per (tap, timestep) of a grid from one
  batched backbone pass, with a feature cache, a table, a heatmap and a JSON.
- :func:`register_benchmark`, :func:`get_benchmark`, :func:`list_benchmarks`: named benchmark
  protocols (``diffperception evaluate --benchmark NAME``).
- :func:`load_split`: an evaluation split through ``diffperception.data`` (seeded subsets).
- :func:`probe_features`, :func:`linear_probe`, :func:`probe_grid`: linear probes on a feature
  extractor's pooled activations (scikit-learn's logistic regression).
- :func:`probe_against_baselines`, :func:`random_weight_copy`: the same probes on the
  random-weight twin of the network and on raw pixels.
- :func:`noise_prediction_model`, :func:`caption_errors`, :func:`zero_shot_accuracy`: zero-shot
  image-text matching by noise-prediction error (the diffusion-classifier rule).
- :func:`retrieval_metrics`, :func:`average_precision`, :func:`precision_at_k`: zero-shot
  sketch-based retrieval mAP@all / mAP@K / P@K (query mean and the released code's class mean);
  :class:`SegmentationMeter`, :func:`mean_iou`: mIoU over class subsets (seen / unseen).

Example:
    >>> from diffperception.evaluation import zero_shot_accuracy
    >>> zero_shot_accuracy(folder, images, labels, captions, timesteps=[600, 700, 800])
"""

from .benchmarks import (
    Benchmark,
    BenchmarkResult,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)
from .baselines import ProbeComparison, probe_against_baselines, random_weight_copy
from .classification import ClassifierEvaluation, evaluate_classifier
from .knn import knn_accuracy, knn_scores
from .metrics import accuracy, confusion_matrix, topk_accuracy
from .pooled import pooled_features
from .probe import linear_probe, probe_features, probe_grid
from .retrieval import average_precision, precision_at_k, retrieval_metrics
from .results import update_model_card, write_evaluation
from .segmentation import SegmentationMeter, mean_iou
from .splits import load_split
from .sweep import SweepResult, run_sweep, write_sweep
from .zero_shot import caption_errors, noise_prediction_model, zero_shot_accuracy

__all__ = [
    "Benchmark",
    "BenchmarkResult",
    "get_benchmark",
    "list_benchmarks",
    "register_benchmark",
    "ClassifierEvaluation",
    "ProbeComparison",
    "SegmentationMeter",
    "SweepResult",
    "accuracy",
    "average_precision",
    "caption_errors",
    "confusion_matrix",
    "evaluate_classifier",
    "knn_accuracy",
    "knn_scores",
    "linear_probe",
    "load_split",
    "mean_iou",
    "noise_prediction_model",
    "pooled_features",
    "precision_at_k",
    "probe_against_baselines",
    "probe_features",
    "probe_grid",
    "random_weight_copy",
    "retrieval_metrics",
    "run_sweep",
    "topk_accuracy",
    "update_model_card",
    "write_evaluation",
    "write_sweep",
    "zero_shot_accuracy",
]
