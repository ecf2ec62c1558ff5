"""Trains the project's default model on scikit-learn digits and ships it.

Run ``python -m diffperception.default_model.train --out <folder> [--steps N] [--seed 0]``.
On a CPU shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE`` in the environment
(it must be set before torch loads): spinning OpenMP workers otherwise make each
step several times slower.
The script trains the U-Net (the text encoder stays frozen), saves all parts in
diffusers folder layout, loads them back offline, measures zero-shot and
linear-probe accuracy on the test split, and writes a model card.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import CLASS_NAMES, caption_for
from .data import load_digits_split

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1200,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 100,
    "caption_dropout": 0.1,
    "ema_decay": 0.995,
    "min_snr_gamma": 5.0,
    "high_t_fraction": 0.5,
}


def seed_everything(seed: int, threads: int = 2) -> None:
    """Seeds python, numpy and torch, and asks torch for deterministic kernels.

    Denormal floats are flushed to zero: tiny Adam moments otherwise slow CPU
    training down several-fold as it goes on.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _lr_lambda(warmup: int, steps: int):
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * progress))
    return fn


def _sample_timesteps(n: int, n_train_t: int, high_fraction: float,
                      gen: torch.Generator) -> torch.Tensor:
    """Uniform timesteps; a ``high_fraction`` of them drawn from the upper 60% only."""
    t = torch.randint(0, n_train_t, (n,), generator=gen)
    high = torch.randint(int(0.4 * n_train_t), n_train_t, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < high_fraction, high, t)


def _loss_weights(scheduler, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction, min(SNR, gamma) / SNR (or ones)."""
    if gamma is None:
        return torch.ones(len(t))
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1.0 - abar)
    return snr.clamp(max=gamma) / snr


def train_unet(unet, scheduler, cond_table: torch.Tensor, images: np.ndarray,
               labels: np.ndarray, seed: int = 0, **settings: Any) -> dict[str, Any]:
    """Trains the U-Net with the (min-SNR-weighted) epsilon-prediction MSE objective.

    Args:
        unet: The ``UNet2DConditionModel`` to train (updated in place; EMA
            weights are copied into it at the end).
        scheduler: The ``DDPMScheduler`` used to noise the images.
        cond_table: Text-encoder states, one row per caption (row ``c`` for label
            ``c``: the digit captions 0..9 for the default model), the last row the null
            prompt ``""``.
        images: Training images (N, 3, 32, 32) in [0, 1].
        labels: Training labels (N,).
        seed: Seed for batches, noises, timesteps and caption dropout.
        **settings: Overrides of ``TRAIN_DEFAULTS``.

    Returns:
        Dict with ``losses`` (per step), ``final_loss`` (mean of the last 100)
        and ``wall_time_s``.
    """
    from tqdm.auto import tqdm

    cfg = {**TRAIN_DEFAULTS, **settings}
    gen = torch.Generator().manual_seed(seed)
    x0_all = torch.as_tensor(images) * 2.0 - 1.0
    y_all = torch.as_tensor(labels)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg["warmup_steps"], cfg["steps"]))
    ema = [p.detach().clone() for p in params]
    n_train_t = scheduler.config.num_train_timesteps
    losses: list[float] = []
    unet.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg["steps"]), desc="training", dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, len(x0_all), (cfg["batch_size"],), generator=gen)
        x0, y = x0_all[idx], y_all[idx].clone()
        y[torch.rand(len(y), generator=gen) < cfg["caption_dropout"]] = len(cond_table) - 1
        noise = torch.randn(x0.shape, generator=gen)
        t = _sample_timesteps(len(x0), n_train_t, cfg["high_t_fraction"], gen)
        pred = unet(scheduler.add_noise(x0, noise, t), t, cond_table[y]).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * _loss_weights(scheduler, t, cfg["min_snr_gamma"])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        decay = min(cfg["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    wall = time.perf_counter() - start
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    return {"losses": losses, "final_loss": float(np.mean(losses[-100:])), "wall_time_s": wall}


def machine_description() -> str:
    """A short description of the CPU this script runs on."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, no GPU")


def run(out: str | Path, steps: int = TRAIN_DEFAULTS["steps"], seed: int = 0,
        evaluate: bool = True, **settings: Any) -> dict[str, Any]:
    """Builds, trains and saves the default model, then (optionally) evaluates it.

    Args:
        out: Output folder (diffusers layout).
        steps: Number of optimisation steps.
        seed: Seed of everything (initialisation, batches, noises).
        evaluate: Whether to measure accuracies and write them into the card.
        **settings: Overrides of ``TRAIN_DEFAULTS``.

    Returns:
        The training info (also saved as ``training_info.json``): settings,
        ``final_loss``, ``wall_time_s``, machine and, if evaluated, ``quality``.
    """
    from .build import (build_scheduler, build_text_encoder, build_tokenizer, build_unet,
                        encode_prompts, save_model)
    from .card import write_model_card

    seed_everything(seed)
    data = load_digits_split(seed=0)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), seed=seed)
    unet, scheduler = build_unet(seed=seed), build_scheduler()
    prompts = [caption_for(c) for c in range(len(CLASS_NAMES))] + [""]
    cond_table = encode_prompts(tokenizer, text_encoder, prompts)
    info = train_unet(unet, scheduler, cond_table, data["train_images"], data["train_labels"],
                      seed=seed, steps=steps, **settings)
    losses = info.pop("losses")
    info.update(settings={**TRAIN_DEFAULTS, **settings, "steps": steps, "seed": seed},
                machine=machine_description(),
                loss_curve={str(i + 50): float(np.mean(losses[i:i + 50]))
                            for i in range(0, len(losses), 50)})
    print(f"trained {steps} steps in {info['wall_time_s']:.1f} s "
          f"({info['wall_time_s'] / 60:.1f} min); final loss {info['final_loss']:.4f}")
    save_model(out, unet, text_encoder, tokenizer, scheduler)
    _save_info(out, info)
    write_model_card(out, info)
    if evaluate:
        info = evaluate_folder(out)
    print(f"saved to {Path(out).resolve()}")
    return info


def _save_info(out: str | Path, info: dict[str, Any]) -> None:
    """Writes ``training_info.json`` into the model folder."""
    (Path(out) / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")


def evaluate_folder(out: str | Path, seed: int = 0,
                    zero_shot_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Loads a trained folder offline, measures its quality and rewrites its card.

    Args:
        out: Model folder written by :func:`run` (with ``training_info.json``).
        seed: Seed of the random-weight baseline and of the noises.
        zero_shot_kwargs: Overrides for :func:`evaluate.zero_shot_accuracy`.

    Returns:
        The updated training info with ``quality`` and ``eval_time_s``.
    """
    from .card import write_model_card
    from .evaluate import quality_report

    seed_everything(seed)
    info = json.loads((Path(out) / "training_info.json").read_text())
    start = time.perf_counter()
    info["quality"] = quality_report(out, load_digits_split(seed=0), seed=seed,
                                     zero_shot_kwargs=zero_shot_kwargs)
    info["eval_time_s"] = time.perf_counter() - start
    print_report(info["quality"])
    print(f"evaluation took {info['eval_time_s']:.1f} s")
    _save_info(out, info)
    write_model_card(out, info)
    return info


def print_report(quality: dict[str, Any]) -> None:
    """Prints the zero-shot accuracy and the probe table."""
    print(f"zero-shot accuracy (test split): {quality['zero_shot']:.4f}")
    print(f"{'tap':<22}{'trained':>9}{'random':>9}")
    for key, acc in quality["probe_trained"].items():
        print(f"{key:<22}{acc:>9.4f}{quality['probe_random'][key]:>9.4f}")
    print(f"{'raw pixels':<22}{quality['probe_pixels']:>9.4f}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (diffusers layout)")
    parser.add_argument("--steps", type=int, default=TRAIN_DEFAULTS["steps"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"])
    parser.add_argument("--no-eval", action="store_true", help="skip the accuracy checks")
    parser.add_argument("--eval-only", action="store_true",
                        help="only re-evaluate an already trained --out folder")
    parser.add_argument("--card-only", action="store_true",
                        help="only rewrite README.md of --out from its training_info.json")
    parser.add_argument("--zs-timesteps", type=int, nargs="+", default=None,
                        help="timesteps of the zero-shot check (with --eval-only)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "OMP_WAIT_POLICY" not in os.environ:
        print("hint: on a shared CPU, OMP_WAIT_POLICY=PASSIVE makes training much faster")
    start = time.perf_counter()
    if args.card_only:
        from .card import write_model_card

        write_model_card(args.out, json.loads((Path(args.out) / "training_info.json").read_text()))
    elif args.eval_only:
        zs = {"timesteps": tuple(args.zs_timesteps)} if args.zs_timesteps else None
        evaluate_folder(args.out, seed=args.seed, zero_shot_kwargs=zs)
    else:
        run(args.out, steps=args.steps, seed=args.seed, evaluate=not args.no_eval,
            batch_size=args.batch_size, lr=args.lr)
    print(f"total wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
