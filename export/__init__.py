"""Deployment kit: run diffperception models exported to ONNX or TensorRT.

It needs only ``numpy``, ``Pillow`` and ``onnxruntime`` (plus ``tensorrt`` and
``cuda-python`` for TensorRT engines) and never imports ``torch`` or ``diffusers``.
Install it on a deployment machine straight from the repository and run it from anywhere::

    pip install ./export                       # from a checkout of the repository
    pip install "git+<repository URL>#subdirectory=export"
    diffperception-deploy run build/model.onnx images/*.png --out features.npz
    diffperception-deploy build-engine build/model.onnx --fp16 --max-batch 8
    diffperception-deploy run build/model.engine images/*.png

The installed package is ``diffperception_deploy`` (``python -m diffperception_deploy.run``
works too); the diffperception library installs the same folder as ``diffperception.deploy``,
and from the repository root it runs as ``python -m export.run``.

Modules:
    contract: the model contract (the schema the diffperception exporter writes into the
        ONNX ``metadata_props`` and ``build_engine`` copies into an engine's sidecar JSON),
        and turning images or ``.npy`` latents into model inputs.
    input_files: reading image and ``.npy`` files within bounded memory (``InputLimits``):
        each file is checked from its header before it is decoded or read.
    onnx_metadata: reads an ONNX file's ``metadata_props`` without the ``onnx``
        package (a small protobuf scanner that skips the graph).
    run: ``OnnxRunner``, ``TensorRTRunner``, ``load_runner`` and the ``run`` command.
    build_engine: ``build_engine()`` builds a TensorRT engine plus its ``<engine>.json``
        sidecar; ``check_engine_compatible`` checks that an engine fits the GPU / TensorRT
        it is loaded on.
    lazy: the lazy-import helper behind this package's names.

Importing this package is cheap: the names below are loaded on first use.
"""

from __future__ import annotations

from .lazy import attach

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(__name__, {
    "Contract": ".contract",
    "TensorSpec": ".contract",
    "Preprocess": ".contract",
    "load_contract": ".contract",
    "parse_contract": ".contract",
    "preprocess_image": ".contract",
    "InputLimits": ".input_files",
    "load_image": ".input_files",
    "load_npy": ".input_files",
    "OnnxRunner": ".run",
    "TensorRTRunner": ".run",
    "load_runner": ".run",
    "check_engine_compatible": ".build_engine",
})
