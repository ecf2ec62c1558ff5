"""Training task heads (and learned additions) on a frozen diffusion trunk, with ``accelerate``.

- ``train(model, train_data, TrainingArguments(...), eval_data=...)``: the loop (``loop.py``);
- ``TrainingArguments``: the options, the released code's recipe as defaults (``arguments.py``);
- ``FeatureCache``: a frozen backbone's features on disk, reused by every epoch and run, and the
  machinery of ``diffperception extract`` (``feature_cache.py``);
- ``load_split`` / ``classifier_from_config``: a run's data and model (``setup.py``);
- ``TrainingTask`` / ``register_training_task``: what differs between task models (data views,
  batches, loss, metrics, recipe), one task per task model (``task.py``).
"""

from .arguments import RECIPE_LEARNING_RATES, TrainingArguments, recipe_learning_rate
from .feature_cache import CachedFeatures, FeatureCache, content_key, default_cache_root, is_cacheable
from .loop import latest_checkpoint, train
from .setup import class_names, classifier_from_config, load_split, model_from_config
from . import correspondence, matching_task, retrieval, segmentation  # noqa: F401  (register their tasks)
from .task import ClassificationTask, StepOutput, TrainingTask, register_training_task, training_task

__all__ = [
    "RECIPE_LEARNING_RATES", "TrainingArguments", "recipe_learning_rate", "CachedFeatures",
    "FeatureCache", "content_key", "default_cache_root", "is_cacheable", "latest_checkpoint",
    "train", "class_names", "classifier_from_config", "load_split", "model_from_config", "ClassificationTask",
    "StepOutput", "TrainingTask", "register_training_task", "training_task",
]
