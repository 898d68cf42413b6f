"""electra-eval: task metrics, PyTorch / offline ONNX / served backends, the deployment gate."""
