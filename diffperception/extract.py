"""``diffperception extract`` and ``diffperception taps``.

Example:
    diffperception taps stabilityai/stable-diffusion-2-1 --filter up_blocks.1
    diffperception extract stabilityai/stable-diffusion-2-1 images/*.png --tap up_ft.1 \
        --timestep 261 --size 768x768 --out feats.safetensors

``extract`` reads images with the deployment kit's bounded reader (:mod:`diffperception.deploy.input_files`):
every image is checked (header size against ``--max-image-pixels``, then decoded once) before the
model is loaded, so a missing, damaged or oversized file is an error naming it (exit status 2)
that costs seconds, not a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .deploy.input_files import InputLimits, add_limit_arguments, image_size, limits_from_arguments, load_image
from .export.options import parse_size

__all__ = ["add_arguments", "run", "add_taps_arguments", "run_taps", "check_images", "parse_size"]


def add_taps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub repo id or local diffusers folder")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--filter", default=None, help="only names containing this text")
    parser.add_argument("--kinds", action="store_true", help="also list :in and :attn taps")


def run_taps(args: argparse.Namespace) -> int:
    from .api import list_taps

    for name in list_taps(args.model, include_kinds=args.kinds, revision=args.revision):
        if args.filter is None or args.filter in name:
            print(name)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub repo id or local diffusers folder")
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--tap", action="append", required=True, dest="taps",
                        help="tap name (repeatable); see `diffperception taps MODEL`")
    parser.add_argument("--timestep", action="append", type=int, dest="timesteps")
    parser.add_argument("--noise", default="fixed", choices=["fixed", "random", "none", "ddim_inversion"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensemble", type=int, default=1)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--size", default=None, help="resize images to HxW (e.g. 512x512)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--out", required=True, help="output .safetensors file")
    add_limit_arguments(parser, arrays=False)


def check_images(paths: list[Path], limits: InputLimits) -> None:
    """Check that every image exists, is within ``limits`` and decodes, one image in memory at a time.

    Raises:
        FileNotFoundError: Some files do not exist (all are named).
        ValueError: An image is not an image, too large, or corrupt / truncated (it is named).
    """
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Image file(s) not found: {missing}")
    for path in paths:  # headers first: an oversized or foreign file fails before any decoding
        image_size(path, limits=limits)
    for path in paths:
        load_image(path, limits=limits).close()


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    size = parse_size(args.size) if args.size is not None else None
    limits = limits_from_arguments(args)
    paths = [Path(p) for p in args.images]
    check_images(paths, limits)  # before torch and the model load

    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .modeling import DiffusionPerceptionForFeatureExtraction

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        args.model, taps=args.taps, timesteps=args.timesteps or [261], noise=args.noise,
        seed=args.seed, ensemble=args.ensemble, prompt=args.prompt, size=size,
        revision=args.revision)
    chunks: dict[str, list[torch.Tensor]] = {t: [] for t in args.taps}
    for start in tqdm(range(0, len(paths), args.batch_size), desc="extracting", unit="batch"):
        batch = [load_image(p, limits=limits) for p in paths[start: start + args.batch_size]]
        with torch.no_grad():
            feats = model(batch)
        for name, value in feats.items():
            chunks[name].append(value.float().cpu())
    tensors = {name: torch.cat(values).contiguous() for name, values in chunks.items()}
    metadata = {"images": "\n".join(str(p) for p in paths), "model": str(args.model)}
    save_file(tensors, args.out, metadata=metadata)
    for name, value in tensors.items():
        print(f"{name}: {tuple(value.shape)}")
    print(f"wrote {args.out}")
    return 0
