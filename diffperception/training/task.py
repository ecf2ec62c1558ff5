"""How the shared training loop trains one kind of task model.

The loop (``loop.py``) owns what every task shares: ``accelerate``, the optimiser and scheduler,
checkpoints and ``--resume``, the log and the curves. A ``TrainingTask`` owns what differs
between tasks: which data a split must hold, how a sample is made (transforms, cached
features), how samples are batched, the loss, the per-sample metrics and the recipe's
optimiser and learning rate. Tasks register by the task model's registered name (training sits
above modeling in the import rule, so the model does not import its task):
``DiffusionPerceptionForImageClassification``'s is :class:`ClassificationTask`; a subclass of a
task model without a task of its own trains with its parent's.

Example (the task of another model, in a module of ``diffperception.training``):
    >>> @register_training_task("DiffusionPerceptionForImageRetrieval")
    ... class RetrievalTask(TrainingTask):
    ...     metrics = ("accuracy",)
    ...     def step(self, model, batch):
    ...         out = model(batch["pixel_values"], labels=batch["labels"])
    ...         return StepOutput(out.loss, {"accuracy": (out.logits.argmax(-1) ==
    ...                                                   batch["labels"]).float()})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..data import TransformedImages, collate_images
from ..registry import Registry
from .arguments import recipe_learning_rate

__all__ = ["TrainingTask", "StepOutput", "ClassificationTask", "training_task", "input_size",
           "register_training_task", "task_for_architecture"]

TASKS: Registry[type["TrainingTask"]] = Registry("training task", "config['architecture']")


def register_training_task(architecture: str):
    """Class decorator registering a ``TrainingTask`` for the task model registered as
    ``architecture``.

    Raises:
        ValueError: Another task is registered for it.
    """
    return TASKS.register(architecture, set_name=False)


@dataclass
class StepOutput:
    """What one training or evaluation step returns.

    Attributes:
        loss: The scalar loss the optimiser minimises.
        per_sample: ``{metric: (B,) tensor}``, one value per sample of the batch (e.g. 1.0 where
            the prediction is right); the loop gathers them over processes and reports their
            mean per epoch as ``train_<metric>`` / ``eval_<metric>``.
    """

    loss: torch.Tensor
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)


def input_size(model: nn.Module) -> int:
    """The side ``S`` of the square images the backbone takes (``preprocess.size`` or native).

    Raises:
        ValueError: A backbone that takes non-square images.
    """
    size = model.config.preprocess.size or list(model.backbone.native_size)
    if size[0] != size[1]:
        raise ValueError(f"config['preprocess']['size'] = {size} is not square; the training "
                         "transforms make S x S crops (set a square size).")
    return int(size[0])


class TrainingTask:
    """Base of the training tasks (the defaults suit an image + class-label task).

    Attributes:
        name: For messages and the log.
        metrics: The ``per_sample`` keys the task reports, in order.
    """

    name: str = "task"
    metrics: tuple[str, ...] = ()

    def recipe(self, model: nn.Module) -> dict[str, Any]:
        """The optimiser (``"sgd"``, ``"adam"``, ``"adamw"``) and learning rate used when the
        user sets none."""
        return {"optimizer": "sgd", "learning_rate": 1e-2}

    def load_data(self, source: str, split: str, *, shots: int | None = None,
                  fraction: float | None = None, seed: int = 0) -> Any:
        """The split ``diffperception train --data SOURCE`` reads for this task (default: an
        image dataset through ``load_split``, optionally a seeded k-shot or fraction subset).

        Raises:
            FileNotFoundError / ValueError: What the loader raises for a bad source or split.
        """
        from .setup import load_split

        return load_split(source, split, shots=shots, fraction=fraction, seed=seed)

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        """Raises ValueError when ``dataset`` cannot train or evaluate ``model``."""
        if len(dataset) == 0:
            raise ValueError(f"The {name} data is empty.")

    def cacheable(self, model: nn.Module) -> tuple[bool, str]:
        """``(True, "")`` when the backbone's features may be cached on disk, else
        ``(False, why not)``; tasks whose samples are not one image each say no."""
        return False, f"the {self.name} task does not use the feature cache"

    def view(self, model: nn.Module, dataset: Any, *, augment: str, seed: int, train: bool
             ) -> torch.utils.data.Dataset:
        """The split as a torch dataset of samples (dicts). A view with ``set_epoch(epoch)`` gets
        it called before every training epoch (per-epoch augmentations)."""
        return TransformedImages(dataset, input_size(model), augment if train else "none", seed)

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stacks samples into a batch; the batch must hold ``"index"``, a ``(B,)`` tensor of the
        samples' indices (the loop counts samples by it)."""
        return collate_images(samples)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """The loss and the per-sample metrics of one batch (gradients enabled while training)."""
        raise NotImplementedError(f"{type(self).__name__} must define step().")


@register_training_task("DiffusionPerceptionForImageClassification")
class ClassificationTask(TrainingTask):
    """Image classification: images and class labels, cross-entropy, top-1 accuracy; features
    cached on disk when the trunk gives the same features on every call (``feature_cache``)."""

    name = "image classification"
    metrics = ("accuracy",)

    def recipe(self, model: nn.Module) -> dict[str, Any]:
        """SGD at the released code's learning rate of the head (METHODS §1.6)."""
        head = model.config.head.type
        if head in ("vermouth", "vermouth_dense"):  # METHODS §3.8: AdamW at 1e-4
            return {"optimizer": "adamw", "learning_rate": 1e-4}
        return {"optimizer": "sgd", "learning_rate": recipe_learning_rate(head)}

    def check_data(self, model: nn.Module, dataset: Any, name: str) -> None:
        labels = model.config.labels or []
        names = list(dataset.features["label"].names)
        if len(names) > len(labels):
            raise ValueError(f"The {name} data has {len(names)} classes {names[:5]}...; the "
                             f"model has {len(labels)} labels. Build it with the data's class "
                             "names.")
        super().check_data(model, dataset, name)

    def cacheable(self, model: nn.Module) -> tuple[bool, str]:
        from .feature_cache import is_cacheable

        return is_cacheable(model)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """A batch of images goes through the whole model; a batch of cached features through
        its head only (``model.head(features, labels=...)``)."""
        if "features" in batch:
            out = model.head(batch["features"], labels=batch["labels"])
        else:
            out = model(batch["pixel_values"], labels=batch["labels"])
        right = (out.logits.argmax(-1) == batch["labels"]).float()
        return StepOutput(out.loss, {"accuracy": right})


def task_for_architecture(architecture: str) -> TrainingTask:
    """A fresh instance of the task registered for the task model named ``architecture``.

    Raises:
        ValueError: No task is registered for it (the message lists those that are).
    """
    if architecture not in TASKS:
        raise ValueError(f"{architecture} cannot be trained by this loop: no training task is "
                         f"registered for it (tasks exist for {TASKS.names()}).")
    return TASKS.get(architecture)()


def training_task(model: nn.Module) -> TrainingTask:
    """A fresh instance of the task registered for the model's class (or its nearest
    registered parent class).

    Raises:
        ValueError: No task is registered for the model.
    """
    from ..modeling.registry import MODELS

    for cls in type(model).__mro__:
        name = MODELS.name_of(cls)
        if name is not None and name in TASKS:
            return TASKS.get(name)()
    raise ValueError(f"{type(model).__name__} cannot be trained by this loop: no training task "
                     f"is registered for it (tasks exist for {TASKS.names()}).")
