"""What gets exported: the specialised module, wrapped with the options every exporter shares.

``prepare_export`` specialises a task model (or takes an already specialised module),
optionally puts the resize to the model size in front of it, runs it once on a seeded
example batch and declares the contract. Every exporter starts from the resulting
:class:`PreparedExport`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import PreprocessConfig
from ..features.preprocess import resize_and_crop
from .contract import BATCH_DIM, build_contract, input_sample_shape, normalize_batch

__all__ = ["ExportGraph", "PreparedExport", "eager_outputs", "example_input", "prepare_export",
           "restore_taps", "specialise"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _is_specialised(model: nn.Module) -> bool:
    return isinstance(model, nn.Module) and hasattr(model, "source_config") and hasattr(model, "size")


def specialise(model: nn.Module, size: Sequence[int] | None = None, latent_input: bool = False) -> nn.Module:
    """The images-only module of ``model``.

    Args:
        model: A task model with ``specialize(size=, latent_input=)`` (e.g.
            ``DiffusionPerceptionForFeatureExtraction``) or an already specialised module
            (``SpecializedFeatureExtractor``, passed through after checking the options).
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        latent_input: Take latents instead of images (leaves the VAE encoder out).

    Raises:
        TypeError: ``model`` is neither specialisable nor specialised.
        ValueError: A specialised module was given with a different size / input kind.
    """
    if _is_specialised(model):
        if size is not None and tuple(size) != tuple(model.size):
            raise ValueError(f"the specialised module runs at size {tuple(model.size)}, not {tuple(size)}; "
                             "pass the task model itself to export at another size")
        if bool(latent_input) != bool(getattr(model, "latent_input", False)):
            raise ValueError(f"the specialised module was built with latent_input={model.latent_input}; "
                             "pass the task model itself to export with the other input kind")
        return model.eval()
    if not callable(getattr(model, "specialize", None)):
        raise TypeError(f"cannot export a {type(model).__name__}: pass a diffperception task model "
                        "(e.g. DiffusionPerceptionForFeatureExtraction) or its specialize() result")
    return model.specialize(tuple(size) if size is not None else None, latent_input=latent_input).eval()


class ExportGraph(nn.Module):
    """The exported forward: optional resize to the model size, then the specialised module.

    Args:
        special: The specialised module (one input -> ``{name: tensor}``).
        input_size: ``(H, W)`` of the images the graph takes; they are resized (and
            centre-cropped, as ``preprocess`` says) to ``special.size`` inside the graph.
            None takes images already at ``special.size``.
        as_tuple: Return the outputs as a tuple in ``output order`` (ONNX) instead of a dict.
    """

    def __init__(self, special: nn.Module, *, input_size: Sequence[int] | None = None,
                 as_tuple: bool = False) -> None:
        super().__init__()
        self.special = special
        self.as_tuple = as_tuple
        self.resize: PreprocessConfig | None = None
        if input_size is not None and tuple(input_size) != tuple(special.size):
            pre = dict(getattr(special, "source_config", {}).get("preprocess", {}))
            self.resize = PreprocessConfig(size=[int(v) for v in special.size],
                                           resize=pre.get("resize", "bicubic"), crop=pre.get("crop", "center"))

    def forward(self, inputs: torch.Tensor) -> Any:
        if self.resize is not None:
            inputs = resize_and_crop(inputs, self.resize)  # (B, 3, H, W) at the model size
        outputs = self.special(inputs)
        return tuple(outputs.values()) if self.as_tuple else outputs


@contextlib.contextmanager
def restore_taps(module: nn.Module) -> Iterator[None]:
    """Silences torch.export's warning about the trunk's capture store.

    ``torch.export`` snapshots and restores plain module attributes, including the dict the
    trunk's capture hooks write into; the hooks reach that dict through the trunk at call time,
    so the eager module keeps working after an export.
    """
    with warnings.catch_warnings():
        # the capture hooks make torch.export warn that tensor attributes were assigned
        warnings.filterwarnings("ignore", message="The tensor attribute", category=UserWarning)
        yield


def _module_dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def example_input(contract: Mapping[str, Any], batch: int, *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded input batch: images uniform in [0, 1], latents standard normal."""
    spec = contract["inputs"][0]
    shape = (batch, *spec["shape"][1:])
    generator = torch.Generator().manual_seed(seed)
    if spec["name"] == "latents":
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.rand(shape, generator=generator).to(dtype)


@dataclass
class PreparedExport:
    """A specialised module ready to export.

    Attributes:
        special: The specialised module.
        graph: The module to trace / export (:class:`ExportGraph`).
        contract: The contract (float32; exporters replace the dtype for fp16).
        example: The example input the exporters trace with.
        batch_range: ``(min, opt, max)``.
        input_size: ``(H, W)`` of the image input when the graph resizes, else None.
        latent_input: Whether the graph takes latents.
    """

    special: nn.Module
    graph: ExportGraph
    contract: dict[str, Any]
    example: torch.Tensor
    batch_range: tuple[int, int, int]
    input_size: tuple[int, int] | None
    latent_input: bool

    @property
    def dynamic(self) -> bool:
        """Whether the batch dimension is dynamic."""
        return self.batch_range[0] < self.batch_range[2]

    @property
    def taps(self) -> list[str]:
        """Output (tap) names in contract order."""
        return [o["tap"] for o in self.contract["outputs"]]

    @property
    def output_names(self) -> list[str]:
        """Sanitised graph output names in contract order."""
        return [o["name"] for o in self.contract["outputs"]]

    def dynamic_shapes(self) -> tuple[dict[int, Any]] | None:
        """``torch.export`` dynamic shapes for the batch range (None for a static batch)."""
        if not self.dynamic:
            return None
        low, _, high = self.batch_range
        return ({0: torch.export.Dim(BATCH_DIM, min=low, max=high)},)

    def check_batches(self) -> list[int]:
        """Batch sizes the parity check runs: the static batch, or both ends of the range."""
        return sorted({self.batch_range[0], self.batch_range[2]})


def prepare_export(
    model: nn.Module,
    *,
    size: Sequence[int] | None = None,
    batch: int = 1,
    batch_range: Sequence[int] | None = None,
    latent_input: bool = False,
    include_resize: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> PreparedExport:
    """Specialise ``model`` and declare what is exported.

    Args:
        model: Task model or specialised module (see :func:`specialise`).
        size: ``(H, W)`` the model runs at.
        batch: Static batch size (without ``batch_range``).
        batch_range: ``(min, opt, max)``; ``min < max`` gives a dynamic batch dimension.
        latent_input: Export a latent-in graph (no VAE encoder).
        include_resize: ``(H, W)`` of the images the graph takes; the graph resizes them
            to ``size`` as the model's ``preprocess`` config says.
        progress: Called with a line of text before slow steps.

    Raises:
        ValueError: Bad sizes or batch options, or a model in a dtype the contract cannot declare.
    """
    say = progress or _quiet
    low, opt, high = normalize_batch(batch, batch_range)
    if include_resize is not None:
        if latent_input:
            raise ValueError("include_resize applies to image inputs; a latent-input graph takes latents")
        include_resize = tuple(int(v) for v in include_resize)
        if len(include_resize) != 2 or min(include_resize) < 1:
            raise ValueError(f"include_resize must be (H, W) with positive sides, got {include_resize}")
    say("specialising the model (timestep, prompt and noise become constants)")
    special = specialise(model, size, latent_input)
    dtype = _module_dtype(special)
    if dtype != torch.float32:
        raise ValueError(f"the model is in {dtype}; export a float32 model (fp16 ONNX / TensorRT "
                         "precision are export options)")
    graph = ExportGraph(special, input_size=include_resize).eval()
    sample = input_sample_shape(special, latent_input, include_resize)
    example_batch = opt if low == high else min(max(2, opt), high)  # torch.export specialises a size-1 example
    probe = {"inputs": [{"name": "latents" if latent_input else "images", "shape": [example_batch, *sample]}]}
    example = example_input(probe, example_batch)
    with torch.no_grad():
        outputs = graph(example)
    contract = build_contract(special, batch, batch_range, latent_input, "float32", outputs=outputs,
                              input_size=include_resize)
    return PreparedExport(special, graph, contract, example, (low, opt, high), include_resize, latent_input)


@torch.no_grad()
def eager_outputs(prepared: PreparedExport, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The eager PyTorch outputs (the parity reference), keyed by tap name, float32."""
    graph = prepared.graph
    as_tuple, graph.as_tuple = graph.as_tuple, False
    try:
        outputs = graph(inputs.float())
    finally:
        graph.as_tuple = as_tuple
    return {tap: value.detach().float() for tap, value in outputs.items()}
