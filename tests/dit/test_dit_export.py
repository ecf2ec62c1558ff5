"""ONNX export of DiT feature models (specialised: constant time, AdaLN and prompt), checked
against eager PyTorch by the exporter's own parity check and by onnxruntime here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffperception import DiffusionPerceptionForFeatureExtraction
from diffperception.export import to_onnx

SIZE = (64, 48)
TAPS = {"pixart": ["transformer_blocks.1", "transformer_blocks.0.attn2.to_q", "transformer_blocks.1.attn1:attn"],
        "sd3": ["transformer_blocks.1", "transformer_blocks.1:adaln", "transformer_blocks.0.attn:attn"],
        "flux": ["single_transformer_blocks.0", "transformer_blocks.0.attn:attn"]}


@pytest.mark.parametrize("kind", ["pixart", "sd3", pytest.param("flux", marks=pytest.mark.slow)])
def test_onnx_export_matches_eager(dit_repos, kind, tmp_path, request):
    import onnxruntime as ort

    folder = request.getfixturevalue("flux_repo") if kind == "flux" else dit_repos[kind]
    model = DiffusionPerceptionForFeatureExtraction.from_diffusers(
        folder, taps=TAPS[kind], timesteps=[261], prompt="a red cat", size=SIZE)
    result = to_onnx(model, tmp_path / "model.onnx")
    assert result.parity and all(v["max_abs"] <= v["tolerance"] for v in result.parity.values())
    images = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = model.specialize(size=SIZE)(images)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: images.numpy()}
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert list(eager) == TAPS[kind] and len(outputs) == len(TAPS[kind])
    for name, onnx_value in zip(TAPS[kind], outputs.values()):  # outputs in tap order
        np.testing.assert_allclose(onnx_value, eager[name].numpy(), atol=1e-4, rtol=1e-3, err_msg=name)
