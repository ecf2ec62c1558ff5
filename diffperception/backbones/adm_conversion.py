"""Converting a guided-diffusion (ADM) checkpoint into a diffusers ``UNet2DModel`` folder.

guided-diffusion's ``UNetModel`` (Dhariwal & Nichol, "Diffusion Models Beat GANs") and diffusers'
``UNet2DModel`` compute the same network once the latter is configured as in ``METHODS.md`` §0.3:
resnet-sampling blocks, scale-shift time conditioning, 32-group norms (the mid-block attention
included) and 64-channel heads. This module writes that config, maps every checkpoint tensor onto
it and writes a diffusers pipeline folder (``unet/`` in safetensors, ``scheduler/``,
``model_index.json`` of a ``DDPMPipeline``) that ``DiffusionBackbone.from_diffusers`` loads.

The mapping walks guided-diffusion's blocks in their order (``input_blocks``, ``middle_block``,
``output_blocks``: the ``adm.B`` numbering of ``diffperception.backbones.unet.adm_block_paths``) and
is strict: every checkpoint tensor is used exactly once, every diffusers tensor is filled, and
every shape is checked, so a checkpoint trained with other flags is an error naming the tensors
that do not fit. Attention ``qkv`` projections are split in the layout the checkpoint was trained
with: the legacy order (heads outermost, then q|k|v; guided-diffusion's default and the released ADM
checkpoints) or the new one (``use_new_attention_order``).

This is the package's only reader of a pickle file (``torch.load(..., weights_only=True)``, which
refuses anything but tensors and plain containers), and it runs only when the user calls
:func:`convert_adm` (``diffperception convert-adm``); nothing reads a checkpoint at import time.

Example:
    >>> from diffperception.backbones.adm_conversion import convert_adm
    >>> convert_adm("256x256_diffusion_uncond.pt", "adm256/")
    >>> backbone = DiffusionBackbone.from_diffusers("adm256/", taps=["adm.24"], timesteps=[150])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ADMFlags",
    "DEFAULT_CHANNEL_MULT",
    "adm_unet_config",
    "adm_scheduler_config",
    "adm_module_pairs",
    "convert_adm_state_dict",
    "load_adm_checkpoint",
    "convert_adm",
]

#: guided-diffusion's ``channel_mult`` for each ``image_size`` when the flag is left empty.
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
_GROUPS = 32  # guided-diffusion's GroupNorm32
# guided-diffusion ResBlock parameter holders -> diffusers ResnetBlock2D attributes
_RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2",
                 "skip_connection": "conv_shortcut"}


@dataclass(frozen=True)
class ADMFlags:
    """The guided-diffusion model flags that decide the checkpoint's layout.

    Defaults are those of ``256x256_diffusion_uncond.pt`` (``METHODS.md`` §0.2). Names and meanings
    are guided-diffusion's ``create_model`` arguments.

    Attributes:
        image_size: Training resolution; picks the default ``channel_mult`` and turns
            ``attention_resolutions`` into levels.
        num_channels: Base width (``model_channels``).
        channel_mult: Width multiplier per level; None takes guided-diffusion's default for
            ``image_size``.
        num_res_blocks: Residual blocks per level on the way down (one more on the way up).
        attention_resolutions: Feature-map sides (in pixels at ``image_size``) with attention.
        num_head_channels: Channels per attention head.
        learn_sigma: The network also predicts the variance (6 output channels instead of 3).
        resblock_updown: Down / up sampling by residual blocks (else by strided / nearest convs).
        use_scale_shift_norm: Time conditioning as ``norm(h) * (1 + scale) + shift``.
        use_new_attention_order: ``qkv`` laid out q|k|v outermost (else heads outermost, legacy).
    """

    image_size: int = 256
    num_channels: int = 256
    channel_mult: tuple[float, ...] | None = None
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    learn_sigma: bool = True
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    use_new_attention_order: bool = False

    def multipliers(self) -> tuple[float, ...]:
        """``channel_mult``, or guided-diffusion's default for ``image_size``.

        Raises:
            ValueError: No default exists for this ``image_size``.
        """
        if self.channel_mult is not None:
            return tuple(self.channel_mult)
        if self.image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"image_size = {self.image_size} has no default channel_mult; pass "
                             f"channel_mult (defaults exist for {sorted(DEFAULT_CHANNEL_MULT)}).")
        return DEFAULT_CHANNEL_MULT[self.image_size]

    def widths(self) -> tuple[int, ...]:
        """Channels of each level."""
        return tuple(int(m * self.num_channels) for m in self.multipliers())

    def attention_levels(self) -> tuple[bool, ...]:
        """Whether each level has attention (guided-diffusion: downsampling rate in the set)."""
        rates = {self.image_size // r for r in self.attention_resolutions}
        return tuple(2 ** level in rates for level in range(len(self.multipliers())))

    def validate(self) -> None:
        """Checks the flags describe a network ``UNet2DModel`` can express.

        Raises:
            ValueError: Naming the flag, its value and what is allowed.
        """
        for name in ("image_size", "num_channels", "num_res_blocks", "num_head_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                hint = (" (checkpoints with num_head_channels=-1 use a fixed head count, so the "
                        "head width changes per level, which UNet2DModel cannot express)"
                        if name == "num_head_channels" else "")
                raise ValueError(f"{name} = {value!r} is invalid: a positive integer{hint}.")
        mult = self.multipliers()
        if not mult or mult[0] != 1:
            raise ValueError(f"channel_mult = {mult} is not supported: the first multiplier must "
                             "be 1 (UNet2DModel sizes the time projection by the first level's "
                             "width, guided-diffusion by num_channels).")
        rates = [2 ** level for level in range(len(mult))]
        for res in self.attention_resolutions:
            if isinstance(res, bool) or not isinstance(res, int) or res < 1 or (
                    self.image_size % res or self.image_size // res not in rates):
                sides = [self.image_size // r for r in rates]
                raise ValueError(f"attention_resolutions contains {res!r}, which is no feature-map "
                                 f"side of this network (image_size {self.image_size}: {sides}).")
        attention = self.attention_levels()
        for level, (m, width) in enumerate(zip(mult, self.widths())):
            if m * self.num_channels != width or width % _GROUPS:
                raise ValueError(f"channel_mult[{level}] = {m} gives {m * self.num_channels} "
                                 f"channels; each level needs a whole multiple of {_GROUPS} "
                                 "(32-group norms).")
            if attention[level] and width % self.num_head_channels:
                raise ValueError(f"num_head_channels = {self.num_head_channels} does not divide "
                                 f"the {width} channels of attention level {level}.")


def adm_unet_config(flags: ADMFlags | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` config computing the same network as guided-diffusion's.

    For the default flags this is ``METHODS.md`` §0.3 item 1. ``attn_norm_num_groups=32`` is set
    because diffusers drops the mid-block attention's GroupNorm for ``scale_shift`` resnets unless
    told otherwise, while guided-diffusion has one (§0.3 item 2).

    Args:
        flags: The checkpoint's flags; None for ADM-256 unconditional.

    Returns:
        Keyword arguments of ``UNet2DModel``.

    Raises:
        ValueError: Flags outside what ``UNet2DModel`` can express.
    """
    flags = flags or ADMFlags()
    flags.validate()
    sampler = "resnet" if flags.resblock_updown else "conv"
    plain_down = "ResnetDownsampleBlock2D" if flags.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if flags.resblock_updown else "UpBlock2D"
    attention = flags.attention_levels()
    return dict(
        sample_size=flags.image_size, in_channels=3, out_channels=6 if flags.learn_sigma else 3,
        layers_per_block=flags.num_res_blocks, block_out_channels=flags.widths(),
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attention)),
        downsample_type=sampler, upsample_type=sampler, downsample_padding=1,
        attention_head_dim=flags.num_head_channels,
        resnet_time_scale_shift="scale_shift" if flags.use_scale_shift_norm else "default",
        attn_norm_num_groups=_GROUPS, norm_num_groups=_GROUPS, norm_eps=1e-5, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0, time_embedding_type="positional",
        time_embedding_dim=4 * flags.num_channels, num_class_embeds=None,
        center_input_sample=False)


def adm_scheduler_config(flags: ADMFlags | None = None) -> dict[str, Any]:
    """``DDPMScheduler`` arguments of guided-diffusion's linear schedule (§0.3 item 4).

    Timesteps are the integer training steps, unscaled (guided-diffusion's
    ``rescale_timesteps=False``). ``variance_type`` is ``learned_range`` for a ``learn_sigma``
    network (guided-diffusion's learned interpolation of the two log variances), so that a
    ``DDPMPipeline`` samples with the predicted variance; else ``fixed_large`` (its default).
    """
    flags = flags or ADMFlags()
    return dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                prediction_type="epsilon", clip_sample=True,
                variance_type="learned_range" if flags.learn_sigma else "fixed_large")


def adm_module_pairs(unet: nn.Module) -> list[tuple[str, str]]:
    """``(checkpoint prefix, diffusers module path)`` of every module, in guided-diffusion's order.

    Walks the diffusers U-Net's blocks and names the guided-diffusion layer each module is: an
    element of ``input_blocks`` per resnet(+attention) pair and per downsampler, the three layers of
    ``middle_block``, and an element of ``output_blocks`` per pair, the last pair of a level holding
    its upsampler as the element's last layer.
    """
    pairs = [("time_embed.0", "time_embedding.linear_1"),
             ("time_embed.2", "time_embedding.linear_2"), ("input_blocks.0.0", "conv_in")]
    n = 1
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            pairs.append((f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}"))
            if _has_attention(block, j):
                pairs.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}"))
            n += 1
        if getattr(block, "downsamplers", None):
            pairs.append(_sampler_pair(f"input_blocks.{n}.0", f"down_blocks.{i}.downsamplers.0",
                                       block.downsamplers[0], "op"))
            n += 1
    pairs += [("middle_block.0", "mid_block.resnets.0"),
              ("middle_block.1", "mid_block.attentions.0"),
              ("middle_block.2", "mid_block.resnets.1")]
    m = 0
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(block.resnets)):
            pairs.append((f"output_blocks.{m}.0", f"up_blocks.{i}.resnets.{j}"))
            layer = 1
            if _has_attention(block, j):
                pairs.append((f"output_blocks.{m}.1", f"up_blocks.{i}.attentions.{j}"))
                layer = 2
            if j == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                pairs.append(_sampler_pair(f"output_blocks.{m}.{layer}",
                                           f"up_blocks.{i}.upsamplers.0", block.upsamplers[0],
                                           "conv"))
            m += 1
    return pairs + [("out.0", "conv_norm_out"), ("out.2", "conv_out")]


def _has_attention(block: nn.Module, index: int) -> bool:
    attentions = getattr(block, "attentions", None)
    return attentions is not None and index < len(attentions)


def _sampler_pair(source: str, target: str, sampler: nn.Module, conv_name: str) -> tuple[str, str]:
    """A resnet sampler maps as a whole; a conv sampler's conv is guided-diffusion's op / conv."""
    from diffusers.models.resnet import ResnetBlock2D

    if isinstance(sampler, ResnetBlock2D):
        return source, target
    return f"{source}.{conv_name}", f"{target}.conv"


class _CheckpointReader:
    """Hands out checkpoint tensors, recording what is missing, mis-shaped or never used."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def take(self, key: str, shape: tuple[int, ...], target: str) -> torch.Tensor | None:
        """The tensor ``key`` if present and of ``shape`` (for diffusers' ``target``), else None."""
        if key in self.used:
            raise RuntimeError(f"Checkpoint tensor {key} was mapped twice (while filling "
                               f"{target}); this is a bug of the converter.")
        tensor = self.tensors.get(key)
        if tensor is None:
            self.missing.append(f"{key} (for {target})")
            return None
        self.used.add(key)
        if tuple(tensor.shape) != tuple(shape):
            self.misshaped.append(f"{key} has shape {tuple(tensor.shape)}, {target} needs "
                                  f"{tuple(shape)}")
            return None
        return tensor.to(torch.float32) if tensor.is_floating_point() else tensor

    def raise_problems(self, flags: ADMFlags) -> None:
        """Raises one error listing every missing, mis-shaped and unused checkpoint tensor.

        Raises:
            ValueError: Any tensor did not fit.
        """
        unused = sorted(set(self.tensors) - self.used)
        lines = []
        for title, items in (("missing from the checkpoint", self.missing),
                             ("of the wrong shape", self.misshaped),
                             ("in the checkpoint but no part of this network", unused)):
            if items:
                more = f"; ... ({len(items) - 8} more)" if len(items) > 8 else ""
                shown = "; ".join(items[:8]) + more
                lines.append(f"{len(items)} tensor(s) {title}: {shown}")
        if lines:
            hint = ("label_emb.* belongs to a class-conditional checkpoint, which is not "
                    "supported. " if any(k.startswith("label_emb") for k in unused) else "")
            raise ValueError(
                "The checkpoint does not match the guided-diffusion layout of these flags "
                f"({_describe(flags)}):\n  " + "\n  ".join(lines) + f"\n{hint}Pass the flags the "
                "checkpoint was trained with (its MODEL_FLAGS).")


def _describe(flags: ADMFlags) -> str:
    return ", ".join(f"{f.name}={getattr(flags, f.name)}" for f in dataclasses.fields(flags))


def _copy(reader: _CheckpointReader, source: str, target: str, module: nn.Module,
          out: dict[str, torch.Tensor], conv1d: bool = False) -> None:
    """Copies a module's own parameters; ``conv1d``: a 1x1 Conv1d weight becomes a Linear's."""
    for name, param in module.named_parameters(recurse=False):
        shape = tuple(param.shape) + ((1,) if conv1d and name == "weight" else ())
        tensor = reader.take(f"{source}.{name}", shape, f"{target}.{name}")
        if tensor is not None:
            out[f"{target}.{name}"] = tensor.reshape(param.shape)


def _split_qkv(reader: _CheckpointReader, source: str, target: str, attn: nn.Module,
               out: dict[str, torch.Tensor], new_order: bool) -> None:
    """Splits guided-diffusion's fused ``qkv`` (a 1x1 Conv1d, ``(3C, C, 1)``) into to_q/k/v.

    Legacy order: output channel ``(head, {q,k,v}, c)``, heads outermost; new order:
    ``({q,k,v}, head, c)``. diffusers reads channel ``head * head_dim + c`` of each projection.
    """
    channels, heads = attn.to_q.weight.shape[0], attn.heads
    layout = (3, heads, channels // heads) if new_order else (heads, 3, channels // heads)
    axis = 0 if new_order else 1  # where q | k | v is
    parts = [("weight", (3 * channels, attn.to_q.weight.shape[1], 1))]
    if attn.to_q.bias is not None:
        parts.append(("bias", (3 * channels,)))
    for name, shape in parts:
        tensor = reader.take(f"{source}.qkv.{name}", shape, f"{target}.to_q/k/v.{name}")
        if tensor is None:
            continue
        grouped = tensor.reshape(*layout, -1)  # (heads, 3, head_dim, C_in | 1) for legacy
        for index, proj in enumerate(("to_q", "to_k", "to_v")):
            part = grouped.select(axis, index).reshape(channels, -1)  # (C, C_in | 1)
            shape = getattr(attn, proj).get_parameter(name).shape
            out[f"{target}.{proj}.{name}"] = part.reshape(shape).clone()  # own storage each


def _convert_module(reader: _CheckpointReader, source: str, target: str, module: nn.Module,
                    out: dict[str, torch.Tensor], flags: ADMFlags) -> None:
    """Fills ``out`` with one diffusers module's tensors from its guided-diffusion layer."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    if isinstance(module, ResnetBlock2D):
        for src, dst in _RESNET_NAMES.items():
            sub = getattr(module, dst, None)
            if sub is not None:
                _copy(reader, f"{source}.{src}", f"{target}.{dst}", sub, out)
    elif isinstance(module, Attention):
        _copy(reader, f"{source}.norm", f"{target}.group_norm", module.group_norm, out)
        _split_qkv(reader, source, target, module, out, flags.use_new_attention_order)
        _copy(reader, f"{source}.proj_out", f"{target}.to_out.0", module.to_out[0], out,
              conv1d=True)
    else:  # conv_in / conv_out / norms / time-embedding linears / sampler convs
        _copy(reader, source, target, module, out)


def _meta_unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel

    with torch.device("meta"):
        return UNet2DModel(**config)


def convert_adm_state_dict(checkpoint: dict[str, torch.Tensor], flags: ADMFlags | None = None
                           ) -> dict[str, torch.Tensor]:
    """Maps a guided-diffusion state dict onto the ``UNet2DModel`` of :func:`adm_unet_config`.

    Args:
        checkpoint: guided-diffusion ``UNetModel`` tensors by name (meta tensors work too).
        flags: The flags the checkpoint was trained with; None for ADM-256 unconditional.

    Returns:
        Every ``UNet2DModel`` tensor by its diffusers name, float32.

    Raises:
        ValueError: Flags ``UNet2DModel`` cannot express, or checkpoint tensors missing, of the
            wrong shape or left over (all listed, by name).
    """
    flags = flags or ADMFlags()
    unet = _meta_unet(adm_unet_config(flags))
    reader = _CheckpointReader(checkpoint)
    out: dict[str, torch.Tensor] = {}
    for source, target in adm_module_pairs(unet):
        _convert_module(reader, source, target, unet.get_submodule(target), out, flags)
    reader.raise_problems(flags)
    unfilled = sorted(set(unet.state_dict()) - set(out))
    if unfilled:
        raise RuntimeError(f"The converter left {len(unfilled)} UNet2DModel tensor(s) unfilled, "
                           f"e.g. {unfilled[:5]}; this is a bug of the converter.")
    return out


def load_adm_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a guided-diffusion ``.pt`` checkpoint: a pickle, read with ``weights_only=True``.

    ``weights_only=True`` makes ``torch.load`` refuse any object other than tensors and plain
    containers, so no code from the file runs. This is the package's only pickle reader.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a state dict of tensors (or holds other objects).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the guided-diffusion checkpoint "
                                "(e.g. 256x256_diffusion_uncond.pt).")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path} could not be read as a PyTorch state dict with "
                         f"weights_only=True ({type(err).__name__}: {err}). It is truncated, not "
                         "a checkpoint, or holds objects other than tensors.") from err
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors by "
                         "name (guided-diffusion saves model.state_dict()).")
    return dict(state)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir = {str(out_dir)!r} is a file; pass a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"out_dir = {str(out_dir)!r} exists and is not empty; choose a new "
                         "folder or pass overwrite=True (--overwrite).")


def convert_adm(checkpoint_path: str | Path, out_dir: str | Path, *, image_size: int = 256,
                num_channels: int = 256, channel_mult: tuple[float, ...] | None = None,
                num_res_blocks: int = 2, attention_resolutions: tuple[int, ...] = (32, 16, 8),
                num_head_channels: int = 64, learn_sigma: bool = True,
                resblock_updown: bool = True, use_scale_shift_norm: bool = True,
                use_new_attention_order: bool = False, overwrite: bool = False) -> Path:
    """Converts a guided-diffusion checkpoint into a diffusers ``DDPMPipeline`` folder.

    Reads the checkpoint with ``torch.load(path, map_location="cpu", weights_only=True)`` (the
    package's only pickle reader; it runs only here, when called), maps every tensor strictly onto
    the ``UNet2DModel`` of :func:`adm_unet_config` and writes ``out_dir/unet`` (safetensors),
    ``out_dir/scheduler`` (:func:`adm_scheduler_config`), ``out_dir/model_index.json`` and
    ``out_dir/conversion.json`` (the source file's name and SHA-256 and the flags).

    The keyword arguments are guided-diffusion's model flags; the defaults are those of
    ``256x256_diffusion_uncond.pt``. Pass the checkpoint's own for any other.

    Args:
        checkpoint_path: The guided-diffusion ``.pt`` file (a ``UNetModel`` state dict).
        out_dir: Folder to write (created; must be empty unless ``overwrite``).
        image_size: guided-diffusion ``--image_size``.
        num_channels: ``--num_channels``.
        channel_mult: ``--channel_mult``; None takes the default for ``image_size``.
        num_res_blocks: ``--num_res_blocks``.
        attention_resolutions: ``--attention_resolutions`` (feature-map sides).
        num_head_channels: ``--num_head_channels``.
        learn_sigma: ``--learn_sigma``.
        resblock_updown: ``--resblock_updown``.
        use_scale_shift_norm: ``--use_scale_shift_norm``.
        use_new_attention_order: ``--use_new_attention_order``.
        overwrite: Write into a non-empty ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: No checkpoint file.
        ValueError: Unreadable checkpoint, unsupported flags, a non-empty ``out_dir``, or
            checkpoint tensors that do not fit the flags (named).

    Example:
        >>> convert_adm("256x256_diffusion_uncond.pt", "adm256/")
        >>> DiffusionBackbone.from_diffusers("adm256/", taps=["adm.24"], timesteps=[150])
    """
    mult = None if channel_mult is None else tuple(channel_mult)
    flags = ADMFlags(image_size, num_channels, mult, num_res_blocks, tuple(attention_resolutions),
                     num_head_channels, learn_sigma, resblock_updown, use_scale_shift_norm,
                     use_new_attention_order)
    flags.validate()
    out_dir, source = Path(out_dir).expanduser(), Path(checkpoint_path).expanduser()
    _check_out_dir(out_dir, overwrite)
    tensors = convert_adm_state_dict(load_adm_checkpoint(source), flags)
    _write_pipeline(tensors, flags, out_dir)
    used_flags = {**dataclasses.asdict(flags), "channel_mult": list(flags.multipliers())}
    record = {"source": source.name, "sha256": _sha256(source),
              "guided_diffusion_flags": used_flags}
    (out_dir / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def _write_pipeline(tensors: dict[str, torch.Tensor], flags: ADMFlags, out_dir: Path) -> None:
    """Saves the converted U-Net and the schedule as a ``DDPMPipeline`` folder."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = _meta_unet(adm_unet_config(flags))
    unet.load_state_dict(tensors, strict=True, assign=True)
    if any(t.is_meta for t in [*unet.parameters(), *unet.buffers()]):
        raise RuntimeError("The converted UNet2DModel still has tensors without values; this is a "
                           "bug of the converter.")
    scheduler = DDPMScheduler(**adm_scheduler_config(flags))
    pipeline = DDPMPipeline(unet=unet.eval(), scheduler=scheduler)
    pipeline.save_pretrained(str(out_dir), safe_serialization=True)
