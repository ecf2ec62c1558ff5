"""Producing the exported artifacts the benchmark runs: TorchScript, torch.export, ONNX.

``export_artifact`` calls the library's exporters (``diffperception.export.to_torchscript`` /
``to_pt2`` / ``to_onnx``); the benchmark checks each artifact's features against the full
diffusers forward before timing it.

``fuse_onnx_attention`` rewrites each exported attention into one ONNX Runtime
``MultiHeadAttention`` contrib op (a tiled CPU kernel that never materialises the
``(B, heads, Q, K)`` score matrix; see ``onnx_attention.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["export_artifact", "fuse_onnx_attention"]

_LIBRARY_EXPORTERS = {"torchscript": "to_torchscript", "torch_export": "to_pt2", "onnx": "to_onnx"}


def export_artifact(fmt: str, model: nn.Module, path: Path, *, size: tuple[int, int], batch: int,
                    latent_input: bool) -> dict[str, Any]:
    """Exports a feature extractor at a static batch with the library's exporters.

    Args:
        fmt: ``torchscript``, ``torch_export`` or ``onnx``.
        model: A ``DiffusionPerceptionForFeatureExtraction`` or its specialised module.
        path: Output file.
        size: Image size ``(H, W)``.
        batch: Static batch size.
        latent_input: Export the latent-in trunk (no VAE encoder).

    Returns:
        ``{"path", "format", "export_seconds", "artifact_bytes", "exporter"}``.
    """
    from diffperception import export as library

    if fmt not in _LIBRARY_EXPORTERS:
        raise ValueError(f"Unknown export format {fmt!r}; use one of {sorted(_LIBRARY_EXPORTERS)}.")
    exporter = getattr(library, _LIBRARY_EXPORTERS[fmt])
    start = time.perf_counter()
    # The benchmark checks every artifact against the full diffusers forward itself.
    result = exporter(model, path, size=size, batch=batch, latent_input=latent_input, check=False)
    return {"path": str(result.path), "format": fmt, "export_seconds": time.perf_counter() - start,
            "artifact_bytes": int(result.size_bytes),
            "exporter": f"diffperception.export.{_LIBRARY_EXPORTERS[fmt]}"}


def fuse_onnx_attention(src: Path, dst: Path) -> dict[str, Any]:
    """Fuses the exported attention subgraphs into ORT ``MultiHeadAttention`` nodes.

    Returns:
        ``{"path", "fuse_seconds", "fused_ops": {"MultiHeadAttention": n, "Softmax": seen}}``.
    """
    from .onnx_attention import fuse_attention

    start = time.perf_counter()
    counts = fuse_attention(src, dst)
    return {"path": str(dst), "fuse_seconds": time.perf_counter() - start,
            "fused_ops": {"MultiHeadAttention": counts["fused"], "Softmax": counts["softmax"]}}
