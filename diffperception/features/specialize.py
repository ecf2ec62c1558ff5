"""Specialisation: fixing timestep, prompt and noise turns them into constants.

- the family freezes the time embedding (U-Nets: every resnet's time projection becomes one bias,
  ``backbones.unet.FrozenTimeProjection``; the embedding modules are dropped);
- a fixed prompt's cross-attention K and V are computed once per layer (``fixed_key`` /
  ``fixed_value`` buffers) and ``to_k`` / ``to_v`` are dropped;
- the fixed noise and ``abar_t`` become buffers.
The result takes images only; it is what gets exported. It runs the same stage functions as
``DiffusionBackbone`` (``scale_range``, ``noise.add_noise``, ``noise.reduce_draws``).

Memory: the specialised module is a *structural* copy of the backbone's network and VAE encoder
(``shared_copy``): new module objects, the same weight storage. Building it allocates only the
few new constants (time-projection biases, fixed K/V, the noise), so building and running it
needs no more memory than the backbone itself; once the task model is dropped, what the
specialised graph does not use (text encoders, ``to_k`` / ``to_v`` of baked cross-attentions,
the time-embedding MLP) is freed with it. ``to_precision`` gives a bf16 / channels-last variant
that again shares nothing it does not need to.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .attention import install_processor
from .noise import add_noise, fixed_noise, posterior_noise, reduce_draws
from .preprocess import scale_range
from .trunk import Trunk

__all__ = ["SpecializedBackbone", "bake_cross_attention", "specialize_backbone", "shared_copy",
           "to_precision"]


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s module tree that shares the parameter and buffer storage.

    Replacing submodules, registering buffers or converting the copy (``.to(dtype)``,
    ``.to(memory_format=...)``) leaves the original untouched; only in-place writes into a shared
    tensor (``param.data.mul_``, ``load_state_dict`` without ``assign``) would reach both.
    """
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(param.detach(), requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(module, memo)


def to_precision(special: nn.Module, dtype: torch.dtype, *,
                 memory_format: torch.memory_format = torch.channels_last) -> nn.Module:
    """A specialised module in ``dtype`` with 4-D weights in ``memory_format``; ``special`` is
    not modified (the result is a ``shared_copy``, converted).

    It still takes its inputs in ``dtype`` (cast them, or use the export graph, which casts a
    float32 input and returns float32 outputs).
    """
    trunks = [m for m in special.modules() if isinstance(m, Trunk)]
    for trunk in trunks:  # copy without the capture hooks (their handles point at the original)
        trunk.detach_taps()
    try:
        converted = shared_copy(special)
    finally:
        for trunk in trunks:
            trunk.attach_taps()
    converted = converted.to(dtype=dtype).to(memory_format=memory_format)
    for trunk in [m for m in converted.modules() if isinstance(m, Trunk)]:
        trunk._handles = []
        trunk.attach_taps()
    return converted.eval()


@torch.no_grad()
def bake_cross_attention(network: nn.Module, context: torch.Tensor) -> None:
    """Precomputes K / V of every cross-attention for a batch-1 ``context`` ``(1, L, D)``."""
    from diffusers.models.attention_processor import Attention

    for attn in network.modules():
        if not isinstance(attn, Attention) or not attn.is_cross_attention:
            continue
        ctx = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
        head_dim = attn.to_k.out_features // attn.heads
        key = attn.to_k(ctx).view(1, -1, attn.heads, head_dim).transpose(1, 2)  # (1, h, L, d)
        value = attn.to_v(ctx).view(1, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        attn.register_buffer("fixed_key", key.contiguous())
        attn.register_buffer("fixed_value", value.contiguous())
        attn.to_k, attn.to_v = None, None
        install_processor(attn)


class SpecializedBackbone(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] (or latents) in, ``{tap: activation}`` out.

    Built by ``DiffusionBackbone.specialize``; timestep, prompt and noise are constants. The
    output equals the unspecialised backbone's up to fp32 rounding.

    Attributes:
        size: ``(H, W)`` of the images taken (pixels).
        latent_input: Whether the input is a latent ``(B, C, h, w)``.
        source_config: The task config dict (export metadata).
        noise: The fixed noise buffer ``(T, E, 1, C, h, w)``.
    """

    def __init__(self, network: nn.Module, vae: nn.Module | None, trunk: Trunk,
                 noise: torch.Tensor, alphas: torch.Tensor, *, value_range: list[float],
                 num_timesteps: int, ensemble: int, size: tuple[int, int], latent_input: bool,
                 source_config: dict[str, Any], component: str = "unet",
                 posterior_noise: torch.Tensor | None = None) -> None:
        super().__init__()
        setattr(self, component, network)
        self.vae, self.trunk = vae, trunk
        self.register_buffer("posterior_noise", posterior_noise)  # (1, C, h, w) or None
        self.register_buffer("noise", noise)  # (T, E, 1, C, h, w)
        self.register_buffer("alphas", alphas)  # (T,) abar_t, or (T, 2) signal / noise scales
        self.value_range = [float(v) for v in value_range]
        self.num_timesteps, self.ensemble = num_timesteps, ensemble
        self.size, self.latent_input = tuple(size), latent_input
        self.source_config = source_config
        self.tap_names = [t.name for t in trunk.taps]

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the input: the image size, or the latent size for latent input."""
        if not self.latent_input:
            return self.size
        return tuple(int(d) for d in self.noise.shape[-2:])

    def _noisy_input(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk input ``(T*E*B, C, h, w)`` of images ``(B, 3, H, W)`` (or latents).

        Raises:
            ValueError: Input of another height and width than the module was built for.
        """
        if tuple(images.shape[-2:]) != self.input_hw:
            what = "latents" if self.latent_input else "images"
            raise ValueError(f"This specialized model takes {what} of {self.input_hw[0]}x"
                             f"{self.input_hw[1]}; got {tuple(images.shape)}. Resize them, or "
                             "specialize the task model at this size.")
        if self.latent_input:
            latent = images  # (B, C, h, w)
        else:
            x = scale_range(images, self.value_range)  # (B, 3, H, W) in the model's range
            latent = self.vae(x, self.posterior_noise) if self.vae is not None else x
        # the trunk runs in the model's dtype (the noise buffer's): float32 images or latents
        # meet a bfloat16 / float16 network here, as in the eager backbone
        z = add_noise(latent.to(self.noise.dtype), self.noise, self.alphas)  # (T, E, B, C, h, w)
        return z.reshape(-1, *latent.shape[1:])  # (T*E*B, C, h, w)

    def _reduce(self, feats: dict[str, torch.Tensor], names: list[str], batch: int
                ) -> dict[str, torch.Tensor]:
        return {name: reduce_draws(feats[name], self.num_timesteps, self.ensemble, batch)
                for name in names}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{tap: (B, ...)}`` for images ``(B, 3, H, W)`` in [0, 1] at ``size`` (or latents).

        Raises:
            ValueError: Input of another height and width than the module was built for.
        """
        feats = self.trunk(self._noisy_input(images), None)
        return self._reduce(feats, self.tap_names, images.shape[0])

    def forward_two_pass(self, images: torch.Tensor,
                         feedback: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
                         *, first_taps: Sequence[str], taps: Sequence[str] | None = None
                         ) -> dict[str, torch.Tensor]:
        """``DiffusionBackbone.forward_two_pass`` with the constants of this module (DifFeed).

        Pass 1 captures ``first_taps`` per trunk sample (detached: no gradient reaches it);
        ``feedback`` maps them to ``{module path: tensor}`` injections; pass 2 runs on the same
        noisy input with them and returns ``taps`` reduced as ``forward`` does.

        Args:
            images: As ``forward``.
            feedback: First-pass features ``{tap: (T*E*B, ...)}`` -> injections.
            first_taps: Taps of the first pass.
            taps: Taps of the second pass (default: every tap not in ``first_taps``).

        Raises:
            ValueError: Input of another size, or taps the trunk was not built with.
        """
        if taps is None:
            taps = [name for name in self.tap_names if name not in set(first_taps)]
        z = self._noisy_input(images)  # (T*E*B, C, h, w)
        # detached rather than under no_grad: the same graph traces for export
        first = {k: v.detach() for k, v in self.trunk(z, None, taps=list(first_taps)).items()}
        feats = self.trunk(z, None, taps=list(taps), injections=feedback(first))
        return self._reduce(feats, list(taps), images.shape[0])


def _check_specializable(backbone, size) -> tuple[int, int]:
    features = backbone.features
    if features.noise.kind not in ("fixed", "none"):
        raise ValueError(
            f"Cannot specialize noise kind {features.noise.kind!r}: only 'fixed' and 'none' are "
            "constants. Rebuild the model with noise='fixed'."
        )
    if features.prompt.kind in ("per_image", "caption", "shuffled"):
        raise ValueError(f"Cannot specialize {features.prompt.kind!r} prompts (a text per image, "
                         "encoded every call); use a null or fixed prompt.")
    size = tuple(size or backbone.preprocess.size or backbone.native_size)
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {size}.")
    if size[0] % backbone.size_multiple or size[1] % backbone.size_multiple:
        raise ValueError(f"size {size} must be a multiple of {backbone.size_multiple} in both sides.")
    return size


def _copy_network(backbone) -> nn.Module:
    backbone.trunk.detach_taps()  # copy the network without the original trunk's capture hooks
    try:
        return shared_copy(backbone.network)
    finally:
        backbone.trunk.attach_taps()


@torch.no_grad()
def specialize_backbone(backbone, *, size: tuple[int, int] | None = None,
                        latent_input: bool = False,
                        source_config: dict[str, Any] | None = None) -> SpecializedBackbone:
    """The images-only module of a ``DiffusionBackbone`` (see the module docstring).

    Raises:
        ValueError: Noise or prompt kinds that are not constants, a bad size, or taps on modules
            that specialisation removes.
    """
    size = _check_specializable(backbone, size)
    features, family, dtype, device = backbone.features, backbone.family, backbone.dtype, backbone.device
    T, E = len(features.timesteps), features.noise.ensemble
    t_index = torch.tensor(features.timesteps, device=device)
    network = _copy_network(backbone)
    trunk = Trunk(network, family, backbone.trunk.taps, backbone.trunk.plan)
    latent_hw = (size[0] // backbone.vae_factor, size[1] // backbone.vae_factor)
    channels = family.latent_channels(backbone.network_config)
    probe = torch.zeros(T, channels, *latent_hw, device=device, dtype=dtype)
    context, added = backbone.conditioning(None, 1, size, T)  # (1, L, D), batch-1 conditions
    emb = backbone.trunk.embed(probe, t_index, context, added)  # (T, D)
    family.freeze_time(network, emb)
    if context is not None:
        prepared = family.prepare_context(backbone.network, context.detach(), added)
        bake_cross_attention(network, prepared)
        family.bake_context(network, prepared)
    kept, before = dict(network.named_modules()), dict(backbone.network.named_modules())
    lost = [t.name for t in trunk.taps if t.path not in kept
            or (t.kind == "in" and type(kept[t.path]) is not type(before[t.path]))]
    if lost:
        raise ValueError(f"Taps {lost} read modules that specialisation removes or whose input "
                         "becomes a constant (to_k / to_v of a fixed-prompt cross-attention, the "
                         "time embedding, the input of a frozen time projection).")
    trunk.frozen_timesteps = T
    trunk.attach_taps()
    if features.noise.kind == "fixed":
        noise = fixed_noise(features.noise.seed, T, E, (channels, *latent_hw), dtype=dtype,
                            sampling=features.noise.sampling)
        alphas = backbone.noise_coefficients[t_index.cpu()].to(dtype)  # (T, 2) signal, noise
    else:
        noise = torch.zeros(T, E, 1, channels, *latent_hw, dtype=dtype)
        alphas = torch.ones(T, dtype=dtype)
    vae = None if latent_input or backbone.vae is None else shared_copy(backbone.vae)
    posterior = None
    if vae is not None and features.noise.posterior == "sample":
        posterior = posterior_noise(features.noise.seed, (channels, *latent_hw), dtype=dtype)
        posterior = posterior.to(device)
    return SpecializedBackbone(
        network, vae, trunk, noise.to(device), alphas.to(device),
        value_range=backbone.preprocess.range, num_timesteps=T, ensemble=E, size=size,
        latent_input=latent_input, source_config=source_config or {},
        component=family.component, posterior_noise=posterior,
    ).eval()
