"""Where evaluation results go: a JSON file and a confusion-matrix PNG next to the model, and
the ``model-index`` of a saved model folder's card (``README.md``).

The card is read and written with huggingface_hub's ``ModelCard``; results of the same task,
data set, split and metric replace the old ones, others are kept.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .classification import ClassifierEvaluation
from .knn import KNN_TEMPERATURE
from .plots import save_confusion_matrix

__all__ = ["card_metrics", "dataset_description", "update_model_card", "write_evaluation"]

TASK_TYPE = "image-classification"


def dataset_description(source: str | os.PathLike) -> tuple[str, str]:
    """``(dataset_type, dataset_name)`` of the card for a ``--data`` source."""
    if str(source) == "digits":
        return "digits", "scikit-learn digits (32 px)"
    folder = Path(source).expanduser()
    saved = any((folder / name).is_file() for name in ("dataset_dict.json", "dataset_info.json"))
    return ("local" if saved else "imagefolder"), folder.resolve().name


def card_metrics(result: ClassifierEvaluation, source: str | os.PathLike, split: str
                 ) -> list[dict[str, Any]]:
    """The results as ``EvalResult`` fields (``save_pretrained(metrics=...)`` takes them)."""
    dataset_type, dataset_name = dataset_description(source)
    common = dict(task_type=TASK_TYPE, dataset_type=dataset_type, dataset_name=dataset_name,
                  dataset_split=split)
    metrics = [dict(common, metric_type="accuracy", metric_name="Top-1 accuracy",
                    metric_value=round(result.top1, 6)),
               dict(common, metric_type="top_5_accuracy", metric_name="Top-5 accuracy",
                    metric_value=round(result.top5, 6))]
    for k, values in sorted(result.knn.items()):
        metrics.append(dict(common, metric_type=f"knn_{k}_accuracy",
                            metric_name=f"kNN top-1 accuracy (k={k}, T={KNN_TEMPERATURE})",
                            metric_value=round(values["top1"], 6)))
    return metrics



def _key(result: Any) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_name, result.dataset_split,
            result.metric_type)


def update_model_card(folder: str | os.PathLike, metrics: list[dict[str, Any]],
                      model: Any = None) -> Path:
    """Merges ``metrics`` into the ``model-index`` of ``folder/README.md``.

    Args:
        folder: A saved model folder.
        metrics: ``EvalResult`` fields (see :func:`card_metrics`).
        model: The loaded model; writes a fresh card (``model.generate_model_card``) when the
            folder has none.

    Returns:
        The card's path.

    Raises:
        FileNotFoundError: The folder has no card and no ``model`` was given.
    """
    from huggingface_hub import EvalResult, ModelCard

    path = Path(folder) / "README.md"
    new = [EvalResult(**m) for m in metrics]
    if not path.is_file():
        if model is None:
            raise FileNotFoundError(f"{path} does not exist; pass the model to write a new card.")
        card = model.generate_model_card(model_id=str(folder), metrics=new)
    else:
        card = ModelCard.load(path)
        replaced = {_key(r) for r in new}
        kept = [r for r in (card.data.eval_results or []) if _key(r) not in replaced]
        card.data.eval_results = kept + new
        card.data.model_name = card.data.model_name or Path(folder).resolve().name
    card.save(path)
    return path


def write_evaluation(result: ClassifierEvaluation, out_dir: str | os.PathLike, *,
                     split: str, source: str | os.PathLike, model_id: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes ``eval_<split>.json`` and ``confusion_<split>.png`` into ``out_dir``.

    Args:
        result: The evaluation.
        out_dir: Folder to write into (created if needed).
        split: The split's name (file names and JSON).
        source: The ``--data`` source.
        model_id: The model that was evaluated (folder or repo id).
        extra: More JSON fields (e.g. batch size).

    Returns:
        ``{"json": path, "confusion": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = save_confusion_matrix(result.confusion, result.class_names,
                                out / f"confusion_{split}.png",
                                title=f"{Path(str(model_id)).name}: {split} split, "
                                      f"top-1 {100 * result.top1:.1f}%")
    data = {"model": str(model_id), "data": str(source), "split": split, **(extra or {}),
            **result.to_dict(), "confusion_png": png.name,
            "metrics": card_metrics(result, source, split)}
    path = out / f"eval_{split}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return {"json": path, "confusion": png}
