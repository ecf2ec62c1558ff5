"""``diffperception convert-adm``: a guided-diffusion (ADM) checkpoint -> a diffusers folder.

Example:
    diffperception convert-adm 256x256_diffusion_uncond.pt adm256/
    diffperception convert-adm 64x64_model.pt adm64/ --image-size 64 --num-channels 192 \
        --num-res-blocks 3 --attention-resolutions 32,16,8 --no-learn-sigma

The flags are guided-diffusion's model flags (its ``MODEL_FLAGS``); the defaults are those of the
256x256 unconditional checkpoint. The checkpoint, a pickle, is read with
``torch.load(weights_only=True)``; the folder written holds safetensors only.
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         "integers, e.g. 32,16,8") from err


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, "
                                         "e.g. 1,1,2,2,4,4") from err
    return tuple(int(v) if v.is_integer() else v for v in values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the checkpoint, the output folder and guided-diffusion's layout flags."""
    parser.add_argument("checkpoint", help="guided-diffusion .pt file (a UNetModel state dict)")
    parser.add_argument("out_dir", help="folder to write the diffusers pipeline into")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-channels", type=int, default=256)
    parser.add_argument("--channel-mult", type=_float_list, default=None,
                        help="e.g. 1,1,2,2,4,4 (default: guided-diffusion's for --image-size)")
    parser.add_argument("--num-res-blocks", type=int, default=2)
    parser.add_argument("--attention-resolutions", type=_int_list, default=(32, 16, 8),
                        help="feature-map sides with attention, e.g. 32,16,8")
    parser.add_argument("--num-head-channels", type=int, default=64)
    bool_flag = argparse.BooleanOptionalAction
    parser.add_argument("--learn-sigma", action=bool_flag, default=True)
    parser.add_argument("--resblock-updown", action=bool_flag, default=True)
    parser.add_argument("--use-scale-shift-norm", action=bool_flag, default=True)
    parser.add_argument("--use-new-attention-order", action=bool_flag, default=False)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")


def run(args: argparse.Namespace) -> int:
    """Converts and prints where the folder is and how to load it."""
    from .backbones.adm_conversion import convert_adm

    out = convert_adm(
        args.checkpoint, args.out_dir, image_size=args.image_size, num_channels=args.num_channels,
        channel_mult=args.channel_mult, num_res_blocks=args.num_res_blocks,
        attention_resolutions=args.attention_resolutions,
        num_head_channels=args.num_head_channels, learn_sigma=args.learn_sigma,
        resblock_updown=args.resblock_updown, use_scale_shift_norm=args.use_scale_shift_norm,
        use_new_attention_order=args.use_new_attention_order, overwrite=args.overwrite)
    print(f"wrote {out} (diffusers DDPMPipeline: unet/ in safetensors, scheduler/); load it with "
          f"DiffusionBackbone.from_diffusers({str(out)!r}, taps=['adm.24'], timesteps=[150])")
    return 0
