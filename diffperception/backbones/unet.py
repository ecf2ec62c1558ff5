"""U-Net code shared by the ``sd`` and ``pixel`` families: cut planning, pruning, stop-early
execution, time freezing and the tap aliases of diffusers' ``UNet2DConditionModel`` /
``UNet2DModel``.

Planning (``plan_cut``) finds the last unit in execution order (down -> mid -> up) that a tap
needs; pruning (``prune``) removes everything after it from the module tree before any weight is
loaded; ``run`` calls the diffusers blocks in the order of the diffusers forward and returns as
soon as the last needed block has run. Inside the last block only the resnet / attention pairs up
to the last needed one are kept (an attention after the last needed resnet is replaced by
``SkippedModule``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .base import BackboneFamily

__all__ = ["CutPlan", "SkippedModule", "FrozenTimeProjection", "UNetFamily", "adm_block_paths"]

_STAGES = ("conv_in", "down", "mid", "up", "out")
# Modules of the time / added-condition embedding, dropped once the time is frozen.
_EMBEDDING_MODULES = ("time_proj", "time_embedding", "add_embedding", "add_time_proj",
                      "time_embed_act", "encoder_hid_proj")


@dataclass(frozen=True)
class CutPlan:
    """Where execution stops.

    Attributes:
        stage: One of ``conv_in``, ``down``, ``mid``, ``up``, ``out`` (the full network).
        block: Index of the last block run in ``down`` / ``up`` stages.
        pairs: Resnet (/attention) pairs kept in that block.
        keep_attn: Whether the attention of the last kept pair runs.
        keep_sampler: Whether the block's down/upsampler runs.
    """

    stage: str
    block: int = -1
    pairs: int = 0
    keep_attn: bool = True
    keep_sampler: bool = True


class SkippedModule(nn.Module):
    """Stands in for an attention whose output no tap needs: returns its input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args, return_dict: bool = True, **kwargs):
        return hidden_states if return_dict else (hidden_states,)


class FrozenTimeProjection(nn.Module):
    """A resnet's ``time_emb_proj`` output for fixed timesteps: ``bias`` of shape ``(T, C)``.

    The batch is laid out timesteps-outermost, so each timestep's row repeats ``N / T`` times.
    """

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, placeholder: torch.Tensor) -> torch.Tensor:
        if self.bias.shape[0] == 1:
            return self.bias.expand(placeholder.shape[0], -1)  # (N, C)
        # expand + reshape, not repeat_interleave: the ONNX exporter (torch 2.13) translates
        # repeat_interleave with a dynamic repeat count wrongly for batches > 1.
        repeats = placeholder.shape[0] // self.bias.shape[0]
        return self.bias[:, None].expand(-1, repeats, -1).reshape(-1, self.bias.shape[1])  # (N, C)


def adm_block_paths(unet: nn.Module) -> list[str]:
    """Module paths of the ADM block numbering b = 1..N (the text-free paper, S001 §2.1).

    A block is one element of guided-diffusion's ``input_blocks`` / ``middle_block`` /
    ``output_blocks``: ``conv_in``; each (resnet[, attention]) pair and each downsampler of the
    down blocks; the middle block; then each (resnet[, attention]) pair of the up blocks, where the
    last pair of a level and its upsampler are ONE block (guided-diffusion's output block that
    ends a level contains the upsampling layer), named by the upsampler. A pair is named by its
    last module (the attention when there is one). ADM-256 has 37 blocks (``METHODS.md`` §0.2).
    """
    paths = ["conv_in"]

    def pairs(prefix: str, block: nn.Module) -> list[str]:
        resnets = getattr(block, "resnets", [])
        attentions = getattr(block, "attentions", None)
        return [f"{prefix}.attentions.{i}" if attentions is not None and i < len(attentions)
                else f"{prefix}.resnets.{i}" for i in range(len(resnets))]

    for i, block in enumerate(unet.down_blocks):
        paths += pairs(f"down_blocks.{i}", block)
        samplers = getattr(block, "downsamplers", None) or []
        paths += [f"down_blocks.{i}.downsamplers.{j}" for j in range(len(samplers))]
    if getattr(unet, "mid_block", None) is not None:
        paths.append("mid_block")
    for i, block in enumerate(unet.up_blocks):
        units = pairs(f"up_blocks.{i}", block)
        if getattr(block, "upsamplers", None):
            units[-1] = f"up_blocks.{i}.upsamplers.0"  # the level's last block ends with it
        paths += units
    return paths


def _unit_need(parts: list[str], kind: str, block: nn.Module) -> tuple[int, bool, bool]:
    """(pairs, attention of last pair, sampler) a tap inside one block needs."""
    n_pairs = len(block.resnets)
    if not parts:  # the block itself
        return (0, False, False) if kind == "in" else (n_pairs, True, True)
    if parts[0] == "resnets":
        return int(parts[1]) + 1, False, False
    if parts[0] == "attentions":
        return int(parts[1]) + 1, True, False
    return n_pairs, True, True  # downsamplers / upsamplers / anything after the pairs


def _position(path: str, kind: str, unet: nn.Module) -> tuple:
    parts = path.split(".")
    head = parts[0]
    if head in ("down_blocks", "up_blocks"):
        index = int(parts[1])
        block = getattr(unet, head)[index]
        stage = "down" if head == "down_blocks" else "up"
        return (_STAGES.index(stage), index) + _unit_need(parts[2:], kind, block)
    if head == "mid_block":
        return (_STAGES.index("mid"), 0, 0, True, True)
    if head in ("conv_norm_out", "conv_act", "conv_out"):
        return (_STAGES.index("out"), 0, 0, True, True)
    return (_STAGES.index("conv_in"), 0, 0, True, True)  # conv_in and the embeddings


def _truncate_block(block: nn.Module, plan: CutPlan, sampler_attr: str) -> None:
    block.resnets = nn.ModuleList(list(block.resnets)[: plan.pairs])
    attentions = getattr(block, "attentions", None)
    if attentions is not None:
        kept = list(attentions)[: plan.pairs]
        if kept and not plan.keep_attn:
            kept[-1] = SkippedModule()
        block.attentions = nn.ModuleList(kept)
    if not plan.keep_sampler and getattr(block, sampler_attr, None) is not None:
        setattr(block, sampler_attr, None)


class UNetFamily(BackboneFamily):
    """The U-Net part of the ``sd`` and ``pixel`` families (not registered itself)."""

    component = "unet"

    @classmethod
    def resolve_alias(cls, path: str, network: nn.Module) -> str:
        """``up_ft.N`` (DIFT) -> ``up_blocks.N``; ``adm.B`` -> the B-th ADM unit (1-based);
        a generic-diffusion-feature id (``up-level1-repeat1-vit-block0-cross-q``) -> its module
        (``backbones/gdf_aliases.py``; ``...-map`` ids give ``path:attn``).

        Raises:
            ValueError: An ``adm.B`` number outside this U-Net's units.
        """
        from .gdf_aliases import gdf_id_to_tap

        gdf = gdf_id_to_tap(path)
        if gdf is not None:
            return gdf
        if path.startswith("up_ft."):
            return "up_blocks." + path[len("up_ft."):]
        if path.startswith("adm."):
            units = adm_block_paths(network)
            num = path[len("adm."):]
            if not num.isdigit() or not 1 <= int(num) <= len(units):
                raise ValueError(f"Tap alias {path!r}: ADM blocks of this U-Net are numbered "
                                 f"adm.1 .. adm.{len(units)}.")
            return units[int(num) - 1]
        return path

    @classmethod
    def plan_cut(cls, network: nn.Module, taps: Sequence[tuple[str, str]], *,
                 full: bool = False) -> CutPlan:
        if full:
            return CutPlan(stage="out")
        positions = [_position(path, kind, network) for path, kind in taps]
        stage_idx, block = max((p[0], p[1]) for p in positions)
        stage = _STAGES[stage_idx]
        if stage not in ("down", "up"):
            return CutPlan(stage=stage)
        same = [p for p in positions if (p[0], p[1]) == (stage_idx, block)]
        pairs = max(p[2] for p in same)
        keep_attn = any(p[3] for p in same if p[2] == pairs)
        keep_sampler = any(p[4] for p in same)
        return CutPlan(stage=stage, block=block, pairs=pairs, keep_attn=keep_attn,
                       keep_sampler=keep_sampler)

    @classmethod
    def prune(cls, network: nn.Module, plan: CutPlan) -> None:
        unet = network
        if plan.stage == "out":
            return
        for name in ("conv_norm_out", "conv_act", "conv_out"):
            if hasattr(unet, name):
                setattr(unet, name, None)
        if plan.stage == "up":
            unet.up_blocks = nn.ModuleList(list(unet.up_blocks)[: plan.block + 1])
            _truncate_block(unet.up_blocks[plan.block], plan, "upsamplers")
            return
        unet.up_blocks = nn.ModuleList()
        if plan.stage == "mid":
            return
        unet.mid_block = None
        if plan.stage == "down":
            unet.down_blocks = nn.ModuleList(list(unet.down_blocks)[: plan.block + 1])
            _truncate_block(unet.down_blocks[plan.block], plan, "downsamplers")
        else:
            unet.down_blocks = nn.ModuleList()

    # ------------------------------------------------------------------------- execution

    @classmethod
    def embed(cls, network, sample, timesteps, context, added):
        unet = network
        if not cls.text_conditioned:
            t_emb = unet.time_proj(timesteps).to(dtype=sample.dtype)
            return unet.time_embedding(t_emb)
        t_emb = unet.get_time_embed(sample=sample, timestep=timesteps)
        emb = unet.time_embedding(t_emb, None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context,
                                 added_cond_kwargs=added or {})
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        return emb

    @classmethod
    def prepare_context(cls, network, context, added):
        if cls.text_conditioned and context is not None:
            return network.process_encoder_hidden_states(context, added or {})
        return context

    @classmethod
    def _call_block(cls, block, sample, emb, context, **kw):
        if cls.text_conditioned and getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=context, **kw)
        return block(hidden_states=sample, temb=emb, **kw)

    @classmethod
    def run(cls, network, plan: CutPlan, sample, emb, context) -> None:
        unet = network
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        factor = 2 ** getattr(unet, "num_upsamplers", 0)
        upsample_by_size = any(d % factor != 0 for d in sample.shape[-2:])
        num_up_blocks = len(unet.config.get("up_block_types", ()))
        sample = unet.conv_in(sample)
        if plan.stage == "conv_in":
            return
        residuals = (sample,)
        for block in unet.down_blocks[: plan.block + 1 if plan.stage == "down" else None]:
            sample, res = cls._call_block(block, sample, emb, context)
            residuals += res
        if plan.stage == "down":
            return
        if unet.mid_block is not None:
            if cls.text_conditioned and getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
            else:
                sample = unet.mid_block(sample, emb)
        if plan.stage == "mid":
            return
        for i, block in enumerate(unet.up_blocks[: plan.block + 1 if plan.stage == "up" else None]):
            n = len(block.resnets)
            res, residuals = residuals[len(residuals) - n:], residuals[: len(residuals) - n]
            kw: dict[str, Any] = {"res_hidden_states_tuple": res}
            if cls.text_conditioned:
                is_final = i == num_up_blocks - 1
                kw["upsample_size"] = (residuals[-1].shape[2:]
                                       if upsample_by_size and not is_final and residuals else None)
            sample = cls._call_block(block, sample, emb, context, **kw)
        if plan.stage == "up":
            return
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        unet.conv_out(sample)

    @classmethod
    def forward_full(cls, network, sample, timesteps, context, added):
        if not cls.text_conditioned:
            return network(sample, timesteps)
        context = context.expand(sample.shape[0], *context.shape[1:])
        return network(sample, timesteps, encoder_hidden_states=context, added_cond_kwargs=added)

    @classmethod
    @torch.no_grad()
    def freeze_time(cls, network: nn.Module, emb: torch.Tensor) -> None:
        """Replaces each resnet's time projection by its output for ``emb`` ``(T, D)``.

        Raises:
            ValueError: A module takes the time embedding in a way this does not know.
        """
        from diffusers.models.resnet import ResnetBlock2D

        for name, module in network.named_modules():
            if getattr(module, "time_emb_proj", None) is None:
                continue
            if not isinstance(module, ResnetBlock2D):
                raise ValueError(f"Cannot specialize {name}: {type(module).__name__} takes the "
                                 "time embedding in a way the specializer does not know.")
            temb = emb if module.skip_time_act else module.nonlinearity(emb)
            module.time_emb_proj = FrozenTimeProjection(module.time_emb_proj(temb))
        for name in _EMBEDDING_MODULES:
            if getattr(network, name, None) is not None:
                setattr(network, name, None)

    # -------------------------------------------------------------------------- geometry

    @classmethod
    def size_multiple(cls, config: dict[str, Any]) -> int:
        return 2 ** max(len(config.get("down_block_types", ())) - 1, 0)
