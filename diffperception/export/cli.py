"""``diffperception export``: export a saved task model or a preset in any registered format.

Usage::

    diffperception export org/name --format onnx --out build/ --size 512x512 --batch 1 [--fp16]
    diffperception export org/name --format torchscript --out build/
    diffperception export org/name --format pt2 --out build/ --batch-range 1,4,8
    diffperception export org/name --format tensorrt --out build/ --fp16
    diffperception export --preset sd15-features --format onnx --out build/

The artifact is ``OUT/model.<suffix>`` (``--name`` changes the stem); a TensorRT export also
writes the ONNX file it was built from. Every export is parity-checked against eager PyTorch.
The formats are the registered exporters (:func:`~diffperception.export.list_exporters`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .options import parse_batch_range, parse_size, with_export_options
from .parity import ExportResult
from .registry import export, get_exporter, list_exporters

__all__ = ["add_arguments", "export_model", "run"]

# CLI flags of the formats' own options (None: not given, so the format's default applies).
_FORMAT_FLAGS = ("opset", "external_data", "workspace_gib", "timing_cache")


@with_export_options(open_ended=True)
def export_model(model: nn.Module | str | Path, fmt: str, out_dir: str | Path, *, name: str = "model",
                 **options: Any) -> ExportResult:
    """Export ``model`` in format ``fmt`` to ``out_dir/<name><suffix>`` (the CLI's core).

    Args:
        model: A task model or a specialised module (an ``.onnx`` file for TensorRT).
        fmt: A registered format (:func:`~diffperception.export.list_exporters`).
        out_dir: Output folder (created).
        name: File stem of the artifact.
        **options: As for :func:`~diffperception.export.export`.

    Returns:
        The :class:`~diffperception.export.parity.ExportResult`.

    Raises:
        ValueError: Unknown format, a precision or option the format does not support, a bad name.
    """
    exporter = get_exporter(fmt)
    if not name or Path(name).name != name:
        raise ValueError(f"The artifact name must be a plain file stem such as 'model', got {name!r}.")
    return export(model, fmt, Path(out_dir) / f"{name}{exporter.suffix}", **options)


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that reports a parser's ValueError as a usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` subcommand's arguments."""
    parser.add_argument("model", nargs="?", help="saved task model folder or Hub repo id")
    parser.add_argument("--preset", help="export a preset (see diffperception.list_presets()) instead of MODEL")
    parser.add_argument("--format", required=True, choices=list_exporters(), help="artifact format")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", default="model", help="artifact file stem (default: model)")
    parser.add_argument("--size", type=_argument(parse_size),
                        help="HxW the model runs at (default: the model's preprocess.size)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default: 1)")
    batch.add_argument("--batch-range", type=_argument(parse_batch_range), metavar="MIN,OPT,MAX",
                       help="dynamic batch range")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="fp16 ONNX (for GPU execution providers) / fp16 TensorRT engine")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                           help="bf16 TorchScript / .pt2 (bf16 weights, channels-last convolutions; "
                                "float32 in and out) or a bf16 TensorRT engine")
    parser.add_argument("--latent-input", action="store_true", help="take latents (leave the VAE encoder out)")
    parser.add_argument("--include-resize", type=_argument(parse_size), metavar="HxW",
                        help="the graph takes HxW images and resizes them to the model size")
    parser.add_argument("--opset", type=int, help="ONNX opset (>= 17, default 18; ONNX / TensorRT)")
    parser.add_argument("--external-data", action="store_true", default=None,
                        help="force ONNX external data (default: only for weights over 2 GB)")
    parser.add_argument("--workspace-gib", type=float, help="TensorRT workspace limit in GiB (default 4)")
    parser.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file")
    parser.add_argument("--revision", help="Hub revision of MODEL")
    parser.add_argument("--local-files-only", action="store_true", help="use the Hugging Face cache only")


def _load_model(args: argparse.Namespace) -> nn.Module:
    from diffperception import AutoDiffusionPerception

    hub: dict[str, Any] = {"local_files_only": args.local_files_only}
    if args.preset is not None:
        return AutoDiffusionPerception.from_preset(args.preset, revision=args.revision, **hub)
    return AutoDiffusionPerception.from_pretrained(args.model, revision=args.revision, **hub)


def _progress_printer() -> Callable[[str], None]:
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run(args: argparse.Namespace) -> int:
    """Run ``diffperception export``; returns the exit status."""
    if (args.model is None) == (args.preset is None):
        raise ValueError("Pass either MODEL (a saved task model folder or Hub repo id) or --preset NAME.")
    say = _progress_printer()
    say(f"loading {args.model if args.model is not None else 'preset ' + args.preset}")
    model = _load_model(args)
    given = {flag: getattr(args, flag) for flag in _FORMAT_FLAGS if getattr(args, flag) is not None}
    result = export_model(
        model, args.format, args.out, name=args.name, precision=args.precision or "fp32", size=args.size,
        batch=args.batch, batch_range=args.batch_range, latent_input=args.latent_input,
        include_resize=args.include_resize, progress=say, **given,
    )
    print(result.summary())
    return 0
