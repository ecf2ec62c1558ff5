"""Trainable additions to the attention projections of a frozen trunk: K/V prompts and LoRA.

Two adaptations of Discffusion (METHODS.md §2.5):

- ``"kv"`` (the paper, S002 §4.5 Eq. 5): ``W^k' = W^k + p^k`` and ``W^v' = W^v + p^v`` on every
  cross-attention (``attn2``) ``to_k`` / ``to_v``; ``p`` has the weight's shape
  ``(inner, d_text)`` and starts at zero, so the untrained model is the base model bit for bit;
- ``"lora"`` (the released code, ``dsd_train.py:548-563``): a rank-``r`` update
  ``up @ down`` (``down ~ N(0, 1/r)``, ``up = 0``) on ``to_q``, ``to_k``, ``to_v`` and
  ``to_out.0`` of every attention, self and cross.

The additions are not parameters of the network (its state-dict keys stay those of the base
model, so the trunk still loads from the base repository): each projection gets a forward hook
that adds ``x @ delta^T`` to its output, i.e. ``F.linear(x, W + delta, b)`` up to rounding; with
a zero delta the hook adds exact zeros. :meth:`AttentionAdapter.folded` writes ``W + delta``
into the weights (and zero deltas) for saving and export, as diffusers' ``fuse_lora`` does.

``peft`` would give the LoRA variant, but it wraps each projection in a new module
(``to_k.base_layer.weight``, ``to_k.lora_A...``), which changes the trunk's state-dict keys that
strict loading, the unbundled save and the trunk pruning rely on; the hooks keep them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADAPTATIONS", "AttentionAdapter", "KVPromptAdapter", "LoRAAdapter", "build_adapter"]

#: Adaptation kinds: none, the paper's K/V prompts, the released code's LoRA.
ADAPTATIONS = ("none", "kv", "lora")


def _key(path: str) -> str:
    """A ``ParameterDict`` key for a module path (dots are not allowed in keys)."""
    return path.replace(".", "__")


class _DeltaHook:
    """Forward hook of one projection: adds the adapter's ``delta(x)`` to its output."""

    def __init__(self, adapter: "AttentionAdapter", path: str) -> None:
        self.adapter, self.path = adapter, path

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.adapter.active:
            return output
        return output + self.adapter.delta_output(self.path, args[0]).to(output.dtype)


class AttentionAdapter(nn.Module):
    """Base of the trainable additions: hooks on projections, folding, listing.

    Args:
        network: The (frozen) diffusers network whose projections are adapted.
        paths: Module paths of the ``nn.Linear`` projections to adapt.

    Raises:
        ValueError: No projection to adapt.
    """

    kind = "none"

    def __init__(self, network: nn.Module, paths: list[str]) -> None:
        super().__init__()
        if not paths:
            raise ValueError(f"The {self.kind!r} adaptation found no attention projection to adapt "
                             "in this network.")
        self.paths = list(paths)
        self.active = True
        self._handles: list = []
        object.__setattr__(self, "_network", network)  # not a submodule: the backbone owns it

    def attach(self, network: nn.Module | None = None) -> None:
        """(Re-)registers the hooks on ``network`` (default: the adapted network)."""
        self.detach()
        modules = dict((network or self._network).named_modules())
        for path in self.paths:
            self._handles.append(modules[path].register_forward_hook(_DeltaHook(self, path)))

    def detach(self) -> None:
        """Removes the hooks (the network computes the base projections again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def delta_weight(self, path: str) -> torch.Tensor:
        """``delta`` of the projection at ``path``, shaped like its weight ``(out, in)``."""
        raise NotImplementedError

    def delta_output(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ delta^T`` for the projection at ``path`` (``x`` ``(..., in)``)."""
        return F.linear(x, self.delta_weight(path).to(x.dtype))

    def zero_(self) -> None:
        """Makes every delta zero (the adapter then leaves the network unchanged)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def folded(self, network: nn.Module | None = None) -> Iterator[None]:
        """Inside the block, ``W + delta`` is in the weights, the deltas are zero and the hooks
        are off; on exit everything is restored exactly.

        Args:
            network: The network whose weights receive the deltas (default: the adapted one).
        """
        modules = dict((network or self._network).named_modules())
        saved_weights = {p: modules[p].weight.data.clone() for p in self.paths}
        saved_params = {n: t.data.clone() for n, t in self.named_parameters()}
        with torch.no_grad():
            for path in self.paths:
                weight = modules[path].weight
                delta = self.delta_weight(path).to(weight.device, weight.dtype)
                weight.data = weight.data + delta
            self.zero_()
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active
            for path, data in saved_weights.items():
                modules[path].weight.data = data
            for name, tensor in self.named_parameters():
                tensor.data = saved_params[name]

    @torch.no_grad()
    def fold_into(self, network: nn.Module) -> None:
        """Adds the deltas to the weights of ``network`` (a copy of the adapted network without
        the hooks, e.g. the one a specialised module runs)."""
        modules = dict(network.named_modules())
        for path in self.paths:
            if path in modules and getattr(modules[path], "weight", None) is not None:
                weight = modules[path].weight
                weight.data = weight.data + self.delta_weight(path).to(weight.device, weight.dtype)


class KVPromptAdapter(AttentionAdapter):
    """The paper's learnable K/V prompts ``p^k``, ``p^v`` on every cross-attention, zero-init.

    ``prompts[<to_k path>]`` has the shape of that ``to_k`` weight ``(inner, d_text)`` (SD 2.1:
    inner 320 / 640 / 1280, d_text 1024; 25,559,040 values over the 16 layers).
    """

    kind = "kv"

    def __init__(self, network: nn.Module) -> None:
        from diffusers.models.attention_processor import Attention

        paths = []
        for name, module in network.named_modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                paths += [f"{name}.to_k", f"{name}.to_v"]
        super().__init__(network, paths)
        modules = dict(network.named_modules())
        self.prompts = nn.ParameterDict({
            _key(p): nn.Parameter(torch.zeros_like(modules[p].weight, dtype=torch.float32,
                                                   device="cpu" if modules[p].weight.is_meta
                                                   else modules[p].weight.device))
            for p in paths})
        self.attach()

    def delta_weight(self, path: str) -> torch.Tensor:
        return self.prompts[_key(path)]

    def zero_(self) -> None:
        for prompt in self.prompts.values():
            prompt.data.zero_()


class LoRAAdapter(AttentionAdapter):
    """The released code's rank-``r`` LoRA on q, k, v and out of every attention (self and cross).

    ``delta = up @ down`` with ``down`` ``(r, in)`` drawn from ``N(0, (1/r)^2)`` and ``up``
    ``(out, r)`` zero (diffusers' ``LoRALinearLayer`` initialisation), so the untrained model is
    the base model.

    Args:
        network: The network.
        rank: LoRA rank ``r`` (the released code: 4).
        seed: Seed of the ``down`` initialisation.
    """

    kind = "lora"

    def __init__(self, network: nn.Module, rank: int = 4, seed: int = 0) -> None:
        from diffusers.models.attention_processor import Attention

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"config['task']['lora_rank'] = {rank!r} is invalid: an integer >= 1.")
        paths = []
        for name, module in network.named_modules():
            if isinstance(module, Attention):
                paths += [f"{name}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")
                          if _has_linear(module, p)]
        super().__init__(network, paths)
        modules = dict(network.named_modules())
        generator = torch.Generator().manual_seed(int(seed))
        self.rank = rank
        self.down = nn.ParameterDict({
            _key(p): nn.Parameter(torch.randn(rank, modules[p].in_features, generator=generator)
                                  / rank) for p in paths})
        self.up = nn.ParameterDict({
            _key(p): nn.Parameter(torch.zeros(modules[p].out_features, rank)) for p in paths})
        self.attach()

    def delta_weight(self, path: str) -> torch.Tensor:
        return self.up[_key(path)] @ self.down[_key(path)]  # (out, in)

    def delta_output(self, path: str, x: torch.Tensor) -> torch.Tensor:
        down, up = self.down[_key(path)].to(x.dtype), self.up[_key(path)].to(x.dtype)
        return F.linear(F.linear(x, down), up)  # (..., out), never forms the (out, in) matrix

    def zero_(self) -> None:
        for up in self.up.values():
            up.data.zero_()


def _has_linear(attn: nn.Module, path: str) -> bool:
    module = attn
    for part in path.split("."):
        module = getattr(module, part, None) if not part.isdigit() else (
            module[int(part)] if isinstance(module, (nn.ModuleList, nn.Sequential)) else None)
        if module is None:
            return False
    return isinstance(module, nn.Linear)


def build_adapter(kind: str, network: nn.Module, *, rank: int = 4, seed: int = 0
                  ) -> AttentionAdapter | None:
    """The adapter of an adaptation kind on ``network`` (None for ``"none"``).

    Args:
        kind: ``"none"``, ``"kv"`` (the paper's K/V prompts) or ``"lora"`` (the released code).
        network: The diffusers network.
        rank: LoRA rank.
        seed: Seed of the LoRA ``down`` initialisation.

    Raises:
        ValueError: Unknown kind, or a network without the projections.
    """
    if kind == "none":
        return None
    if kind == "kv":
        return KVPromptAdapter(network)
    if kind == "lora":
        return LoRAAdapter(network, rank=rank, seed=seed)
    raise ValueError(f"config['task']['adaptation'] = {kind!r} is invalid: one of {ADAPTATIONS} "
                     "('kv': the paper's K/V prompts, 'lora': the released code's LoRA).")
