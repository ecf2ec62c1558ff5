"""Image-text matching metrics of the Discffusion benchmarks (METHODS.md §2.7), and scoring.

Every metric reads a score table from a matcher's ``score(images, texts)``, which returns
``(num_images, num_texts)`` scores (higher = better match). **Ties count as wrong** everywhere:
a positive must score strictly above a negative (the released code's ``np.argmax == 0`` counts
a tie as right, METHODS.md §2.8 item 9; Winoground's own evaluation uses strict ``>``).

- :func:`comvg_accuracy`: ComVG, per negative type (subject / object / predicate) and both
  aggregates: ``accuracy`` over all rows (row-weighted) and ``mean_per_type`` (the unweighted
  mean of the three types). S002 Table 1's "Average" equals neither (§2.7).
- :func:`recall_at_k`: R@K of one positive among candidates (RefCOCOg over 10 texts, VQAv2).
- :func:`winoground_scores`: text / image / group scores (Thrush et al. 2022).
- :class:`NoiseErrorMatcher`: the diffusion-classifier score (``-`` noise-prediction error,
  :mod:`diffperception.evaluation.zero_shot`) behind the same ``score(images, texts)``.

Written by hand: the metrics. ``torchmetrics``' retrieval metrics (``RetrievalHitRate``,
``RetrievalRecall``) rank tied candidates by sort order, so a tie can count as a hit; the
protocols here need ties counted as misses, which is a comparison per row.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..data.matching import COMVG_TYPES, comvg_type

__all__ = ["COMVG_TYPES", "NoiseErrorMatcher", "comvg_accuracy", "positive_rank",
           "recall_at_k", "score_table", "score_winoground_examples", "winoground_scores"]



def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite scores; check the model's output.")
    return array


def comvg_accuracy(positive: Any, negative: Any, types: Sequence[str]) -> dict[str, Any]:
    """ComVG accuracy: the sentence must score its image strictly above the negative image.

    Args:
        positive: ``(N,)`` score of each row's sentence with its positive image.
        negative: ``(N,)`` score of the sentence with the negative image.
        types: ``N`` negative types (``subject`` / ``object`` / ``predicate``, or the CSV's
            ``verb``).

    Returns:
        ``{"subject", "object", "predicate"}`` accuracies (NaN for a type without rows),
        ``"accuracy"`` over all rows, ``"mean_per_type"`` (unweighted mean of the types that have
        rows), ``"counts"`` (rows per type) and ``"ties"`` (rows with equal scores, all wrong).

    Raises:
        ValueError: Lengths differ, no rows, non-finite scores or an unknown type.
    """
    pos, neg = _as_array(positive, "positive").ravel(), _as_array(negative, "negative").ravel()
    kinds = [comvg_type(t) for t in types]
    if not (len(pos) == len(neg) == len(kinds)) or not len(pos):
        raise ValueError(f"positive, negative and types must have one entry per row and at least "
                         f"one row, got {len(pos)}, {len(neg)}, {len(kinds)}.")
    right = pos > neg  # a tie is wrong
    result: dict[str, Any] = {"counts": {}, "ties": int((pos == neg).sum())}
    per_type = []
    for kind in COMVG_TYPES:
        mask = np.array([k == kind for k in kinds])
        result["counts"][kind] = int(mask.sum())
        result[kind] = float(right[mask].mean()) if mask.any() else float("nan")
        if mask.any():
            per_type.append(result[kind])
    result["accuracy"] = float(right.mean())
    result["mean_per_type"] = float(np.mean(per_type))
    return result


def positive_rank(scores: Any, positive_index: Any = 0) -> np.ndarray:
    """0-based rank of each row's positive, ties counted against it.

    Args:
        scores: ``(Q, M)`` scores of each query against its ``M`` candidates.
        positive_index: The positive's column: one integer or ``(Q,)`` integers.

    Returns:
        ``(Q,)`` ints: how many other candidates score at least as high as the positive.

    Raises:
        ValueError: Not 2-D, fewer than 1 candidate, or an index outside the row.
    """
    table = _as_array(scores, "scores")
    if table.ndim != 2 or table.shape[1] < 1:
        raise ValueError(f"scores must be (Q, M), got shape {table.shape}.")
    index = np.broadcast_to(np.asarray(positive_index), (table.shape[0],)).astype(np.int64)
    if len(index) and (index.min() < 0 or index.max() >= table.shape[1]):
        raise ValueError(f"positive_index must lie in [0, {table.shape[1]}).")
    pos = table[np.arange(len(table)), index]  # (Q,)
    return (table >= pos[:, None]).sum(axis=1) - 1


def recall_at_k(scores: Any, positive_index: Any = 0, ks: Iterable[int] = (1, 5)
                ) -> dict[int, float]:
    """R@K: the fraction of queries whose positive ranks in the top ``k`` (ties count as misses).

    Args:
        scores: ``(Q, M)`` scores (RefCOCOg: one image, M = 10 expressions; VQAv2 "other": one
            image, 10 question-answer texts; VQAv2 "binary": one text, 10 images, transposed).
        positive_index: The positive's column (default 0, the released code's layout).
        ks: The ``k`` values (each ``>= 1``).

    Returns:
        ``{k: recall}``.

    Raises:
        ValueError: See :func:`positive_rank`; a ``k`` below 1.
    """
    ranks = positive_rank(scores, positive_index)
    out = {}
    for k in ks:
        if int(k) < 1:
            raise ValueError(f"k = {k!r} is invalid: an integer >= 1.")
        out[int(k)] = float((ranks < int(k)).mean()) if len(ranks) else float("nan")
    return out


def winoground_scores(scores: Any) -> dict[str, float]:
    """Winoground text, image and group scores (Thrush et al. 2022), ties counted as wrong.

    Args:
        scores: ``(N, 2, 2)``: ``scores[n, i, j]`` is the score of image ``i`` with caption ``j``
            of example ``n`` (a matcher's ``score([image_0, image_1], [caption_0, caption_1])``);
            caption ``i`` describes image ``i``.

    Returns:
        ``{"text_score", "image_score", "group_score"}``: text score = for both images the
        right caption scores higher; image score = for both captions the right image scores
        higher; group = both. Chance: 1/4, 1/4, 1/6.

    Raises:
        ValueError: A shape other than ``(N, 2, 2)``, no examples, or non-finite scores.
    """
    s = _as_array(scores, "scores")
    if s.ndim != 3 or s.shape[1:] != (2, 2) or not len(s):
        raise ValueError(f"scores must be (N, 2, 2) [example, image, caption] with N >= 1, got "
                         f"shape {s.shape}.")
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return {"text_score": float(text.mean()), "image_score": float(image.mean()),
            "group_score": float((text & image).mean())}


def score_table(matcher: Any, images: Any, texts: Sequence[str]) -> np.ndarray:
    """``matcher.score(images, texts)`` as a checked ``(num_images, num_texts)`` float64 array.

    Raises:
        TypeError: ``matcher`` has no ``score`` method.
        ValueError: The table's shape is not ``(len(images), len(texts))``.
    """
    if not callable(getattr(matcher, "score", None)):
        raise TypeError(f"{type(matcher).__name__} has no score(images, texts) method; pass an "
                        "image-text matching model (DiffusionPerceptionForImageTextMatching) or "
                        "a NoiseErrorMatcher.")
    table = _as_array(matcher.score(images, list(texts)), "scores")
    expected = (len(images), len(texts))
    if table.shape != expected:
        raise ValueError(f"{type(matcher).__name__}.score returned shape {table.shape}; expected "
                         f"(num_images, num_texts) = {expected}.")
    return table


def score_winoground_examples(matcher: Any, examples: Sequence[dict[str, Any]], *,
                              load_image: Any = None, progress: bool = True) -> np.ndarray:
    """Scores each example's two images against its two captions.

    Args:
        matcher: Anything with ``score(images, texts) -> (num_images, num_texts)``.
        examples: Dicts with ``image_0``, ``image_1`` (arrays ``(3, H, W)`` in [0, 1], or what
            ``load_image`` turns into one) and ``caption_0``, ``caption_1``.
        load_image: Optional function applied to ``image_0`` / ``image_1`` (e.g. a file loader).
        progress: Show a progress bar.

    Returns:
        ``(N, 2, 2)`` scores for :func:`winoground_scores`.
    """
    from tqdm.auto import tqdm

    out = np.zeros((len(examples), 2, 2))
    load = load_image or (lambda x: x)
    for n, ex in enumerate(tqdm(examples, desc="winoground", disable=not progress)):
        images = torch.as_tensor(np.stack([np.asarray(load(ex["image_0"]), np.float32),
                                           np.asarray(load(ex["image_1"]), np.float32)]))
        out[n] = score_table(matcher, images, [ex["caption_0"], ex["caption_1"]])
    return out


class NoiseErrorMatcher:
    """The diffusion-classifier score behind ``score(images, texts)``: minus the mean squared
    noise-prediction error of each image under each text (:func:`~diffperception.evaluation.
    zero_shot.caption_errors`).

    Every image is scored with the same seeded noise draw (one ``caption_errors`` call per
    image), so that two images are compared under the same noise, as two texts always are.

    Args:
        source: Model folder, alias (``"diffperception:pairs"``) or Hub repo id of a
            text-conditioned diffusion model.
        timesteps: Timesteps (scheduler indices) the error is averaged over.
        seeds: Noise draws per timestep.
        progress: Show progress bars.
        **options: Further ``from_diffusers`` options.

    Example:
        >>> matcher = NoiseErrorMatcher("diffperception:pairs", timesteps=[600, 700, 800])
        >>> matcher.score(images, ["a three to the left of a five", ...])  # (N, M)
    """

    def __init__(self, source: str | os.PathLike, *, timesteps: Sequence[int] = (600, 700, 800),
                 seeds: int = 1, progress: bool = False, **options: Any) -> None:
        self.source, self.timesteps, self.seeds = source, tuple(int(t) for t in timesteps), seeds
        self.progress, self.options, self._model = progress, options, None

    @torch.no_grad()
    def score(self, images: Any, texts: Sequence[str]) -> torch.Tensor:
        """``(num_images, num_texts)`` scores, ``-`` mean squared noise-prediction error.

        Args:
            images: ``(N, 3, H, W)`` float in [0, 1] (numpy or torch).
            texts: ``M`` texts.

        Raises:
            TypeError, ValueError: See ``caption_errors``.
        """
        from .zero_shot import caption_errors, noise_prediction_model

        texts = list(texts)
        if self._model is None:
            self._model = noise_prediction_model(self.source, timesteps=self.timesteps,
                                                 captions=texts, **self.options).eval()
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        rows = [caption_errors(self._model, images[i:i + 1], texts, seeds=self.seeds,
                               progress=self.progress)[0] for i in range(len(images))]
        return -torch.as_tensor(np.stack(rows))  # (N, M)
