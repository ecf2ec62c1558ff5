"""The specialised image-text matcher: a fixed candidate set turns Discffusion into a classifier.

``specialize_matching`` copies the trunk, folds the trained K/V prompts (or LoRA) into its
weights, bakes the candidates' cross-attention K/V (``M`` texts), freezes the timesteps and the
noise bank, and cuts the trunk after the last scored cross-attention. The module takes images
only and returns ``{"scores": (B, M)}``; it carries what the export flow reads (``size``,
``latent_input``, ``source_config``, ``noise``), so ``to_onnx(model, ...)`` exports it.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from ..features.candidate_attention import bake_candidate_kv
from ..features.noise import add_noise, fixed_noise, posterior_noise
from ..features.preprocess import scale_range
from ..features.trunk import Trunk

__all__ = ["SpecializedImageTextMatcher", "SpecializedFreeTextMatcher", "specialize_matching",
           "specialize_free_text"]


class SpecializedImageTextMatcher(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] (or latents) -> ``{"scores": (B, M)}``.

    Attributes:
        size: ``(H, W)`` of the images taken (pixels).
        latent_input: Whether the input is a latent ``(B, C, h, w)``.
        source_config: The task config dict (export metadata; ``labels`` are the candidates).
        noise: The noise bank ``(T, E, 1, C, h, w)``.
        num_candidates: ``M``.
    """

    def __init__(self, network: nn.Module, vae: nn.Module | None, trunk: Trunk, head: nn.Module,
                 noise: torch.Tensor, alphas: torch.Tensor, *, num_candidates: int,
                 value_range: Sequence[float], size: tuple[int, int], latent_input: bool,
                 source_config: dict[str, Any], component: str = "unet",
                 posterior: torch.Tensor | None = None) -> None:
        super().__init__()
        setattr(self, component, network)
        self.vae, self.trunk, self.head = vae, trunk, head
        self.register_buffer("posterior_noise", posterior)  # (1, C, h, w) or None
        self.register_buffer("noise", noise)  # (T, E, 1, C, h, w)
        self.register_buffer("alphas", alphas)  # (T,)
        self.num_candidates = int(num_candidates)
        self.value_range = [float(v) for v in value_range]
        self.size, self.latent_input = tuple(size), latent_input
        self.source_config = source_config

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the input: the image size, or the latent size for latent input."""
        return tuple(int(d) for d in self.noise.shape[-2:]) if self.latent_input else self.size

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"scores": (B, M)}`` for images ``(B, 3, H, W)`` in [0, 1] at ``size`` (or latents).

        Raises:
            ValueError: Input of another height and width than the module was built for.
        """
        if tuple(images.shape[-2:]) != self.input_hw:
            raise ValueError(f"This specialized model takes inputs of {self.input_hw[0]}x"
                             f"{self.input_hw[1]}; got {tuple(images.shape)}.")
        if self.latent_input:
            latent = images
        else:
            x = scale_range(images, self.value_range)
            latent = self.vae(x, self.posterior_noise) if self.vae is not None else x
        z = add_noise(latent, self.noise, self.alphas)  # (T, E, B, C, h, w)
        T, E, M = z.shape[0], z.shape[1], self.num_candidates
        z = z.unsqueeze(3).expand(-1, -1, -1, M, -1, -1, -1)  # (T, E, B, M, C, h, w)
        feats = self.trunk(z.reshape(-1, *z.shape[-3:]), None)  # texts innermost
        scores = self.head(feats).logits.reshape(T * E, -1, M)  # (T*E, B, M)
        return {"scores": scores.mean(dim=0)}


def _check(model, texts: list[str], size) -> tuple[int, int]:
    features, backbone = model.config.features, model.backbone
    if features.noise.kind != "fixed":
        raise ValueError(f"Cannot specialize noise kind {features.noise.kind!r}: only 'fixed' is a "
                         "constant. Rebuild the model with noise='fixed'.")
    if model.task_settings["noise_error"]:
        raise ValueError("Cannot specialize a model with task['noise_error'] = true: the exported "
                         "classifier computes the attention score only.")
    if backbone.family.is_sdxl(backbone.network_config):
        raise ValueError("Cannot specialize an SDXL matching model: its time embedding depends on "
                         "each text's pooled embedding, which the frozen time cannot hold.")
    size = tuple(size or backbone.preprocess.size or backbone.native_size)
    if len(size) != 2 or size[0] % backbone.size_multiple or size[1] % backbone.size_multiple:
        raise ValueError(f"size {size} must be (H, W), multiples of {backbone.size_multiple}.")
    return size


@torch.no_grad()
def _pruned_network(model) -> tuple[nn.Module, list, Any]:
    """A hook-free copy of the model's network with the trained additions folded in
    (``W + delta``: baked K/V carry the trained prompts), cut after the scored layers; returns
    ``(network, taps, plan)``."""
    from .image_text_matching import copy_without_hooks

    backbone, family = model.backbone, model.backbone.family
    network = copy_without_hooks(model)
    if model.adapter is not None:
        model.adapter.fold_into(network)
    taps = [t for t in backbone.trunk.taps if t.name in set(model.head.taps)]
    plan = family.plan_cut(network, [(t.path, t.kind) for t in taps])
    family.prune(network, plan)
    return network, taps, plan


def _noise_and_vae(model, latent_hw: tuple[int, int], latent_input: bool):
    """The fixed noise ``(T, E, 1, C, h, w)`` (the config's seed and sampling, as the eager
    model draws it), the timesteps' ``alphas_cumprod``, the VAE encoder copy (None for latent
    input) and the posterior-sample noise (or None)."""
    backbone, features = model.backbone, model.config.features
    dtype, channels = backbone.dtype, int(backbone.network_config["in_channels"])
    T, E = len(features.timesteps), features.noise.ensemble
    t_index = torch.tensor(features.timesteps, device=backbone.device)
    noise = fixed_noise(features.noise.seed, T, E, (channels, *latent_hw), dtype=dtype,
                        sampling=features.noise.sampling)
    alphas = backbone.alphas_cumprod[t_index.cpu()].to(dtype)
    vae = None if latent_input or backbone.vae is None else copy.deepcopy(backbone.vae)
    posterior = None
    if vae is not None and features.noise.posterior == "sample":
        posterior = posterior_noise(features.noise.seed, (channels, *latent_hw), dtype=dtype)
    return noise, alphas, vae, posterior


def specialize_matching(model, texts: list[str], *, size: tuple[int, int] | None = None,
                        latent_input: bool = False) -> SpecializedImageTextMatcher:
    """The images -> scores module of a matching model for the candidate ``texts``.

    Raises:
        ValueError: See ``DiffusionPerceptionForImageTextMatching.specialize``.
    """
    size = _check(model, texts, size)
    backbone, features = model.backbone, model.config.features
    family, device, dtype = backbone.family, backbone.device, backbone.dtype
    T = len(features.timesteps)
    network, taps, plan = _pruned_network(model)
    t_index = torch.tensor(features.timesteps, device=device)
    latent_hw = (size[0] // backbone.vae_factor, size[1] // backbone.vae_factor)
    channels = int(backbone.network_config["in_channels"])
    probe = torch.zeros(T, channels, *latent_hw, device=device, dtype=dtype)
    context, pooled = model.encode_texts(texts)  # (M, L, D)
    added = family.added_conditions(pooled, *size, backbone.network_config)
    family.freeze_time(network, backbone.trunk.embed(probe, t_index, context[:1], added))
    bake_candidate_kv(network, family.prepare_context(backbone.network, context, added))
    trunk = Trunk(network, family, taps, plan)
    trunk.frozen_timesteps = T
    noise, alphas, vae, posterior = _noise_and_vae(model, latent_hw, latent_input)
    config = model.saved_config(publish=True)
    config["labels"] = list(texts)
    return SpecializedImageTextMatcher(
        network, vae, trunk, copy.deepcopy(model.head), noise.to(device), alphas.to(device),
        num_candidates=len(texts), value_range=backbone.preprocess.range, size=size,
        latent_input=latent_input, source_config=config, component=family.component,
        posterior=None if posterior is None else posterior.to(device)).eval()


class SpecializedFreeTextMatcher(SpecializedImageTextMatcher):
    """Images ``(B, 3, H, W)`` and encoded texts ``(M, L, D)`` -> ``{"scores": (B, M)}``.

    The free-text form of the specialised matcher: timesteps and noise are constants and trained
    additions are folded into ``to_k`` / ``to_v``, but the cross-attention K/V are computed from
    the text input (``model.encode_texts(texts)[0]`` gives it), so any texts can be scored.
    """

    def forward(self, images: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"scores": (B, M)}``; ``context`` is ``(M, L, D)`` (the text encoder's output).

        Raises:
            ValueError: Images of another size than the module was built for.
        """
        if tuple(images.shape[-2:]) != self.input_hw:
            raise ValueError(f"This specialized model takes inputs of {self.input_hw[0]}x"
                             f"{self.input_hw[1]}; got {tuple(images.shape)}.")
        latent = images if self.latent_input else self._encode(images)
        z = add_noise(latent, self.noise, self.alphas)  # (T, E, B, C, h, w)
        T, E, M = z.shape[0], z.shape[1], context.shape[0]
        z = z.unsqueeze(3).expand(-1, -1, -1, M, -1, -1, -1)  # (T, E, B, M, C, h, w)
        feats = self.trunk(z.reshape(-1, *z.shape[-3:]), None, context)  # texts innermost
        scores = self.head(feats).logits.reshape(T * E, -1, M)  # (T*E, B, M)
        return {"scores": scores.mean(dim=0)}

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = scale_range(images, self.value_range)
        return self.vae(x, self.posterior_noise) if self.vae is not None else x


@torch.no_grad()
def specialize_free_text(model, *, size: tuple[int, int] | None = None,
                         latent_input: bool = False) -> SpecializedFreeTextMatcher:
    """The (images, encoded texts) -> scores module of a matching model.

    Raises:
        ValueError: As ``specialize_matching`` (random noise, the noise-error term, SDXL, size).
    """
    size = _check(model, [], size)
    backbone, features = model.backbone, model.config.features
    family, device, dtype = backbone.family, backbone.device, backbone.dtype
    T = len(features.timesteps)
    network, taps, plan = _pruned_network(model)
    t_index = torch.tensor(features.timesteps, device=device)
    latent_hw = (size[0] // backbone.vae_factor, size[1] // backbone.vae_factor)
    channels = int(backbone.network_config["in_channels"])
    probe = torch.zeros(T, channels, *latent_hw, device=device, dtype=dtype)
    context, _ = model.encode_texts([""])
    family.freeze_time(network, backbone.trunk.embed(probe, t_index, context, None))
    trunk = Trunk(network, family, taps, plan)
    trunk.frozen_timesteps = T
    noise, alphas, vae, posterior = _noise_and_vae(model, latent_hw, latent_input)
    return SpecializedFreeTextMatcher(
        network, vae, trunk, copy.deepcopy(model.head), noise.to(device), alphas.to(device),
        num_candidates=0, value_range=backbone.preprocess.range, size=size,
        latent_input=latent_input, source_config=model.saved_config(publish=True),
        component=family.component,
        posterior=None if posterior is None else posterior.to(device)).eval()
