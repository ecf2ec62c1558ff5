"""What gets exported: the specialised module, wrapped with the options every exporter shares.

A specialised module (what ``model.specialize(size, latent_input=)`` returns for any task
model) takes images (or latents) only and has:

* ``size``: ``(H, W)`` it runs at; ``latent_input``: whether it takes latents;
* ``source_config``: the task config dict (preprocessing, features, labels, backbone);
* ``noise``: its fixed noise buffer ``(T, E, 1, C, h, w)`` (gives the latent input shape);
* ``forward(x) -> {output key: tensor}``: tap names for the feature extractor,
  ``{"logits": (B, num_labels)}`` for an image classifier.

:func:`prepare_export` specialises a task model (or takes an already specialised module),
optionally puts the resize to the model size in front of it, runs it once on a seeded
example batch and declares the contract. Every exporter starts from the resulting
:class:`PreparedExport`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PreprocessConfig
from ..deploy.contract import BATCH_DIM, LATENTS, Contract, input_spec
from ..features.preprocess import resize_and_crop
from ..features.specialize import to_precision
from .contract import build_contract, input_name, input_sample_shape
from .options import ExportOptions

__all__ = ["ExportGraph", "PreparedExport", "REQUIRED_ATTRIBUTES", "Runner", "as_specialized", "eager_outputs",
           "example_input", "prepare_export", "quiet_capture_warnings"]

# Runs an artifact (or the reference) on a float32 input batch: output key -> array / tensor.
Runner = Callable[[torch.Tensor], Mapping[str, Any]]
REQUIRED_ATTRIBUTES = ("size", "source_config", "latent_input")


def _is_specialized(model: nn.Module) -> bool:
    return isinstance(model, nn.Module) and all(hasattr(model, name) for name in REQUIRED_ATTRIBUTES)


def as_specialized(model: nn.Module, size: Sequence[int] | None = None, latent_input: bool = False) -> nn.Module:
    """The images-only module of ``model``, in eval mode.

    Args:
        model: A task model with ``specialize(size, latent_input=)`` or an already
            specialised module (passed through after checking the options).
        size: ``(H, W)`` the model runs at (default: the model's ``preprocess.size``).
        latent_input: Take latents instead of images (leaves the VAE encoder out).

    Raises:
        TypeError: ``model`` is neither specialisable nor specialised.
        ValueError: A specialised module was given with a different size / input kind.
    """
    if _is_specialized(model):
        if size is not None and tuple(size) != tuple(model.size):
            raise ValueError(f"The specialised module runs at size {tuple(model.size)}, not {tuple(size)}; "
                             "pass the task model itself to export at another size.")
        if bool(latent_input) != bool(model.latent_input):
            raise ValueError(f"The specialised module was built with latent_input={model.latent_input}; "
                             "pass the task model itself to export with the other input kind.")
        return model.eval()
    if not callable(getattr(model, "specialize", None)):
        raise TypeError(f"Cannot export a {type(model).__name__}: pass a diffperception task model "
                        "(e.g. DiffusionPerceptionForFeatureExtraction) or its specialize() result, a module "
                        f"with {', '.join(REQUIRED_ATTRIBUTES)} attributes.")
    return model.specialize(tuple(size) if size is not None else None, latent_input=latent_input).eval()


class ExportGraph(nn.Module):
    """The exported forward: optional resize to the model size, then the specialised module.

    Args:
        special: The specialised module (one input -> ``{output key: tensor}``).
        input_size: ``(H, W)`` of the images the graph takes; they are resized (and
            centre-cropped, as ``preprocess`` says) to ``special.size`` inside the graph.
            None takes images already at ``special.size``.
        as_tuple: Return the outputs as a tuple in output order (ONNX) instead of a dict.

    A module in another dtype than float32 (bf16, ``precision="bf16"``) still takes a float32
    batch and returns float32 outputs: the graph casts the input to the module's dtype and the
    outputs back, so the contract's I/O dtype stays float32.
    """

    def __init__(self, special: nn.Module, *, input_size: Sequence[int] | None = None,
                 as_tuple: bool = False) -> None:
        super().__init__()
        self.special = special
        self.as_tuple = as_tuple
        self.compute_dtype = _module_dtype(special)
        self.resize: PreprocessConfig | None = None
        if input_size is not None and tuple(input_size) != tuple(special.size):
            pre = dict(special.source_config or {}).get("preprocess", {})
            self.resize = PreprocessConfig(size=[int(v) for v in special.size],
                                           resize=pre.get("resize", "bicubic"), crop=pre.get("crop", "center"))

    def forward(self, inputs: torch.Tensor) -> Any:
        if self.resize is not None:
            inputs = resize_and_crop(inputs, self.resize)  # (B, 3, H, W) at the model size
        if self.compute_dtype != torch.float32:
            inputs = inputs.to(self.compute_dtype)
            outputs = {key: value.float() for key, value in self.special(inputs).items()}
        else:
            outputs = self.special(inputs)
        return tuple(outputs.values()) if self.as_tuple else outputs

    @contextlib.contextmanager
    def returning_tuple(self) -> Iterator[ExportGraph]:
        """Return the outputs as a tuple inside the block (exporters that name outputs by position)."""
        previous, self.as_tuple = self.as_tuple, True
        try:
            yield self
        finally:
            self.as_tuple = previous


@contextlib.contextmanager
def quiet_capture_warnings() -> Iterator[None]:
    """Silence torch.export's warning about the trunk's capture store.

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


def example_input(contract: Contract | Mapping[str, Any], batch: int, *, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded input batch for a contract (object or JSON): images uniform in [0, 1], latents normal."""
    spec = contract.input if isinstance(contract, Contract) else input_spec(contract)
    return _seeded_input(spec.name, (batch, *spec.shape[1:]), seed, dtype)


def _seeded_input(name: str, shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if name == LATENTS:
        return torch.randn(tuple(shape), generator=generator).to(dtype)
    return torch.rand(tuple(shape), generator=generator).to(dtype)


@dataclass
class PreparedExport:
    """What an exporter writes, and the reference its artifact is checked against.

    Attributes:
        contract: The float32 contract (exporters change the dtype for fp16).
        special: The specialised module (None when built from an exported file).
        graph: The module to trace / export (None when built from an exported file).
        example: The example input the exporters trace with.
        reference: Computes the expected outputs (default: the eager graph).
        source: An exported file the artifact is built from (TensorRT builds from ONNX).
    """

    contract: Contract
    special: nn.Module | None = None
    graph: ExportGraph | None = None
    example: torch.Tensor | None = None
    reference: Runner | None = None
    source: Path | None = None

    @property
    def batch_range(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return self.contract.batch_min, self.contract.batch_opt, self.contract.batch_max

    @property
    def dynamic(self) -> bool:
        """Whether the batch dimension is dynamic."""
        return self.contract.dynamic_batch

    @property
    def output_keys(self) -> list[str]:
        """Output keys (taps, ``logits``, ...) in contract order."""
        return self.contract.output_keys

    @property
    def output_names(self) -> list[str]:
        """Sanitised graph output names in contract order."""
        return [spec.name for spec in self.contract.outputs]

    def dynamic_shapes(self) -> tuple[dict[int, Any]] | None:
        """``torch.export`` dynamic shapes for the batch range (None for a static batch)."""
        if not self.dynamic:
            return None
        low, _, high = self.batch_range
        return ({0: torch.export.Dim(BATCH_DIM, min=low, max=high)},)

    def check_batches(self) -> list[int]:
        """Batch sizes the parity check runs: the static batch, or both ends of the range."""
        return sorted({self.contract.batch_min, self.contract.batch_max})

    def expected(self, inputs: torch.Tensor) -> Mapping[str, Any]:
        """The reference outputs for ``inputs``, keyed by output key."""
        return self.reference(inputs) if self.reference is not None else eager_outputs(self, inputs)


def prepare_export(model: nn.Module, options: ExportOptions | None = None) -> PreparedExport:
    """Specialise ``model`` and declare what is exported.

    Args:
        model: Task model or specialised module (see :func:`as_specialized`).
        options: Size, batch, input kind and in-graph resize (the rest is ignored here).

    Raises:
        ValueError: Bad sizes, or a model in a dtype the contract cannot declare.
    """
    options = options or ExportOptions()
    low, opt, high = options.batches
    options.say("specialising the model (timestep, prompt and noise become constants)")
    special = as_specialized(model, options.size, options.latent_input)
    dtype = _module_dtype(special)
    if options.precision == "bf16":
        # bf16 weights, NHWC convolutions; the original module is left as it is
        options.say("converting the specialised model to bfloat16, channels-last")
        special = to_precision(special, torch.bfloat16, memory_format=torch.channels_last)
    elif dtype != torch.float32:
        raise ValueError(f"The model is in {dtype}; export a float32 model with the precision as an "
                         "export option (precision='bf16' for TorchScript / .pt2, 'fp16' for ONNX / "
                         "TensorRT).")
    graph = ExportGraph(special, input_size=options.include_resize).eval()
    sample = input_sample_shape(special, options.latent_input, options.include_resize)
    example_batch = opt if low == high else min(max(2, opt), high)  # torch.export specialises a size-1 example
    example = _seeded_input(input_name(options.latent_input), (example_batch, *sample), seed=0)
    with torch.no_grad():
        outputs = graph(example)
    contract = build_contract(special, options.batch, options.batch_range, options.latent_input, "float32",
                              outputs=outputs, input_size=options.include_resize)
    return PreparedExport(contract, special, graph, example)


@torch.no_grad()
def eager_outputs(prepared: PreparedExport, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The eager PyTorch outputs (the parity reference), keyed by output key, float32."""
    graph = prepared.graph
    if graph is None:
        raise ValueError("This export was built from a file, not a module; it has no eager outputs.")
    as_tuple, graph.as_tuple = graph.as_tuple, False
    try:
        outputs = graph(inputs.float())
    finally:
        graph.as_tuple = as_tuple
    return {key: value.detach().float() for key, value in outputs.items()}
