"""PyTorch → ONNX export of the medrae models, with torch/ORT parity checks and model cards."""
