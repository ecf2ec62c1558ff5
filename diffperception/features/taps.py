"""Tap names: parsing, aliases, validation and listing.

A tap is ``<module path>[:<what>]`` where the module path is a dotted path inside the diffusers
U-Net (``up_blocks.1``, ``mid_block``, ``up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``)
and ``what`` is ``out`` (the module's output, default), ``in`` (its first input), ``attn`` (the
attention probabilities of an ``Attention`` module, shape ``(B, heads, queries, keys)``) or
``logits`` (its pre-softmax scores ``q k^T * scale``, the same shape), or, on a transformer block
of the ``dit`` family, ``adaln`` (the block output normalised with the block's own AdaLN
modulation, massive-activation channels dropped; ``backbones/dit.py``).
Aliases are the family's (``up_ft.N``, DIFT's name for ``up_blocks.N``, and ``adm.B`` for a
U-Net; see ``backbones/unet.py``). ``FeatureInfo`` describes what each tap returns.

For modules whose output is a tuple (down blocks return ``(hidden, residuals)``, transformer
models return ``(sample,)``), the tap is the first element.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["Tap", "FeatureInfo", "parse_tap", "resolve_taps", "list_taps", "tap_value_problem",
           "TAP_KINDS", "LAYOUTS"]

TAP_KINDS = ("out", "in", "attn", "logits", "adaln")
LAYOUTS = ("map", "tokens", "attention")


@dataclass(frozen=True)
class Tap:
    """A resolved tap.

    Attributes:
        name: The name the user gave (the key of the output dict).
        path: Module path inside the U-Net.
        kind: ``"out"``, ``"in"``, ``"attn"`` or ``"logits"``.
    """

    name: str
    path: str
    kind: str


def parse_tap(name: str) -> tuple[str, str]:
    """Splits ``"path:kind"`` into ``(path, kind)`` without resolving aliases."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"A tap name must be a non-empty string, got {name!r}.")
    path, _, kind = name.partition(":")
    kind = kind or "out"
    if kind not in TAP_KINDS:
        raise ValueError(
            f"Tap {name!r} has an unknown suffix ':{kind}'; use one of "
            f"{[':' + k for k in TAP_KINDS]} (':out' is the default)."
        )
    return path, kind


def _is_attention(module: nn.Module) -> bool:
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return isinstance(module, (Attention, AttentionModuleMixin))


@dataclass(frozen=True)
class FeatureInfo:
    """What one tap returns, known on the meta device before any weight is read.

    Attributes:
        name: The tap name (the key of the backbone's output dict).
        module: Module path inside the diffusers network.
        kind: ``"out"``, ``"in"``, ``"attn"`` or ``"logits"``.
        layout: ``"map"`` (``(B, C, h, w)``), ``"tokens"`` (``(B, N, C)``) or ``"attention"``
            (``(B, heads, queries, keys)``).
        channels: ``C`` of a map or tokens; ``heads`` of attention probabilities.
        stride: Input-image pixels per feature-map cell (``H / h``); for tokens and attention,
            pixels per query token side; None when the output has no spatial grid.
        num_timesteps: ``T``: with several timesteps the output gains a dimension after the
            batch (``(B, T, ...)``).
    """

    name: str
    module: str
    kind: str
    layout: str
    channels: int
    stride: int | None
    num_timesteps: int = 1


def resolve_taps(names: list[str], network: nn.Module,
                 resolve_alias: Callable[[str, nn.Module], str] | None = None) -> list[Tap]:
    """Resolves user tap names against a (full) diffusers network.

    Args:
        names: Tap names (``path[:kind]`` or an alias).
        network: The unpruned network (a meta-device copy is enough).
        resolve_alias: The family's alias resolver (``family.resolve_alias``); default: the
            family that runs ``type(network)``, or none.

    Raises:
        ValueError: Unknown module path (with the closest valid names), a container module,
            ``:attn`` / ``:logits`` on a module that is not an ``Attention``.
    """
    if resolve_alias is None:
        from ..backbones import get_family, network_classes

        family = network_classes().get(type(network).__name__)
        resolve_alias = get_family(family).resolve_alias if family else None
    modules = dict(network.named_modules())
    taps = []
    for name in names:
        path, kind = parse_tap(name)
        if resolve_alias is not None:
            path = resolve_alias(path, network)
            if ":" in path:  # an alias naming a kind too (GDF's "...-self-map" ids -> ":attn")
                path, alias_kind = path.split(":", 1)
                kind = alias_kind if kind == "out" else kind
        if path not in modules or path == "":
            close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.6)
            hint = f" Closest valid names: {close}." if close else ""
            raise ValueError(
                f"Unknown tap {name!r}: this network has no module {path!r}.{hint} "
                "Call diffperception.list_taps(model) for every valid name."
            )
        if _is_container(modules[path]):
            children = [f"{path}.{c}" for c, _ in modules[path].named_children()][:4]
            raise ValueError(
                f"Tap {name!r}: {path!r} is a {type(modules[path]).__name__}, a container that is "
                f"never called itself; tap one of its elements, e.g. {children}."
            )
        if kind in ("attn", "logits") and not _is_attention(modules[path]):
            raise ValueError(
                f"Tap {name!r}: ':{kind}' needs an Attention module (e.g. '...attn1' or "
                f"'...attn2'), but {path!r} is a {type(modules[path]).__name__}."
            )
        taps.append(Tap(name=name, path=path, kind=kind))
    return taps


def _is_adaln_block(module: nn.Module) -> bool:
    """A transformer block modulated by AdaLN (PixArt, SD3 / SD3.5, FLUX): ``:adaln`` applies."""
    norm = getattr(module, "norm1", None) or getattr(module, "norm", None)
    return (type(norm).__name__.startswith(("AdaLayerNormZero", "SD35AdaLayerNormZero"))
            or getattr(module, "norm_type", None) == "ada_norm_single")


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.ModuleDict))


def tap_value_problem(value: object, batch: int) -> str | None:
    """Why a captured value is not a per-sample activation (None when it is one).

    A tap must give a floating tensor with one row per trunk sample (``batch``), or one row for
    all of them (K / V of a batch-1 text context).
    """
    import torch

    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return f"gives a {type(value).__name__}, not a tensor with one row per sample"
    if not value.is_floating_point():
        return f"gives {value.dtype} values (such as the timesteps), not an activation"
    if value.shape[0] not in (batch, 1):
        return (f"gives {value.shape[0]} rows for {batch} samples (shape {tuple(value.shape)}), "
                "not one row per sample")
    return None


def list_taps(network: nn.Module, *, include_kinds: bool = False,
              probe: Callable[[nn.Module], int] | None = None) -> list[str]:
    """Every valid tap of a network, in module order.

    Containers (``ModuleList``, ``ModuleDict``) are never called and are not listed. With
    ``probe`` (a callable that runs the network once, on meta tensors, and returns the number of
    samples it ran), only modules that run and give one row per sample are listed, and ``:in``
    only where the input is such an activation.

    Args:
        network: A diffusers network (use ``diffperception.list_taps`` for repo ids and folders).
        include_kinds: Also list the ``:in`` variants, the ``:attn`` / ``:logits`` taps and the
            ``:adaln`` taps of AdaLN-modulated transformer blocks.
        probe: Runs ``network`` once (see above).
    """
    modules = [(p, m) for p, m in network.named_modules() if p and not _is_container(m)]
    valid = _probe(modules, probe, network) if probe is not None else None
    names = []
    for path, module in modules:
        for kind in ("out", "in", "attn", "logits", "adaln"):
            if kind != "out" and not include_kinds:
                break
            if kind in ("attn", "logits") and not _is_attention(module):
                continue
            if kind == "adaln" and not _is_adaln_block(module):
                continue
            key = "out" if kind in ("attn", "logits", "adaln") else kind
            if valid is None or (path, key) in valid:
                names.append(path if kind == "out" else f"{path}:{kind}")
    return names


def _probe(modules: list[tuple[str, nn.Module]], probe: Callable[[nn.Module], int],
           network: nn.Module) -> set[tuple[str, str]]:
    """``{(path, "out" | "in")}`` whose values pass ``tap_value_problem`` in one probe run."""
    seen: dict[tuple[str, str], object] = {}
    handles = []
    for path, module in modules:
        def post(mod, args, out, _p=path):
            if isinstance(out, (tuple, list)):  # the first tensor ((None, image) in SD3's last block)
                out = next((o for o in out if o is not None), None)
            seen[(_p, "out")] = out
        def pre(mod, args, kwargs, _p=path):
            seen[(_p, "in")] = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        handles += [module.register_forward_hook(post),
                    module.register_forward_pre_hook(pre, with_kwargs=True)]
    try:
        batch = probe(network)
    finally:
        for handle in handles:
            handle.remove()
    return {key for key, value in seen.items() if tap_value_problem(value, batch) is None}
