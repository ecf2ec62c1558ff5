"""Discffusion scoring speed: batched candidate scoring against the released code's procedure.

The same work, an ``N x M`` score table over ``T`` timesteps, two ways:

- ``batched`` (the library, ``model.score``): each image encoded and noised once for all its
  texts, each text encoded once, ``(t, image, text)`` samples in batched trunk passes cut after
  the last scored cross-attention;
- ``released_code`` (DSD ``pipeline_dsd.py`` / ``unet_2d_condition.py``): for every (image, text)
  pair, encode the image and the text (and ``""``), then for every timestep one FULL diffusers
  U-Net call on ``[z_t; z_t]`` with ``[""; text]`` (the classifier-free-guidance batch of 2);
  the score is read from the conditional half of the same ``:logits`` (per sample, so the two
  tables agree; the released code's batch-averaged scalar is not reproduced).

Both tables are compared (``max_abs_diff``) and timed in one process (warm-up, then the median
of ``--repeats``); the ratio is ``released_code / batched``. Results are appended as one JSON
line to ``--out``. Architectures are random-weight folders of the published configs
(``benchmarks.architectures``: ``sd21`` = the SD 2.x U-Net, run at ``--size``), ``tiny``, or the
shipped ``default`` model. Timing needs a quiet machine.

    python -m benchmarks.matching_speed --arch tiny --images 2 --texts 3      # a check
    python -m benchmarks.matching_speed --arch sd21 --size 512 --images 4 --texts 10 \
        --out benchmarks/results/matching_speed.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class MatchingScenario:
    """One timed workload: ``images x texts`` at ``timesteps`` on an architecture."""

    arch: str = "tiny"
    size: int = 64
    images: int = 2
    texts: int = 3
    timesteps: tuple[int, ...] = (199, 399, 599, 799)
    layers: str = "all"
    batch_size: int = 64
    repeats: int = 3
    threads: int = 2


def build_model(s: MatchingScenario, root: Path):
    """The matching model of the ``discffusion-sd21base`` preset on the scenario's folder."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from benchmarks.architectures import materialize
    from diffperception import DiffusionPerceptionForImageTextMatching
    from diffperception.heads.cross_attention_score import cross_attention_taps
    from diffperception.modeling.presets import preset_config

    folder = materialize(s.arch, root)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    taps = cross_attention_taps(unet, s.layers) + ["conv_out"]
    config = preset_config("discffusion-sd21base", repo_id=folder, taps=taps,
                           timesteps=list(s.timesteps), size=(s.size, s.size))
    config.labels = None
    return DiffusionPerceptionForImageTextMatching(config).eval(), folder


def released_code_scorer(model, folder: Path) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """The released code's procedure: one full U-Net call per (image, text, timestep)."""
    from diffusers import UNet2DConditionModel

    from diffperception.features.attention import AttentionLogits, install_processor

    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    store: dict[str, torch.Tensor] = {}
    for tap in model.head.taps:
        attn = unet.get_submodule(tap.split(":")[0])
        attn.logits_tap = AttentionLogits()
        install_processor(attn)
        attn.logits_tap.register_forward_hook(
            lambda mod, args, out, _t=tap: store.__setitem__(_t, out))
    backbone, timesteps = model.backbone, model.config.features.timesteps

    @torch.no_grad()
    def score(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        table = torch.zeros(images.shape[0], len(texts))
        for i in range(images.shape[0]):
            for j, text in enumerate(texts):
                x = backbone.prepare_images(images[i: i + 1])
                z0 = backbone.encode(x)  # per pair, as the pipeline does
                context = torch.cat([model.encode_texts([""])[0], model.encode_texts([text])[0]])
                eps = model.noise_for(z0)  # (T, 1, 1, C, h, w): the same bank as the library
                for k, t in enumerate(timesteps):
                    abar = backbone.alphas_cumprod[t]
                    zt = abar.sqrt() * z0 + (1 - abar).sqrt() * eps[k, 0]
                    unet(zt.expand(2, -1, -1, -1), t, encoder_hidden_states=context)
                    cond = {tap: store[tap][1:] for tap in model.head.taps}  # conditional half
                    table[i, j] += model.head(cond).logits[0].item() / len(timesteps)
        return table

    return score


def _timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(s: MatchingScenario, root: Path) -> dict[str, Any]:
    """Times both procedures on the same seeded images and texts."""
    from benchmarks.machine import describe_machine

    torch.set_num_threads(s.threads)
    model, folder = build_model(s, root)
    images = torch.rand(s.images, 3, s.size, s.size, generator=torch.Generator().manual_seed(0))
    texts = [f"a photo of object number {j}" for j in range(s.texts)]
    released = released_code_scorer(model, folder)
    batched_s, batched = _timed(lambda: model.score(images, texts, batch_size=s.batch_size),
                                s.repeats)
    released_s, reference = _timed(lambda: released(images, texts), s.repeats)
    return {"scenario": asdict(s), "batched_s": batched_s, "released_code_s": released_s,
            "speedup": released_s / batched_s,
            "max_abs_diff": float((batched - reference).abs().max()),
            "unet_calls_released_code": s.images * s.texts * len(s.timesteps),
            "machine": describe_machine(s.threads, measure=False)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tiny", help="sd21, sd15, tiny or default")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the arch's)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--texts", type=int, default=3)
    parser.add_argument("--timesteps", default="199,399,599,799")
    parser.add_argument("--layers", default="all", choices=["all", "released_code"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=Path, default=Path("/tmp/diffperception-bench-models"))
    parser.add_argument("--out", type=Path, default=None, help="append the result (JSON line)")
    args = parser.parse_args(argv)
    from benchmarks.architectures import get_architecture

    size = args.size or get_architecture(args.arch).resolution
    scenario = MatchingScenario(args.arch, size, args.images, args.texts,
                                tuple(int(t) for t in args.timesteps.split(",")), args.layers,
                                args.batch_size, args.repeats, args.threads)
    result = run(scenario, args.models)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
