"""Producing the exported artifacts the benchmark runs, with the library's exporter registry.

``export_artifact`` calls ``diffperception.export.export`` with a registered format (the
benchmark's backend name ``torch_export`` is the registry's ``pt2``); the benchmark checks each
artifact's features against the full diffusers forward before timing it.

``fuse_onnx_attention`` rewrites each exported attention into one ONNX Runtime
``MultiHeadAttention`` contrib op (a tiled CPU kernel that never materialises the
``(B, heads, Q, K)`` score matrix; see ``onnx_attention.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["artifact_suffix", "export_artifact", "fuse_onnx_attention", "registry_format"]

# benchmark backend names that differ from the exporter registry's
_ALIASES = {"torch_export": "pt2"}


def registry_format(fmt: str) -> str:
    """The registered exporter of a benchmark format name (``torch_export`` -> ``pt2``).

    Raises:
        ValueError: No exporter is registered under that name.
    """
    from diffperception.export import get_exporter

    return get_exporter(_ALIASES.get(fmt, fmt)).name


def artifact_suffix(fmt: str) -> str:
    """The artifact suffix of a benchmark format name, from the registry (``onnx`` -> ``.onnx``)."""
    from diffperception.export import get_exporter

    return get_exporter(registry_format(fmt)).suffix


def export_artifact(fmt: str, model: nn.Module, path: Path, *, size: tuple[int, int], batch: int,
                    latent_input: bool, precision: str = "fp32") -> dict[str, Any]:
    """Exports a feature extractor at a static batch with the library's exporter registry.

    Args:
        fmt: A registered format (``torchscript``, ``pt2`` / ``torch_export``, ``onnx``, ...).
        model: A ``DiffusionPerceptionForFeatureExtraction`` or its specialised module.
        path: Output file.
        size: Image size ``(H, W)``.
        batch: Static batch size.
        latent_input: Export the latent-in trunk (no VAE encoder).
        precision: The exporter's precision (``"fp32"``; ``"bf16"`` for TorchScript / .pt2).

    Returns:
        ``{"path", "format", "export_seconds", "artifact_bytes", "exporter"}``.

    Raises:
        ValueError: An unknown format.
    """
    from diffperception.export import export

    name = registry_format(fmt)
    start = time.perf_counter()
    # The benchmark checks every artifact against the full diffusers forward itself.
    result = export(model, name, path, size=size, batch=batch, latent_input=latent_input,
                    precision=precision, check=False)
    return {"path": str(result.path), "format": fmt, "export_seconds": time.perf_counter() - start,
            "artifact_bytes": int(result.size_bytes), "exporter": f"diffperception.export.export(fmt={name!r})"}


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
