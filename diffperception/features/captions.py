"""Per-image prompts made from the images: captions (Vermouth, S000 §3.2; METHODS.md §3.2) and
the ablation's shuffled prompts.

- ``ImageCaptioner``: a transformers image-to-text model (``BlipForConditionalGeneration``,
  ``Salesforce/blip-image-captioning-base`` by default: the COCO-caption fine-tune of the BLIP
  ViT-B CapFilt-L model the paper used, the closest public port), conditional prefix
  ``"a picture of"``, greedy, ``min_length`` 5, ``max_length`` 10; the prefix is stripped, as
  BLIP's ``generate`` strips it.
- ``NoisePredictionCaptioner``: the diffusion model itself as a captioner: of the candidate
  texts, the one with the lowest noise-prediction error (the diffusion-classifier rule, as
  ``evaluation.zero_shot``). With the shipped digits model and the digit captions it is a real
  captioner offline.
- ``ShuffledPrompts``: one of the candidate texts per image, chosen from the image's bytes (the
  "random" prompt of S000 Table 5b; never from the label).
- ``CaptionCache``: any ``images -> texts`` callable, cached per image.

None of these is a module of the task model: a saved or exported model never holds a captioner.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import PromptConfig

__all__ = ["DEFAULT_CAPTIONER", "ImageCaptioner", "NoisePredictionCaptioner", "ShuffledPrompts",
           "CaptionCache", "build_captioner"]

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"


def _image_key(image: torch.Tensor) -> str:
    data = image.detach().float().cpu().contiguous().numpy()
    return hashlib.sha1(np.ascontiguousarray(data).tobytes()).hexdigest()


class CaptionCache:
    """Wraps an ``images (B, 3, H, W) in [0, 1] -> B texts`` callable; each image is captioned
    once (keyed by its bytes).

    Raises (call):
        ValueError: The captioner returns another number of texts than images, or non-texts.
    """

    def __init__(self, captioner: Callable[[torch.Tensor], Sequence[str]]) -> None:
        if not callable(captioner):
            raise TypeError(f"A captioner must be callable (images -> texts), got "
                            f"{type(captioner).__name__}.")
        self.captioner = captioner
        self.cache: dict[str, str] = {}

    def __call__(self, images: torch.Tensor) -> list[str]:
        keys = [_image_key(image) for image in images]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            texts = list(self.captioner(images[todo]))
            if len(texts) != len(todo) or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"The captioner returned {texts!r} for {len(todo)} images; it "
                                 "must return one text per image.")
            self.cache.update(zip((keys[i] for i in todo), texts))
        return [self.cache[k] for k in keys]


class ShuffledPrompts:
    """One of ``texts`` per image, picked by the image's bytes (deterministic, label-free)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __call__(self, images: torch.Tensor) -> list[str]:
        return [self.texts[int(_image_key(image)[:8], 16) % len(self.texts)] for image in images]


class ImageCaptioner:
    """A transformers image-to-text captioner (BLIP by default), METHODS.md §3.2.

    Args:
        repo_id: Hub repo id or local folder (``BlipForConditionalGeneration`` or any model
            ``AutoModelForImageTextToText`` / ``AutoModelForVision2Seq`` loads).
        prefix: Conditional text prefix, stripped from the output (``"a picture of"``).
        max_length, min_length: Generation lengths in tokens (10, 5), greedy decoding.
        **from_pretrained: ``revision``, ``cache_dir``, ``local_files_only``, ``token``.

    Example:
        >>> captioner = ImageCaptioner()          # Salesforce/blip-image-captioning-base
        >>> captioner(images)                     # ['a dog on a couch', ...]
    """

    def __init__(self, repo_id: str = DEFAULT_CAPTIONER, *, prefix: str = "a picture of",
                 max_length: int = 10, min_length: int = 5, **from_pretrained: Any) -> None:
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(repo_id, **from_pretrained)
        if config.model_type == "blip":
            from transformers import BlipForConditionalGeneration as cls
        else:
            import transformers

            cls = getattr(transformers, "AutoModelForImageTextToText", None) or \
                transformers.AutoModelForVision2Seq
        self.model = cls.from_pretrained(repo_id, use_safetensors=True, **from_pretrained).eval()
        self.processor = AutoProcessor.from_pretrained(repo_id, **from_pretrained)
        self.prefix, self.max_length, self.min_length = prefix, max_length, min_length

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[str]:
        pixels = [img.permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().cpu().numpy()
                  for img in images]
        inputs = self.processor(images=pixels, text=[self.prefix] * len(pixels),
                                return_tensors="pt")
        ids = self.model.generate(**inputs, do_sample=False, num_beams=1,
                                  max_length=self.max_length, min_length=self.min_length)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [self._strip(t) for t in texts]

    def _strip(self, text: str) -> str:
        text = text.strip()
        if self.prefix and text.lower().startswith(self.prefix.lower()):
            text = text[len(self.prefix):]
        return text.strip()


class NoisePredictionCaptioner:
    """The diffusion model as a captioner: of ``candidates``, the text whose noise prediction
    error is lowest (seeded noise shared by all candidates; mean over ``timesteps``).

    Args:
        backbone: A text-conditioned ``DiffusionBackbone``; its base model
            (``backbone_config.repo_id`` at its revision) is loaded whole for the scoring.
        candidates: The candidate captions.
        timesteps: Timesteps the error is averaged over (the shipped digits model: 600-800).
        seed: Seed of the noise.
        batch_size: Images per forward (each holds ``batch_size * len(candidates)`` samples).
    """

    def __init__(self, backbone: Any, candidates: Sequence[str], *,
                 timesteps: Sequence[int] = (600, 700, 800), seed: int = 1000,
                 batch_size: int = 16) -> None:
        from ..config import FeaturesConfig, NoiseConfig
        from .backbone import DiffusionBackbone

        self.candidates = list(candidates)
        features = FeaturesConfig(taps=["conv_out"], timesteps=[int(t) for t in timesteps],
                                  noise=NoiseConfig(kind="fixed", seed=seed),
                                  prompt=PromptConfig(kind="per_image"))
        # the whole network of the base model (a saved task model keeps only its cut trunk)
        config = backbone.backbone_config
        self.scorer = DiffusionBackbone(config, features, backbone.preprocess)
        self.scorer.to(backbone.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def errors(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` mean squared noise-prediction errors (``images`` in [0, 1])."""
        k, out = len(self.candidates), []
        scorer = self.scorer
        if scorer.prediction_type != "epsilon":
            raise ValueError("The noise-prediction captioner needs an epsilon-prediction model.")
        for start in range(0, len(images), self.batch_size):
            x = images[start: start + self.batch_size].float()
            b = x.shape[0]
            x = x.repeat_interleave(k, 0)  # (b*K, 3, H, W)
            prompts = self.candidates * b
            latent = scorer.encode(scorer.prepare_images(x))  # (b*K, C, h, w)
            z, t = scorer.noisy_latents(latent)  # fixed noise shared by all samples
            context, added = scorer.conditioning(prompts, b * k, tuple(x.shape[-2:]), z.shape[0])
            pred = scorer.trunk(z, t, context, added)["conv_out"][:, : latent.shape[1]]
            eps = scorer._fixed_noise(latent, len(scorer.features.timesteps), 1)  # (T, 1, 1, ...)
            eps = eps[:, 0].expand(-1, b * k, *latent.shape[1:]).reshape(pred.shape)
            err = (pred.float() - eps.float()).pow(2).flatten(1).mean(1)  # (T*b*K,)
            out.append(err.view(-1, b, k).mean(0))
        return torch.cat(out)

    def __call__(self, images: torch.Tensor) -> list[str]:
        return [self.candidates[i] for i in self.errors(images).argmin(dim=1).tolist()]


def build_captioner(setting: PromptConfig, backbone: Any) -> CaptionCache:
    """The cached image -> text callable of a ``caption`` or ``shuffled`` prompt setting.

    Raises:
        ValueError: Another prompt kind.
    """
    if setting.kind == "shuffled":
        return CaptionCache(ShuffledPrompts(setting.text))
    if setting.kind != "caption":
        raise ValueError(f"Prompt kind {setting.kind!r} takes no captioner.")
    if setting.captioner == "noise-prediction":
        return CaptionCache(NoisePredictionCaptioner(backbone, setting.text))
    return CaptionCache(ImageCaptioner(setting.captioner or DEFAULT_CAPTIONER))
