"""Generated model cards (``README.md``) of task models.

The YAML front matter carries ``library_name: diffperception``, ``base_model`` (when the base is a
Hub repo), the ``pipeline_tag`` of the task, ``tags``, the ``license`` carried from the base model
when it is known (a table of well-known bases, or the front matter of the base folder's
``README.md``) and a ``model-index`` when evaluation results are given. The body has a usage
snippet that runs as is, the tap / timestep / noise / prompt settings and a cost table: trunk
parameters and FLOPs kept against the full U-Net (``diffperception.features.cost``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from ..hub import is_hub_repo_id, public_base_name

__all__ = ["build_model_card", "default_usage", "image_size", "base_model_license", "KNOWN_LICENSES",
           "retarget_card"]

#: Licenses of well-known base models (their model cards' ``license`` field).
KNOWN_LICENSES: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "google/ddpm-cifar10-32": "apache-2.0",
}


def base_model_license(repo_id: str, folder: Path | None) -> str | None:
    """The base model's license: from the table of well-known bases or its folder's card."""
    if repo_id in KNOWN_LICENSES:
        return KNOWN_LICENSES[repo_id]
    readme = Path(folder) / "README.md" if folder is not None else None
    if readme is not None and readme.is_file():
        from huggingface_hub import ModelCard

        try:
            return ModelCard.load(readme, ignore_metadata_errors=True).data.license
        except Exception:  # noqa: BLE001 - a broken base card only loses the license
            return None
    return None


def image_size(model) -> tuple[int, int]:
    """``(H, W)`` the model runs at: ``preprocess.size``, else the network's native size."""
    if model.config.preprocess.size:
        h, w = model.config.preprocess.size
        return int(h), int(w)
    return model.backbone.native_size


def default_usage(model, model_id: str, body: str | None = None) -> str:
    """A snippet that loads the model by ``model_id`` and runs it on a random image batch.

    Args:
        model: The task model.
        model_id: The repo id or folder the snippet loads.
        body: The lines after the images are made (default: run the model under ``no_grad`` and
            print each output's shape).
    """
    h, w = image_size(model)
    if body is None:
        prompt = model.config.features.prompt
        call = 'model(images, prompt=["a photo"])' if prompt.kind == "per_image" else "model(images)"
        body = ("with torch.no_grad():\n"
                f"    outputs = {call}\n"
                "for name, value in outputs.items():  # {tap: (B, C, h, w)}\n"
                "    print(name, tuple(value.shape))\n")
    return (
        "import torch\n"
        "from diffperception import AutoDiffusionPerception\n\n"
        f"model = AutoDiffusionPerception.from_pretrained({model_id!r})\n"
        f"images = torch.rand(1, 3, {h}, {w})  # (B, 3, H, W) RGB in [0, 1]\n" + body
    )


def _settings_table(model) -> str:
    cfg = model.config
    taps = ", ".join(f"`{t.name}`" + (f" (`{t.path}`" + (f", {t.kind}" if t.kind != "out" else "")
                                      + ")" if t.path != t.name or t.kind != "out" else "")
                     for t in model.backbone.taps)
    noise = cfg.features.noise
    noise_text = f"{noise.kind}, seed {noise.seed}, ensemble {noise.ensemble}"
    if noise.kind == "ddim_inversion":
        noise_text = f"DDIM inversion, {noise.inversion_steps} steps"
    prompt = cfg.features.prompt
    prompt_text = {"null": 'null (the empty prompt `""`)', "fixed": f"fixed: `{prompt.text}`",
                   "learnable": f"learned, initialised from `{prompt.text}`",
                   "per_image": "one text per image (the text encoder is kept)",
                   "caption": f"each image's caption from `{prompt.captioner or 'BLIP'}` (not "
                              "part of the model; the text encoder is kept)",
                   "shuffled": "one of the candidate texts per image, chosen from the image "
                               "(never from its label)"}[prompt.kind]
    pre = cfg.preprocess
    size = f"{pre.size[0]}x{pre.size[1]}" if pre.size else "input size kept"
    rows = [
        ("base model", f"`{public_base_name(cfg.backbone.repo_id)}` at revision "
                       f"`{model.source.revision or 'local'}`"),
        ("family / dtype", f"{cfg.backbone.family} / {cfg.backbone.dtype}"),
        ("taps", taps),
        ("timesteps", ", ".join(str(t) for t in cfg.features.timesteps)),
        ("noise", noise_text),
        ("prompt", prompt_text),
        ("preprocess", f"{size}, {pre.resize} resize, crop {pre.crop}, range {list(pre.range)}"),
    ]
    if cfg.head is not None:
        rows.append(("head", ", ".join(f"{k}={v!r}" for k, v in cfg.head.to_dict().items())))
    if cfg.labels:
        rows.append(("labels", f"{len(cfg.labels)}: " + ", ".join(f"`{x}`" for x in cfg.labels[:20])
                     + (" ..." if len(cfg.labels) > 20 else "")))
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _trunk_cost(model):
    """``trunk_cost(model)``, kept on the model (counting takes seconds for a full-size U-Net)."""
    from ..features.cost import trunk_cost

    key = json.dumps([dataclasses.asdict(model.config.features), model.config.preprocess.size,
                      str(model.source.folder)])
    cache = model.__dict__.setdefault("_trunk_cost_cache", {})
    if key not in cache:
        cache[key] = trunk_cost(model)
    return cache[key]


def _cost_section(model) -> str:
    cost = _trunk_cost(model)
    pct = lambda part, whole: f"{100 * part / whole:.1f}%" if whole else "-"  # noqa: E731
    rows = [("full U-Net", cost.unet_params, cost.unet_flops, "100%"),
            ("trunk (kept)", cost.trunk_params, cost.trunk_flops,
             pct(cost.trunk_flops, cost.unet_flops))]
    if cost.vae_encoder_params:
        rows.append(("VAE encoder", cost.vae_encoder_params, cost.vae_encoder_flops, "-"))
    if cost.text_encoder_params:
        rows.append(("text encoder(s)", cost.text_encoder_params, 0, "-"))
    table = "\n".join(f"| {name} | {p / 1e6:.2f} M | {f / 1e9:.3f} | {share} |"
                      for name, p, f, share in rows)
    per_image = (f"Per image: the trunk runs {cost.forwards_per_image} time(s) (timesteps x noise "
                 f"draws)")
    if cost.inversion_forwards:
        per_image += f", DDIM inversion {cost.inversion_forwards} full U-Net forward(s)"
    per_image += f": {cost.flops_per_image / 1e9:.3f} GFLOPs in all."
    return (f"Counted with `torch.utils.flop_counter` at {cost.size[0]}x{cost.size[1]}, batch 1, "
            f"one forward (trunk parameters: {pct(cost.trunk_params, cost.unet_params)} of the "
            "U-Net's).\n\n| part | parameters | GFLOPs | FLOPs vs full U-Net |\n|---|---|---|---|\n"
            f"{table}\n\n{per_image}")


def _eval_results(metrics: Sequence[Any] | None):
    from huggingface_hub import EvalResult

    results = []
    for item in metrics or ():
        if isinstance(item, EvalResult):
            results.append(item)
        elif isinstance(item, dict):
            try:
                results.append(EvalResult(**item))
            except TypeError as err:
                raise ValueError(
                    f"metrics entry {item!r} is not an EvalResult: give task_type, dataset_type, "
                    f"dataset_name, metric_type and metric_value ({err})."
                ) from err
        else:
            raise TypeError(f"metrics entries must be EvalResult or dict, got {type(item).__name__}.")
    return results


def _card_data(model, model_id: str, metrics, license: str | None):  # noqa: A002
    from huggingface_hub import ModelCardData

    info = type(model)._hub_mixin_info.model_card_data
    cfg = model.config
    family_tag = {"sd": "stable-diffusion", "pixel": "pixel-diffusion"}.get(cfg.backbone.family)
    tags = sorted(set((info.tags or []) + [t for t in (family_tag,) if t]))
    base = cfg.backbone.repo_id if is_hub_repo_id(cfg.backbone.repo_id) else None
    results = _eval_results(metrics)
    return ModelCardData(
        library_name=info.library_name, pipeline_tag=info.pipeline_tag, tags=tags,
        base_model=base, license=license or base_model_license(cfg.backbone.repo_id,
                                                               model.source.folder),
        eval_results=results or None,
        model_name=Path(model_id).name if results else None,
    )


def _local_base_note(base: str) -> str:
    """The card's sentence on a base model that was a local folder (empty for a Hub base)."""
    if not base.startswith("local:"):
        return ""
    return (f"\n\nThe base model was the local folder `{base[len('local:'):]}`; it is named here "
            "by its folder name only (no local path is published).")


def build_model_card(model, *, model_id: str | None = None, metrics: Sequence[Any] | None = None,
                     license: str | None = None, bundle_trunk: bool = True):  # noqa: A002
    """The model card of a task model.

    Args:
        model: A task model.
        model_id: The repo id or folder the usage snippet loads.
        metrics: ``EvalResult``s (or dicts of their fields) for the ``model-index``.
        license: Overrides the license carried from the base model.
        bundle_trunk: Whether ``model.safetensors`` holds the trunk (said in the card).

    Returns:
        A ``huggingface_hub.ModelCard``.
    """
    from huggingface_hub import ModelCard

    from .. import __version__

    cfg = model.config
    model_id = model_id or "path/to/saved-model"
    data = _card_data(model, model_id, metrics, license)
    base = public_base_name(cfg.backbone.repo_id)
    local = _local_base_note(base)
    weights = ("the trunk (U-Net cut after the last tap, VAE encoder, prompt context) and the head; "
               "`backbone/` holds the base model's configs, so the folder works without the base "
               "repo" if bundle_trunk else
               f"only the tensors that are not in the base model; the trunk is read from "
               f"`{base}` at the pinned revision")
    body = f"""
# {Path(model_id).name}

A `{cfg.architecture}` built with [diffperception](https://pypi.org/project/diffperception/):
the diffusion U-Net of `{base}`, run only up to the last activation the task
needs.{local}

## Usage

```python
{model.card_usage(model_id).rstrip()}
```

## Features

{_settings_table(model)}

## Cost

{_cost_section(model)}

## Files

- `config.json`: the task config (`TaskConfig`), read by `AutoDiffusionPerception`.
- `model.safetensors`: {weights}.

Generated by diffperception {__version__}.
"""
    from .hub_io import CARD_MARKER

    return ModelCard(f"---\n{data.to_yaml()}\n---\n{CARD_MARKER}\n{body}")


def retarget_card(text: str, repo_id: str) -> str:
    """A generated card whose usage snippet loads ``repo_id`` (a push of a local save).

    The snippet of a local save loads the folder it was saved to; pushed, it names the repository
    instead, so no local path is published.
    """
    import re

    return re.sub(r"AutoDiffusionPerception\.from_pretrained\((['\"]).*?\1\)",
                  lambda _: f"AutoDiffusionPerception.from_pretrained({repo_id!r})", text)
