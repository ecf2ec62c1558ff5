"""The trunk: the part of a diffusers U-Net that a set of taps needs, and its execution.

Planning (``plan_cut``) finds the last unit in execution order (down -> mid -> up) that a tap
needs; pruning (``prune_unet``) removes everything after it from the module tree before any weight
is loaded; ``Trunk.forward`` runs the diffusers blocks in the order of the diffusers forward and
returns as soon as the last needed block has run. Inside the last block only the resnet /
attention pairs up to the last needed one are kept (an attention after the last needed resnet is
replaced by ``SkippedModule``). Activations are captured with forward hooks, exactly as a hook on
the full diffusers model would capture them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import AttentionProbs, install_processor
from .taps import Tap

__all__ = ["CutPlan", "plan_cut", "prune_unet", "Trunk", "SkippedModule"]

_STAGES = ("conv_in", "down", "mid", "up", "out")


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


def _position(tap: Tap, unet: nn.Module) -> tuple:
    parts = tap.path.split(".")
    head = parts[0]
    if head in ("down_blocks", "up_blocks"):
        index = int(parts[1])
        block = getattr(unet, head)[index]
        stage = "down" if head == "down_blocks" else "up"
        return (_STAGES.index(stage), index) + _unit_need(parts[2:], tap.kind, block)
    if head == "mid_block":
        return (_STAGES.index("mid"), 0, 0, True, True)
    if head in ("conv_norm_out", "conv_act", "conv_out"):
        return (_STAGES.index("out"), 0, 0, True, True)
    return (_STAGES.index("conv_in"), 0, 0, True, True)  # conv_in and the embeddings


def plan_cut(unet: nn.Module, taps: list[Tap], *, full: bool = False) -> CutPlan:
    """Plans the cut after the last unit the taps need (``full`` keeps the whole network)."""
    if full:
        return CutPlan(stage="out")
    positions = [_position(t, unet) for t in taps]
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


def prune_unet(unet: nn.Module, plan: CutPlan) -> None:
    """Removes every module the plan never reaches (in place; works on the meta device)."""
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


def _first(value):
    """The tensor a tap reports for a module output or input (first element of tuples)."""
    if isinstance(value, (tuple, list)):
        return value[0]
    if hasattr(value, "to_tuple"):  # diffusers BaseOutput
        return value.to_tuple()[0]
    return value


def _per_sample(value: torch.Tensor, n: int) -> torch.Tensor:
    return value.expand(n, *value.shape[1:]) if value.shape[0] == 1 and n > 1 else value


class _CaptureHook:
    """Forward (pre-)hook storing one tap into the trunk's per-call store.

    It reaches the store through the trunk at call time (``torch.export`` swaps plain attributes
    such as the store dict while tracing).
    """

    def __init__(self, trunk: "Trunk", name: str, pre: bool) -> None:
        self.trunk, self.name, self.pre = trunk, name, pre

    def __call__(self, module, args, *rest):
        if self.pre:
            kwargs = rest[0] if rest else {}
            value = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        else:
            value = rest[-1]
        self.trunk._store[self.name] = _first(value)


class Trunk(nn.Module):
    """Runs a pruned diffusers U-Net and returns ``{tap name: activation}``.

    The trunk drives the U-Net but does not own it: the task model registers the U-Net, so its
    parameters appear once, under ``unet.``.

    Args:
        unet: A ``UNet2DConditionModel`` or ``UNet2DModel`` already pruned with ``prune_unet``.
        taps: Resolved taps (all inside the kept modules).
        plan: The cut plan ``unet`` was pruned with.
        num_up_blocks: Number of up blocks of the unpruned network (for diffusers' odd-size logic).
    """

    def __init__(self, unet: nn.Module, taps: list[Tap], plan: CutPlan, num_up_blocks: int) -> None:
        super().__init__()
        # Not registered as a child: the task model owns the U-Net (its keys read ``unet.*``).
        object.__setattr__(self, "unet", unet)
        self.taps = list(taps)
        self.plan = plan
        self.num_up_blocks = num_up_blocks
        self.conditional = hasattr(unet, "get_time_embed")
        # Set by specialisation: the timesteps baked into the resnets' time projections.
        self.frozen_timesteps: int | None = None
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self.attach_taps()

    def detach_taps(self) -> None:
        """Removes the capture hooks (e.g. before copying the U-Net)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def attach_taps(self) -> None:
        """(Re-)registers the capture hooks on the current modules."""
        self.detach_taps()
        modules = dict(self.unet.named_modules())
        for tap in self.taps:
            module = modules[tap.path]
            if tap.kind == "attn":
                if not isinstance(getattr(module, "probs_tap", None), AttentionProbs):
                    module.probs_tap = AttentionProbs()
                install_processor(module)
                module = module.probs_tap
            hook = _CaptureHook(self, tap.name, pre=tap.kind == "in")
            if tap.kind == "in":
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(hook))

    def embed(self, sample: torch.Tensor, timesteps: torch.Tensor,
              context: torch.Tensor | None, added: dict | None) -> torch.Tensor:
        """The time (and SDXL added-condition) embedding ``emb`` the resnets take, ``(N, D)``."""
        unet = self.unet
        if self.frozen_timesteps is not None:
            # The resnets' time projections are constants; they only read the batch size.
            return sample.new_zeros(sample.shape[0], 1)
        if not self.conditional:
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

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor | None = None,
                added: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Runs the kept part of the U-Net.

        Args:
            sample: Noisy latent ``(N, C, h, w)``.
            timesteps: ``(N,)`` integer timesteps.
            context: Text context ``(N or 1, L, D)`` for conditional U-Nets.
            added: SDXL added conditions (``text_embeds``, ``time_ids``).

        Returns:
            ``{tap name: tensor}`` in the order of ``self.taps``.
        """
        self._store.clear()
        unet, plan = self.unet, self.plan
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.embed(sample, timesteps, context, added)
        if self.conditional and context is not None:
            context = unet.process_encoder_hidden_states(context, added or {})
        self._run_blocks(sample, emb, context)
        n = sample.shape[0]
        # K / V of a batch-1 text context are computed once; report them per sample.
        out = {tap.name: _per_sample(self._store[tap.name], n) for tap in self.taps}
        self._store.clear()  # keep no activation (or autograd graph) alive between calls
        return out

    def _call_block(self, block, sample, emb, context, **kw):
        if self.conditional and getattr(block, "has_cross_attention", False):
            return block(hidden_states=sample, temb=emb, encoder_hidden_states=context, **kw)
        return block(hidden_states=sample, temb=emb, **kw)

    def _run_blocks(self, sample, emb, context) -> None:
        unet, plan = self.unet, self.plan
        factor = 2 ** getattr(unet, "num_upsamplers", 0)
        upsample_by_size = any(d % factor != 0 for d in sample.shape[-2:])
        sample = unet.conv_in(sample)
        if plan.stage == "conv_in":
            return
        residuals = (sample,)
        for block in unet.down_blocks:
            sample, res = self._call_block(block, sample, emb, context)
            residuals += res
        if plan.stage == "down":
            return
        if unet.mid_block is not None:
            if self.conditional and getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=context)
            else:
                sample = unet.mid_block(sample, emb)
        if plan.stage == "mid":
            return
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, residuals = residuals[len(residuals) - n:], residuals[: len(residuals) - n]
            kw = {"res_hidden_states_tuple": res}
            if self.conditional:
                is_final = i == self.num_up_blocks - 1
                kw["upsample_size"] = (residuals[-1].shape[2:]
                                       if upsample_by_size and not is_final and residuals else None)
            sample = self._call_block(block, sample, emb, context, **kw)
        if plan.stage == "up":
            return
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        unet.conv_out(sample)
