"""``diffperception extract`` and ``diffperception taps``.

Example:
    diffperception taps stabilityai/stable-diffusion-2-1 --filter up_blocks.1
    diffperception extract stabilityai/stable-diffusion-2-1 images/*.png --tap up_ft.1 \
        --timestep 261 --size 768x768 --out feats.safetensors
    # bulk: a folder or a dataset into resumable shards, over processes / GPUs / machines
    accelerate launch -m diffperception.cli extract stabilityai/stable-diffusion-2-1 photos/ \
        --tap up_ft.1 --timestep 261 --size 768x768 --out-dir feats/
    diffperception extract diffperception:default --data digits --split test --tap mid_block \
        --timestep 50 --out-dir digits-feats/

``--out FILE`` writes one ``.safetensors`` file (one tensor per tap, images in the order given).
``--out-dir DIR`` writes ``shard-*.safetensors`` files (``diffperception.training.extraction``):
images are keyed by path (or ``<split>/<index>``), a run after a kill computes only the images no
shard holds, and under ``accelerate launch`` each process computes its share; ``index.json``
maps every key to its shard and row.

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
    parser.add_argument("images", nargs="*",
                        help="image files (any format Pillow reads); with --out-dir also folders")
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
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("--out", help="output .safetensors file")
    output.add_argument("--out-dir", help="output folder of resumable shards (bulk extraction)")
    parser.add_argument("--data", default=None,
                        help="with --out-dir: 'digits', an image folder or a saved dataset")
    parser.add_argument("--split", default="train", help="the --data split")
    parser.add_argument("--shard-size", type=int, default=256, help="images per shard")
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


def _check_arguments(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {args.shard_size}.")
    if args.out is not None and (args.data is not None or not args.images):
        raise ValueError("--out writes one file from image files; give image files (no --data), "
                         "or use --out-dir for a folder or a dataset.")
    if args.out_dir is not None and bool(args.data) == bool(args.images):
        raise ValueError("--out-dir extracts image files / folders or --data SOURCE: give one "
                         "of the two.")


def _model(args: argparse.Namespace, size: tuple[int, int] | None):
    from .modeling import DiffusionPerceptionForFeatureExtraction

    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        args.model, taps=args.taps, timesteps=args.timesteps or [261], noise=args.noise,
        seed=args.seed, ensemble=args.ensemble, prompt=args.prompt, size=size,
        revision=args.revision)


def _run_sharded(args: argparse.Namespace, size: tuple[int, int] | None,
                 limits: InputLimits) -> int:
    from .training.extraction import dataset_items, extract_shards, file_items

    labels = None
    if args.data is not None:
        items, labels = dataset_items(args.data, args.split)
    else:
        items = file_items([Path(p) for p in args.images],
                           open_image=lambda p: load_image(p, limits=limits))
        for path in (Path(p) for p in args.images):
            if path.is_file():
                image_size(path, limits=limits)  # headers before the model load
    model = _model(args, size)
    index = extract_shards(model, items, args.out_dir, batch_size=args.batch_size,
                           shard_size=args.shard_size, labels=labels)
    if index:
        shards = len({shard for shard, _ in index.values()})
        print(f"{len(index)} images in {shards} shards under {args.out_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    size = parse_size(args.size) if args.size is not None else None
    limits = limits_from_arguments(args)
    if args.out_dir is not None:
        return _run_sharded(args, size, limits)
    paths = [Path(p) for p in args.images]
    check_images(paths, limits)  # before torch and the model load

    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    model = _model(args, size)
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
