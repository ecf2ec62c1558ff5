"""How many noise draws an ensemble needs, with independent and variance-reduced draws.

DIFT averages the features of 8 noise draws (8x the compute of one). This script measures, on
the shipped model (``diffperception:default``) and real digits (scikit-learn's test split), the
error of the E-draw ensemble-mean feature against a reference mean of ``--reference`` independent
draws, as a function of E, for each ``NoiseConfig.sampling`` scheme (``independent``,
``antithetic``, ``sobol``), and the number of draws each scheme needs to reach the error of the
8-draw independent ensemble. Errors, not timings: it may run on a busy machine.

Error of one image: ``||f_E - f_ref|| / ||f_ref||`` over the tap's whole feature map (relative L2),
and ``1 - cos(f_E, f_ref)``; reported as the mean over images, then the RMS over ``--repeats``
seeds. The reference is itself a finite ensemble: its own variance adds ``tr(Cov) / R`` to every
squared error (R = reference draws). ``corrected`` subtracts that term (estimated from the
reference draws' spread); both are in the JSON.

Features are linear in the draws' average, so the script runs the trunk once per draw (ensemble 1,
explicit ``noise=``) and averages: the E-draw mean equals what ``ensemble=E, sampling=...`` gives
(``tests/features/test_noise_sampling.py`` checks that equivalence).

    python -m diffperception.benchmarks.noise_ensembles --out benchmarks/results/noise_ensembles
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["measure", "draws_for_error", "main"]

SAMPLINGS = ("independent", "antithetic", "sobol")
SIZES = (2, 4, 8, 16, 32)


def _draw_features(backbone, images: torch.Tensor, eps: torch.Tensor, taps: list[str],
                   chunk: int = 16) -> dict[str, torch.Tensor]:
    """``{tap: (E, B, D)}`` float64 features of each draw ``eps[k]`` ``(1, C, h, w)`` (a draw is
    shared by the images, as fixed noise is), computed ``chunk`` draws per trunk call."""
    B, out = images.shape[0], {t: [] for t in taps}
    for start in range(0, eps.shape[0], chunk):
        part = eps[start:start + chunk]  # (e, 1, C, h, w)
        e = part.shape[0]
        noise = part.expand(e, B, *part.shape[2:]).reshape(e * B, *part.shape[2:])
        with torch.no_grad():
            feats = backbone(images.repeat(e, 1, 1, 1), noise=noise)
        for t in taps:
            out[t].append(feats[t].reshape(e, B, -1).double())
    return {t: torch.cat(v) for t, v in out.items()}


def _errors(mean: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean over images of the relative L2 error and of ``1 - cosine``."""
    rel = (mean - ref).norm(dim=1) / ref.norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(mean, ref, dim=1)
    return float(rel.mean()), float((1 - cos).mean())


def draws_for_error(sizes: list[int], errors: list[float], target: float) -> float | None:
    """The (log-log interpolated) number of draws at which ``errors`` falls to ``target``."""
    for (n0, e0), (n1, e1) in zip(zip(sizes, errors), zip(sizes[1:], errors[1:])):
        if e0 >= target >= e1 and e0 > 0 and e1 > 0:
            if e0 == e1:
                return float(n0)
            frac = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return float(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))))
    return float(sizes[0]) if errors and errors[0] <= target else None


def measure(*, taps: list[str], timestep: int, num_images: int, reference: int, repeats: int,
            sizes: tuple[int, ...] = SIZES, log=print) -> dict[str, Any]:
    """Errors of each sampling scheme at each ensemble size, for one timestep (see the docstring)."""
    from diffperception import DiffusionPerceptionForFeatureExtraction
    from diffperception.default_model import load_digits_split
    from diffperception.features.noise import fixed_noise

    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        "diffperception:default", taps=taps, timesteps=[timestep])
    backbone = model.backbone.eval()
    images = torch.from_numpy(load_digits_split()["test_images"][:num_images])
    shape = (int(backbone.network_config["in_channels"]), *images.shape[-2:])

    def mean_of(eps: torch.Tensor) -> dict[str, torch.Tensor]:  # eps (E, 1, C, h, w)
        return {t: v.mean(0) for t, v in _draw_features(backbone, images, eps, taps).items()}

    ref_eps = fixed_noise(10_000, 1, reference, shape)[0]  # (R, 1, C, h, w), its own seed
    ref_draws = _draw_features(backbone, images, ref_eps, taps)  # {tap: (R, B, D)}
    ref = {t: v.mean(0) for t, v in ref_draws.items()}
    # tr(Cov) / R per image, relative to ||ref||^2: the reference's own squared error
    ref_var = {t: (ref_draws[t].var(0, unbiased=True).sum(1) / reference
                   / ref[t].norm(dim=1) ** 2) for t in taps}
    result: dict[str, Any] = {"timestep": timestep, "taps": taps, "num_images": num_images,
                              "reference_draws": reference, "repeats": repeats, "sizes": list(sizes),
                              "reference_rel_var": {t: float(v.mean()) for t, v in ref_var.items()},
                              "schemes": {}}
    for sampling in SAMPLINGS:
        per_tap: dict[str, dict[str, list]] = {t: {"rel": [], "one_minus_cos": [], "corrected": []}
                                               for t in taps}
        for n in sizes:
            rel = {t: [] for t in taps}
            cos = {t: [] for t in taps}
            for rep in range(repeats):
                eps = fixed_noise(rep, 1, n, shape, sampling=sampling)[0]  # (E, 1, C, h, w)
                mean = mean_of(eps)
                for t in taps:
                    r, c = _errors(mean[t], ref[t])
                    rel[t].append(r)
                    cos[t].append(c)
            for t in taps:
                rms = math.sqrt(float(np.mean(np.square(rel[t]))))
                per_tap[t]["rel"].append(rms)
                per_tap[t]["one_minus_cos"].append(float(np.mean(cos[t])))
                floor = result["reference_rel_var"][t]
                per_tap[t]["corrected"].append(math.sqrt(max(rms ** 2 - floor, 0.0)))
            log(f"t={timestep} {sampling:11s} E={n:2d} " + "  ".join(
                f"{t}: rel {per_tap[t]['rel'][-1]:.4f}" for t in taps))
        result["schemes"][sampling] = per_tap
    result["draws_for_8_independent"] = _draws_needed(result, taps, sizes)
    return result


def _draws_needed(result: dict[str, Any], taps: list[str], sizes: tuple[int, ...]) -> dict:
    """Per tap and scheme: draws needed to reach the 8-draw independent error (raw and corrected)."""
    out: dict[str, dict] = {}
    i8 = list(sizes).index(8)
    for t in taps:
        out[t] = {}
        for kind in ("rel", "corrected"):
            target = result["schemes"]["independent"][t][kind][i8]
            out[t][kind] = {s: draws_for_error(list(sizes), result["schemes"][s][t][kind], target)
                            for s in SAMPLINGS}
            out[t][kind]["target"] = target
    return out


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Error against draws (log-log), one panel per (timestep, tap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r, t) for r in results for t in r["taps"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (r, tap) in zip(axes[0], panels):
        for sampling, style in zip(SAMPLINGS, ("o-", "s-", "^-")):
            ax.loglog(r["sizes"], r["schemes"][sampling][tap]["rel"], style, label=sampling)
        floor = math.sqrt(r["reference_rel_var"][tap])
        ax.axhline(floor, color="grey", ls=":", lw=1, label=f"reference's own error ({r['reference_draws']} draws)")
        ax.set_xticks(r["sizes"], [str(n) for n in r["sizes"]])
        ax.set_xlabel("noise draws averaged (E)")
        ax.set_title(f"{tap}, t={r['timestep']}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative L2 error vs reference mean")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Ensemble-mean feature error, shipped model, digits test images", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(results: list[dict[str, Any]]) -> str:
    """A markdown table: error per scheme and E, and draws needed for the 8-draw error."""
    lines = []
    for r in results:
        for tap in r["taps"]:
            lines += [f"#### {tap}, t={r['timestep']} ({r['num_images']} digits, reference "
                      f"{r['reference_draws']} draws, RMS over {r['repeats']} seeds)", "",
                      "| sampling | " + " | ".join(f"E={n}" for n in r["sizes"])
                      + " | draws for the 8-draw independent error (raw / corrected) |",
                      "|---|" + "---|" * (len(r["sizes"]) + 1)]
            need = r["draws_for_8_independent"][tap]
            for s in SAMPLINGS:
                cells = " | ".join(f"{e:.4f}" for e in r["schemes"][s][tap]["rel"])
                raw, cor = need["rel"][s], need["corrected"][s]
                first = r["schemes"][s][tap]["rel"][0]

                def fmt(v, below=first <= need["rel"]["target"]):
                    if v is None:
                        return "-"
                    return f"<= {v:.0f}" if v == r["sizes"][0] and below else f"{v:.1f}"
                lines.append(f"| {s} | {cells} | {fmt(raw)} / {fmt(cor)} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/noise_ensembles"))
    parser.add_argument("--taps", default="up_ft.1,mid_block")
    parser.add_argument("--timesteps", default="100,261,500")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--reference", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sizes = tuple(int(n) for n in args.sizes.split(","))
    start = time.perf_counter()
    results = [measure(taps=args.taps.split(","), timestep=int(t), num_images=args.images,
                       reference=args.reference, repeats=args.repeats, sizes=sizes)
               for t in args.timesteps.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_ensembles.json").write_text(json.dumps(results, indent=1))
    (args.out / "noise_ensembles.md").write_text(summary(results))
    plot(results, args.out / "noise_ensembles.png")
    print(summary(results))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
