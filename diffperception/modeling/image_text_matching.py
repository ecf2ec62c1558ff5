"""``DiffusionPerceptionForImageTextMatching``: Discffusion (seed 002, METHODS.md §2).

A text-conditioned diffusion trunk, cut after the last cross-attention the score needs, and the
``cross_attention_score`` head: the score of an (image, text) pair is the LogSumExp-pooled
pre-softmax cross-attention of the selected layers, averaged over heads, layers and the
timestep ensemble (§2.2-2.4). Optional: the released code's noise-error term
(``task["noise_error"]``, §2.2), the diffusion-classifier score (``scorer="noise_error"``), and
trainable K/V prompts or LoRA (``task["adaptation"]``, §2.5).

Scoring ``N`` images against ``M`` texts runs batched trunk passes laid out
``(T, E, images, texts)``: each image is encoded and noised once for all its texts, each text
encoded once for all images (``features.candidate_attention``). A fixed candidate set (the
``labels``) makes the model a classifier: ``specialize()`` bakes those texts' K/V (with the
trained prompts folded in) and gives an images -> ``scores`` module that exports to ONNX.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..config import TaskConfig
from ..features import noise as noise_ops
from ..features.attention_adapters import ADAPTATIONS, build_adapter
from ..features.candidate_attention import install_candidate_processor, tile_rows
from .base import DiffusionPerceptionModel
from .registry import register_model

__all__ = ["DiffusionPerceptionForImageTextMatching", "ImageTextMatchingOutput", "Match",
           "SCORERS", "NOISE_PREDICTION_TAP", "released_code_timesteps", "PAPER_TIMESTEPS"]

SCORERS = ("attention", "noise_error")
LOSSES = ("triplet", "cross_entropy")
NOISE_PREDICTION_TAP = "conv_out"
#: The paper's noise levels 0.2 / 0.4 / 0.6 / 0.8 as img2img timesteps (METHODS §2.4 (a)).
PAPER_TIMESTEPS = (199, 399, 599, 799)
TASK_DEFAULTS: dict[str, Any] = {"adaptation": "kv", "lora_rank": 4, "noise_error": False,
                                 "loss": "triplet", "margin": 0.1, "num_negatives": 9}


def released_code_timesteps(k: int, num_train_timesteps: int = 1000) -> list[int]:
    """The released code's ``K`` evenly spaced timesteps, ascending (METHODS §2.4 (b)).

    ``rate = int(1000 / K)``; indices ``arange(10, 990, rate)`` into ``[999, ..., 0]``;
    ``t = 999 - index``. K=40 gives 14, 39, ..., 989; K=10 gives 89, 189, ..., 989.

    Raises:
        ValueError: ``k`` outside ``[1, 980]``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 980:
        raise ValueError(f"k = {k!r} is invalid: an integer in [1, 980].")
    rate = int(num_train_timesteps / k)
    return sorted(num_train_timesteps - 1 - i for i in range(10, 990, rate))


@dataclass
class ImageTextMatchingOutput(ModelOutput):
    """Output of ``DiffusionPerceptionForImageTextMatching``.

    Attributes:
        loss: Unused by the model itself (the training task computes the matching loss on
            ``scores``).
        scores: ``(B, M)`` scores, higher = better match.
    """

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class Match(NamedTuple):
    """The best candidate of one image: its index and the scores of all ``M`` candidates."""

    index: int
    scores: torch.Tensor


def _check_texts(texts: Any, what: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not all(
            isinstance(t, str) for t in texts):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}.")
    if not texts:
        raise ValueError(f"{what} is empty; give at least one text.")
    return list(texts)


@register_model
class DiffusionPerceptionForImageTextMatching(DiffusionPerceptionModel,
                                              pipeline_tag="zero-shot-image-classification"):
    """Discffusion image-text matching on a text-conditioned diffusion backbone.

    Args:
        config: A ``TaskConfig`` (or its dict): ``features.taps`` the ``:logits`` taps of the
            scored cross-attentions (``cross_attention_taps(unet, "all" | "released_code")``),
            plus ``conv_out`` for the noise-error scores; ``features.prompt`` of kind
            ``"per_image"`` (the text encoder is kept); ``head`` a ``cross_attention_score``
            head; ``labels`` an optional fixed candidate set; ``task`` with ``adaptation``
            (``"kv"`` default, ``"lora"``, ``"none"``), ``lora_rank`` (4), ``noise_error``
            (False), ``loss`` (``"triplet"`` or ``"cross_entropy"``) and ``margin`` (0.1).
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Raises:
        ValueError: A prompt that is not per-image, noise that is neither fixed nor random,
            unknown or invalid task settings, duplicate labels.

    Example:
        >>> model = AutoDiffusionPerception.from_preset("discffusion-sd21base")
        >>> scores = model.score(images, ["a dog on a sofa", "a sofa on a dog"])   # (N, 2)
        >>> best = model.match(image, candidate_texts)    # Match(index, scores (M,))
        >>> model.score(images, texts, scorer="noise_error")
    """

    default_head = {"type": "cross_attention_score"}

    def __init__(self, config: TaskConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        install_candidate_processor(self.backbone.network)
        task = self.task_settings
        self.adapter = build_adapter(task["adaptation"], self.backbone.network,
                                     rank=task["lora_rank"], seed=self.config.features.noise.seed)

    # ------------------------------------------------------------------------------ config

    def check_config(self, config: TaskConfig) -> None:
        features = config.features
        if features.prompt.kind != "per_image":
            raise ValueError(f"config['features']['prompt']['kind'] = {features.prompt.kind!r} is "
                             "invalid: an image-text matching model encodes its candidate texts, "
                             "so it needs {'kind': 'per_image'} (the text encoder is kept).")
        if features.noise.kind not in ("fixed", "random"):
            raise ValueError(f"config['features']['noise']['kind'] = {features.noise.kind!r} is "
                             "invalid: the score noises each image, 'fixed' (a seeded bank, one "
                             "noise per timestep) or 'random'.")
        unknown = sorted(set(config.task) - set(TASK_DEFAULTS))
        if unknown:
            raise ValueError(f"config['task'] has unknown keys {unknown}; an image-text matching "
                             f"model takes {list(TASK_DEFAULTS)}.")
        task = {**TASK_DEFAULTS, **config.task}
        checks = [("adaptation", task["adaptation"] in ADAPTATIONS, f"one of {ADAPTATIONS}"),
                  ("noise_error", isinstance(task["noise_error"], bool), "true or false"),
                  ("loss", task["loss"] in LOSSES, f"one of {LOSSES}"),
                  ("margin", isinstance(task["margin"], (int, float))
                   and not isinstance(task["margin"], bool) and task["margin"] >= 0,
                   "a number >= 0"),
                  ("lora_rank", isinstance(task["lora_rank"], int)
                   and not isinstance(task["lora_rank"], bool) and task["lora_rank"] >= 1,
                   "an integer >= 1"),
                  ("num_negatives", isinstance(task["num_negatives"], int)
                   and not isinstance(task["num_negatives"], bool) and task["num_negatives"] >= 1,
                   "an integer >= 1 (negative captions per image in training)")]
        for key, ok, allowed in checks:
            if not ok:
                raise ValueError(f"config['task']['{key}'] = {task[key]!r} is invalid: {allowed}.")
        if task["noise_error"] and NOISE_PREDICTION_TAP not in features.taps:
            raise ValueError("config['task']['noise_error'] = true needs the noise prediction: add "
                             f"'{NOISE_PREDICTION_TAP}' to config['features']['taps'].")
        if config.labels:  # a fixed candidate set is optional; when given, unique
            self.require_labels(config, "", what="candidate texts")

    @property
    def task_settings(self) -> dict[str, Any]:
        """``config.task`` with the defaults filled in."""
        return {**TASK_DEFAULTS, **self.config.task}

    @property
    def candidate_texts(self) -> list[str] | None:
        """The fixed candidate set (``config.labels``), or None."""
        return list(self.config.labels) if self.config.labels else None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What prompt learning trains: the adapter and the learned head weights."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------ the stages

    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text contexts ``(M, L, D)`` and SDXL pooled embeddings ``(M, P)`` (else None)."""
        prompt, backbone = self.backbone.prompt, self.backbone
        encoders = {name: getattr(prompt, name) for name in prompt._encoder_names}
        context, pooled = backbone.family.encode_prompt(list(texts), encoders, prompt.tokenizers,
                                                        backbone.network_config)
        return context.to(backbone.dtype), None if pooled is None else pooled.to(backbone.dtype)

    def noise_for(self, latent: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The noise ``(T, E, N, C, h, w)`` of ``N`` clean latents: explicit, the seeded bank
        (one noise per timestep and draw, shared by all images, METHODS §2.4) or fresh."""
        cfg = self.config.features.noise
        T, E = len(self.config.features.timesteps), cfg.ensemble
        if noise is not None:
            return noise_ops.check_noise(noise, T, E, latent)
        shape = (T, E, latent.shape[0], *latent.shape[1:])
        if cfg.kind == "fixed":
            bank = noise_ops.fixed_noise(cfg.seed, T, E, tuple(latent.shape[1:]))
            return bank.to(latent.device, latent.dtype).expand(shape)
        return torch.randn(shape, device=latent.device, dtype=latent.dtype)

    def noisy_latents(self, x: torch.Tensor, noise: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_t, eps)``, both ``(T, E, N, C, h, w)``, for network-ready images ``x``."""
        latent = self.backbone.encode(x)  # (N, C, h, w)
        eps = self.noise_for(latent, noise)
        t = torch.tensor(self.config.features.timesteps)
        alphas = self.backbone.alphas_cumprod[t].to(latent.device)
        return noise_ops.add_noise(latent, eps, alphas), eps

    def _timesteps(self, n: int, device: torch.device) -> torch.Tensor:
        """``(T*E*n,)`` timesteps of a trunk batch laid out ``(T, E, n)``."""
        E = self.config.features.noise.ensemble
        t = torch.tensor(self.config.features.timesteps, device=device)
        return t.repeat_interleave(E * n)

    def _predicted_noise(self, out: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
        """``eps_hat`` ``(T*E*n, C, h, w)`` from the network output (prediction type aware)."""
        backbone = self.backbone
        channels = sample.shape[1]
        t = self._timesteps(n, sample.device)
        abar = backbone.alphas_cumprod.to(sample.device)[t].to(sample.dtype).view(-1, 1, 1, 1)
        return noise_ops.predicted_noise(out[:, :channels], sample, abar,
                                         backbone.prediction_type)

    def _null_errors(self, z: torch.Tensor, eps: torch.Tensor, image_hw: tuple[int, int]
                     ) -> torch.Tensor:
        """``||eps - eps_hat(z_t, "")||_2`` per (t, draw, image): ``(T*E, n)``, one pass per
        image for all its texts (the released code's unconditional half)."""
        T, E, n = z.shape[:3]
        context, pooled = self.encode_texts([""])
        sample = z.reshape(-1, *z.shape[3:])  # (T*E*n, C, h, w)
        added = self._added(pooled, image_hw, sample.shape[0])
        out = self.backbone.trunk(sample, self._timesteps(n, z.device), context, added,
                                  taps=[NOISE_PREDICTION_TAP])[NOISE_PREDICTION_TAP]
        eps_hat = self._predicted_noise(out, sample, n)
        return (eps.reshape(sample.shape) - eps_hat).flatten(1).norm(dim=1).view(T * E, n)

    def _added(self, pooled: torch.Tensor | None, image_hw: tuple[int, int], batch: int):
        added = self.backbone.family.added_conditions(pooled, *image_hw,
                                                      self.backbone.network_config)
        return {k: tile_rows(v, batch) for k, v in added.items()} if added else added

    def _check_scorer(self, scorer: str) -> None:
        if scorer not in SCORERS:
            raise ValueError(f"scorer = {scorer!r} is invalid: one of {SCORERS}.")
        needs_noise = scorer == "noise_error" or self.task_settings["noise_error"]
        if needs_noise and NOISE_PREDICTION_TAP not in self.config.features.taps:
            raise ValueError(f"scorer={scorer!r} needs the noise prediction: build the model "
                             f"with '{NOISE_PREDICTION_TAP}' among features.taps.")

    def pair_scores(self, z: torch.Tensor, eps: torch.Tensor, context: torch.Tensor,
                    pooled: torch.Tensor | None, image_hw: tuple[int, int], *, grid: bool,
                    scorer: str = "attention", null_errors: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Scores of noisy images against text contexts in one trunk pass.

        Args:
            z, eps: Noisy latents and their noise ``(T, E, n, C, h, w)``.
            context: ``(m, L, D)`` text contexts; ``pooled`` their SDXL pooled embeddings.
            image_hw: ``(H, W)`` of the images in pixels.
            grid: Every image with every text (``(n, m)``); else aligned pairs (``m == n``,
                ``(n,)``).
            scorer: ``"attention"`` or ``"noise_error"``.
            null_errors: ``(T*E, n)`` from ``_null_errors`` (the noise-error term).

        Returns:
            ``(n, m)`` (grid) or ``(n,)`` scores, averaged over timesteps and noise draws.
        """
        T, E, n = z.shape[:3]
        m = context.shape[0]
        if grid:  # (T, E, n, m, C, h, w), texts innermost
            z = z.unsqueeze(3).expand(-1, -1, -1, m, *z.shape[3:])
            eps = eps.unsqueeze(3).expand(-1, -1, -1, m, *eps.shape[3:])
        pairs = n * m if grid else n
        sample = z.reshape(-1, *z.shape[-3:])  # (T*E*pairs, C, h, w)
        taps = [] if scorer == "noise_error" else list(self.head.taps)
        if scorer == "noise_error" or null_errors is not None:
            taps.append(NOISE_PREDICTION_TAP)
        feats = self.backbone.trunk(sample, self._timesteps(pairs, sample.device), context,
                                    self._added(pooled, image_hw, sample.shape[0]), taps=taps)
        score = sample.new_zeros(T * E, pairs, dtype=torch.float32)
        if scorer == "attention":
            score = score + self.head({k: feats[k] for k in self.head.taps}).logits.view(T * E, pairs)
        if NOISE_PREDICTION_TAP in feats:
            eps_hat = self._predicted_noise(feats[NOISE_PREDICTION_TAP], sample, pairs)
            diff = (eps.reshape(sample.shape) - eps_hat).flatten(1).float()  # (T*E*pairs, -1)
            if scorer == "noise_error":  # the diffusion-classifier score: -mean squared error
                score = score - diff.pow(2).mean(dim=1).view(T * E, pairs)
            else:  # the released code's ||eps - eps_hat(0)|| - ||eps - eps_hat(y)||
                null = null_errors.float()
                null = null.unsqueeze(-1).expand(-1, -1, m).reshape(T * E, pairs) if grid else null
                score = score + null - diff.norm(dim=1).view(T * E, pairs)
        score = score.mean(dim=0)  # (pairs,)
        return score.view(n, m) if grid else score

    # ----------------------------------------------------------------------- public API

    def _texts_or_labels(self, texts: Sequence[str] | None) -> list[str]:
        if texts is None:
            if not self.candidate_texts:
                raise ValueError("No texts given and the model has no candidate set "
                                 "(config['labels']); pass texts=[...].")
            return self.candidate_texts
        return _check_texts(texts)

    def score(self, images: Any, texts: Sequence[str] | None = None, *,
              scorer: str = "attention", batch_size: int = 64,
              noise: torch.Tensor | None = None,
              value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Scores every image against every text (no gradients).

        Args:
            images: ``(N, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            texts: ``M`` texts (default: the candidate set ``config.labels``).
            scorer: ``"attention"`` (Discffusion, plus the noise-error term when
                ``task["noise_error"]``) or ``"noise_error"`` (the diffusion-classifier score
                ``-mean ||eps - eps_hat(z_t, text)||^2``; needs the ``conv_out`` tap).
            batch_size: Trunk samples per pass (each is one (timestep, draw, image, text)).
            noise: Explicit noise ``(N, C, h, w)`` / ``(E, N, ...)`` / ``(T, E, N, ...)``.
            value_range: Value range of integer images, e.g. ``(0, 255)``.

        Returns:
            ``(N, M)`` float32 scores on the model's device (higher = better match).

        Raises:
            TypeError / ValueError: Bad images or texts, an unknown scorer, or a scorer that
                needs the ``conv_out`` tap the model lacks.
        """
        texts = self._texts_or_labels(texts)
        self._check_scorer(scorer)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r} is invalid: an integer >= 1.")
        with torch.no_grad():
            return self._score_grid(images, texts, scorer=scorer, batch_size=batch_size,
                                    noise=noise, value_range=value_range)

    def _score_grid(self, images: Any, texts: list[str], *, scorer: str, batch_size: int,
                    noise: torch.Tensor | None, value_range: tuple[float, float] | None
                    ) -> torch.Tensor:
        x = self.backbone.prepare_images(images, value_range)  # (N, 3, H, W) model range
        image_hw = tuple(x.shape[-2:])
        context, pooled = self.encode_texts(texts)  # each text once
        rounds = len(self.config.features.timesteps) * self.config.features.noise.ensemble
        per_text = max(1, batch_size // rounds)
        text_chunk = min(len(texts), per_text)
        image_chunk = max(1, per_text // text_chunk)
        with_null = scorer == "attention" and self.task_settings["noise_error"]
        rows = []
        for start in range(0, x.shape[0], image_chunk):
            part = slice(start, start + image_chunk)
            explicit = None if noise is None else _noise_slice(noise, part)
            z, eps = self.noisy_latents(x[part], explicit)  # each image once, for all texts
            null = self._null_errors(z, eps, image_hw) if with_null else None
            row = [self.pair_scores(z, eps, context[j: j + text_chunk],
                                    None if pooled is None else pooled[j: j + text_chunk],
                                    image_hw, grid=True, scorer=scorer, null_errors=null)
                   for j in range(0, len(texts), text_chunk)]
            rows.append(torch.cat(row, dim=1))
        return torch.cat(rows, dim=0)

    def match(self, image: Any, candidate_texts: Sequence[str] | None = None, *,
              scorer: str = "attention", **options: Any) -> Match:
        """The best of ``M`` candidate texts for one image.

        Args:
            image: One image (``(3, H, W)`` / ``(1, 3, H, W)`` tensor, array or PIL image).
            candidate_texts: The candidates (default: ``config.labels``).
            scorer, **options: As for :meth:`score`.

        Returns:
            ``Match(index, scores (M,))``.

        Raises:
            ValueError: More than one image, or what :meth:`score` raises.
        """
        scores = self.score(image, candidate_texts, scorer=scorer, **options)
        if scores.shape[0] != 1:
            raise ValueError(f"match() takes one image, got {scores.shape[0]}; use score() for "
                             "a batch.")
        return Match(int(scores[0].argmax()), scores[0])

    def score_pairs(self, images: Any, texts: Sequence[str], *,
                    value_range: tuple[float, float] | None = None) -> torch.Tensor:
        """Scores of aligned pairs ``(image_i, text_i)``, with gradients (training).

        Args:
            images: ``P`` images; texts: ``P`` texts.

        Returns:
            ``(P,)`` attention scores.

        Raises:
            ValueError: Different numbers of images and texts.
        """
        texts = _check_texts(texts)
        x = self.backbone.prepare_images(images, value_range)
        if x.shape[0] != len(texts):
            raise ValueError(f"Got {x.shape[0]} images and {len(texts)} texts; pairs need one "
                             "text per image.")
        return self._aligned(x, texts)

    def _aligned(self, x: torch.Tensor, texts: list[str]) -> torch.Tensor:
        image_hw = tuple(x.shape[-2:])
        z, eps = self.noisy_latents(x)
        context, pooled = self.encode_texts(texts)
        null = self._null_errors(z, eps, image_hw) if self.task_settings["noise_error"] else None
        return self.pair_scores(z, eps, context, pooled, image_hw, grid=False, null_errors=null)

    def forward(self, images: Any, texts: Sequence[str] | Sequence[Sequence[str]] | None = None,
                *, noise: torch.Tensor | None = None,
                value_range: tuple[float, float] | None = None) -> ImageTextMatchingOutput:
        """Scores with gradients (training) for a batch of images and their candidates.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            texts: None (the candidate set ``config.labels``), ``M`` texts for every image, or
                ``B`` lists of ``M`` texts (each image its own candidates; put the positive
                first for the triplet loss).
            noise, value_range: As for :meth:`score`.

        Returns:
            ``ImageTextMatchingOutput(scores=(B, M))``.

        Raises:
            TypeError / ValueError: Bad images or texts, candidate lists of different lengths.
        """
        x = self.backbone.prepare_images(images, value_range)
        B, image_hw = x.shape[0], tuple(x.shape[-2:])
        if texts is not None and len(texts) and not isinstance(texts[0], str):
            lists = [_check_texts(t, "each candidate list") for t in texts]
            if len(lists) != B or len({len(t) for t in lists}) != 1:
                raise ValueError(f"texts must be {B} lists (one per image) of the same length, got "
                                 f"{len(lists)} lists of lengths {sorted({len(t) for t in lists})}.")
            M = len(lists[0])
            z, eps = self.noisy_latents(x, noise)
            null = (self._null_errors(z, eps, image_hw) if self.task_settings["noise_error"]
                    else None)
            z = z.unsqueeze(3).expand(-1, -1, -1, M, *z.shape[3:]).reshape(*z.shape[:2], B * M,
                                                                           *z.shape[3:])
            eps = eps.unsqueeze(3).expand(-1, -1, -1, M, *eps.shape[3:]).reshape(z.shape)
            if null is not None:
                null = null.repeat_interleave(M, dim=1)
            context, pooled = self.encode_texts([t for row in lists for t in row])
            scores = self.pair_scores(z, eps, context, pooled, image_hw, grid=False,
                                      null_errors=null).view(B, M)
            return ImageTextMatchingOutput(scores=scores)
        texts = self._texts_or_labels(texts)
        z, eps = self.noisy_latents(x, noise)
        null = self._null_errors(z, eps, image_hw) if self.task_settings["noise_error"] else None
        context, pooled = self.encode_texts(texts)
        scores = self.pair_scores(z, eps, context, pooled, image_hw, grid=True, null_errors=null)
        return ImageTextMatchingOutput(scores=scores)

    # ------------------------------------------------------------------- save / export

    def _save_pretrained(self, save_directory, *, bundle_trunk: bool = True, **kwargs: Any) -> None:
        """Saves with the trained additions folded into the trunk's weights (``W + delta``,
        deltas saved as zeros); an unbundled save keeps the deltas as they are."""
        if self.adapter is None or not bundle_trunk:
            return super()._save_pretrained(save_directory, bundle_trunk=bundle_trunk, **kwargs)
        with self.adapter.folded():
            return super()._save_pretrained(save_directory, bundle_trunk=bundle_trunk, **kwargs)

    def specialize(self, size: tuple[int, int] | None = None, *, latent_input: bool = False,
                   texts: Sequence[str] | None = None) -> nn.Module:
        """A classifier over a fixed candidate set: images in, ``{"scores": (B, M)}`` out.

        The candidates' cross-attention K/V are baked (with trained K/V prompts or LoRA folded
        into the weights), timesteps and noise become constants, the trunk stops after the last
        scored cross-attention.

        Args:
            size: ``(H, W)`` of the images (default: ``preprocess.size`` or the native size).
            latent_input: Take latents instead of images.
            texts: The candidate set (default: ``config.labels``).

        Raises:
            ValueError: No candidate set, random noise, the noise-error term, an SDXL backbone
                (its time embedding depends on each text), or a bad size.
        """
        from .matching_export import specialize_matching

        return specialize_matching(self, self._texts_or_labels(texts), size=size,
                                   latent_input=latent_input)

    def specialize_free_text(self, size: tuple[int, int] | None = None, *,
                             latent_input: bool = False) -> nn.Module:
        """Images and encoded texts in, ``{"scores": (B, M)}`` out: free-text matching with
        timesteps, noise and trained additions as constants (``to_k`` / ``to_v`` kept).

        The second input is ``model.encode_texts(texts)[0]`` ``(M, L, D)``.

        Raises:
            ValueError: As :meth:`specialize`.
        """
        from .matching_export import specialize_free_text

        return specialize_free_text(self, size=size, latent_input=latent_input)

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id, body=(
            "texts = ['a photo of a dog', 'a photo of a cat']\n"
            "scores = model.score(images, texts)  # (B, 2), higher = better match\n"
            "print(scores.argmax(-1))\n"))


def _noise_slice(noise: torch.Tensor, part: slice) -> torch.Tensor:
    """The images ``part`` of explicit noise (the image axis is the third from the right-most
    four: ``(..., N, C, h, w)``)."""
    return noise[..., part, :, :, :]


def copy_without_hooks(model: DiffusionPerceptionForImageTextMatching) -> nn.Module:
    """A deep copy of the model's network without capture hooks or adapter hooks."""
    backbone = model.backbone
    backbone.trunk.detach_taps()
    if model.adapter is not None:
        model.adapter.detach()
    try:
        return copy.deepcopy(backbone.network)
    finally:
        backbone.trunk.attach_taps()
        if model.adapter is not None:
            model.adapter.attach()
