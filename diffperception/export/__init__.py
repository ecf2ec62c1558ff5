"""Exporters (TorchScript, torch.export, ONNX, TensorRT) of specialised models."""
