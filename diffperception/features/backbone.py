"""``DiffusionBackbone``: images in, ``{tap: activation}`` out, computing only what the taps need.

The one data flow of DESIGN.md, as stages of one module::

    images -> preprocess -> encode (VAE or identity) -> noise -> condition -> trunk -> reduce

Task models compose it with a head (``self.backbone`` + ``self.head``), as transformers'
UperNet composes ``load_backbone(config)`` with a head sized from the backbone's channels;
``feature_info`` says what each tap returns before any weight is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..backbones import family_for_folder, get_family
from ..backbones.loading import ModelSource, load_text_stack, read_model_index, resolve_source
from ..backbones.schedule import load_schedule
from ..backbones.vae import load_vae_encoder, meta_vae_encoder
from ..config import BackboneConfig, FeaturesConfig, NoiseConfig, PreprocessConfig
from . import noise as noise_ops
from .attention import install_processor
from .conditioning import PromptConditioner, prompt_config
from .preprocess import check_size, resize_and_crop, scale_range, to_image_tensor
from .taps import FeatureInfo, Tap, list_taps, resolve_taps, tap_value_problem
from .trunk import Trunk

__all__ = ["DiffusionBackbone", "TORCH_DTYPES", "MEMORY_FORMATS", "folder_taps"]

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _has_vae(index: dict[str, Any]) -> bool:
    entry = index.get("vae")
    return bool(entry) and entry[1] is not None


def _vae_factor(folder: Path, index: dict[str, Any]) -> int:
    import json

    if not _has_vae(index):
        return 1
    config = json.loads((folder / "vae" / "config.json").read_text())
    return 2 ** (len(config.get("block_out_channels", (0, 0, 0, 0))) - 1)


def _info(tap: Tap, value: torch.Tensor, image_hw: tuple[int, int], num_timesteps: int
          ) -> FeatureInfo:
    if tap.kind in ("attn", "logits"):  # (B, heads, queries, keys)
        layout, channels, cells = "attention", value.shape[1], value.shape[2]
    elif value.ndim == 4:  # (B, C, h, w)
        layout, channels, cells = "map", value.shape[1], value.shape[2] * value.shape[3]
    elif value.ndim == 3:  # (B, N, C)
        layout, channels, cells = "tokens", value.shape[2], value.shape[1]
    else:
        layout, channels, cells = "tokens", value.shape[-1], 0
    side = (image_hw[0] * image_hw[1] / cells) ** 0.5 if cells else 0
    stride = int(round(side)) if cells and abs(side - round(side)) < 1e-6 else None
    return FeatureInfo(name=tap.name, module=tap.path, kind=tap.kind, layout=layout,
                       channels=int(channels), stride=stride, num_timesteps=num_timesteps)


class DiffusionBackbone(nn.Module):
    """A diffusion network, cut after the last tap, as a feature backbone.

    The network and the VAE encoder are frozen (``requires_grad`` False) and in eval mode; a
    learnable prompt is the one trainable tensor. Call ``backbone.network.requires_grad_(True)``
    to fine-tune the trunk.

    Args:
        backbone: Which diffusion model (``config["backbone"]``).
        features: Taps, timesteps, noise and prompt (``config["features"]``).
        preprocess: Image resizing and value range (``config["preprocess"]``).
        source: The resolved diffusers folder; resolved from ``backbone`` when None.
        load_weights: Read weights from ``source``; False builds on the meta device (a saved
            task model then loads its own weights).
        **hub_kwargs: ``cache_dir``, ``local_files_only``, ``token`` to resolve ``source``.

    Raises:
        ValueError: Unknown family or tap, a family that does not match the folder, a prompt
            for a text-free network, timesteps outside the schedule.
        FileNotFoundError: Missing repo, revision, folder or weights.

    Example:
        >>> backbone = DiffusionBackbone.from_diffusers(
        ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1", "mid_block"], timesteps=[261])
        >>> backbone.feature_info["up_ft.1"].channels     # 1280, before any weight is read
        >>> feats = backbone(images)                      # {"up_ft.1": (B, 1280, H/16, W/16), ...}
    """

    def __init__(self, backbone: BackboneConfig, features: FeaturesConfig,
                 preprocess: PreprocessConfig | None = None, *, source: ModelSource | None = None,
                 load_weights: bool = True, **hub_kwargs: Any) -> None:
        super().__init__()
        preprocess = preprocess or PreprocessConfig()
        for section in (backbone, features, preprocess):
            section.validate()
        self.backbone_config, self.features, self.preprocess = backbone, features, preprocess
        self.family = get_family(backbone.family)
        if source is None:
            source = resolve_source(backbone.repo_id, revision=backbone.revision, **hub_kwargs)
        self.source = source
        found = family_for_folder(source.folder)
        if found is not self.family:
            raise ValueError(f"config['backbone']['family'] = {backbone.family!r} is invalid: "
                             f"{source.repo_id} holds a {found.name!r}-family network.")
        if features.prompt.kind != "null" and not self.family.text_conditioned:
            raise ValueError(f"config['features']['prompt']['kind'] = {features.prompt.kind!r} is "
                             f"invalid: {source.repo_id} is text-free: it takes no prompt; use "
                             "prompt='' (null).")
        self._assemble(load_weights)

    # ----------------------------------------------------------------------------- assembly

    def _assemble(self, load_weights: bool) -> None:
        folder, dtype = self.source.folder, TORCH_DTYPES[self.backbone_config.dtype]
        self.network_config = self.family.read_config(folder)
        self.model_index = read_model_index(folder)
        self.vae_factor = _vae_factor(folder, self.model_index)
        schedule = load_schedule(folder)
        self.scheduler_config, self.prediction_type = schedule.config, schedule.prediction_type
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.float(), persistent=False)
        # (signal, noise) per timestep: z_t = signal z_0 + noise eps (DDPM or flow matching)
        self.register_buffer("noise_coefficients", schedule.coefficients.float(), persistent=False)
        self.schedule_kind = schedule.kind
        if schedule.kind not in self.family.noise_processes:
            name = schedule.config.get("_class_name")
            raise ValueError(
                f"{folder / 'scheduler'}: _class_name = {name!r} is not supported with a "
                f"{self.family.name!r}-family network: it noises with the "
                f"{schedule.kind.replace('_', '-')} process, and this family's networks are "
                f"trained on {list(self.family.noise_processes)}. Use the scheduler the model "
                "was trained with.")
        if schedule.kind != "ddpm" and self.features.noise.kind == "ddim_inversion":
            raise ValueError(f"config['features']['noise']['kind'] = 'ddim_inversion' is invalid "
                             f"for {self.source.repo_id}: its scheduler is a {schedule.kind} one "
                             "and DDIM inversion walks the DDPM process; use 'fixed' or 'random'.")
        self.check_timesteps(self.features.timesteps)
        holder: dict[str, Any] = {}
        network = self.family.load_network(folder, lambda net: self._prune(net, holder), dtype,
                                           self.backbone_config.variant, load_weights=load_weights)
        # frozen, as the methods use it; network.requires_grad_(True) fine-tunes it
        setattr(self, self.family.component, network.eval().requires_grad_(False))
        self.taps, self.plan, self.feature_info = holder["taps"], holder["plan"], holder["info"]
        self.vae = None
        if _has_vae(self.model_index):
            vae = (load_vae_encoder(folder, dtype, self.backbone_config.variant) if load_weights
                   else meta_vae_encoder(folder, dtype))
            self.vae = vae.eval().requires_grad_(False)
        self.trunk = Trunk(network, self.family, self.taps, self.plan)
        encoders, tokenizers = {}, {}
        prompt = self.features.prompt
        if self.family.text_conditioned and (load_weights or not prompt.is_constant):
            encoders, tokenizers = load_text_stack(folder, self.model_index, dtype,
                                                   load_weights=load_weights)
        self.prompt = PromptConditioner(self.family, self.network_config, prompt, folder,
                                        encoders, tokenizers, dtype=dtype)
        self._noise_cache: dict[tuple, torch.Tensor] = {}
        self._captioner = None  # built on first use, never saved (a plain attribute)
        if load_weights:
            self.apply_memory_format()

    def apply_memory_format(self) -> None:
        """Lays the network's and the VAE encoder's 4-D weights out as
        ``config.backbone.memory_format`` says (``channels_last``: NHWC); convolutions then
        produce activations in that layout. Called after weights are loaded (a state-dict load
        with ``assign=True`` replaces the tensors)."""
        fmt = MEMORY_FORMATS[self.backbone_config.memory_format]
        for module in (self.network, self.vae):
            if module is not None and not any(p.is_meta for p in module.parameters()):
                module.to(memory_format=fmt)

    def set_captioner(self, captioner: Callable[[torch.Tensor], Sequence[str]] | None) -> None:
        """The image -> text callable of a ``caption`` prompt (images ``(B, 3, H, W)`` in [0, 1]
        -> B texts), cached per image; None goes back to the configured captioner."""
        from .captions import CaptionCache

        if captioner is not None and not isinstance(captioner, CaptionCache):
            captioner = CaptionCache(captioner)
        self._captioner = captioner

    def image_prompts(self, x: torch.Tensor) -> list[str]:
        """Texts of a ``caption`` / ``shuffled`` prompt for network inputs ``x`` (no labels)."""
        from .captions import build_captioner

        if self._captioner is None:
            self._captioner = build_captioner(self.features.prompt, self)
        low, high = self.preprocess.range
        return list(self._captioner((x.float() - low) / (high - low)))

    def _prune(self, network: nn.Module, holder: dict[str, Any]) -> None:
        """Resolves the taps, plans and prunes the meta network, and reads the tap shapes."""
        taps = resolve_taps(self.features.taps, network, self.family.resolve_alias)
        full = self.features.noise.kind == "ddim_inversion"  # inversion needs the whole network
        plan = self.family.plan_cut(network, [(t.path, t.kind) for t in taps], full=full)
        self.family.prune(network, plan)
        for module in network.modules():  # K / V of a batch-1 context computed once per call
            if getattr(module, "is_cross_attention", False):
                install_processor(module)
        holder.update(taps=taps, plan=plan, info=self._feature_info(network, taps, plan))

    def _feature_info(self, network: nn.Module, taps: list[Tap], plan: Any
                      ) -> dict[str, FeatureInfo]:
        """Runs the pruned meta network on two samples; checks and describes every tap.

        Raises:
            ValueError: A tap whose value is not a per-sample activation (integer timesteps,
                SDXL's six time ids per image), naming it.
        """
        latent_hw = self.family.native_latent_size(self.network_config)
        trunk = Trunk(network, self.family, taps, plan)
        try:
            with torch.no_grad():
                out = trunk(*self.probe_inputs(latent_hw, batch=2))
        finally:
            trunk.detach_taps()
        for tap in taps:
            problem = tap_value_problem(out[tap.name], 2)
            if problem:
                raise ValueError(f"Tap {tap.name!r} {problem}; it cannot be a feature. Call "
                                 "diffperception.list_taps(model) for the taps that can.")
        image_hw = (latent_hw[0] * self.vae_factor, latent_hw[1] * self.vae_factor)
        T = len(self.features.timesteps)
        return {tap.name: _info(tap, out[tap.name], image_hw, T) for tap in taps}

    def probe_inputs(self, latent_hw: tuple[int, int], batch: int = 1,
                     device: str = "meta") -> tuple:
        """Trunk inputs ``(sample, timesteps, context, added)`` of ``batch`` samples on
        ``device`` (meta: shapes only), with a batch-1 text context as in real calls."""
        context_shape, pooled = self.family.context_shape(self.source.folder, self.network_config)
        sample, t, context, added = self.family.meta_inputs(self.network_config, latent_hw,
                                                            context_shape, pooled, device=device)
        grow = lambda x: x.expand(batch, *x.shape[1:])  # noqa: E731
        added = {k: grow(v) for k, v in added.items()} if added else added
        return grow(sample), grow(t), context, added

    def list_taps(self, *, include_kinds: bool = False) -> list[str]:
        """Every tap of the kept trunk that gives a per-sample activation (module order)."""
        meta = DiffusionBackbone(self.backbone_config, self.features, self.preprocess,
                                 source=self.source, load_weights=False)
        latent_hw = self.family.native_latent_size(self.network_config)

        def run(network: nn.Module) -> int:
            with torch.no_grad():
                meta.trunk(*meta.probe_inputs(latent_hw, batch=2))
            return 2

        return list_taps(meta.network, include_kinds=include_kinds, probe=run)

    # --------------------------------------------------------------------------- building

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
        sampling: str = "independent",
        prompt: Any = "",
        size: tuple[int, int] | None = None,
        dtype: str = "float32",
        memory_format: str = "contiguous",
        revision: str | None = None,
        variant: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        inversion_steps: int = 10,
    ) -> "DiffusionBackbone":
        """Builds a backbone from a diffusers model (Hub repo id or local folder).

        Args:
            repo_id: Hub repo id or local folder in diffusers layout.
            taps: Tap names (see ``diffperception.list_taps``).
            timesteps: Diffusion timesteps; several give a ``(B, T, ...)`` output per tap.
            noise: ``"fixed"``, ``"random"``, ``"none"`` or ``"ddim_inversion"``.
            seed: Seed of the fixed noise.
            ensemble: Noise draws averaged per timestep.
            sampling: How the ensemble's draws are made: ``"independent"``, ``"antithetic"``
                (pairs ``eps, -eps``; even ensemble) or ``"sobol"`` (quasi-random); the last two
                reach a given feature error with fewer draws (``features/noise.py``).
            prompt: ``""`` (null), a text, a list of texts (one per image) or
                ``LearnablePrompt(text)``.
            size: ``(H, W)`` images are resized to; None keeps the input size.
            dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
            memory_format: ``"contiguous"`` or ``"channels_last"`` (NHWC convolutions; use it
                with ``dtype="bfloat16"`` on CPUs with AVX512-BF16 / AMX).
            revision, variant, cache_dir, local_files_only, token: Hub loading options.
            inversion_steps: DDIM steps for ``noise="ddim_inversion"``.

        Raises:
            ValueError: Unknown tap (with close names), bad timestep, bad option.
            FileNotFoundError: Missing repo, revision, folder or weights.
        """
        sections, source = cls.config_sections(
            repo_id, taps=taps, timesteps=timesteps, noise=noise, seed=seed, ensemble=ensemble,
            sampling=sampling, prompt=prompt, size=size, dtype=dtype, memory_format=memory_format,
            revision=revision, variant=variant,
            cache_dir=cache_dir, local_files_only=local_files_only, token=token,
            inversion_steps=inversion_steps)
        return cls(*sections, source=source)

    @staticmethod
    def config_sections(repo_id: str | os.PathLike, *, taps: Sequence[str],
                        timesteps: Sequence[int] = (261,), noise: str = "fixed", seed: int = 0,
                        ensemble: int = 1, sampling: str = "independent", prompt: Any = "",
                        size: tuple[int, int] | None = None,
                        dtype: str = "float32", memory_format: str = "contiguous",
                        revision: str | None = None,
                        variant: str | None = None, inversion_steps: int = 10, **hub_kwargs: Any
                        ) -> tuple[tuple[BackboneConfig, FeaturesConfig, PreprocessConfig],
                                   ModelSource]:
        """The config sections ``from_diffusers`` builds, and the resolved source."""
        source = resolve_source(repo_id, revision=revision, **hub_kwargs)
        family = family_for_folder(source.folder)
        backbone = BackboneConfig(repo_id=str(repo_id), family=family.name,
                                  revision=source.revision, dtype=dtype, variant=variant,
                                  memory_format=memory_format)
        features = FeaturesConfig(
            taps=list(taps), timesteps=[int(t) for t in timesteps],
            noise=NoiseConfig(kind=noise, seed=seed, ensemble=ensemble,
                              inversion_steps=inversion_steps, sampling=sampling),
            prompt=prompt_config(prompt))
        preprocess = PreprocessConfig(size=[int(s) for s in size] if size else None)
        return (backbone, features, preprocess), source

    # --------------------------------------------------------------------------- properties

    @property
    def network(self) -> nn.Module:
        """The (pruned) diffusers network (``self.unet`` for U-Net families)."""
        return getattr(self, self.family.component)

    @property
    def channels(self) -> list[int]:
        """Channels of each tap, in tap order (transformers' ``BackboneMixin.channels``)."""
        return [info.channels for info in self.feature_info.values()]

    @property
    def base_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (relative to this module) of what comes from the base model."""
        return (f"{self.family.component}.", "vae.", "prompt.text_encoder.",
                "prompt.text_encoder_2.", "prompt.text_encoder_3.")

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (pixels)."""
        return self.vae_factor * self.family.size_multiple(self.network_config)

    @property
    def native_size(self) -> tuple[int, int]:
        """The image size (pixels) the network was trained at."""
        h, w = self.family.native_latent_size(self.network_config)
        return h * self.vae_factor, w * self.vae_factor

    @property
    def dtype(self) -> torch.dtype:
        return next(p.dtype for p in self.network.parameters())

    @property
    def device(self) -> torch.device:
        return next(p.device for p in self.network.parameters())

    # ------------------------------------------------------------------------------ stages

    def prepare_images(self, images: Any, value_range: tuple[float, float] | None = None
                       ) -> torch.Tensor:
        """Public-edge conversion: checked, resized, scaled ``(B, 3, H, W)`` network input."""
        if isinstance(images, (list, tuple)) and len(images) > 1 and self.preprocess.size:
            # images of different sizes: each is resized on its own, then they form a batch
            x = torch.cat([resize_and_crop(to_image_tensor(image, value_range=value_range).to(
                self.device, torch.float32), self.preprocess) for image in images])
        else:
            x = to_image_tensor(images, value_range=value_range)
            x = resize_and_crop(x.to(self.device, torch.float32), self.preprocess)
        check_size(x, self.size_multiple)
        return scale_range(x, self.preprocess.range).to(self.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Clean latent ``z_0`` ``(B, C, h, w)``: the VAE's normalised posterior mean (or a
        posterior sample, ``noise.posterior="sample"``), or the pixels of a pixel model."""
        if self.vae is None:
            return x
        if self.features.noise.posterior == "mean":
            return self.vae(x)
        shape = (self.vae_latent_channels, x.shape[-2] // self.vae_factor,
                 x.shape[-1] // self.vae_factor)
        if self.features.noise.kind == "fixed":
            key = ("posterior", shape, x.dtype, x.device)
            if key not in self._noise_cache:
                self._noise_cache[key] = noise_ops.posterior_noise(
                    self.features.noise.seed, shape, dtype=x.dtype).to(x.device)
            return self.vae(x, self._noise_cache[key])
        return self.vae(x, torch.randn((x.shape[0], *shape), device=x.device, dtype=x.dtype))

    @property
    def vae_latent_channels(self) -> int:
        """Channels of the VAE latent (the network's input channels)."""
        return self.family.latent_channels(self.network_config)

    def check_timesteps(self, timesteps: Sequence[int]) -> list[int]:
        """The timesteps, checked against the scheduler's range.

        Raises:
            ValueError: A timestep outside ``[0, num_train_timesteps)``.
        """
        limit = len(self.alphas_cumprod)
        bad = [t for t in timesteps if not 0 <= t < limit]
        if bad:
            raise ValueError(f"Timesteps {bad} are outside [0, {limit}) of this model's scheduler.")
        return list(timesteps)

    def noisy_latents(self, latent: torch.Tensor, noise: torch.Tensor | None = None,
                      image_hw: tuple[int, int] | None = None,
                      prompt: Sequence[str] | str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T*E*B, C, h, w)`` noisy latents and their ``(T*E*B,)`` timesteps.

        Args:
            latent: Clean latent ``(B, C, h, w)``.
            noise: Explicit noise (see ``forward``).
            image_hw: ``(H, W)`` of the images in pixels (SDXL's added conditions).
            prompt: Call-time texts; DDIM inversion conditions on them as the forward does.
        """
        cfg = self.features.noise
        timesteps = self.features.timesteps
        T, E, B = len(timesteps), cfg.ensemble, latent.shape[0]
        t_index = torch.tensor(timesteps, device=latent.device)
        alphas = self.noise_coefficients.to(latent.device)[t_index]  # (T, 2) signal, noise
        if noise is not None:
            z = noise_ops.add_noise(latent, noise_ops.check_noise(noise, T, E, latent), alphas)
        elif cfg.kind == "fixed":
            z = noise_ops.add_noise(latent, self._fixed_noise(latent, T, E), alphas)
        elif cfg.kind == "random":
            if cfg.sampling == "independent":
                eps = torch.randn((T, E, B, *latent.shape[1:]), device=latent.device,
                                  dtype=latent.dtype)
            else:  # fresh each call, drawn on the CPU with the variance-reduced scheme
                eps = noise_ops.noise_draws(T, E, tuple(latent.shape), sampling=cfg.sampling)
            z = noise_ops.add_noise(latent, eps.to(latent.device, latent.dtype), alphas)
        elif cfg.kind == "none":
            z = latent.unsqueeze(0).unsqueeze(0).expand(T, 1, *latent.shape)
        else:
            hw = image_hw or tuple(latent.shape[-2:])
            z = torch.stack([self._invert(latent, t, hw, prompt) for t in timesteps]).unsqueeze(1)
        t_flat = t_index.repeat_interleave(E * B)  # (T*E*B,)
        return noise_ops.flatten_batch(z), t_flat

    def _fixed_noise(self, latent: torch.Tensor, T: int, E: int) -> torch.Tensor:
        key = (tuple(latent.shape[1:]), latent.dtype, latent.device, T, E)
        if key not in self._noise_cache:
            eps = noise_ops.fixed_noise(self.features.noise.seed, T, E, tuple(latent.shape[1:]),
                                        dtype=latent.dtype, sampling=self.features.noise.sampling)
            self._noise_cache[key] = eps.to(latent.device)
        return self._noise_cache[key]

    def _invert(self, latent: torch.Tensor, timestep: int, image_hw: tuple[int, int],
                prompt: Sequence[str] | str | None = None) -> torch.Tensor:
        # conditioned exactly as the final forward is (the call's texts, when given)
        context, added = self.conditioning(prompt, latent.shape[0], image_hw, latent.shape[0])

        def predict(x, t):
            if self.family.text_conditioned:
                ctx = context.expand(x.shape[0], -1, -1)
                out = self.network(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
            else:
                out = self.network(x, t).sample
            abar = self.alphas_cumprod.to(x.device)[t].to(x.dtype).view(-1, 1, 1, 1)
            return noise_ops.predicted_noise(out[:, : x.shape[1]], x, abar, self.prediction_type)

        return noise_ops.ddim_invert(latent, timestep, self.features.noise.inversion_steps,
                                     self.alphas_cumprod.double(), predict)

    def conditioning(self, prompt: Sequence[str] | str | None, batch: int,
                     image_hw: tuple[int, int], n: int
                     ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
        """Text context ``(1 or n, L, D)`` and added conditions for ``n`` trunk samples."""
        return self.prompt(prompt, batch, image_hw, n, self.dtype)

    def reduce(self, feats: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """Mean over noise draws; ``(B, ...)`` for one timestep, ``(B, T, ...)`` for several."""
        T, E = len(self.features.timesteps), self.features.noise.ensemble
        return {name: noise_ops.reduce_draws(f, T, E, batch) for name, f in feats.items()}

    def _trunk_inputs(self, images: Any, noise: torch.Tensor | None, prompt: Any,
                      value_range: tuple[float, float] | None) -> tuple[int, tuple]:
        x = self.prepare_images(images, value_range)  # (B, 3, H, W) in preprocess.range
        batch, image_hw = x.shape[0], tuple(x.shape[-2:])
        if prompt is None and self.features.prompt.kind in ("caption", "shuffled"):
            prompt = self.image_prompts(x)  # from the images alone: labels never reach it
        latent = self.encode(x)  # (B, C, h, w)
        z, timesteps = self.noisy_latents(latent, noise, image_hw, prompt)  # (T*E*B, C, h, w), (T*E*B,)
        context, added = self.conditioning(prompt, batch, image_hw, z.shape[0])
        return batch, (z, timesteps, context, added)

    def forward(self, images: Any, *, noise: torch.Tensor | None = None,
                prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None,
                taps: Sequence[str] | None = None,
                injections: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Extracts the tapped activations.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            noise: Explicit noise shaped like the latent ``(B, C, h, w)`` (or
                ``(E, B, C, h, w)``, ``(T, E, B, C, h, w)``); overrides the configured noise.
            prompt: One text per image (backbones built with ``prompt=[...]`` only).
            value_range: Value range of integer (or non-[0, 1]) inputs, e.g. ``(0, 255)``.
            taps: Only these taps (the trunk stops after the last unit they need).
            injections: ``{module path: tensor}`` added to those modules' outputs; tensors
                broadcast against the trunk batch ``(T*E*B, ...)`` (a ``(1, C, h, w)`` tensor
                applies to every sample).

        Returns:
            ``{tap: (B, C, h, w)}`` for one timestep, ``{tap: (B, T, C, h, w)}`` for several
            (attention taps: ``(B, heads, queries, keys)``).
        """
        batch, inputs = self._trunk_inputs(images, noise, prompt, value_range)
        return self.reduce(self.trunk(*inputs, taps=taps, injections=injections), batch)

    def forward_two_pass(
        self, images: Any, feedback: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
        *, first_taps: Sequence[str], taps: Sequence[str] | None = None,
        first_pass_grad: bool = False, noise: torch.Tensor | None = None,
        prompt: Sequence[str] | str | None = None,
        value_range: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """Runs the trunk twice on the same noisy input; the first pass feeds the second.

        Pass 1 captures ``first_taps``; ``feedback`` maps them (per trunk sample, ``(T*E*B, ...)``)
        to injections ``{module path: tensor}``; pass 2 runs with those injections and returns
        ``taps`` reduced as ``forward`` does (DifFeed, the text-free paper §3.3).

        Args:
            images: As ``forward``.
            feedback: First-pass features -> injections of the second pass.
            first_taps: Taps of the first pass (the trunk is built with them).
            taps: Taps of the second pass (default: every tap not in ``first_taps``).
            first_pass_grad: Keep the autograd graph of the first pass (default: no_grad).
            noise, prompt, value_range: As ``forward``.
        """
        if taps is None:
            taps = [t.name for t in self.taps if t.name not in set(first_taps)]
        batch, inputs = self._trunk_inputs(images, noise, prompt, value_range)
        with torch.set_grad_enabled(first_pass_grad and torch.is_grad_enabled()):
            first = self.trunk(*inputs, taps=first_taps)
        injections = feedback(first)
        return self.reduce(self.trunk(*inputs, taps=taps, injections=injections), batch)

    def specialize(self, size: tuple[int, int] | None = None, *, latent_input: bool = False,
                   source_config: dict[str, Any] | None = None) -> nn.Module:
        """Freezes timestep, prompt and noise into constants: a module of images only.

        Args:
            size: ``(H, W)`` of the images the specialised module takes, in pixels (default:
                ``preprocess.size``, else the network's native size).
            latent_input: Take latents instead of images (leaves the VAE encoder out).
            source_config: The task config dict recorded for export metadata.

        Returns:
            A ``SpecializedBackbone`` whose forward takes ``(B, 3, H, W)`` images in [0, 1]
            already at ``size`` (or latents) and returns the same dict as this backbone.

        Raises:
            ValueError: Noise or prompt kinds that are not constants, or a bad size.
        """
        from .specialize import specialize_backbone

        return specialize_backbone(self, size=size, latent_input=latent_input,
                                   source_config=source_config)


def folder_taps(folder: Path, *, include_kinds: bool = False) -> list[str]:
    """Every tap of the full network of a diffusers folder that gives a per-sample activation.

    Built on the meta device and probed with one meta forward of two samples: no weight is read.
    """
    from accelerate import init_empty_weights

    family = family_for_folder(folder)
    config = family.read_config(folder)
    with init_empty_weights():
        network = family.build_network(config)

    def run(net: nn.Module) -> int:
        context_shape, pooled = family.context_shape(folder, config)
        sample, t, context, added = family.meta_inputs(
            config, family.native_latent_size(config), context_shape, pooled)
        grow = lambda x: x.expand(2, *x.shape[1:])  # noqa: E731
        added = {k: grow(v) for k, v in added.items()} if added else added
        with torch.no_grad():
            family.forward_full(net, grow(sample), grow(t), context, added)
        return 2

    return list_taps(network, include_kinds=include_kinds, probe=run)
