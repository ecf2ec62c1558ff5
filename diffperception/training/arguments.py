"""Training options, with the released code's recipe as defaults (METHODS §1.6).

The text-free diffusion-features paper's code (``finetune.py``, ``scripts/*.sh``): SGD without
momentum or weight decay, ``StepLR(step 7 epochs, gamma 0.1)``, 28 epochs, cross-entropy, batch 32
per GPU, learning rate per head (linear 1e-2, attention and difformer 5e-2, diffeed 1e-2). The
paper names Adam instead (S001 §4); ``optimizer="adam"`` is that option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TrainingArguments", "cpu_only", "RECIPE_LEARNING_RATES", "recipe_learning_rate",
           "OPTIMIZERS", "MIXED_PRECISION", "CACHE_MODES"]

#: ``config["head"]["type"]`` -> the released scripts' learning rate (METHODS §1.6).
RECIPE_LEARNING_RATES: dict[str, float] = {
    "linear": 1e-2, "attention": 5e-2, "difformer": 5e-2, "diffeed": 1e-2,
}
DEFAULT_LEARNING_RATE = 1e-2
OPTIMIZERS = ("sgd", "adam", "adamw")
MIXED_PRECISION = ("no", "fp16", "bf16")
CACHE_MODES = ("auto", "on", "off")


def cpu_only(forced: bool = False) -> bool:
    """Whether ``accelerate`` should run on the CPU: asked for, or no accelerator device.

    Passing ``cpu=True`` on a CPU-only machine is what makes accelerate join the processes
    started by ``accelerate launch --multi_gpu`` / ``torchrun`` into one gloo group (MULTI_CPU);
    without it each would run alone.
    """
    import torch

    available = getattr(torch, "accelerator", None)
    has_device = available.is_available() if available is not None else torch.cuda.is_available()
    return forced or not has_device


def recipe_learning_rate(head_type: str) -> float:
    """The recipe's learning rate for a head type (1e-2 for heads the recipe does not name)."""
    return RECIPE_LEARNING_RATES.get(head_type, DEFAULT_LEARNING_RATE)


@dataclass
class TrainingArguments:
    """What ``train`` does; the defaults are the released code's recipe.

    Attributes:
        output_dir: Where checkpoints, the log, the curves and the final model go.
        epochs: Number of epochs (28).
        learning_rate: None: the task's recipe (for a classifier the released code's rate for the
            head type, ``recipe_learning_rate``).
        batch_size: Images per batch and process (32).
        optimizer: None: the task's recipe (``"sgd"`` for a classifier, the code's); ``"sgd"``,
            ``"adam"`` (the text-free paper's) or ``"adamw"``.
        momentum, weight_decay: SGD's (0 and 0 in the code).
        lr_step_epochs, lr_gamma: StepLR's step (7 epochs) and factor (0.1).
        augment: ``"code"`` (random scale-crop + flip), ``"paper"`` (centre crop + flip) or
            ``"none"`` (the evaluation transform: resize + centre crop).
        seed: Seeds the shuffling, the augmentations and the head's initialisation.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (accelerate's autocast).
        feature_cache: ``"auto"`` (cache when the features do not change between epochs:
            ``augment="none"`` and deterministic noise; the evaluation split always qualifies),
            ``"on"`` (the same, but an error when the training features cannot be cached) or
            ``"off"``.
        cache_dir: The feature cache's root (default ``default_cache_root()``).
        resume: Continue from the last checkpoint in ``output_dir``.
        keep_checkpoints: How many epoch checkpoints to keep (the last ones).
        num_workers: Data-loader worker processes.
        bundle_trunk: Save the trunk in the final model (False: only what training changed;
            loading then reads the trunk from the base model).
        progress: Show tqdm bars (on the main process only).
        cpu: Train on the CPU even when a GPU is present.
    """

    output_dir: str
    epochs: int = 28
    learning_rate: float | None = None
    batch_size: int = 32
    optimizer: str | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_step_epochs: int = 7
    lr_gamma: float = 0.1
    augment: str = "code"
    seed: int = 0
    mixed_precision: str = "no"
    feature_cache: str = "auto"
    cache_dir: str | None = None
    resume: bool = False
    keep_checkpoints: int = 2
    num_workers: int = 0
    bundle_trunk: bool = True
    progress: bool = True
    cpu: bool = False

    def validate(self) -> None:
        """Raises ValueError naming the option, its value and what is allowed."""
        from ..data import AUGMENTATIONS

        choices = {"optimizer": (None, *OPTIMIZERS), "augment": AUGMENTATIONS,
                   "mixed_precision": MIXED_PRECISION, "feature_cache": CACHE_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} = {getattr(self, name)!r} is invalid: one of "
                                 f"{list(allowed)}.")
        for name in ("epochs", "batch_size", "lr_step_epochs", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r} is invalid: an integer >= 1.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate = {self.learning_rate!r} is invalid: a number > 0.")
        if self.num_workers < 0:
            raise ValueError(f"num_workers = {self.num_workers!r} is invalid: >= 0.")

    def resolved(self, recipe: dict[str, Any] | str) -> dict[str, Any]:
        """The options as saved next to the checkpoints, with the optimiser and learning rate the
        user left unset taken from ``recipe`` (a task's ``recipe()``; a head type string means
        the classification recipe: SGD at ``recipe_learning_rate(head_type)``)."""
        if isinstance(recipe, str):
            recipe = {"optimizer": "sgd", "learning_rate": recipe_learning_rate(recipe)}
        data = asdict(self)
        for key in ("optimizer", "learning_rate"):
            if data[key] is None:
                data[key] = recipe[key]
        return data

    #: Options a resumed run must share with the run it continues.
    RESUME_KEYS = ("learning_rate", "batch_size", "optimizer", "momentum", "weight_decay",
                   "lr_step_epochs", "lr_gamma", "augment", "seed")
