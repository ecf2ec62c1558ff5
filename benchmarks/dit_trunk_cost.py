"""Trunk cost of diffusion transformers cut at a middle block, against the full transformer.

For each architecture (the published configs of PixArt-alpha / Sigma and SD3 / SD3.5, or a tiny
one), with random weights (cost does not depend on weight values):

- **FLOPs** (``--flops``, default on): ``features.cost.trunk_cost`` on a folder holding only the
  configs, built on the meta device: no weight exists, nothing is computed, a few seconds per
  architecture at any size. Batch 1, the native resolution, the null prompt.
- **time** (``--time``): the full transformer with seeded random weights at real size (parameters
  created one by one, so peak memory is the model plus activations), ``--repeats`` timed forwards
  after one warm-up, then the same network pruned in place to the cut (``family.prune``) and run
  by the trunk on the same inputs; the ratio of medians. Both in one process, fp32 unless
  ``--dtype``. ``--layers`` builds fewer blocks than the published config (for machines where the
  real size does not fit; say so when reporting).

Results are appended as JSON lines to ``--out`` (default ``benchmarks/results/dit_trunk_cost.jsonl``)
and printed as a table. Real sizes in fp32: PixArt-XL-2 0.61 B parameters (2.4 GB), SD3-medium 2.0 B
(8.1 GB), SD3.5-medium 2.2 B (9.0 GB), SD3.5-large 8.1 B (32 GB: time it in bf16, or with
``--layers``), FLUX.1-dev 11.9 B (48 GB: ``--layers`` N builds N double- and 2N single-stream
blocks). FLOPs are counted at the published size whatever the memory.

Example:
    python benchmarks/dit_trunk_cost.py --arch pixart-alpha-512 sd3-medium --cut middle
    python benchmarks/dit_trunk_cost.py --arch tiny-pixart tiny-sd3 --time --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# PixArt-alpha/PixArt-XL-2-512x512, transformer/config.json
PIXART_XL = dict(
    _class_name="PixArtTransformer2DModel", activation_fn="gelu-approximate", attention_bias=True,
    attention_head_dim=72, attention_type="default", caption_channels=4096, cross_attention_dim=1152,
    dropout=0.0, in_channels=4, norm_elementwise_affine=False, norm_eps=1e-6, norm_num_groups=32,
    norm_type="ada_norm_single", num_attention_heads=16, num_embeds_ada_norm=1000, num_layers=28,
    out_channels=8, patch_size=2, sample_size=64, upcast_attention=False,
)
# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json
SD3_MEDIUM = dict(
    _class_name="SD3Transformer2DModel", attention_head_dim=64, caption_projection_dim=1536,
    in_channels=16, joint_attention_dim=4096, num_attention_heads=24, num_layers=24,
    out_channels=16, patch_size=2, pooled_projection_dim=2048, pos_embed_max_size=192,
    sample_size=128,
)
# black-forest-labs/FLUX.1-dev, transformer/config.json
FLUX_DEV = dict(
    _class_name="FluxTransformer2DModel", attention_head_dim=128, axes_dims_rope=[16, 56, 56],
    guidance_embeds=True, in_channels=64, joint_attention_dim=4096, num_attention_heads=24,
    num_layers=19, num_single_layers=38, patch_size=1, pooled_projection_dim=768,
)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "pixart-alpha-512": dict(transformer=PIXART_XL, pipeline="PixArtAlphaPipeline"),
    # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
    "pixart-sigma-1024": dict(transformer=dict(PIXART_XL, sample_size=128, interpolation_scale=2,
                                               use_additional_conditions=False),
                              pipeline="PixArtSigmaPipeline"),
    "sd3-medium": dict(transformer=SD3_MEDIUM, pipeline="StableDiffusion3Pipeline"),
    # stabilityai/stable-diffusion-3.5-medium
    "sd3.5-medium": dict(transformer=dict(SD3_MEDIUM, dual_attention_layers=list(range(13)),
                                          qk_norm="rms_norm", pos_embed_max_size=384),
                         pipeline="StableDiffusion3Pipeline"),
    # stabilityai/stable-diffusion-3.5-large
    "sd3.5-large": dict(transformer=dict(SD3_MEDIUM, attention_head_dim=64, num_attention_heads=38,
                                         num_layers=38, caption_projection_dim=2432,
                                         qk_norm="rms_norm"),
                        pipeline="StableDiffusion3Pipeline"),
    "flux-dev": dict(transformer=FLUX_DEV, pipeline="FluxPipeline"),
    "tiny-flux": dict(transformer=dict(FLUX_DEV, attention_head_dim=16, axes_dims_rope=[4, 6, 6],
                                       num_attention_heads=2, num_layers=2, num_single_layers=4,
                                       joint_attention_dim=32, pooled_projection_dim=32,
                                       in_channels=16), pipeline="FluxPipeline"),
    "tiny-pixart": dict(transformer=dict(PIXART_XL, num_attention_heads=2, attention_head_dim=8,
                                         num_layers=4, cross_attention_dim=16, caption_channels=32,
                                         sample_size=8), pipeline="PixArtAlphaPipeline"),
    "tiny-sd3": dict(transformer=dict(SD3_MEDIUM, num_attention_heads=2, attention_head_dim=8,
                                      num_layers=4, joint_attention_dim=32, caption_projection_dim=16,
                                      pooled_projection_dim=64, in_channels=4, out_channels=4,
                                      sample_size=8, pos_embed_max_size=16),
                     pipeline="StableDiffusion3Pipeline"),
}
# The SD VAE (PixArt) and the SD3 VAE (16 latent channels); only the encoder's FLOPs are counted.
_VAE = dict(_class_name="AutoencoderKL", act_fn="silu", block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
            norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def write_config_folder(name: str, root: Path, layers: int | None = None) -> Path:
    """A diffusers folder of configs only (no weights) for ``name``: enough for meta builds."""
    arch = ARCHITECTURES[name]
    transformer = dict(arch["transformer"])
    if layers is not None:
        transformer["num_layers"] = layers
        if "dual_attention_layers" in transformer:
            transformer["dual_attention_layers"] = [i for i in transformer["dual_attention_layers"]
                                                    if i < layers]
    sd3 = transformer["_class_name"] == "SD3Transformer2DModel"
    flux = transformer["_class_name"] == "FluxTransformer2DModel"
    if flux and layers is not None:
        transformer["num_single_layers"] = 2 * layers
    vae = dict(_VAE, latent_channels=transformer["in_channels"] // (4 if flux else 1))
    if sd3:
        vae.update(scaling_factor=1.5305, shift_factor=0.0609)
    if flux:
        vae.update(scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = (dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000,
                      shift=3.0, use_dynamic_shifting=flux) if sd3 or flux else
                 dict(_class_name="DPMSolverMultistepScheduler", beta_schedule="linear",
                      beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000))
    folder = root / name
    for sub, file, config in (("transformer", "config.json", transformer), ("vae", "config.json", vae),
                              ("scheduler", "scheduler_config.json", scheduler)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / file).write_text(json.dumps(config))
    index = {"_class_name": arch["pipeline"], "transformer": ["diffusers", transformer["_class_name"]],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler["_class_name"]]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def _backbone(folder: Path, tap: str, timestep: int):
    from diffperception.backbones.loading import resolve_source
    from diffperception.config import BackboneConfig, FeaturesConfig, PreprocessConfig
    from diffperception.features.backbone import DiffusionBackbone

    source = resolve_source(folder)
    return DiffusionBackbone(BackboneConfig(repo_id=str(folder), family="dit", revision=None),
                             FeaturesConfig(taps=[tap], timesteps=[timestep]),
                             PreprocessConfig(), source=source, load_weights=False)


def count(folder: Path, tap: str, timestep: int) -> dict[str, Any]:
    """FLOPs and parameters of the cut trunk and of the full transformer (batch 1, native size)."""
    from diffperception.features.cost import trunk_cost

    cost = trunk_cost(_backbone(folder, tap, timestep))
    return {"size": list(cost.size), "full_params": cost.unet_params, "trunk_params": cost.trunk_params,
            "full_gflop": cost.unet_flops / 1e9, "trunk_gflop": cost.trunk_flops / 1e9,
            "vae_encoder_gflop": cost.vae_encoder_flops / 1e9,
            "flop_ratio": cost.trunk_flops / cost.unet_flops}


def _random_network(family, config: dict[str, Any], dtype: torch.dtype, seed: int):
    """The transformer at real size with seeded random parameters, created one at a time."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights():
        network = family.build_network(config)
    generator = torch.Generator().manual_seed(seed)
    for name, param in list(network.named_parameters()):
        value = torch.randn(param.shape, generator=generator, dtype=torch.float32) * 0.02
        set_module_tensor_to_device(network, name, "cpu", value=value.to(dtype))
    return network.eval().requires_grad_(False)


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure_time(folder: Path, tap: str, timestep: int, repeats: int, dtype: torch.dtype
                 ) -> dict[str, Any]:
    """Median seconds of the full forward and of the cut trunk (same weights, same inputs)."""
    from diffperception.backbones import family_for_folder
    from diffperception.features.taps import resolve_taps
    from diffperception.features.trunk import Trunk

    family = family_for_folder(folder)
    config = family.read_config(folder)
    network = _random_network(family, config, dtype, seed=0)
    context_shape, pooled = family.context_shape(folder, config)
    sample, _, context, added = family.meta_inputs(config, family.native_latent_size(config),
                                                   context_shape, pooled, device="cpu")
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(sample.shape, generator=generator).to(dtype)
    context = torch.randn(context.shape, generator=generator).to(dtype)
    added = {k: torch.ones(v.shape, dtype=dtype) for k, v in added.items()}  # mask of ones
    timesteps = torch.tensor([timestep])
    full = _median_seconds(lambda: family.forward_full(network, sample, timesteps, context, added),
                           repeats)
    taps = resolve_taps([tap], network, family.resolve_alias)
    plan = family.plan_cut(network, [(t.path, t.kind) for t in taps])
    family.prune(network, plan)
    trunk = Trunk(network, family, taps, plan)
    cut_time = _median_seconds(lambda: trunk(sample, timesteps, context, added), repeats)
    return {"full_seconds": full, "trunk_seconds": cut_time, "time_ratio": cut_time / full,
            "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
            "repeats": repeats}


def _cut_tap(name: str, cut: str, layers: int | None) -> str:
    """The tap of block ``cut`` (or of the middle block), counting FLUX's double-stream blocks
    then its single-stream ones as one sequence."""
    config = ARCHITECTURES[name]["transformer"]
    double = layers or config["num_layers"]
    single = (2 * layers if layers else config.get("num_single_layers", 0)) if "num_single_layers" in config else 0
    index = (double + single) // 2 - 1 if cut == "middle" else int(cut)
    if index < double:
        return f"transformer_blocks.{index}"
    return f"single_transformer_blocks.{index - double}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["pixart-alpha-512", "sd3-medium"],
                        choices=sorted(ARCHITECTURES))
    parser.add_argument("--cut", default="middle",
                        help="block index of the tap, or 'middle' (block N/2 - 1: half the blocks)")
    parser.add_argument("--timestep", type=int, default=250)
    parser.add_argument("--layers", type=int, default=None, help="build this many blocks instead")
    parser.add_argument("--time", action="store_true", help="also time the full and cut forwards")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dit_trunk_cost.jsonl")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.arch:
            tap = _cut_tap(name, args.cut, args.layers)
            folder = write_config_folder(name, Path(tmp), args.layers)
            row = {"arch": name, "layers": args.layers or ARCHITECTURES[name]["transformer"]["num_layers"],
                   "tap": tap, "timestep": args.timestep, **count(folder, tap, args.timestep)}
            if args.time:
                row.update(measure_time(folder, tap, args.timestep, args.repeats,
                                        getattr(torch, args.dtype)))
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    _print_table(rows)
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("| arch | layers | tap | size | full GFLOP | trunk GFLOP | FLOP ratio | time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['time_ratio']:.3f}" if "time_ratio" in r else "-"
        print(f"| {r['arch']} | {r['layers']} | {r['tap']} | {r['size'][0]}x{r['size'][1]} | "
              f"{r['full_gflop']:.1f} | {r['trunk_gflop']:.1f} | {r['flop_ratio']:.3f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
