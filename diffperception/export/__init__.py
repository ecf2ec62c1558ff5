"""Exporters of specialised models: TorchScript, torch.export (``.pt2``), ONNX and TensorRT.

Every exporter specialises the model (timestep, prompt and noise become constants), declares
the input / output contract as data (:mod:`.contract`), writes the artifact, and checks it
against eager PyTorch on seeded inputs (:mod:`.parity`): a failing check raises.

Example:
    >>> from diffperception.export import to_onnx
    >>> result = to_onnx(model, "build/model.onnx", size=(512, 512))
    >>> result.parity["up_ft.1"]["max_abs"]

Importing this package is cheap: the exporters are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExportResult": "parity",
    "to_torchscript": "torchscript",
    "to_pt2": "pt2",
    "to_onnx": "onnx",
    "to_tensorrt": "tensorrt",
    "build_contract": "contract",
    "build_metadata": "contract",
    "export_model": "cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public names lazily (torch.onnx, onnx and onnxruntime are slow to import)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return getattr(module, name)
