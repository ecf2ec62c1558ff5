"""The export contract, written with the deployment kit's schema.

The kit (``diffperception.deploy``, the top-level ``export/`` folder) owns the schema: its
:class:`~diffperception.deploy.contract.Contract` is what a deployment machine reads. This
module only fills one in from a specialised module, so writer and reader cannot drift:

* :func:`build_contract` declares the single graph input (``"images"`` in [0, 1], or
  ``"latents"``), one output per entry of the module's output dict, each named by its key
  (a tap, or ``logits`` / ``embeddings`` / ``scores``), and the preprocessing;
* :func:`build_metadata` adds the ``diffperception.*`` entries read from the module's
  ``source_config`` (timesteps, noise, prompt, labels, source repository and revision,
  version, precision) and serialises everything with
  :meth:`~diffperception.deploy.contract.Contract.to_metadata`, then parses the result back
  with the kit's own parser.

ONNX names cannot hold every key, so graph output names are sanitised
(``up_blocks.1:attn`` -> ``up_blocks_1_attn``) and the key is kept next to them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..deploy.contract import (
    BATCH_DIM,
    IMAGES,
    INPUT_NAMES,
    LATENTS,
    PRECISION_DTYPES,
    Contract,
    Preprocess,
    TensorSpec,
    metadata_key,
    parse_contract,
)
from ..hub import public_base_name
from .options import normalize_batch

__all__ = ["build_contract", "build_metadata", "input_name", "input_sample_shape", "sanitize_output_names"]


def input_name(latent_input: bool) -> str:
    """The graph input's name: ``"latents"`` for latent-in graphs, else ``"images"``."""
    return LATENTS if latent_input else IMAGES


def sanitize_output_names(keys: Sequence[str]) -> list[str]:
    """Graph output names for output keys: ``[A-Za-z0-9_]`` only, unique, not an input name.

    Example:
        >>> sanitize_output_names(["up_blocks.1:attn", "up_ft.1", "logits"])
        ['up_blocks_1_attn', 'up_ft_1', 'logits']
    """
    names: list[str] = []
    for key in keys:
        base = re.sub(r"[^0-9A-Za-z_]", "_", str(key)) or "output"
        if base[0].isdigit() or base in INPUT_NAMES:
            base = f"out_{base}"
        name, count = base, 2
        while name in names:
            name, count = f"{base}_{count}", count + 1
        names.append(name)
    return names


def input_sample_shape(special: nn.Module, latent_input: bool,
                       input_size: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The ``(C, H, W)`` of one input sample of a specialised module.

    Images: ``(3, *input_size)`` (the size before an in-graph resize) or ``(3, *special.size)``.
    Latents: the last three dimensions of the module's fixed noise buffer ``special.noise``
    ``(T, E, 1, C, h, w)``.

    Raises:
        TypeError: A latent-input module without a ``noise`` buffer.
    """
    if latent_input:
        noise = getattr(special, "noise", None)
        if not isinstance(noise, torch.Tensor) or noise.ndim < 3:
            raise TypeError(f"The module {type(special).__name__} has no 'noise' buffer (T, E, 1, C, h, w), so its latent "
                            "input shape is unknown; a specialised module must carry one.")
        return tuple(int(d) for d in noise.shape[-3:])  # type: ignore[return-value]
    height, width = input_size if input_size is not None else special.size
    return 3, int(height), int(width)


def _preprocess(special: nn.Module, latent_input: bool, input_size: Sequence[int] | None) -> Preprocess:
    """What a caller does before the graph, and what the graph does itself."""
    pre = dict(getattr(special, "source_config", None) or {}).get("preprocess", {})
    model_size = tuple(int(v) for v in special.size)
    in_graph: tuple[str, ...] = () if latent_input else ("resize", "scale") if input_size else ("scale",)
    return Preprocess(
        size=tuple(int(v) for v in (input_size or model_size)),  # type: ignore[arg-type]
        resize=pre.get("resize", "bicubic"), crop=pre.get("crop", "center"), range=(0.0, 1.0),
        model_size=model_size,  # type: ignore[arg-type]
        model_range=tuple(float(v) for v in pre.get("range", (-1.0, 1.0))),  # type: ignore[arg-type]
        in_graph=in_graph,
    )


def _probe_outputs(special: nn.Module, sample: tuple[int, int, int]) -> Mapping[str, torch.Tensor]:
    probe = next((p for p in special.parameters() if p.is_floating_point()), None)
    kind = probe.dtype if probe is not None else torch.float32
    with torch.no_grad():
        return special(torch.zeros(1, *sample, dtype=kind))


def build_contract(
    special: nn.Module,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    dtype: str = "float32",
    *,
    outputs: Mapping[str, torch.Tensor] | None = None,
    input_size: Sequence[int] | None = None,
) -> Contract:
    """The contract of an exported specialised module, as the kit's :class:`Contract`.

    Args:
        special: The specialised module (forward: one input -> ``{output key: tensor}``).
        batch: Static batch size (used when ``batch_range`` is None).
        batch_range: ``(min, opt, max)``; a range with ``min < max`` makes the batch
            dimension dynamic (``"batch"``).
        latent_input: The graph takes latents instead of images.
        dtype: ``"float32"`` or ``"float16"`` (the graph's input and output dtype).
        outputs: The module's outputs on any example batch (their keys, order and
            per-sample shapes are read); computed with one forward on zeros when None.
        input_size: ``(H, W)`` of the image input when the graph resizes to the model size.

    Returns:
        The contract; :meth:`Contract.to_dict` is its JSON form.

    Raises:
        ValueError: Bad batch / batch range, or an unsupported dtype.
    """
    low, opt, high = normalize_batch(batch, batch_range)
    dim0: int | str = BATCH_DIM if low < high else low
    sample = input_sample_shape(special, latent_input, input_size)
    if outputs is None:
        outputs = _probe_outputs(special, input_sample_shape(special, latent_input))  # at the model size
    keys = list(outputs)
    graph_input = TensorSpec(input_name(latent_input), (dim0, *sample), "float32", input_name(latent_input),
                             None if latent_input else (0.0, 1.0))
    specs = tuple(TensorSpec(name, (dim0, *(int(d) for d in outputs[key].shape[1:])), "float32", key)
                  for name, key in zip(sanitize_output_names(keys), keys))
    contract = Contract(graph_input, specs, low, opt, high, _preprocess(special, latent_input, input_size))
    return contract.with_dtype(dtype)


def _source_entries(config: Mapping[str, Any], special: nn.Module, precision: str) -> dict[str, str]:
    from .. import __version__

    features, backbone = config.get("features", {}), config.get("backbone", {})
    noise = features.get("noise", {})
    entries = {
        "timesteps": json.dumps(list(features.get("timesteps", []))),
        "noise_seed": str(noise.get("seed")) if noise.get("kind") == "fixed" else "none",
        "noise": json.dumps(noise),
        "prompt": json.dumps(features.get("prompt", {})),
        "architecture": str(config.get("architecture", type(special).__name__)),
        # a local folder is named by its name only: an export publishes no local path
        "source_repo": public_base_name(str(backbone.get("repo_id") or "unknown")),
        "source_revision": str(backbone.get("revision") or "unknown"),
        "version": __version__,
        "precision": precision,
    }
    if config.get("labels"):
        entries["labels"] = json.dumps(list(config["labels"]))
    return {metadata_key(name): value for name, value in entries.items()}


def build_metadata(special: nn.Module, contract: Contract, precision: str = "fp32") -> dict[str, str]:
    """The ``diffperception.*`` metadata entries (key -> string) of an export.

    Args:
        special: The specialised module; its ``source_config`` (the task config dict) is read.
        contract: The contract from :func:`build_contract`, in the artifact's dtype.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.

    Returns:
        ``diffperception.contract``, ``.preprocess``, ``.outputs`` (the output keys),
        ``.timesteps``, ``.noise_seed``, ``.source_repo``, ``.source_revision``, ``.version``,
        ``.precision``, ``.labels`` (task models with labels), plus ``.architecture``,
        ``.prompt`` and ``.noise`` for information.

    Raises:
        ValueError: Unknown precision, or a contract the kit's parser rejects.
    """
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"Unknown precision {precision!r}; use one of {sorted(PRECISION_DTYPES)}.")
    config = dict(getattr(special, "source_config", None) or {})
    entries = {**contract.metadata, **_source_entries(config, special, precision)}
    metadata = dataclasses.replace(contract, metadata=entries).to_metadata()
    parse_contract(metadata, "the export being written")  # the kit reads back what was written
    return metadata
