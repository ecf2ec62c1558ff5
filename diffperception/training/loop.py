"""The training loop: a task model's trainable parameters on a frozen trunk, with ``accelerate``.

One loop for the CPU, one GPU or several (``accelerate launch``), with mixed precision, as in
transformers' ``run_image_classification_no_trainer.py``: ``Accelerator.prepare``, a checkpoint
every epoch with ``accelerator.save_state`` (``checkpoints/epoch-NNN``), ``--resume`` with
``load_state``, metrics with ``gather_for_metrics``, tqdm on the main process only. The
checkpoints hold what training changes (everything outside the base model's trunk), the
optimiser, the scheduler and the random states, not the frozen trunk.

The shuffling is accelerate's seedable sampler (seed + epoch) and the augmentations are drawn
from ``(seed, epoch, index)``, so an interrupted run resumed from its last checkpoint ends with
the same weights as an uninterrupted one.

Example:
    >>> history = train(model, load_image_dataset("digits", "train"),
    ...                 TrainingArguments("runs/digits", epochs=5),
    ...                 eval_data=load_image_dataset("digits", "test"))
    >>> AutoDiffusionPerception.from_pretrained("runs/digits")
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import TransformedImages, collate_images
from .arguments import TrainingArguments, cpu_only
from .feature_cache import CachedFeatures, FeatureCache, content_key, share
from .task import StepOutput, TrainingTask, input_size, training_task
from .history import plot_curves, write_log

__all__ = ["train", "TrainStep", "input_size", "latest_checkpoint", "CHECKPOINTS_DIR"]

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
TRAINABLE_NAME = "trainable.safetensors"


class TrainStep(nn.Module):
    """The module ``accelerate`` prepares: a batch in, the task's ``StepOutput`` out.

    Args:
        model: The task model.
        task: Its ``TrainingTask`` (loss and metrics of a batch).
    """

    def __init__(self, model: nn.Module, task: TrainingTask) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        """The batch's loss and per-sample metrics."""
        return self.task.step(self.model, batch)


def _cached_view(model: nn.Module, cache: FeatureCache, dataset: Any, accelerator: Any,
                 args: TrainingArguments) -> CachedFeatures:
    """Fills the cache with the split's evaluation-transform features; the split as features."""
    plain = TransformedImages(dataset, input_size(model), "none")
    keys = [content_key(plain[i]["pixel_values"]) for i in range(len(plain))]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    todo = cache.missing(keys)
    accelerator.wait_for_everyone()  # every process has listed the same missing keys
    backbone = model.backbone
    cache.fill(share(todo, accelerator.process_index, accelerator.num_processes),
               lambda key: plain[first[key]]["pixel_values"],
               lambda x: backbone(x.to(accelerator.device)), batch_size=args.batch_size,
               progress=args.progress and accelerator.is_local_main_process)
    accelerator.wait_for_everyone()
    return CachedFeatures(cache, keys, dataset["label"])


def _views(model: nn.Module, task: TrainingTask, train_data: Any, eval_data: Any,
           args: TrainingArguments, accelerator: Any) -> tuple[Any, Any]:
    """The training and evaluation sets: cached features where possible, else the task's
    views."""
    cacheable, why = task.cacheable(model)
    if args.feature_cache == "on" and (not cacheable or args.augment != "none"):
        reason = why or f"augment = {args.augment!r} changes the images every epoch"
        raise ValueError(f"feature_cache='on' but the training features cannot be cached: "
                         f"{reason}. Use augment='none' and fixed noise, or feature_cache='auto'.")
    cache = None
    if cacheable and args.feature_cache != "off":
        cache = FeatureCache.for_model(model, args.cache_dir)
    if cache is not None and args.augment == "none":
        train_view = _cached_view(model, cache, train_data, accelerator, args)
    else:
        train_view = task.view(model, train_data, augment=args.augment, seed=args.seed,
                               train=True)
    eval_view = None
    if eval_data is not None:
        eval_view = (_cached_view(model, cache, eval_data, accelerator, args) if cache is not None
                     else task.view(model, eval_data, augment="none", seed=args.seed,
                                    train=False))
    return train_view, eval_view


def _optimizer(model: nn.Module, options: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters (requires_grad): nothing to "
                         "train.")
    if options["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=options["learning_rate"],
                                weight_decay=options["weight_decay"])
    if options["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=options["learning_rate"],
                                 weight_decay=options["weight_decay"])
    return torch.optim.SGD(params, lr=options["learning_rate"], momentum=options["momentum"],
                           weight_decay=options["weight_decay"])


def _register_trainable_state(accelerator: Any, model: nn.Module) -> None:
    """Checkpoints hold the task model minus the base trunk (accelerate's state hooks)."""
    from safetensors.torch import load_file, save_file

    prefixes = tuple(model.trunk_prefixes)
    # parameters inside the trunk that train (normalisation affines, prompt additions) are kept
    trained = {name for name, p in model.named_parameters() if p.requires_grad}

    def keep(key: str) -> bool:
        return not key.startswith(prefixes) or key in trained

    def save(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                     if keep(k)}
            save_file(state, str(Path(output_dir) / TRAINABLE_NAME))
        weights.clear()  # the trunk is frozen: accelerate writes no full copy of it

    def load(models: list, input_dir: str) -> None:
        state = load_file(str(Path(input_dir) / TRAINABLE_NAME))
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if keep(k)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{input_dir} does not match the model: missing {missing}, "
                               f"unexpected {result.unexpected_keys}.")
        models.clear()

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The last complete ``checkpoints/epoch-NNN`` folder of a run, or None."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    done = sorted(p for p in folder.glob("epoch-[0-9][0-9][0-9]") if (p / STATE_NAME).is_file())
    return done[-1] if done else None


def _save_checkpoint(accelerator: Any, output_dir: Path, epoch: int,
                     history: list[dict[str, Any]], options: dict[str, Any], keep: int) -> None:
    """``checkpoints/epoch-NNN``, written under a temporary name and renamed when complete."""
    final = output_dir / CHECKPOINTS_DIR / f"epoch-{epoch + 1:03d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"epoch": epoch + 1, "history": history, "arguments": options}
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        done = sorted((output_dir / CHECKPOINTS_DIR).glob("epoch-[0-9][0-9][0-9]"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(accelerator: Any, output_dir: Path, args: TrainingArguments,
            options: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Loads the last checkpoint; returns ``(epochs done, history)``.

    Raises:
        ValueError: Checkpoints without ``resume``, or options that differ from the run's.
    """
    checkpoint = latest_checkpoint(output_dir)
    if not args.resume:
        if checkpoint is not None:
            raise ValueError(f"{output_dir} already holds checkpoints ({checkpoint.name}); pass "
                             "resume=True (--resume) to continue that run, or another folder.")
        return 0, []
    if checkpoint is None:
        accelerator.print(f"No checkpoint in {output_dir}; starting from epoch 1.")
        return 0, []
    state = json.loads((checkpoint / STATE_NAME).read_text())
    saved = state["arguments"]
    differ = {k: (saved.get(k), options[k]) for k in TrainingArguments.RESUME_KEYS
              if saved.get(k) != options[k]}
    if differ:
        raise ValueError(f"Cannot resume {checkpoint}: options differ from the run's "
                         f"(saved, now): {differ}.")
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"Resumed from {checkpoint} (epoch {state['epoch']}).")
    return int(state["epoch"]), list(state["history"])


def _run_epoch(accelerator: Any, step: nn.Module, loader: Any,
               optimizer: torch.optim.Optimizer | None, desc: str, progress: bool
               ) -> dict[str, float]:
    """One pass over ``loader``; trains when an optimiser is given. Returns the mean loss and
    the mean of each per-sample metric, every sample counted once (``gather_for_metrics``)."""
    from tqdm.auto import tqdm

    task_model = accelerator.unwrap_model(step).model
    task_model.train(optimizer is not None)
    task_model.backbone.eval()  # the frozen trunk stays in inference mode
    totals: dict[str, torch.Tensor] = {}
    count = 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False,
               disable=not (progress and accelerator.is_local_main_process))
    for batch in bar:
        with torch.set_grad_enabled(optimizer is not None):
            out = step(batch)
        if optimizer is not None:
            accelerator.backward(out.loss)
            optimizer.step()
            optimizer.zero_grad()
        size = len(batch["index"])
        values = {"loss": out.loss.detach().float().repeat(size),
                  **{k: v.detach().float() for k, v in out.per_sample.items()}}
        gathered = accelerator.gather_for_metrics(values)
        for key, value in gathered.items():
            totals[key] = totals.get(key, torch.zeros((), dtype=torch.float64)) \
                + value.double().sum().cpu()
        count += int(gathered["loss"].numel())
        bar.set_postfix(loss=float(out.loss.detach()))
    return {key: float(total) / count for key, total in totals.items()}


def _loader(dataset: Any, args: TrainingArguments, shuffle: bool, task: TrainingTask
            ) -> torch.utils.data.DataLoader:
    collate = collate_images if isinstance(dataset, CachedFeatures) else task.collate
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle,
                                       collate_fn=collate, num_workers=args.num_workers)


def _accelerator(args: TrainingArguments) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration

    # StepLR counts epochs: one scheduler step per call, not one per process and batch
    return Accelerator(mixed_precision=args.mixed_precision, cpu=cpu_only(args.cpu),
                       step_scheduler_with_optimizer=False,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                 data_seed=args.seed))


def _finish(accelerator: Any, model: nn.Module, output_dir: Path, history: list[dict[str, Any]],
            options: dict[str, Any], args: TrainingArguments) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(output_dir, bundle_trunk=args.bundle_trunk)
        write_log(output_dir, history, options)
        plot_curves(output_dir, history)
    accelerator.wait_for_everyone()


def train(model: nn.Module, train_data: Any, args: TrainingArguments, *,
          eval_data: Any = None) -> list[dict[str, Any]]:
    """Trains a task model's trainable parameters; saves it with ``save_pretrained``.

    Args:
        model: A task model with a ``training_task()`` (an image classifier, whose labels
            cover the data's classes, or a method task model); its trunk is frozen.
        train_data: The training split (for a classifier ``load_image_dataset``: ``image`` and
            ``label`` columns; other tasks say what they read).
        args: The options (``TrainingArguments``; the defaults are the paper's code's recipe).
        eval_data: A split evaluated after every epoch (optional).

    Returns:
        One record per epoch: ``epoch``, ``lr``, ``train_loss`` and ``train_<metric>`` for the
        task's metrics (``train_accuracy`` for a classifier), ``eval_loss`` / ``eval_<metric>``
        (with ``eval_data``), ``seconds``, ``cached``.

    Raises:
        ValueError: Invalid options, a model without a training task, data the task refuses
            (e.g. more classes than the model's labels), a model without trainable parameters, checkpoints in ``output_dir`` without ``resume``, or
            ``feature_cache="on"`` with features that change between epochs.
    """
    args.validate()
    task = training_task(model)
    task.check_data(model, train_data, "training")
    if eval_data is not None:
        task.check_data(model, eval_data, "evaluation")
    output_dir = Path(args.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    options = args.resolved(task.recipe(model))
    accelerator = _accelerator(args)
    model.to(accelerator.device)
    train_view, eval_view = _views(model, task, train_data, eval_data, args, accelerator)
    optimizer = _optimizer(model, options)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_step_epochs, args.lr_gamma)
    loaders = [_loader(train_view, args, True, task)] + (
        [_loader(eval_view, args, False, task)] if eval_view is not None else [])
    step, optimizer, scheduler, *loaders = accelerator.prepare(TrainStep(model, task), optimizer,
                                                               scheduler, *loaders)
    _register_trainable_state(accelerator, model)
    start, history = _resume(accelerator, output_dir, args, options)
    for epoch in range(start, args.epochs):
        began = time.perf_counter()
        loaders[0].set_epoch(epoch)
        if hasattr(train_view, "set_epoch"):
            train_view.set_epoch(epoch)
        record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
        desc = f"epoch {epoch + 1}/{args.epochs}"
        metrics = _run_epoch(accelerator, step, loaders[0], optimizer, desc, args.progress)
        record.update({f"train_{k}": v for k, v in metrics.items()})
        if eval_view is not None:
            with torch.no_grad():
                metrics = _run_epoch(accelerator, step, loaders[1], None, "evaluating",
                                     args.progress)
            record.update({f"eval_{k}": v for k, v in metrics.items()})
        scheduler.step()
        record.update(seconds=time.perf_counter() - began,
                      cached=isinstance(train_view, CachedFeatures))
        history.append(record)
        accelerator.print(json.dumps(record))
        _save_checkpoint(accelerator, output_dir, epoch, history, options, args.keep_checkpoints)
    _finish(accelerator, model, output_dir, history, options, args)
    return history
