"""``diffperception export``: export a saved task model or a preset to TorchScript, ``.pt2``, ONNX or TensorRT.

Usage::

    diffperception export org/name --format onnx --out build/ --size 512x512 --batch 1 [--fp16]
    diffperception export org/name --format torchscript --out build/
    diffperception export org/name --format pt2 --out build/ --batch-range 1,4,8
    diffperception export org/name --format tensorrt --out build/ --fp16
    diffperception export --preset sd15-features --format onnx --out build/

The artifact is ``OUT/model.<ext>`` (``--name`` changes the stem); a TensorRT export also
writes the ONNX file it was built from. Every export is parity-checked against eager PyTorch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .parity import ExportResult

__all__ = ["FORMATS", "add_arguments", "export_model", "run"]

# format -> artifact suffix
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2", "tensorrt": ".engine"}
_PRECISIONS = {"onnx": ("fp32", "fp16"), "torchscript": ("fp32",), "pt2": ("fp32",),
               "tensorrt": ("fp32", "fp16", "bf16")}


def export_model(
    model: nn.Module,
    fmt: str,
    out_dir: str | Path,
    *,
    name: str = "model",
    precision: str = "fp32",
    size: Sequence[int] | None = None,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    include_resize: Sequence[int] | None = None,
    opset: int = 18,
    external_data: bool | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` in one format to ``out_dir/<name><suffix>`` (the CLI's core).

    Args:
        model: A task model or a specialised module.
        fmt: ``"onnx"``, ``"torchscript"``, ``"pt2"`` or ``"tensorrt"``.
        out_dir: Output folder (created).
        name: File stem of the artifact.
        precision: ``"fp32"``; ``"fp16"`` for ONNX / TensorRT; ``"bf16"`` for TensorRT.
        size, batch, batch_range, latent_input, include_resize: See :func:`~diffperception.export.to_onnx`.
        opset, external_data: ONNX options (ONNX and TensorRT only).
        workspace_gib, timing_cache: TensorRT builder options.
        check: Parity-check the artifact against eager PyTorch.
        progress: Called with a line of text before slow steps.

    Raises:
        ValueError: Unknown format, a precision or option the format does not support.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    if precision not in _PRECISIONS[fmt]:
        raise ValueError(f"{fmt} exports support precision {'/'.join(_PRECISIONS[fmt])}, not {precision}; "
                         "fp16 is an ONNX / TensorRT option, bf16 a TensorRT one")
    if fmt in ("torchscript", "pt2") and (opset != 18 or external_data):
        raise ValueError(f"--opset and --external-data are ONNX options; {fmt} exports take neither")
    if not name or Path(name).name != name:
        raise ValueError(f"name must be a plain file stem such as 'model', got {name!r}")
    path = Path(out_dir) / f"{name}{FORMATS[fmt]}"
    common: dict[str, Any] = dict(size=size, batch=batch, batch_range=batch_range, latent_input=latent_input,
                                  include_resize=include_resize, check=check, progress=progress)
    if fmt == "onnx":
        from .onnx import to_onnx

        return to_onnx(model, path, fp16=precision == "fp16", opset=opset, external_data=external_data, **common)
    if fmt == "tensorrt":
        from .tensorrt import to_tensorrt

        return to_tensorrt(model, path, precision=precision, opset=opset, workspace_gib=workspace_gib,
                           timing_cache=timing_cache, **common)
    if fmt == "pt2":
        from .pt2 import to_pt2

        return to_pt2(model, path, **common)
    from .torchscript import to_torchscript

    return to_torchscript(model, path, **common)


def _size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> (512, 384) (height x width); ``"512"`` -> (512, 512)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x512, got {text!r}")
    return values  # type: ignore[return-value]


def _batch_range(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` subcommand's arguments."""
    parser.add_argument("model", nargs="?", help="saved task model folder or Hub repo id")
    parser.add_argument("--preset", help="export a preset (see diffperception.list_presets()) instead of MODEL")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="artifact format")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", default="model", help="artifact file stem (default: model)")
    parser.add_argument("--size", type=_size, help="HxW the model runs at (default: the model's preprocess.size)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default: 1)")
    batch.add_argument("--batch-range", type=_batch_range, metavar="MIN,OPT,MAX", help="dynamic batch range")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="fp16 ONNX (for GPU execution providers) / fp16 TensorRT engine")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                           help="bf16 TensorRT engine")
    parser.add_argument("--latent-input", action="store_true", help="take latents (leave the VAE encoder out)")
    parser.add_argument("--include-resize", type=_size, metavar="HxW",
                        help="the graph takes HxW images and resizes them to the model size")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17, default 18)")
    parser.add_argument("--external-data", action="store_true", default=None,
                        help="force ONNX external data (default: only for weights over 2 GB)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT workspace limit in GiB")
    parser.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file")
    parser.add_argument("--revision", help="Hub revision of MODEL")
    parser.add_argument("--local-files-only", action="store_true", help="use the Hugging Face cache only")


def _load_model(args: argparse.Namespace) -> nn.Module:
    try:
        from diffperception import AutoDiffusionPerception
    except ImportError as exc:  # the Auto class arrives with the Hub model support
        raise RuntimeError(f"loading task models needs diffperception.AutoDiffusionPerception ({exc})") from exc
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
        raise ValueError("pass either MODEL (a saved task model folder or Hub repo id) or --preset NAME")
    say = _progress_printer()
    say(f"loading {args.model if args.model is not None else 'preset ' + args.preset}")
    model = _load_model(args)
    result = export_model(
        model, args.format, args.out, name=args.name, precision=args.precision or "fp32", size=args.size,
        batch=args.batch, batch_range=args.batch_range, latent_input=args.latent_input,
        include_resize=args.include_resize, opset=args.opset, external_data=args.external_data,
        workspace_gib=args.workspace_gib, timing_cache=args.timing_cache, progress=say,
    )
    print(result.summary())
    return 0
