"""Deployment kit: run diffperception models exported to ONNX or TensorRT.

This folder is self-contained. It needs only ``numpy``, ``Pillow`` and
``onnxruntime`` (plus ``tensorrt`` and ``cuda-python`` for TensorRT engines) and
never imports ``torch`` or ``diffusers``, so it can be copied next to an exported
model and used on a machine without the training stack::

    python -m export.run build/model.onnx images/*.png --out features.npz
    python -m export.build_engine build/model.onnx --fp16 --max-batch 8
    python -m export.run build/model.engine images/*.png

The same folder is installed as ``diffperception.deploy``.

Modules:
    contract: reads and validates the model contract that the diffperception
        exporter writes into the ONNX ``metadata_props`` (and that
        ``build_engine`` copies into an engine's sidecar JSON), and turns images
        or ``.npy`` latents into model inputs.
    onnx_metadata: reads an ONNX file's ``metadata_props`` without the ``onnx``
        package (a small protobuf scanner that skips the graph).
    run: ``OnnxRunner``, ``TensorRTRunner``, ``load_runner`` and the CLI.
    build_engine: builds a TensorRT engine plus its ``<engine>.json`` sidecar
        and checks that an engine fits the GPU / TensorRT it is loaded on.

Importing this package is cheap: the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Contract": "contract",
    "TensorSpec": "contract",
    "Preprocess": "contract",
    "load_contract": "contract",
    "preprocess_image": "contract",
    "OnnxRunner": "run",
    "TensorRTRunner": "run",
    "load_runner": "run",
    "build_engine": "build_engine",
    "check_engine_compatible": "build_engine",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public names lazily so that importing the package stays light."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    return getattr(module, name)
