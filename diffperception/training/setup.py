"""What a training run starts from: a data split and a classifier built from a preset or config.

Example:
    >>> train_data = load_split("digits", "train", shots=5, seed=0)
    >>> model = classifier_from_config(load_preset("linear-digits"), labels=class_names(train_data))
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

from torch import nn

from ..config import TaskConfig
from ..data import class_names, few_shot, label_fraction, load_image_dataset

__all__ = ["load_split", "classifier_from_config", "model_from_config", "class_names",
           "CLASSIFIER"]

CLASSIFIER = "DiffusionPerceptionForImageClassification"


def load_split(source: str | os.PathLike, split: str = "train", *, shots: int | None = None,
               fraction: float | None = None, seed: int = 0) -> Any:
    """A split, optionally cut to ``shots`` images per class or a ``fraction`` of the labels.

    Args:
        source: ``"digits"``, an image folder or a saved dataset (``load_image_dataset``).
        split: The split's name.
        shots: Images per class (class-balanced, seeded).
        fraction: Fraction of the images (class-balanced, seeded), e.g. 0.01 or 0.1.
        seed: Seed of the subset.

    Raises:
        ValueError: Both ``shots`` and ``fraction``, or what ``load_image_dataset`` raises.
        FileNotFoundError: No such folder.
    """
    if shots is not None and fraction is not None:
        raise ValueError("Pass shots or fraction, not both.")
    dataset = load_image_dataset(source, split)
    if shots is not None:
        dataset = few_shot(dataset, shots, seed=seed)
    elif fraction is not None:
        dataset = label_fraction(dataset, fraction, seed=seed)
    return dataset


def classifier_from_config(config: dict[str, Any] | TaskConfig, *, labels: Sequence[str],
                           repo_id: str | os.PathLike | None = None, revision: str | None = None,
                           head: dict[str, Any] | None = None, taps: Sequence[str] | None = None,
                           timesteps: Sequence[int] | None = None, **hub_kwargs: Any
                           ) -> nn.Module:
    """An image classifier from a preset / config dict, with the data's class names as labels.

    Args:
        config: A preset (``load_preset``) or ``config.json`` dict.
        labels: The class names (``class_names(dataset)``).
        repo_id, revision: Another base model (a Hub repo id or a local diffusers folder).
        head: Replaces ``config["head"]``; needed when the config is a feature extractor.
        taps, timesteps: Replace the config's.
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token``.

    Raises:
        ValueError: A config of another task, a feature extractor without ``head``, or an
            invalid config.
    """
    data = copy.deepcopy(config.to_dict() if isinstance(config, TaskConfig) else dict(config))
    architecture = CLASSIFIER if head is not None and data["architecture"] == \
        "DiffusionPerceptionForFeatureExtraction" else data["architecture"]
    if architecture != CLASSIFIER:
        raise ValueError(f"config['architecture'] = {data['architecture']!r}: training needs "
                         f"{CLASSIFIER!r} (or a feature-extraction config with a head, "
                         "e.g. --head '{\"type\": \"linear\", \"pool\": 2}').")
    return model_from_config(data, labels=labels, repo_id=repo_id, revision=revision, head=head,
                             taps=taps, timesteps=timesteps, **hub_kwargs)


def model_from_config(config: dict[str, Any] | TaskConfig, *, labels: Sequence[str] | None = None,
                      repo_id: str | os.PathLike | None = None, revision: str | None = None,
                      head: dict[str, Any] | None = None, taps: Sequence[str] | None = None,
                      timesteps: Sequence[int] | None = None, **hub_kwargs: Any) -> nn.Module:
    """The task model a preset / config dict names (any registered architecture).

    Args:
        config: A preset (``load_preset``) or ``config.json`` dict.
        labels: Replace the config's labels (e.g. the data's class names); None keeps them.
        repo_id, revision: Another base model (a Hub repo id or a local diffusers folder).
        head: Replaces ``config["head"]``; a feature-extraction config with a head becomes an
            image classifier.
        taps, timesteps: Replace the config's.
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token``.

    Raises:
        ValueError: An invalid config.
    """
    from ..modeling import get_model_class

    data = copy.deepcopy(config.to_dict() if isinstance(config, TaskConfig) else dict(config))
    if head is not None:
        data["head"] = dict(head)
        if data["architecture"] == "DiffusionPerceptionForFeatureExtraction":
            data["architecture"] = CLASSIFIER
    if repo_id is not None:
        data["backbone"]["repo_id"] = str(repo_id)
        data["backbone"]["revision"] = revision
    elif revision is not None:
        data["backbone"]["revision"] = revision
    if taps is not None:
        data["features"]["taps"] = list(taps)
    if timesteps is not None:
        data["features"]["timesteps"] = [int(t) for t in timesteps]
    if labels is not None:
        data["labels"] = list(labels)
    return get_model_class(data["architecture"])(TaskConfig.from_dict(data), **hub_kwargs)
