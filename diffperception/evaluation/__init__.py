"""Evaluation as library code: metrics, linear probes, zero-shot scoring.

- :func:`accuracy`: top-1 accuracy (torchmetrics).
- :func:`probe_features`, :func:`linear_probe`, :func:`probe_grid`: linear probes on a feature
  extractor's pooled activations (scikit-learn's logistic regression).
- :func:`probe_against_baselines`, :func:`random_weight_copy`: the same probes on the
  random-weight twin of the network and on raw pixels.
- :func:`noise_prediction_model`, :func:`caption_errors`, :func:`zero_shot_accuracy`: zero-shot
  image-text matching by noise-prediction error (the diffusion-classifier rule).

Example:
    >>> from diffperception.evaluation import zero_shot_accuracy
    >>> zero_shot_accuracy(folder, images, labels, captions, timesteps=[600, 700, 800])
"""

from .baselines import ProbeComparison, probe_against_baselines, random_weight_copy
from .metrics import accuracy
from .probe import linear_probe, probe_features, probe_grid
from .zero_shot import caption_errors, noise_prediction_model, zero_shot_accuracy

__all__ = [
    "ProbeComparison",
    "accuracy",
    "caption_errors",
    "linear_probe",
    "noise_prediction_model",
    "probe_against_baselines",
    "probe_features",
    "probe_grid",
    "random_weight_copy",
    "zero_shot_accuracy",
]
