"""KServe v2 / Open Inference Protocol: the data plane, its tensors, and its HTTP and gRPC faces."""
