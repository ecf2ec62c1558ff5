"""Feature error of every bf16 path against fp32 (errors, not timings).

For one model, the fp32 eager backbone is the reference; each path computes the same features
from the same seeded inputs:

- ``eager``: the backbone built with ``dtype="bfloat16", memory_format="channels_last"``;
- ``specialized``: its ``specialize()`` module (shares the bf16 weights);
- ``torchscript`` / ``pt2``: ``export(fp32 model, fmt, precision="bf16")``, loaded from file
  (float32 in and out, bf16 inside);
- ``compile``: ``torch.compile`` (inductor) of the bf16 specialised module (``--compile``);
- the fp32 specialised / exported paths, as a check that the error is the precision's.

Per path and tap: ``max_rel`` = max |error| / max |fp32 feature| (the parity checks' measure,
with the tolerance per precision they use: ``export.parity.TOLERANCES``, benchmark
``run_one.PARITY_RTOL``) and the cosine between the flattened bf16 and fp32 features of each
image (the minimum over images).

    python -m diffperception.benchmarks.precision --model default --out benchmarks/results/precision
    python -m diffperception.benchmarks.precision --model sd15 --size 128 --out benchmarks/results/precision
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["feature_errors", "measure", "main"]


def feature_errors(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per tap: ``max_abs``, ``max_rel`` (of the reference's largest magnitude), ``min_cosine``
    and ``mean_cosine`` over images."""
    report = {}
    for tap, r in ref.items():
        o = out[tap].detach().double().cpu()
        r = r.detach().double().cpu()
        max_abs = float((o - r).abs().max())
        cos = torch.nn.functional.cosine_similarity(o.reshape(o.shape[0], -1),
                                                    r.reshape(r.shape[0], -1), dim=1)
        report[tap] = {"max_abs": max_abs, "max_rel": max_abs / max(float(r.abs().max()), 1e-12),
                       "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    return report


def _model(source: str, taps: list[str], size: int, dtype: str, memory_format: str):
    from diffperception import DiffusionPerceptionForFeatureExtraction

    return DiffusionPerceptionForFeatureExtraction.from_diffusers(
        source, taps=taps, timesteps=[261], size=(size, size), dtype=dtype,
        memory_format=memory_format).eval()


def _exported(model, fmt: str, precision: str, folder: Path, size: int, latent: bool,
              batch: int) -> Callable:
    from diffperception.export import export, get_exporter

    path = folder / f"model-{precision}{get_exporter(fmt).suffix}"
    export(model, fmt, path, size=(size, size), batch=batch, latent_input=latent,
           precision=precision, check=False)
    module = get_exporter(fmt).load(path)
    return lambda x: dict(module(x.float()))


@torch.no_grad()
def measure(source: str, *, taps: list[str], size: int, batch: int, latent_input: bool,
            compile_: bool, formats: tuple[str, ...] = ("torchscript", "pt2"),
            log=print) -> dict[str, Any]:
    """Errors of each path against the fp32 eager backbone (see the module docstring)."""
    from diffperception.benchmarks.run_one import PARITY_RTOL
    from diffperception.export.parity import TOLERANCES

    fp32 = _model(source, taps, size, "float32", "contiguous")
    special32 = fp32.specialize((size, size), latent_input=latent_input)
    generator = torch.Generator().manual_seed(0)
    if latent_input:
        shape = (batch, int(fp32.backbone.network_config["in_channels"]),
                 *(s // fp32.backbone.vae_factor for s in (size, size)))
        x = torch.randn(shape, generator=generator)
    else:
        x = torch.rand((batch, 3, size, size), generator=generator)
    ref = special32(x)  # the fp32 specialised module equals the eager backbone (checked below)
    if not latent_input:
        eager_ref = fp32(x)
        ref_check = feature_errors(eager_ref, ref)
    else:
        ref_check = None
    paths: dict[str, dict] = {}

    def record(name: str, precision: str, fn: Callable) -> None:
        start = time.perf_counter()
        try:
            errors = feature_errors(fn(), ref)
        except Exception as err:  # noqa: BLE001 - a failing path is reported, not fatal
            paths[name] = {"precision": precision, "error": f"{type(err).__name__}: {err}"[:400]}
            log(f"{name}: failed: {paths[name]['error']}")
            return
        paths[name] = {"precision": precision, "taps": errors,
                       "tolerance_export": TOLERANCES.get({"float32": "fp32", "bfloat16": "bf16"}[precision]),
                       "tolerance_bench": PARITY_RTOL[precision], "seconds_not_a_timing": time.perf_counter() - start}
        log(f"{name}: " + "; ".join(f"{t} max_rel {e['max_rel']:.2e} cos {e['min_cosine']:.6f}"
                                    for t, e in errors.items()))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt in formats:
            record(f"{fmt} fp32", "float32",
                   lambda m=fp32, f=fmt: _exported(m, f, "fp32", folder, size, latent_input, batch)(x))
        for fmt in formats:
            record(f"{fmt} bf16", "bfloat16",
                   lambda m=fp32, f=fmt: _exported(m, f, "bf16", folder, size, latent_input, batch)(x))
    has_vae = fp32.backbone.vae is not None
    del special32, fp32
    gc.collect()
    bf16 = _model(source, taps, size, "bfloat16", "channels_last")
    if not latent_input:
        record("eager bf16 channels-last", "bfloat16", lambda: bf16(x.bfloat16()))
    special16 = bf16.specialize((size, size), latent_input=latent_input)
    record("specialized bf16 channels-last", "bfloat16", lambda: special16(x.bfloat16()))
    if compile_:
        compiled = torch.compile(special16)
        record("compile (inductor) bf16", "bfloat16", lambda: compiled(x.bfloat16()))
    return {"source": source, "taps": taps, "size": size, "batch": batch, "timestep": 261,
            "input": "latents" if latent_input else "images in [0, 1]" + (
                " (VAE encoder included)" if has_vae else ""),
            "reference": "fp32 specialised module" + ("" if latent_input else
                                                      " (= the fp32 eager backbone, checked)"),
            "reference_check_vs_eager": ref_check, "paths": paths,
            "versions": {"torch": torch.__version__}}


def summary(results: list[dict[str, Any]]) -> str:
    """A markdown table per model: path, precision, max-rel and min cosine per tap, tolerance."""
    lines = []
    for r in results:
        lines += [f"#### {r['source']}, {r['size']} px, batch {r['batch']}, t={r['timestep']}, "
                  f"{r['input']}", "",
                  "| path | " + " | ".join(f"{t} max-rel | {t} min cos" for t in r["taps"])
                  + " | parity tolerance (export / bench) |",
                  "|---|" + "---|---|" * len(r["taps"]) + "---|"]
        for name, entry in r["paths"].items():
            if "error" in entry:
                lines.append(f"| {name} | failed: {entry['error'][:120]} |")
                continue
            cells = " | ".join(f"{entry['taps'][t]['max_rel']:.2e} | {entry['taps'][t]['min_cosine']:.6f}"
                               for t in r["taps"])
            lines.append(f"| {name} | {cells} | {entry['tolerance_export']} / {entry['tolerance_bench']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default",
                        help="'default' (the shipped model), a benchmark architecture (sd15, sd21, "
                             "sdxl: random weights) or a diffusers folder")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--taps", default="up_ft.1,mid_block")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent-input", action="store_true", help="trunk only (no VAE encoder)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision"))
    args = parser.parse_args(argv)
    from diffperception.benchmarks.architectures import ARCHITECTURES, materialize
    from diffperception.benchmarks.runner import default_cache_dir

    if args.model == "default":
        source, size = "diffperception:default", args.size or 32
    elif args.model in ARCHITECTURES:
        source = str(materialize(args.model, (args.cache_dir or default_cache_dir()) / "models"))
        size = args.size or 128
    else:
        source, size = args.model, args.size or 512
    result = measure(source, taps=args.taps.split(","), size=size, batch=args.batch,
                     latent_input=args.latent_input, compile_=args.compile)
    result["model"] = args.model
    if args.model != "default":
        result["source"] = args.model + (" (random weights)" if args.model in ARCHITECTURES else "")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"precision_{args.model if args.model in ARCHITECTURES or args.model == 'default' else 'model'}_{size}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    text = summary([result])
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
