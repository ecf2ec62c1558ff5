"""The export contract: an exported model's inputs and outputs, declared as data.

Every exporter (TorchScript, torch.export, ONNX, TensorRT) and the deployment kit
(``diffperception.deploy``, the top-level ``export/`` folder) read the same contract:

* ``build_contract`` describes the single graph input (``"images"`` in [0, 1], or
  ``"latents"``) and one output per tap, in exactly the JSON format that
  ``diffperception.deploy.contract.parse_contract`` validates;
* ``build_metadata`` adds the ``diffperception.*`` ``metadata_props`` of an ONNX file
  (preprocessing, taps, timesteps, noise seed, source repository and revision, version,
  precision), built from the specialised module's ``source_config``.

ONNX names cannot hold every tap name, so output names are sanitised
(``up_blocks.1:attn`` -> ``up_blocks_1_attn``) and the tap name is kept next to them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "BATCH_DIM",
    "PRECISION_DTYPES",
    "build_contract",
    "build_metadata",
    "input_name",
    "input_sample_shape",
    "normalize_batch",
    "sanitize_output_names",
    "with_dtype",
]

BATCH_DIM = "batch"
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16"}
_RESERVED = ("images", "latents")


def input_name(latent_input: bool) -> str:
    """The graph input's name: ``"latents"`` for latent-in graphs, else ``"images"``."""
    return "latents" if latent_input else "images"


def sanitize_output_names(taps: Sequence[str]) -> list[str]:
    """Graph output names for tap names: ``[A-Za-z0-9_]`` only, unique, not an input name.

    Example:
        >>> sanitize_output_names(["up_blocks.1:attn", "up_ft.1"])
        ['up_blocks_1_attn', 'up_ft_1']
    """
    names: list[str] = []
    for tap in taps:
        base = re.sub(r"[^0-9A-Za-z_]", "_", str(tap)) or "output"
        if base[0].isdigit() or base in _RESERVED:
            base = f"out_{base}"
        name, count = base, 2
        while name in names:
            name, count = f"{base}_{count}", count + 1
        names.append(name)
    return names


def normalize_batch(batch: int = 1, batch_range: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The ``(min, opt, max)`` batch range: ``(batch, batch, batch)`` without a range.

    Raises:
        ValueError: A batch below 1, a range that is not three integers, or one where
            ``1 <= min <= opt <= max`` does not hold.
    """
    if batch_range is None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        return batch, batch, batch
    values = tuple(batch_range)
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"batch_range must be three integers (min, opt, max), got {batch_range!r}")
    low, opt, high = values
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch_range must satisfy 1 <= min <= opt <= max, got {values}")
    return low, opt, high


def input_sample_shape(special: nn.Module, latent_input: bool,
                       input_size: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The ``(C, H, W)`` of one input sample of a specialised module.

    Images: ``(3, *input_size)`` (the size before an in-graph resize) or ``(3, *special.size)``.
    Latents: the shape of the module's fixed noise, ``special.noise`` ``(..., C, h, w)``.
    A module may declare ``input_shape`` itself (e.g. a future task head wrapper).
    """
    declared = getattr(special, "input_shape", None)
    if declared is not None:
        return tuple(int(d) for d in declared)  # type: ignore[return-value]
    if latent_input:
        noise = getattr(special, "noise", None)
        if not isinstance(noise, torch.Tensor) or noise.ndim < 3:
            raise TypeError(f"{type(special).__name__} declares no latent input shape "
                            "(neither an 'input_shape' attribute nor a 'noise' buffer)")
        return tuple(int(d) for d in noise.shape[-3:])  # type: ignore[return-value]
    height, width = input_size if input_size is not None else special.size
    return 3, int(height), int(width)


def _output_entries(outputs: Mapping[str, torch.Tensor], dim0: int | str, dtype: str) -> list[dict[str, Any]]:
    taps = list(outputs)
    return [
        {"name": name, "tap": tap, "shape": [dim0, *(int(d) for d in outputs[tap].shape[1:])], "dtype": dtype}
        for name, tap in zip(sanitize_output_names(taps), taps)
    ]


def build_contract(
    special: nn.Module,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    dtype: str = "float32",
    *,
    outputs: Mapping[str, torch.Tensor] | None = None,
    input_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The contract JSON object of an exported specialised module.

    Args:
        special: The specialised module (forward: one input -> ``{output name: tensor}``).
        batch: Static batch size (used when ``batch_range`` is None).
        batch_range: ``(min, opt, max)``; a range with ``min < max`` makes the batch
            dimension dynamic (``"batch"``).
        latent_input: The graph takes latents instead of images.
        dtype: ``"float32"`` or ``"float16"`` (the graph's input and output dtype).
        outputs: The module's outputs on any example batch (their names, order and
            per-sample shapes are read); computed with one forward on zeros when None.
        input_size: ``(H, W)`` of the image input when the graph resizes to the model size.

    Returns:
        ``{"inputs": [...], "outputs": [...], "batch": {"min", "opt", "max"}}``.

    Raises:
        ValueError: Bad batch / batch range, or an unsupported dtype.
    """
    if dtype not in PRECISION_DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(PRECISION_DTYPES.values())}, got {dtype!r}")
    low, opt, high = normalize_batch(batch, batch_range)
    dim0: int | str = BATCH_DIM if low < high else low
    sample = input_sample_shape(special, latent_input, input_size)
    if outputs is None:
        probe = next((p for p in special.parameters() if p.is_floating_point()), None)
        kind = probe.dtype if probe is not None else torch.float32
        with torch.no_grad():
            outputs = special(torch.zeros(1, *sample, dtype=kind))
    entry: dict[str, Any] = {"name": input_name(latent_input), "shape": [dim0, *sample], "dtype": dtype,
                             "range": None if latent_input else [0.0, 1.0], "layout": "NCHW"}
    return {"inputs": [entry], "outputs": _output_entries(outputs, dim0, dtype),
            "batch": {"min": low, "opt": opt, "max": high}}


def with_dtype(contract: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """A copy of ``contract`` whose input and outputs are declared as ``dtype``."""
    if dtype not in PRECISION_DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(PRECISION_DTYPES.values())}, got {dtype!r}")
    copied = json.loads(json.dumps(contract))
    for entry in copied["inputs"] + copied["outputs"]:
        entry["dtype"] = dtype
    return copied


def _preprocess_entry(config: Mapping[str, Any], contract: Mapping[str, Any], model_size: Sequence[int],
                      input_size: Sequence[int] | None) -> dict[str, Any]:
    """``diffperception.preprocess``: what a caller does before the graph, and what the graph does."""
    pre = config.get("preprocess", {})
    in_graph = ["scale"]
    if contract["inputs"][0]["name"] == "latents":
        in_graph = []
    elif input_size is not None:
        in_graph = ["resize", "scale"]
    return {
        "size": [int(v) for v in (input_size or model_size)],
        "resize": pre.get("resize", "bicubic"),
        "crop": pre.get("crop", "center"),
        "range": [0.0, 1.0],
        "model_size": [int(v) for v in model_size],
        "model_range": [float(v) for v in pre.get("range", (-1.0, 1.0))],
        "in_graph": in_graph,
    }


def build_metadata(
    special: nn.Module,
    contract: Mapping[str, Any],
    precision: str = "fp32",
    *,
    input_size: Sequence[int] | None = None,
) -> dict[str, str]:
    """The ``diffperception.*`` ONNX ``metadata_props`` (key -> string) of an export.

    Args:
        special: The specialised module; its ``source_config`` (the task config dict) and
            ``size`` are read.
        contract: The contract from :func:`build_contract`.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        input_size: ``(H, W)`` of the image input when the graph resizes to the model size.

    Returns:
        The entries ``diffperception.contract``, ``.preprocess``, ``.taps``, ``.timesteps``,
        ``.noise_seed``, ``.source_repo``, ``.source_revision``, ``.version``, ``.precision``,
        plus ``.architecture``, ``.prompt`` and ``.noise`` for information.
    """
    from .. import __version__

    config = dict(getattr(special, "source_config", None) or {})
    features = config.get("features", {})
    backbone = config.get("backbone", {})
    noise = features.get("noise", {})
    taps = [o.get("tap", o["name"]) for o in contract["outputs"]]
    return {
        "diffperception.contract": json.dumps(contract),
        "diffperception.preprocess": json.dumps(_preprocess_entry(config, contract, special.size, input_size)),
        "diffperception.taps": json.dumps(taps),
        "diffperception.timesteps": json.dumps(list(features.get("timesteps", []))),
        "diffperception.noise_seed": str(noise.get("seed")) if noise.get("kind") == "fixed" else "none",
        "diffperception.noise": json.dumps(noise),
        "diffperception.prompt": json.dumps(features.get("prompt", {})),
        "diffperception.architecture": str(config.get("architecture", type(special).__name__)),
        "diffperception.source_repo": str(backbone.get("repo_id") or "unknown"),
        "diffperception.source_revision": str(backbone.get("revision") or "unknown"),
        "diffperception.version": __version__,
        "diffperception.precision": precision,
    }
