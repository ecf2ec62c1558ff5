"""Exporters of specialised models, by registry: TorchScript, torch.export (``.pt2``), ONNX, TensorRT.

Every format goes through one flow, :func:`export`: specialise the model (timestep, prompt and
noise become constants) and declare the contract with the deployment kit's schema
(:mod:`.contract`), write the artifact (the registered exporter's ``write``), describe it
(:class:`ExportResult`), and check it against eager PyTorch on seeded inputs (:mod:`.parity`):
a failing check raises. :func:`register_exporter` adds a format; :func:`list_exporters` lists them.

Example:
    >>> from diffperception.export import export, to_onnx
    >>> result = export(model, "onnx", "build/model.onnx", size=(512, 512))
    >>> result = to_onnx(model, "build/model.onnx", size=(512, 512))   # the same
    >>> result.parity["up_ft.1"]["max_abs"]

Importing this package is cheap: the exporters are loaded on first use.
"""

from __future__ import annotations

from ..deploy.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "ExportOptions": ".options",
    "ExportResult": ".parity",
    "Exporter": ".registry",
    "export": ".registry",
    "get_exporter": ".registry",
    "list_exporters": ".registry",
    "load_metadata": ".registry",
    "register_exporter": ".registry",
    "to_torchscript": ".torchscript",
    "to_pt2": ".pt2",
    "to_onnx": ".onnx",
    "to_tensorrt": ".tensorrt",
    "build_contract": ".contract",
    "build_metadata": ".contract",
    "export_model": ".cli",
})
