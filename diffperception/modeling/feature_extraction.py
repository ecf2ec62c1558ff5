"""``DiffusionPerceptionForFeatureExtraction``: images in, ``{tap: activation}`` out."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from ..backbones.components import BackboneParts, build_parts
from ..backbones.loading import ModelSource, resolve_source
from ..config import BackboneConfig, FeaturesConfig, NoiseConfig, PreprocessConfig, PromptConfig, TaskConfig
from ..features import noise as noise_ops
from ..features.attention import install_processor
from ..features.preprocess import check_size, resize_and_crop, scale_range, to_image_tensor
from ..features.trunk import Trunk
from .base import DiffusionPerceptionModel
from .registry import register_model

__all__ = ["DiffusionPerceptionForFeatureExtraction", "Learnable"]


class Learnable:
    """A trainable prompt: a text embedding initialised from ``init_text``.

    Example:
        >>> model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        ...     repo, taps=["up_ft.1"], prompt=Learnable("a photo of a dog"))
    """

    def __init__(self, init_text: str = "") -> None:
        self.init_text = init_text


def _prompt_config(prompt: Any) -> PromptConfig:
    if isinstance(prompt, PromptConfig):
        return prompt
    if isinstance(prompt, Learnable):
        return PromptConfig(kind="learnable", text=prompt.init_text)
    if prompt is None or prompt == "":
        return PromptConfig(kind="null")
    if isinstance(prompt, str):
        return PromptConfig(kind="fixed", text=prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return PromptConfig(kind="per_image", text=list(prompt))
    raise TypeError(
        f"prompt must be '' (null prompt), a string, a list of strings (one per image) or "
        f"Learnable(init_text); got {type(prompt).__name__}."
    )


def _context_placeholder(folder, unet_config: dict[str, Any]):
    """Meta tensors shaped like the encoded prompt (``(1, L, D)``, SDXL pooled ``(1, P)``)."""
    import json

    tok = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    length = int(tok.get("model_max_length", 77))
    context = torch.empty(1, length, int(unet_config["cross_attention_dim"]), device="meta")
    pooled = None
    if unet_config.get("addition_embed_type") == "text_time":
        width = (int(unet_config["projection_class_embeddings_input_dim"])
                 - 6 * int(unet_config["addition_time_embed_dim"]))
        pooled = torch.empty(1, width, device="meta")
    return context, pooled


def _meta_text_stack(folder, index: dict[str, Any], dtype: str
                     ) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Text encoder(s) built on the meta device from their configs, and the tokenizer(s).

    For a saved task model with per-image prompts: the encoder weights come from its
    ``model.safetensors`` (``text_encoder.*``), not from the base model.
    """
    import transformers
    from accelerate import init_empty_weights

    from ..backbones.components import DTYPES
    from ..backbones.loading import load_tokenizer

    encoders, tokenizers = {}, {}
    for enc_name, tok_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        entry = index.get(enc_name)
        if not entry or entry[1] is None:
            continue
        if entry[1] not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise ValueError(f"{folder / enc_name} holds a {entry[1]}; supported text encoders: "
                             "CLIPTextModel, CLIPTextModelWithProjection.")
        cls = getattr(transformers, entry[1])
        text_config = cls.config_class.from_pretrained(str(folder / enc_name))
        with init_empty_weights():
            encoder = cls(text_config)
        encoders[enc_name] = encoder.to(DTYPES[dtype]).eval().requires_grad_(False)
        tokenizers[enc_name] = load_tokenizer(folder, tok_name)
    return encoders, tokenizers


@register_model
class DiffusionPerceptionForFeatureExtraction(DiffusionPerceptionModel,
                                              pipeline_tag="image-feature-extraction"):
    """A diffusion U-Net, cut after the last tap, as a feature extractor.

    Args:
        config: A ``TaskConfig`` (or its dict) with ``architecture`` set to this class's name.
        source: The resolved diffusers folder; resolved from ``config.backbone`` when None.
        load_weights: Load the backbone's weights from ``source`` (False builds on the meta
            device; a saved task model then loads its own weights).
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token`` used to resolve ``source``.

    Example:
        >>> model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261])
        >>> feats = model(images)          # images (B, 3, H, W) in [0, 1]
        >>> feats["up_ft.1"].shape         # (B, 1280, H/16, W/16)
    """

    def __init__(self, config: TaskConfig | dict[str, Any], *, source: ModelSource | None = None,
                 load_weights: bool = True, **hub_kwargs: Any) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = TaskConfig.from_dict(config)
        config.validate()
        self.config = config
        if source is None:
            source = resolve_source(config.backbone.repo_id, revision=config.backbone.revision,
                                    **hub_kwargs)
        self.source = source
        prompt = config.features.prompt
        need_text = prompt.kind == "per_image" or (load_weights and config.backbone.family == "sd")
        parts = build_parts(source, config.features, dtype=config.backbone.dtype,
                            variant=config.backbone.variant, load_weights=load_weights,
                            need_text=need_text and load_weights)
        if prompt.kind == "per_image" and not load_weights:
            parts.text_encoders, parts.tokenizers = _meta_text_stack(
                source.folder, parts.model_index, config.backbone.dtype)
        self._assemble(parts)

    # ----------------------------------------------------------------------------- construction

    def _assemble(self, parts: BackboneParts) -> None:
        features = self.config.features
        self.family = parts.family
        self.unet_config = parts.unet_config
        self.scheduler_config = parts.scheduler_config
        self.model_index = parts.model_index
        self.is_sdxl = bool(getattr(parts.family, "is_sdxl", lambda c: False)(parts.unet_config))
        self.unet = parts.unet.eval()
        self.vae = parts.vae.eval() if parts.vae is not None else None
        # The trunk drives the U-Net registered on this model (so keys stay ``unet.*``).
        self.trunk = Trunk(self.unet, parts.taps, parts.plan,
                           num_up_blocks=len(parts.unet_config.get("up_block_types", ())))
        self.register_buffer("alphas_cumprod", parts.alphas_cumprod.float(), persistent=False)
        self._timesteps()  # fail at construction, not at the first call
        self.tokenizers = parts.tokenizers
        self._noise_cache: dict[tuple, torch.Tensor] = {}
        self._text_encoder_names: list[str] = []
        if self.family.text_conditioned:
            self._set_up_prompt(features.prompt, parts)
            for attn in self._cross_attentions():
                install_processor(attn)  # computes K/V once for a batch-1 context

    def _cross_attentions(self):
        from diffusers.models.attention_processor import Attention

        return [m for m in self.unet.modules() if isinstance(m, Attention) and m.is_cross_attention]

    def _set_up_prompt(self, prompt: PromptConfig, parts: BackboneParts) -> None:
        encoders, tokenizers = parts.text_encoders, parts.tokenizers
        if prompt.kind == "per_image":
            for name, encoder in encoders.items():
                setattr(self, name, encoder)  # kept: prompts are encoded every call
            self._text_encoder_names = list(encoders)
            return
        text = prompt.text if prompt.kind in ("fixed", "learnable") else ""
        if encoders:
            context, pooled = self.family.encode([text], encoders, tokenizers, self.is_sdxl)
        else:  # the weights come from a saved task model: shapes only, on the meta device
            context, pooled = _context_placeholder(self.source.folder, self.unet_config)
        if prompt.kind == "learnable":
            self.prompt_embedding = nn.Parameter(context.float().clone())
        else:
            self.register_buffer("text_context", context)
        if pooled is not None:
            self.register_buffer("text_pooled", pooled)

    # --------------------------------------------------------------------------- public helpers

    @classmethod
    def from_diffusers(
        cls,
        repo_id: str | os.PathLike,
        *,
        taps: Sequence[str],
        timesteps: Sequence[int] = (261,),
        noise: str = "fixed",
        seed: int = 0,
        ensemble: int = 1,
        prompt: Any = "",
        size: tuple[int, int] | None = None,
        dtype: str = "float32",
        revision: str | None = None,
        variant: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        inversion_steps: int = 10,
    ) -> "DiffusionPerceptionForFeatureExtraction":
        """Builds a feature extractor from a diffusers model (Hub repo id or local folder).

        Args:
            repo_id: Hub repo id or local folder in diffusers layout.
            taps: Tap names (see ``diffperception.list_taps``).
            timesteps: Diffusion timesteps; several give a ``(B, T, ...)`` output per tap.
            noise: ``"fixed"``, ``"random"``, ``"none"`` or ``"ddim_inversion"``.
            seed: Seed of the fixed noise.
            ensemble: Noise draws averaged per timestep.
            prompt: ``""`` (null), a text, a list of texts (one per image) or ``Learnable(text)``.
            size: ``(H, W)`` images are resized to; None keeps the input size.
            dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
            revision, variant, cache_dir, local_files_only, token: Hub loading options.
            inversion_steps: DDIM steps for ``noise="ddim_inversion"``.

        Raises:
            ValueError: Unknown tap (with close names), bad timestep, bad option.
            FileNotFoundError: Missing repo, revision, folder or weights.
        """
        source = resolve_source(repo_id, revision=revision, cache_dir=cache_dir,
                                local_files_only=local_files_only, token=token)
        from ..backbones.components import unet_config
        from ..backbones import family_for_unet

        family = family_for_unet(unet_config(source.folder).get("_class_name", "UNet2DConditionModel"))
        config = TaskConfig(
            architecture=cls.__name__,
            backbone=BackboneConfig(repo_id=str(repo_id), family=family.name,
                                    revision=source.revision, dtype=dtype, variant=variant),
            features=FeaturesConfig(
                taps=list(taps), timesteps=[int(t) for t in timesteps],
                noise=NoiseConfig(kind=noise, seed=seed, ensemble=ensemble,
                                  inversion_steps=inversion_steps),
                prompt=_prompt_config(prompt)),
            preprocess=PreprocessConfig(size=list(size) if size else None),
        )
        return cls(config, source=source)

    # ------------------------------------------------------------------------------ the stages

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this."""
        downs = max(len(self.unet_config.get("down_block_types", ())) - 1, 0)
        vae_factor = self.vae.downsample_factor if self.vae is not None else 1
        return vae_factor * 2 ** downs

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.unet.parameters())

    @property
    def device(self) -> torch.device:
        return next(p.device for p in self.unet.parameters())

    def prepare_images(self, images: Any, value_range: tuple[float, float] | None = None
                       ) -> torch.Tensor:
        """Public-edge conversion: checked, resized, scaled ``(B, 3, H, W)`` network input."""
        x = to_image_tensor(images, value_range=value_range)
        x = resize_and_crop(x.to(self.device, torch.float32), self.config.preprocess)
        check_size(x, self.size_multiple)
        return scale_range(x, self.config.preprocess.range).to(self.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Clean latent ``z_0``: VAE posterior mean times scaling factor, or the pixels."""
        return self.vae(x) if self.vae is not None else x

    def _timesteps(self) -> list[int]:
        timesteps = self.config.features.timesteps
        limit = len(self.alphas_cumprod)
        bad = [t for t in timesteps if not 0 <= t < limit]
        if bad:
            raise ValueError(f"Timesteps {bad} are outside [0, {limit}) of this model's scheduler.")
        return timesteps

    def noisy_latents(self, latent: torch.Tensor, noise: torch.Tensor | None = None,
                      image_hw: tuple[int, int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T*E*B, C, h, w)`` noisy latents and their ``(T*E*B,)`` timesteps."""
        cfg = self.config.features.noise
        timesteps = self._timesteps()
        T, E, B = len(timesteps), cfg.ensemble, latent.shape[0]
        t_index = torch.tensor(timesteps, device=latent.device)
        alphas = self.alphas_cumprod.to(latent.device)[t_index]
        if noise is not None:
            eps = noise_ops.check_noise(noise, T, E, latent)
            z = noise_ops.add_noise(latent, eps, alphas)
        elif cfg.kind == "fixed":
            z = noise_ops.add_noise(latent, self._fixed_noise(latent, T, E), alphas)
        elif cfg.kind == "random":
            eps = torch.randn((T, E, B, *latent.shape[1:]), device=latent.device, dtype=latent.dtype)
            z = noise_ops.add_noise(latent, eps, alphas)
        elif cfg.kind == "none":
            z = latent.unsqueeze(0).unsqueeze(0).expand(T, 1, *latent.shape)
        else:
            hw = image_hw or tuple(latent.shape[-2:])
            z = torch.stack([self._invert(latent, t, hw) for t in timesteps]).unsqueeze(1)
        t_flat = t_index.repeat_interleave(E * B)  # (T*E*B,)
        return noise_ops.flatten_batch(z), t_flat

    def _fixed_noise(self, latent: torch.Tensor, T: int, E: int) -> torch.Tensor:
        key = (tuple(latent.shape[1:]), latent.dtype, latent.device, T, E)
        if key not in self._noise_cache:
            eps = noise_ops.fixed_noise(self.config.features.noise.seed, T, E,
                                        tuple(latent.shape[1:]), dtype=latent.dtype)
            self._noise_cache[key] = eps.to(latent.device)
        return self._noise_cache[key]

    def _invert(self, latent: torch.Tensor, timestep: int, image_hw: tuple[int, int]
                ) -> torch.Tensor:
        context, added = self.conditioning(None, latent.shape[0], image_hw, latent.shape[0])

        def predict(x, t):
            if self.family.text_conditioned:
                ctx = context.expand(x.shape[0], -1, -1)
                return self.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
            return self.unet(x, t).sample

        return noise_ops.ddim_invert(latent, timestep, self.config.features.noise.inversion_steps,
                                     self.alphas_cumprod.double(), predict)

    def conditioning(self, prompt: Sequence[str] | None, batch: int, image_hw: tuple[int, int],
                     n: int) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """Text context ``(1 or N, L, D)`` and SDXL added conditions for ``n`` trunk samples."""
        if not self.family.text_conditioned:
            if prompt is not None:
                raise ValueError("This model is text-free (UNet2DModel): it takes no prompt.")
            return None, None
        kind = self.config.features.prompt.kind
        if prompt is not None or kind == "per_image":
            texts = self._per_image_texts(prompt, batch)
            encoders = {name: getattr(self, name) for name in self._text_encoder_names}
            context, pooled = self.family.encode(texts, encoders, self.tokenizers, self.is_sdxl)
            reps = n // batch
            context = context.to(self.dtype).repeat(reps, 1, 1)  # (T*E*B, L, D)
            pooled = pooled.to(self.dtype).repeat(reps, 1) if pooled is not None else None
        else:
            context = self.prompt_embedding if kind == "learnable" else self.text_context
            pooled = getattr(self, "text_pooled", None)
        added = None
        if self.is_sdxl:
            added = self.family.added_conditions(pooled, *image_hw)
        return context, added

    def _per_image_texts(self, prompt: Sequence[str] | None, batch: int) -> list[str]:
        if not self._text_encoder_names:
            raise ValueError(
                "A call-time prompt needs the text encoder, which this model does not keep (its "
                "prompt is fixed). Build it with prompt=[...] (one text per image) instead."
            )
        texts = prompt if prompt is not None else self.config.features.prompt.text
        if isinstance(texts, str):
            texts = [texts] * batch
        if texts is None or len(texts) != batch:
            raise ValueError(
                f"Got {0 if texts is None else len(texts)} prompt(s) for {batch} image(s); pass "
                "one text per image (prompt=[...])."
            )
        return list(texts)

    def reduce(self, feats: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Mean over noise draws; ``(B, ...)`` for one timestep, ``(B, T, ...)`` for several."""
        T, E = len(self.config.features.timesteps), self.config.features.noise.ensemble
        out = {}
        for name, f in feats.items():
            f = f.reshape(T, E, batch, *f.shape[1:]).mean(dim=1)  # (T, B, ...)
            out[name] = f[0] if T == 1 else f.transpose(0, 1)
        return out

    def forward(self, images: Any, *, noise: torch.Tensor | None = None,
                prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """Extracts the tapped activations.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            noise: Explicit noise, shaped like the latent ``(B, C, h, w)`` (or
                ``(E, B, C, h, w)``, ``(T, E, B, C, h, w)``); overrides the configured noise.
            prompt: One text per image (models built with ``prompt=[...]`` only).
            value_range: Value range of integer (or non-[0, 1]) inputs, e.g. ``(0, 255)``.

        Returns:
            ``{tap: (B, C, h, w)}`` for one timestep, ``{tap: (B, T, C, h, w)}`` for several
            (attention taps: ``(B, heads, queries, keys)``).
        """
        x = self.prepare_images(images, value_range)  # (B, 3, H, W) in preprocess.range
        batch = x.shape[0]
        image_hw = tuple(x.shape[-2:])
        latent = self.encode(x)  # (B, C, h, w)
        z, timesteps = self.noisy_latents(latent, noise, image_hw)  # (T*E*B, C, h, w), (T*E*B,)
        context, added = self.conditioning(prompt, batch, image_hw, z.shape[0])
        feats = self.trunk(z, timesteps, context, added)
        return self.reduce(feats, batch)

    def specialize(self, size: tuple[int, int] | None = None, *, latent_input: bool = False
                   ) -> nn.Module:
        """Freezes timestep, prompt and noise into constants: a module of images only.

        Args:
            size: ``(H, W)`` of the images the specialised module takes (default:
                ``config.preprocess.size``).
            latent_input: Take latents instead of images (leaves the VAE encoder out).

        Returns:
            A ``SpecializedFeatureExtractor`` whose forward takes ``(B, 3, H, W)`` images in
            [0, 1] already at ``size`` (or latents) and returns the same dict as this model.
        """
        from ..features.specialize import specialize

        return specialize(self, size=size, latent_input=latent_input)
