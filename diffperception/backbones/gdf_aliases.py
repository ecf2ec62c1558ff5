"""The activation ids of generic-diffusion-feature (seed 003, GDF) as tap aliases.

GDF names every activation it can capture with an id such as
``up-level1-repeat1-vit-block0-cross-q`` and selects them with JSON files ``{id: true, ...}``.
Each id is one diffusers module output (METHODS.md §4.1), so an id resolves to a tap of this
project; a user can bring GDF's configuration files unchanged (``taps_from_gdf_config``).

=====================================================  ===========================================
GDF id (U-Net)                                          tap
=====================================================  ===========================================
``{down,up}-level{L}-repeat{R}-res-out``                ``{down,up}_blocks.L.resnets.R``
``{down,up}-level{L}-repeat{R}-res-increment``          ``{down,up}_blocks.L.resnets.R.conv2``
``{down,up}-level{L}-repeat{R}-vit-out``                ``{down,up}_blocks.L.attentions.R``
``...-repeat{R}-vit-block{i}-out``                      ``...attentions.R.transformer_blocks.i``
``...-vit-block{i}-self-{q,k,v}``                       ``...transformer_blocks.i.attn1.to_{q,k,v}``
``...-vit-block{i}-cross-q``                            ``...transformer_blocks.i.attn2.to_q``
``...-vit-block{i}-ffn-inner``                          ``...transformer_blocks.i.ff.net.0``
``...-vit-block{i}-{self,cross}-map``                   ``...attn{1,2}:attn`` (probabilities)
``down-level{L}-downsampler-out``                       ``down_blocks.L.downsamplers.0``
``up-level{L}-upsampler-out``                           ``up_blocks.L.upsamplers.0``
``mid-repeat{R}-res-{out,increment}``                   ``mid_block.resnets.R[.conv2]``
``mid-vit-out``, ``mid-vit-block{i}-...``               ``mid_block.attentions.0[...]``
``unet-in``, ``unet-after-conv-in``, ``unet-out``       ``conv_in:in``, ``conv_in``, ``conv_out``
``vit-block{i}-...`` (PixArt / DiT)                     ``transformer_blocks.i...``
=====================================================  ===========================================

GDF's cross-attention key / value ids are text-only (the same for every image) and GDF drops
them; so does this table.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["gdf_id_to_tap", "is_gdf_id", "taps_from_gdf_config"]

_LEVEL = re.compile(r"^(down|up)-level(\d+)-(.+)$")
_REPEAT = re.compile(r"^repeat(\d+)-(.+)$")
_BLOCK = re.compile(r"^vit-block(\d+)-(.+)$")
_IN_BLOCK = {"out": "", "self-q": ".attn1.to_q", "self-k": ".attn1.to_k", "self-v": ".attn1.to_v",
             "cross-q": ".attn2.to_q", "ffn-inner": ".ff.net.0", "self-map": ".attn1:attn",
             "cross-map": ".attn2:attn"}
_WHOLE = {"unet-in": "conv_in:in", "unet-after-conv-in": "conv_in", "unet-out": "conv_out"}


def _inside_block(rest: str) -> str | None:
    """``vit-block{i}-<what>`` -> ``transformer_blocks.i<suffix>``."""
    match = _BLOCK.match(rest)
    if not match or match.group(2) not in _IN_BLOCK:
        return None
    return f"transformer_blocks.{match.group(1)}{_IN_BLOCK[match.group(2)]}"


def _unit(prefix: str, rest: str, attentions: bool = True) -> str | None:
    """The part after ``{down,up}-level{L}-`` or ``mid-``: resnet, attention or its blocks
    (the middle block's one attention has no ``repeat``: ``attentions=False``)."""
    repeat = _REPEAT.match(rest)
    if repeat:
        index, what = repeat.groups()
        if what == "res-out":
            return f"{prefix}.resnets.{index}"
        if what == "res-increment":
            return f"{prefix}.resnets.{index}.conv2"
        if not attentions:
            return None
        if what == "vit-out":
            return f"{prefix}.attentions.{index}"
        inner = _inside_block(what)
        return f"{prefix}.attentions.{index}.{inner}" if inner else None
    return None


def gdf_id_to_tap(gdf_id: str) -> str | None:
    """The tap (``path`` or ``path:kind``) a GDF activation id names, or None if it is none.

    Args:
        gdf_id: A GDF id (``"up-level1-repeat1-vit-block0-cross-q"``).

    Returns:
        ``"up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q"`` for the example; ids whose
        module does not exist in a given network are reported by tap resolution, not here.

    Example:
        >>> gdf_id_to_tap("up-level0-upsampler-out")
        'up_blocks.0.upsamplers.0'
    """
    if gdf_id in _WHOLE:
        return _WHOLE[gdf_id]
    level = _LEVEL.match(gdf_id)
    if level:
        stage, index, rest = level.groups()
        prefix = f"{stage}_blocks.{index}"
        sampler = {"down": "downsampler-out", "up": "upsampler-out"}[stage]
        if rest == sampler:
            return f"{prefix}.{sampler[:-4]}s.0"
        return _unit(prefix, rest)
    if gdf_id.startswith("mid-"):
        rest = gdf_id[len("mid-"):]
        if rest == "vit-out":
            return "mid_block.attentions.0"
        if rest.startswith("vit-block"):
            inner = _inside_block(rest)
            return f"mid_block.attentions.0.{inner}" if inner else None
        return _unit("mid_block", rest, attentions=False)
    if gdf_id.startswith("vit-block"):  # transformer backbones (PixArt, Hunyuan-DiT)
        return _inside_block(gdf_id)
    return None


def is_gdf_id(name: str) -> bool:
    """Whether ``name`` is a GDF activation id (resolvable by ``gdf_id_to_tap``)."""
    return gdf_id_to_tap(name) is not None


def taps_from_gdf_config(config: str | os.PathLike | dict) -> list[str]:
    """The selected ids of a GDF configuration (``{id: true|false}``), in file order.

    The ids themselves are valid tap names (they resolve as aliases), so the result can be passed
    as ``taps=`` unchanged.

    Args:
        config: A GDF ``config_*.json`` path or its dict.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Not a JSON object of booleans, or an id that names no activation.
    """
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass a GDF configuration file "
                                    "(feature/configs/config_*.json) or its dict.")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}.") from err
    if not isinstance(config, dict) or not all(isinstance(v, bool) for v in config.values()):
        raise ValueError("A GDF configuration is a JSON object {activation id: true|false}, got "
                         f"{config!r:.200}.")
    bad = [k for k in config if not is_gdf_id(k)]
    if bad:
        raise ValueError(f"{bad} are not GDF activation ids (e.g. "
                         "'up-level1-repeat1-vit-block0-cross-q'); see "
                         "diffperception.backbones.gdf_aliases.")
    return [k for k, selected in config.items() if selected]
