"""ONNX export of free-text image-text matching: two inputs, images and encoded texts.

The export flow (``export.graph`` / ``export.contract`` and the deployment kit's ``Contract``)
declares exactly one graph input, so a graph taking images *and* text cannot go through it: its
contract, metadata schema, example-input builder and the kit's runner would each need a second
input. What is possible is done here: the free-text module
(``DiffusionPerceptionForImageTextMatching.specialize_free_text``) is exported with
``torch.onnx`` (dynamo exporter) with inputs ``images`` ``(B, 3, H, W)`` in [0, 1] and
``text_context`` ``(M, L, D)`` (the text encoder's output, ``model.encode_texts(texts)[0]``),
output ``scores`` ``(B, M)``, static shapes, and checked against eager PyTorch with
onnxruntime. The text encoder itself is not in the graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["export_free_text_onnx"]


@torch.no_grad()
def export_free_text_onnx(model: nn.Module, path: str | Path, texts: Sequence[str], *,
                          size: Sequence[int] | None = None, batch: int = 1,
                          opset: int = 18) -> dict[str, Any]:
    """Exports (images, encoded texts) -> scores to ONNX and checks it with onnxruntime.

    Args:
        model: A ``DiffusionPerceptionForImageTextMatching``.
        path: The ``.onnx`` file.
        texts: Example texts; their number ``M`` is fixed in the graph.
        size: ``(H, W)`` of the images (default: the model's).
        batch: The (static) number of images.
        opset: ONNX opset (>= 17).

    Returns:
        ``{"path", "inputs", "outputs", "max_abs", "max_rel"}`` (parity against eager).

    Raises:
        RuntimeError: onnx / onnxruntime missing, or parity worse than 1e-4 (relative).
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeError(f"ONNX export needs onnx and onnxruntime ({exc}): "
                           "pip install 'diffperception[onnx]'.") from exc
    special = model.specialize_free_text(tuple(size) if size else None)
    context = model.encode_texts(list(texts))[0]
    images = torch.rand(batch, 3, *special.size, generator=torch.Generator().manual_seed(0))

    class _Tuple(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor, text_context: torch.Tensor) -> torch.Tensor:
            return self.inner(images, text_context)["scores"]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(_Tuple(special).eval(), (images, context), dynamo=True,
                                opset_version=opset, optimize=True, verbose=False,
                                input_names=["images", "text_context"], output_names=["scores"])
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {
        "diffperception.inputs": json.dumps({"images": [batch, 3, *special.size],
                                             "text_context": list(context.shape)}),
        "diffperception.config": json.dumps(special.source_config)})
    onnx.save_model(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy(), "text_context": context.numpy()})[0]
    expected = special(images, context)["scores"]
    diff = (torch.from_numpy(got) - expected).abs().max().item()
    rel = diff / max(1.0, expected.abs().max().item())
    if rel > 1e-4:
        raise RuntimeError(f"The free-text ONNX graph differs from eager PyTorch by {diff:.3g} "
                           f"(relative {rel:.3g}).")
    return {"path": str(path), "inputs": ["images", "text_context"], "outputs": ["scores"],
            "max_abs": diff, "max_rel": rel}
