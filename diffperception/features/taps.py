"""Tap names: parsing, aliases, validation and listing.

A tap is ``<module path>[:<what>]`` where the module path is a dotted path inside the diffusers
U-Net (``up_blocks.1``, ``mid_block``, ``up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``)
and ``what`` is ``out`` (the module's output, default), ``in`` (its first input) or ``attn``
(the attention probabilities of an ``Attention`` module, shape ``(B, heads, queries, keys)``).
Aliases: ``up_ft.N`` is DIFT's name for ``up_blocks.N``; ``adm.B`` numbers the blocks of a
text-free ADM-style U-Net 1..N in execution order (input blocks, middle block, output blocks, as
in the text-free diffusion features paper).

For modules whose output is a tuple (down blocks return ``(hidden, residuals)``, transformer
models return ``(sample,)``), the tap is the first element.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from torch import nn

__all__ = ["Tap", "parse_tap", "resolve_taps", "list_taps", "adm_block_paths", "TAP_KINDS"]

TAP_KINDS = ("out", "in", "attn")


@dataclass(frozen=True)
class Tap:
    """A resolved tap.

    Attributes:
        name: The name the user gave (the key of the output dict).
        path: Module path inside the U-Net.
        kind: ``"out"``, ``"in"`` or ``"attn"``.
    """

    name: str
    path: str
    kind: str


def adm_block_paths(unet: nn.Module) -> list[str]:
    """Module paths of the ADM block numbering (1-based): resnet/attention units in order.

    Input blocks are conv_in, then each (resnet[, attention]) pair and each downsampler of the
    down blocks; then the middle block; then each (resnet[, attention]) pair and upsampler of the
    up blocks. A pair is named by its last module (the attention when there is one).
    """
    paths = ["conv_in"]

    def block_units(prefix: str, block: nn.Module, sampler: str) -> None:
        resnets = getattr(block, "resnets", [])
        attentions = getattr(block, "attentions", None)
        for i in range(len(resnets)):
            has_attn = attentions is not None and i < len(attentions)
            paths.append(f"{prefix}.attentions.{i}" if has_attn else f"{prefix}.resnets.{i}")
        samplers = getattr(block, sampler, None)
        if samplers is not None:
            paths.extend(f"{prefix}.{sampler}.{j}" for j in range(len(samplers)))

    for i, block in enumerate(unet.down_blocks):
        block_units(f"down_blocks.{i}", block, "downsamplers")
    if getattr(unet, "mid_block", None) is not None:
        paths.append("mid_block")
    for i, block in enumerate(unet.up_blocks):
        block_units(f"up_blocks.{i}", block, "upsamplers")
    return paths


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


def _resolve_alias(path: str, unet: nn.Module) -> str:
    if path.startswith("up_ft."):
        return "up_blocks." + path[len("up_ft."):]
    if path.startswith("adm."):
        units = adm_block_paths(unet)
        num = path[len("adm."):]
        if not num.isdigit() or not 1 <= int(num) <= len(units):
            raise ValueError(
                f"Tap alias {path!r}: ADM blocks of this U-Net are numbered adm.1 .. "
                f"adm.{len(units)}."
            )
        return units[int(num) - 1]
    return path


def _is_attention(module: nn.Module) -> bool:
    from diffusers.models.attention_processor import Attention

    return isinstance(module, Attention)


def resolve_taps(names: list[str], unet: nn.Module) -> list[Tap]:
    """Resolves user tap names against a (full) U-Net.

    Raises:
        ValueError: Unknown module path (with the closest valid names), ``:attn`` on a module
            that is not an ``Attention``, or duplicate names.
    """
    modules = dict(unet.named_modules())
    taps = []
    for name in names:
        path, kind = parse_tap(name)
        path = _resolve_alias(path, unet)
        if path not in modules or path == "":
            close = difflib.get_close_matches(path, [p for p in modules if p], n=5, cutoff=0.6)
            hint = f" Closest valid names: {close}." if close else ""
            raise ValueError(
                f"Unknown tap {name!r}: this U-Net has no module {path!r}.{hint} "
                "Call diffperception.list_taps(model) for every valid name."
            )
        if kind == "attn" and not _is_attention(modules[path]):
            raise ValueError(
                f"Tap {name!r}: ':attn' needs an Attention module (e.g. '...attn1' or '...attn2'), "
                f"but {path!r} is a {type(modules[path]).__name__}."
            )
        taps.append(Tap(name=name, path=path, kind=kind))
    return taps


def list_taps(unet: nn.Module, *, include_kinds: bool = False) -> list[str]:
    """Every valid tap module path of a U-Net, in module order.

    Args:
        unet: A diffusers U-Net (use ``diffperception.list_taps`` for repo ids and folders).
        include_kinds: Also list the ``:in`` variants and the ``:attn`` taps.
    """
    names = []
    for path, module in unet.named_modules():
        if not path:
            continue
        names.append(path)
        if include_kinds:
            names.append(f"{path}:in")
            if _is_attention(module):
                names.append(f"{path}:attn")
    return names
