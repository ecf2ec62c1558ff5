"""Diffusion transformers: PixArt-alpha / Sigma, SD3 / SD3.5 and FLUX.1 (``dit`` family).

- PixArt (``PixArtTransformer2DModel``): a T5 encoder's last hidden state is the prompt (padded to
  120 tokens for PixArt-alpha, 300 for Sigma, as its pipelines do) and its attention mask is
  honoured in every cross-attention; the time embedding is ``adaln_single`` (shared by all blocks,
  plus each block's ``scale_shift_table``); PixArt-alpha at 1024 px adds the resolution and aspect
  ratio micro-conditions.
- SD3 / SD3.5 (``SD3Transformer2DModel``): the prompt is CLIP-L and CLIP-G penultimate states
  (zero-padded to the joint width) followed by T5's last state (256 zero tokens without a T5), and the pooled
  CLIP projections enter the time embedding, as ``StableDiffusion3Pipeline.encode_prompt`` builds
  them; each joint block updates image and text streams; noise is flow matching
  (``backbones/schedule.py``).

Taps: any module path (``transformer_blocks.13``, ``transformer_blocks.13.attn1.to_k``,
``transformer_blocks.13.ff.net.0``, ``...attn:attn``). Image-token outputs ``(B, N, C)`` are
returned as maps ``(B, C, h / p, w / p)`` with the real latent height and width (``p`` the patch
size); text-stream outputs stay tokens. An SD3 joint block's output is its image stream. The
``:adaln`` kind on a block is its output normalised with the block's own AdaLN modulation, with
the massive-activation channels dropped (``massive_activation_norm``; DiTF, Gan et al. NeurIPS
2025, "Unleashing Diffusion Transformers for Visual Correspondence by Modulating Massive
Activations"; off unless asked for).

The trunk runs ``pos_embed``, the time embedding and the blocks up to the last one a tap needs;
later blocks and the output layers are never built. Specialisation freezes the time embedding and
every AdaLN modulation into constants and keeps a fixed prompt inside the network (PixArt:
cross-attention K / V; SD3: the projected text tokens, which the joint blocks update with the
image).

- FLUX.1 (``FluxTransformer2DModel``): the latent is packed into 2x2 patch tokens with image /
  text position ids for the rotary embedding (``FluxPipeline._pack_latents`` /
  ``_prepare_latent_image_ids``); CLIP-L's pooled output enters the time embedding with, for
  FLUX-dev (``guidance_embeds``), the pipeline's default guidance scale 3.5; T5 gives 512 tokens;
  19 double-stream blocks (``transformer_blocks.i``) run before 38 single-stream ones
  (``single_transformer_blocks.j``, whose output tap is the image part of the joint sequence);
  flow-matching noise as SD3.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneFamily, register_family
from .unet import FrozenTimeProjection

__all__ = ["DiTFamily", "DiTCutPlan", "AdaLNTap", "massive_activation_norm",
           "MASSIVE_ACTIVATION_RATIO"]

_PIXART, _SD3, _FLUX = "PixArtTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel"
_BLOCK = re.compile(r"^(single_)?transformer_blocks\.(\d+)$")
#: Modules of the text stream (their token outputs are not reshaped to maps).
_TEXT_MODULES = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q",
                 "norm_added_k", "caption_projection", "context_embedder")
#: Per-head q / k norms: their outputs are ``(B, heads, S, d)`` (SD3) or ``(B, S, heads, d)`` (FLUX).
_QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
#: Prompt length of each PixArt pipeline (``max_sequence_length`` default).
_PIXART_PROMPT_TOKENS = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}
_SD3_T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length default
_FLUX_T5_TOKENS = 512  # FluxPipeline's max_sequence_length default
#: FluxPipeline's default guidance scale (FLUX-dev's time embedding takes it).
FLUX_GUIDANCE = 3.5
_MAX_LAYERS = 1024
#: A channel is massive when its largest magnitude exceeds this many times the median magnitude
#: of the block output (the criterion of Sun et al. 2024, "Massive Activations in Large Language
#: Models", whose massive values are ~1000x the median; 100 leaves a margin).
MASSIVE_ACTIVATION_RATIO = 100.0


@dataclass(frozen=True)
class DiTCutPlan:
    """Where execution stops: after block ``last_block`` (-1: after the patch embedding), after
    single-stream block ``last_single`` (FLUX; all double-stream blocks run), or the whole
    network with its output layers (``full``)."""

    last_block: int
    full: bool = False
    last_single: int = -1


class AdaLNTap(nn.Identity):
    """Identity on a block's AdaLN-normalised output ``(B, N, C)``; a hook reads it."""


def massive_activation_norm(hidden: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *,
                            ratio: float = MASSIVE_ACTIVATION_RATIO, eps: float = 1e-6
                            ) -> torch.Tensor:
    """A block output normalised with its AdaLN modulation, massive channels dropped (DiTF).

    ``LayerNorm(h) * (1 + scale) + shift`` (no affine, ``eps``), then every channel whose largest
    magnitude over the tokens of a sample exceeds ``ratio`` times the median magnitude of that
    sample's block output (all tokens and channels) is set to zero ("channel discard").

    Args:
        hidden: Block output ``(B, N, C)``.
        shift: The block's AdaLN shift (attention branch) ``(B, C)``.
        scale: The block's AdaLN scale ``(B, C)``.
        ratio: Massive-activation threshold relative to the median magnitude.
        eps: LayerNorm epsilon (the blocks' own: 1e-6).

    Returns:
        ``(B, N, C)``.
    """
    normed = F.layer_norm(hidden, hidden.shape[-1:], eps=eps)  # (B, N, C)
    normed = normed * (1 + scale[:, None]) + shift[:, None]
    magnitude = hidden.abs()
    flat = magnitude.flatten(1)  # (B, N*C)
    # the lower median, as torch.median; top-k (not median) so that the ONNX exporter translates it
    median = flat.topk((flat.shape[1] - 1) // 2 + 1, dim=1, largest=False).values[:, -1]  # (B,)
    massive = magnitude.amax(dim=1) > ratio * median[:, None]  # (B, C)
    return normed.masked_fill(massive[:, None, :], 0.0)


def _block_modulation(network: nn.Module, block: nn.Module, emb: torch.Tensor, width: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` ``(B, C)`` of a block's attention-branch AdaLN."""
    if type(network).__name__ == _PIXART:
        table = block.scale_shift_table[None] + emb[:, : 6 * width].reshape(emb.shape[0], 6, -1)
        return table[:, 0], table[:, 1]  # shift_msa, scale_msa
    norm = block.norm1 if hasattr(block, "norm1") else block.norm  # FLUX single blocks: norm
    modulation = norm.linear(norm.silu(emb))  # (B, 6C); SD3.5 dual attention 9C; FLUX single 3C
    chunks = modulation.chunk(modulation.shape[1] // width, dim=1)
    return chunks[0], chunks[1]  # shift_msa, scale_msa (AdaLayerNormZero / SD35 ...ZeroX)


def _prompt_tokens(folder: Path) -> int:
    index = Path(folder) / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    return _PIXART_PROMPT_TOKENS.get(name, 120)


@register_family("dit")
class DiTFamily(BackboneFamily):
    """PixArt and SD3 transformers (``transformer/``) with T5 / CLIP text encoders."""

    component = "transformer"
    network_classes = (_PIXART, _SD3, _FLUX)
    text_conditioned = True
    noise_processes = ("ddpm", "flow_matching")  # PixArt: DDPM; SD3, FLUX: flow matching

    # ------------------------------------------------------------------ config and building

    @classmethod
    def read_config(cls, folder: Path) -> dict[str, Any]:
        """The transformer's config, plus ``_max_sequence_length``: PixArt's prompt length
        (120 for PixArt-alpha, 300 for Sigma, from ``model_index.json``'s pipeline class)."""
        config = super().read_config(folder)
        if config.get("_class_name", _PIXART) == _PIXART:
            config["_max_sequence_length"] = _prompt_tokens(folder)
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Rejects transformer variants whose forward the trunk does not reproduce.

        Raises:
            ValueError: An unreasonable ``num_layers`` / ``num_single_layers``; a PixArt attention
                type other than ``default``.
        """
        for key in ("num_layers", "num_single_layers"):
            layers = config.get(key, 1 if key == "num_single_layers" else None)
            if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers <= _MAX_LAYERS:
                raise ValueError(f"transformer/config.json: {key} = {layers!r} is invalid: an "
                                 f"integer from 0 to {_MAX_LAYERS}.")
        if config.get("_class_name") == _PIXART and config.get("attention_type", "default") != "default":
            raise ValueError(f"transformer/config.json: attention_type = "
                             f"{config['attention_type']!r} is not supported; only 'default'.")

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        config = {k: v for k, v in config.items() if k != "_max_sequence_length"}
        return super().build_network(config)

    # -------------------------------------------------------------------- taps and the cut

    @classmethod
    def resolve_alias(cls, path: str, network: nn.Module) -> str:
        """A generic-diffusion-feature id of a DiT block (``vit-block13-cross-q``) -> its module
        (``transformer_blocks.13.attn2.to_q``; ``backbones/gdf_aliases.py``); others unchanged."""
        from .gdf_aliases import gdf_id_to_tap

        return gdf_id_to_tap(path) if path.startswith("vit-block") and gdf_id_to_tap(path) \
            else path

    @classmethod
    def plan_cut(cls, network: nn.Module, taps: Sequence[tuple[str, str]], *,
                 full: bool = False) -> DiTCutPlan:
        """The last block the taps need.

        Raises:
            ValueError: ``:adaln`` on a module that is not a transformer block.
        """
        last, single, whole = -1, -1, full
        for path, kind in taps:
            parts = path.split(".")
            if kind == "adaln" and not _BLOCK.match(path):
                raise ValueError(f"Tap {path}:adaln: ':adaln' reads a transformer block's output "
                                 "(e.g. 'transformer_blocks.13:adaln'), not a module inside it.")
            if parts[0] == "transformer_blocks":
                last = max(last, int(parts[1]))
            elif parts[0] == "single_transformer_blocks":
                single = max(single, int(parts[1]))
            elif parts[0] in ("norm_out", "proj_out"):
                whole = True
        if whole:
            return DiTCutPlan(last_block=-1, full=True)
        if single >= 0:  # every double-stream block runs before the single-stream ones
            return DiTCutPlan(last_block=len(network.transformer_blocks) - 1, last_single=single)
        return DiTCutPlan(last_block=last)

    @classmethod
    def prune(cls, network: nn.Module, plan: DiTCutPlan) -> None:
        if plan.full:
            return
        network.transformer_blocks = nn.ModuleList(
            list(network.transformer_blocks)[: plan.last_block + 1])
        if hasattr(network, "single_transformer_blocks"):
            network.single_transformer_blocks = nn.ModuleList(
                list(network.single_transformer_blocks)[: plan.last_single + 1])
        network.norm_out, network.proj_out = None, None
        if isinstance(getattr(network, "scale_shift_table", None), nn.Parameter):
            network.scale_shift_table = None  # PixArt's output modulation

    @classmethod
    def tap_point(cls, module: nn.Module, kind: str) -> nn.Module:
        if kind != "adaln" or not (hasattr(module, "norm1") or hasattr(module, "norm")):
            return super().tap_point(module, kind)
        if not isinstance(getattr(module, "adaln_tap", None), AdaLNTap):
            module.adaln_tap = AdaLNTap()
        return module.adaln_tap

    @classmethod
    def tap_value(cls, network: nn.Module, path: str, kind: str, value: Any,
                  sample: torch.Tensor) -> Any:
        """Image tokens ``(B, N, C)`` -> maps ``(B, C, h / p, w / p)``; a joint block's image stream."""
        if isinstance(value, (tuple, list)):
            if _BLOCK.match(path) and len(value) == 2:
                value = value[1]  # joint / FLUX blocks: (text stream, image stream)
            else:
                value = next(v for v in value if v is not None)
        if kind in ("attn", "logits") or not isinstance(value, torch.Tensor):
            return value
        if value.ndim == 4 and path.rsplit(".", 1)[-1] in _QK_NORMS:
            value = _heads_to_tokens(network, path, value)  # (B, S, heads * d)
        if value.ndim != 3:
            return value
        patch = 2 if type(network).__name__ == _FLUX else network.config.patch_size  # FLUX packs 2x2
        gh, gw = sample.shape[-2] // patch, sample.shape[-1] // patch
        if value.shape[1] != gh * gw or cls._text_stream(network, path):
            return value
        return value.transpose(1, 2).reshape(value.shape[0], value.shape[2], gh, gw)

    @staticmethod
    def _text_stream(network: nn.Module, path: str) -> bool:
        parts = path.split(".")
        if any(p.endswith("context") for p in parts) or parts[-1] in _TEXT_MODULES:
            return True
        if parts[-1] in ("to_k", "to_v") and len(parts) > 1:
            parent = network.get_submodule(".".join(parts[:-1]))
            return bool(getattr(parent, "is_cross_attention", False))
        return False

    # -------------------------------------------------------------------------- execution

    @classmethod
    def embed(cls, network, sample, timesteps, context, added):
        """PixArt: ``[per-block modulation (N, 6C), embedded timestep (N, C)]``; SD3: ``temb``."""
        n = sample.shape[0]
        added = added or {}
        grow = lambda x: x.expand(n, *x.shape[1:])  # noqa: E731
        if type(network).__name__ == _PIXART:
            extra = None
            if network.use_additional_conditions:
                extra = {"resolution": grow(added["resolution"]).to(sample.dtype),
                         "aspect_ratio": grow(added["aspect_ratio"]).to(sample.dtype)}
            modulation, embedded = network.adaln_single(timesteps, extra, batch_size=n,
                                                        hidden_dtype=sample.dtype)
            return torch.cat([modulation, embedded], dim=-1)  # (N, 7C)
        pooled = grow(added["text_pooled"]).to(sample.dtype)
        if type(network).__name__ == _FLUX:  # the pipeline passes t / 1000; the model scales by 1000
            timesteps = (timesteps / 1000).to(sample.dtype) * 1000
            if network.config.guidance_embeds:
                guidance = timesteps.new_full((n,), FLUX_GUIDANCE) * 1000
                return network.time_text_embed(timesteps, guidance, pooled)
        return network.time_text_embed(timesteps, pooled)

    @classmethod
    def prepare_context(cls, network, context, added):
        """PixArt: caption projection, padding tokens dropped from a batch-1 prompt (exactly
        what its -10000 mask bias does) or ``(context, mask bias)``; SD3: ``context_embedder``."""
        if context is None:
            return getattr(network, "fixed_context", None)
        if type(network).__name__ != _PIXART:
            return network.context_embedder(context)
        if network.caption_projection is not None:
            context = network.caption_projection(context)  # (B, L, C)
        mask = (added or {}).get("text_pooled")
        if mask is None or mask.is_meta:
            return context
        if context.shape[0] == 1:
            return context[:, mask[0] > 0.5]  # (1, L', C)
        bias = (1 - mask.to(context.dtype)) * -10000.0  # as PixArtTransformer2DModel.forward
        return context, bias[:, None]  # (B, L, C), (B, 1, L)

    @classmethod
    def run(cls, network, plan: DiTCutPlan, sample, emb, context) -> None:
        with _buffers_on(network, sample.device):
            cls._run(network, plan, sample, emb, context)

    @classmethod
    def _run(cls, network, plan: DiTCutPlan, sample, emb, context) -> None:
        if type(network).__name__ == _FLUX:
            hidden = network.x_embedder(_pack(sample))  # (N, S, C)
        else:
            hidden = network.pos_embed(sample).contiguous()  # (N, S, C)
        if plan.last_block < 0 and not plan.full:
            return
        if getattr(network, "frozen_time", None) is not None:
            emb = network.frozen_time(emb)
        if type(network).__name__ == _PIXART:
            cls._run_pixart(network, plan, hidden, emb, context)
        else:
            cls._run_joint(network, plan, sample, hidden, emb, context)

    @classmethod
    def _tap_adaln(cls, network, block, hidden, emb) -> None:
        tap = getattr(block, "adaln_tap", None)
        if tap is not None:
            shift, scale = _block_modulation(network, block, emb, hidden.shape[-1])
            tap(massive_activation_norm(hidden, shift, scale))

    @classmethod
    def _run_pixart(cls, network, plan, hidden, emb, context) -> None:
        width = hidden.shape[-1]
        modulation, embedded = emb[:, : 6 * width], emb[:, 6 * width:]
        context, bias = context if isinstance(context, tuple) else (context, None)
        for block in network.transformer_blocks:
            hidden = block(hidden, encoder_hidden_states=context, encoder_attention_mask=bias,
                           timestep=modulation)
            cls._tap_adaln(network, block, hidden, emb)
        if plan.full:
            shift, scale = (network.scale_shift_table[None] + embedded[:, None]).chunk(2, dim=1)
            hidden = network.norm_out(hidden) * (1 + scale) + shift
            network.proj_out(hidden)

    @classmethod
    def _run_joint(cls, network, plan, sample, hidden, emb, context) -> None:
        """SD3 joint blocks; FLUX double-stream then single-stream blocks (rotary positions)."""
        context = context.expand(hidden.shape[0], *context.shape[1:])  # (N, L, C)
        extra, blocks = {}, list(network.transformer_blocks)
        if type(network).__name__ == _FLUX:
            ids = torch.cat([_text_ids(context), _image_ids(sample)])  # (L + S, 3)
            extra = {"image_rotary_emb": network.pos_embed(ids)}
            blocks += list(network.single_transformer_blocks)
        for block in blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=emb,
                                    **extra)
            cls._tap_adaln(network, block, hidden, emb)
        if plan.full:
            network.proj_out(network.norm_out(hidden, emb))

    @classmethod
    def forward_full(cls, network, sample, timesteps, context, added):
        n = sample.shape[0]
        added = added or {}
        grow = lambda x: x.expand(n, *x.shape[1:])  # noqa: E731
        context = grow(context)
        with _buffers_on(network, sample.device):
            return cls._forward_full(network, sample, timesteps, context, added, grow)

    @classmethod
    def _forward_full(cls, network, sample, timesteps, context, added, grow):
        if type(network).__name__ == _FLUX:
            guidance = (timesteps.new_full((sample.shape[0],), FLUX_GUIDANCE, dtype=sample.dtype)
                        if network.config.guidance_embeds else None)
            return network(hidden_states=_pack(sample), encoder_hidden_states=context,
                           pooled_projections=grow(added["text_pooled"]),
                           timestep=timesteps.to(sample.dtype) / 1000, img_ids=_image_ids(sample),
                           txt_ids=_text_ids(context), guidance=guidance)
        if type(network).__name__ == _SD3:
            return network(hidden_states=sample, encoder_hidden_states=context,
                           pooled_projections=grow(added["text_pooled"]), timestep=timesteps)
        extra = {"resolution": None, "aspect_ratio": None}
        if network.use_additional_conditions:
            extra = {"resolution": grow(added["resolution"]), "aspect_ratio": grow(added["aspect_ratio"])}
        mask = added.get("text_pooled")
        return network(sample, encoder_hidden_states=context, timestep=timesteps,
                       added_cond_kwargs=extra,
                       encoder_attention_mask=None if mask is None else grow(mask))

    @classmethod
    @torch.no_grad()
    def freeze_time(cls, network: nn.Module, emb: torch.Tensor) -> None:
        """Turns the time embedding ``emb`` ``(T, D)`` and every AdaLN modulation into constants.

        PixArt: ``adaln_single``'s outputs (shared by the blocks) become one buffer; SD3: each
        AdaLN's ``linear(silu(temb))`` becomes a bias and ``time_text_embed`` is dropped.
        """
        from diffusers.models.normalization import (AdaLayerNormContinuous, AdaLayerNormZero,
                                                    AdaLayerNormZeroSingle, SD35AdaLayerNormZeroX)

        if type(network).__name__ == _PIXART:
            network.frozen_time = FrozenTimeProjection(emb)  # (T, 7C)
            network.adaln_single = None
            return
        for module in network.modules():
            if isinstance(module, (AdaLayerNormZero, AdaLayerNormZeroSingle, SD35AdaLayerNormZeroX,
                                   AdaLayerNormContinuous)):
                activated = module.silu(emb).to(emb.dtype)
                module.linear = FrozenTimeProjection(module.linear(activated))
                module.silu = FrozenTimeProjection(activated)  # its taps keep their values
        network.time_text_embed = None

    @classmethod
    def bake_context(cls, network: nn.Module, context: torch.Tensor) -> None:
        """PixArt: the caption projection goes (K / V are baked); SD3: the projected prompt
        ``(1, L, C)`` becomes the buffer ``fixed_context`` and ``context_embedder`` goes."""
        if type(network).__name__ == _PIXART:
            network.caption_projection = None
            return
        network.register_buffer("fixed_context", context.detach().contiguous())
        network.context_embedder = None

    # -------------------------------------------------------------------------- geometry

    @classmethod
    def size_multiple(cls, config: dict[str, Any]) -> int:
        if config.get("_class_name") == _FLUX:
            return 2  # latents are packed into 2x2 patches
        return int(config.get("patch_size") or 2)

    @classmethod
    def latent_channels(cls, config: dict[str, Any]) -> int:
        channels = int(config.get("in_channels", 4))
        return channels // 4 if config.get("_class_name") == _FLUX else channels

    @classmethod
    def native_latent_size(cls, config: dict[str, Any]) -> tuple[int, int]:
        sample = int(config.get("sample_size") or 128)
        return sample, sample

    # ---------------------------------------------------------------------------- prompts

    @classmethod
    def context_shape(cls, folder: Path, config: dict[str, Any]) -> tuple[tuple[int, int], int]:
        """``((L, D), P)``. PixArt: ``P = L``, the prompt's attention mask rides in the pooled
        slot (PixArt has no pooled embedding); SD3: CLIP 77 + T5 256 tokens (256 zeros without a
        T5) of ``joint_attention_dim``, ``pooled_projection_dim``."""
        if config.get("_class_name") == _FLUX:
            return (_FLUX_T5_TOKENS, int(config["joint_attention_dim"])), int(config["pooled_projection_dim"])
        if config.get("_class_name") == _SD3:
            length = _tokenizer_length(Path(folder) / "tokenizer", 77) + _SD3_T5_TOKENS
            return (length, int(config["joint_attention_dim"])), int(config["pooled_projection_dim"])
        length = int(config.get("_max_sequence_length") or _prompt_tokens(folder))
        return (length, int(config.get("caption_channels") or config["cross_attention_dim"])), length

    @classmethod
    @torch.no_grad()
    def encode_prompt(cls, texts: list[str], encoders: dict[str, nn.Module],
                      tokenizers: dict[str, Any], config: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes prompts as ``PixArtAlphaPipeline`` / ``StableDiffusion3Pipeline`` do (no
        caption cleaning, no classifier-free half).

        Returns:
            PixArt: ``(T5 states (B, L, 4096), attention mask (B, L))``; SD3: ``(context
            (B, 77 + 256, joint width), pooled CLIP projections (B, 2048))``.
        """
        if config.get("_class_name") == _SD3:
            return _encode_sd3(texts, encoders, tokenizers, config)
        if config.get("_class_name") == _FLUX:
            return _encode_flux(texts, encoders, tokenizers)
        tok, encoder = tokenizers["text_encoder"], encoders["text_encoder"]
        batch = tok(texts, padding="max_length", max_length=int(config.get("_max_sequence_length", 120)),
                    truncation=True, add_special_tokens=True, return_tensors="pt")
        mask = batch.attention_mask.to(encoder.device)
        context = encoder(batch.input_ids.to(encoder.device), attention_mask=mask)[0]
        return context, mask.to(context.dtype)

    @classmethod
    def added_conditions(cls, pooled: torch.Tensor | None, height: int, width: int,
                         config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """``text_pooled`` (SD3 pooled projections / PixArt prompt mask) and, for PixArt at
        1024 px, ``resolution`` ``[[H, W]]`` and ``aspect_ratio`` ``[[H / W]]`` in pixels."""
        if pooled is None:
            return None
        return {"text_pooled": pooled,
                "resolution": torch.tensor([[float(height), float(width)]], device=pooled.device),
                "aspect_ratio": torch.tensor([[height / width]], device=pooled.device)}

    @classmethod
    def added_conditions_like(cls, pooled_dim, latent_hw, device):
        return {"text_pooled": torch.empty(1, pooled_dim, device=device),
                "resolution": torch.empty(1, 2, device=device),
                "aspect_ratio": torch.empty(1, 1, device=device)}


@contextlib.contextmanager
def _buffers_on(network: nn.Module, device: torch.device):
    """On a meta probe, the position-embedding tables (built on the CPU even under
    ``init_empty_weights``) are put on the meta device for the call."""
    if device.type != "meta":
        yield
        return
    moved = []
    for module in network.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and not buffer.is_meta:
                moved.append((module, name, buffer))
                module._buffers[name] = buffer.to("meta")
    try:
        yield
    finally:
        for module, name, buffer in moved:
            module._buffers[name] = buffer


def _heads_to_tokens(network: nn.Module, path: str, value: torch.Tensor) -> torch.Tensor:
    """A q / k norm output as tokens ``(B, S, heads * d)``."""
    heads = network.get_submodule(path.rsplit(".", 1)[0]).heads
    if value.shape[1] == heads and value.shape[2] != heads:  # (B, heads, S, d): SD3's processor
        value = value.transpose(1, 2)
    return value.flatten(2)


def _pack(latent: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w)`` -> FLUX's 2x2 patch tokens ``(N, h/2 * w/2, 4C)`` (``FluxPipeline._pack_latents``)."""
    n, c, h, w = latent.shape
    patches = latent.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (h // 2) * (w // 2), c * 4)


def _image_ids(latent: torch.Tensor) -> torch.Tensor:
    """FLUX's image position ids ``(h/2 * w/2, 3)``: (0, row, column) of each patch token."""
    h, w = latent.shape[-2] // 2, latent.shape[-1] // 2
    rows = torch.arange(h, device=latent.device)[:, None].expand(h, w)
    cols = torch.arange(w, device=latent.device)[None, :].expand(h, w)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1)  # (h, w, 3)
    return ids.reshape(h * w, 3).to(latent.dtype)


def _text_ids(context: torch.Tensor) -> torch.Tensor:
    return context.new_zeros(context.shape[1], 3)  # (L, 3): text tokens sit at position 0


def _encode_flux(texts, encoders, tokenizers):
    """CLIP-L pooled output + T5 states, as ``FluxPipeline.encode_prompt``."""
    clip, tok = encoders["text_encoder"], tokenizers["text_encoder"]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(clip.device)
    pooled = clip(ids, output_hidden_states=False).pooler_output  # (B, 768)
    t5, tok = encoders["text_encoder_2"], tokenizers["text_encoder_2"]
    ids = tok(texts, padding="max_length", max_length=_FLUX_T5_TOKENS, truncation=True,
              return_tensors="pt").input_ids.to(t5.device)
    return t5(ids, output_hidden_states=False)[0].to(pooled.dtype), pooled  # (B, 512, 4096)


def _tokenizer_length(folder: Path, default: int) -> int:
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return default
    return int(json.loads(config.read_text()).get("model_max_length", default))


def _encode_sd3(texts, encoders, tokenizers, config):
    """CLIP-L, CLIP-G penultimate states + T5 as ``StableDiffusion3Pipeline.encode_prompt``."""
    clip_length = tokenizers["text_encoder"].model_max_length
    states, pooled = [], []
    for name in ("text_encoder", "text_encoder_2"):
        encoder = encoders[name]
        ids = tokenizers[name](texts, padding="max_length", max_length=clip_length,
                               truncation=True, return_tensors="pt").input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])  # (B, 77, D_i)
        pooled.append(out[0])  # text_embeds (B, P_i)
    clip = torch.cat(states, dim=-1)
    width = int(config["joint_attention_dim"])
    clip = F.pad(clip, (0, width - clip.shape[-1]))  # (B, 77, joint width)
    if "text_encoder_3" in encoders:
        encoder = encoders["text_encoder_3"]
        ids = tokenizers["text_encoder_3"](texts, padding="max_length", max_length=_SD3_T5_TOKENS,
                                           truncation=True, add_special_tokens=True,
                                           return_tensors="pt").input_ids.to(encoder.device)
        t5 = encoder(ids)[0].to(clip.dtype)  # (B, 256, joint width)
    else:
        t5 = clip.new_zeros(len(texts), _SD3_T5_TOKENS, width)
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)
