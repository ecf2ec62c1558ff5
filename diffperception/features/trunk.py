"""The trunk driver: runs the part of a diffusion network a set of taps needs and captures them.

The family (``backbones/``) owns everything that depends on the architecture: the cut plan, the
pruning, the time embedding and the order in which blocks run. The driver here is
family-agnostic: it registers capture hooks on the tapped modules (exactly what a hook on the full
diffusers model captures), asks the family to run up to the plan, and returns ``{tap: tensor}``.

Two capabilities the methods need:

- **additive injections**: ``trunk(..., injections={module path: tensor})`` adds a tensor to a
  module's output while the trunk runs, so later modules and skip connections see the sum (a
  down block's last residual is the block's output, and it is replaced too);
- **stop early for a subset**: ``trunk(..., taps=[...])`` captures only those taps and stops
  after the last unit they need, which is what a second pass through a longer trunk needs
  (``DiffusionBackbone.forward_two_pass``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .attention import AttentionLogits, AttentionProbs, install_processor
from .taps import Tap

__all__ = ["Trunk", "first_tensor"]


def first_tensor(value):
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
        self.trunk._store[self.name] = value  # the family picks the feature (Trunk.forward)


class _InjectHook:
    """Forward hook adding ``delta`` to a module's output (and to a block's last residual)."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta

    def __call__(self, module, args, output):
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], tuple):
            hidden, residuals = output  # a down block: (hidden, residuals ending with hidden)
            new = hidden + self.delta
            if residuals and residuals[-1] is hidden:
                residuals = residuals[:-1] + (new,)
            return new, residuals
        if isinstance(output, tuple):
            return (output[0] + self.delta,) + tuple(output[1:])
        return output + self.delta


class Trunk(nn.Module):
    """Runs a pruned diffusers network and returns ``{tap name: activation}``.

    The trunk drives the network but does not own it: the backbone registers the network, so its
    parameters appear once, under ``backbone.<component>.``.

    Args:
        network: The diffusers network already pruned with ``family.prune(network, plan)``.
        family: The backbone family (``diffperception.backbones.get_family(name)``).
        taps: Resolved taps (all inside the kept modules).
        plan: The cut plan ``network`` was pruned with.
    """

    def __init__(self, network: nn.Module, family: type, taps: Sequence[Tap], plan: Any) -> None:
        super().__init__()
        object.__setattr__(self, "network", network)  # owned by the backbone, not the trunk
        self.family = family
        self.taps = list(taps)
        self.plan = plan
        # Set by specialisation: the number of timesteps baked into the time projections.
        self.frozen_timesteps: int | None = None
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._sub_plans: dict[tuple[str, ...], Any] = {}
        self.attach_taps()

    def detach_taps(self) -> None:
        """Removes the capture hooks (e.g. before copying the network)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def attach_taps(self) -> None:
        """(Re-)registers the capture hooks on the current modules."""
        self.detach_taps()
        modules = dict(self.network.named_modules())
        for tap in self.taps:
            module = modules[tap.path]
            if tap.kind in ("attn", "logits"):
                name, cls = (("probs_tap", AttentionProbs) if tap.kind == "attn"
                             else ("logits_tap", AttentionLogits))
                if not isinstance(getattr(module, name, None), cls):
                    setattr(module, name, cls())
                install_processor(module)
                module = getattr(module, name)
            elif tap.kind not in ("out", "in"):
                module = self.family.tap_point(module, tap.kind)
            hook = _CaptureHook(self, tap.name, pre=tap.kind == "in")
            if tap.kind == "in":
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(hook))

    def embed(self, sample: torch.Tensor, timesteps: torch.Tensor | None,
              context: torch.Tensor | None, added: dict | None) -> torch.Tensor:
        """The time (and added-condition) embedding the blocks take, ``(N, D)``."""
        if self.frozen_timesteps is not None:
            # The time projections are constants; they only read the batch size.
            return sample.new_zeros(sample.shape[0], 1)
        return self.family.embed(self.network, sample, timesteps, context, added)

    def _taps_and_plan(self, names: Sequence[str] | None) -> tuple[list[Tap], Any]:
        if names is None:
            return self.taps, self.plan
        by_name = {tap.name: tap for tap in self.taps}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"Taps {unknown} are not among this trunk's taps "
                             f"{list(by_name)}; build the backbone with them.")
        key = tuple(names)
        if key not in self._sub_plans:
            pairs = [(by_name[n].path, by_name[n].kind) for n in names]
            self._sub_plans[key] = self.family.plan_cut(self.network, pairs)
        return [by_name[n] for n in names], self._sub_plans[key]

    def _injection_handles(self, injections: dict[str, torch.Tensor] | None) -> list:
        if not injections:
            return []
        modules = dict(self.network.named_modules())
        handles = []
        for path, delta in injections.items():
            if path not in modules or not path:
                raise ValueError(f"Cannot inject at {path!r}: the trunk has no such module (it "
                                 "may lie after the cut); inject at a module the taps reach.")
            # prepended: a tap on the same module sees the sum, like every later module
            handles.append(modules[path].register_forward_hook(_InjectHook(delta), prepend=True))
        return handles

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor | None,
                context: torch.Tensor | None = None, added: dict[str, torch.Tensor] | None = None,
                *, taps: Sequence[str] | None = None,
                injections: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Runs the kept part of the network.

        Args:
            sample: Noisy latent ``(N, C, h, w)``.
            timesteps: ``(N,)`` integer timesteps (None once the time is frozen).
            context: Text context ``(N or 1, L, D)`` for text-conditioned networks.
            added: Added conditions (SDXL ``text_embeds``, ``time_ids``).
            taps: Capture only these taps and stop after the last unit they need.
            injections: ``{module path: tensor}`` added to those modules' outputs; each tensor
                broadcasts against the output (``(N, C, h, w)`` for a block).

        Returns:
            ``{tap name: tensor}`` in the order of the taps.

        Raises:
            ValueError: A tap not built into the trunk, or an injection at a missing module.
        """
        wanted, plan = self._taps_and_plan(taps)
        handles = self._injection_handles(injections)
        self._store.clear()
        try:
            emb = self.embed(sample, timesteps, context, added)
            context = self.family.prepare_context(self.network, context, added)
            self.family.run(self.network, plan, sample, emb, context)
            n = sample.shape[0]
            # K / V of a batch-1 text context are computed once; report them per sample.
            return {tap.name: _per_sample(self.family.tap_value(
                self.network, tap.path, tap.kind, self._store[tap.name], sample), n)
                for tap in wanted}
        finally:
            for handle in handles:
                handle.remove()
            self._store.clear()  # keep no activation (or autograd graph) alive between calls
