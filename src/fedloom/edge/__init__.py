"""Edge devices: what a device can run (profiles, memory), and models made for them
(int8 quantization, pruning, distillation, ONNX and TorchScript export)."""
