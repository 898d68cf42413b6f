"""onnxruntime transformer fusions (ELECTRA is BERT-shaped), fp16 conversion and int8 quantization."""

from __future__ import annotations

from pathlib import Path

from onnxruntime.transformers.optimizer import optimize_model

# The fusions ELECTRA gets with model_type "bert"; recorded per variant in the manifest.
# The CPU variants (fp32, and int8 built from it) keep residual Add + LayerNormalization unfused:
# onnxruntime's CPU SkipLayerNormalization kernel is ~5x slower than the two ops it replaces
# (onnxruntime 1.32, [8, 40, 256]: 520 vs 65 us). Measured on the demo classifier, one thread,
# batch 8 x 40 tokens: fp32 68.9 -> 56.7 ms a run, int8 34.5 -> 23.6 ms. fp16 (the GPU variant)
# keeps the fusion, which is what the CUDA kernel wants; onnxruntime re-fuses fp32 on CUDA itself.
CPU_FUSIONS = ("EmbedLayerNormalization", "Attention", "LayerNormalization", "BiasGelu")
GPU_FUSIONS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu")
# CPU sessions turn off onnxruntime's own SkipLayerNormFusion (server.core.runtime.CPU_DISABLED_OPTIMIZERS),
# which would otherwise undo this at load.


def _fused(optimized) -> dict[str, int]:
    stats = optimized.get_fused_operator_statistics()
    return {op: int(n) for op, n in sorted(stats.items()) if n}


def optimize(fp32_path: Path, out_path: Path, num_heads: int, hidden_size: int, fp16: bool) -> dict[str, int]:
    """Fuse (provider-independent python fusions only: opt_level 0) and optionally convert to fp16.

    fp16 keeps int64 inputs and float32 outputs (keep_io_types) so clients never see half floats.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = fp16
    optimized = optimize_model(
        str(fp32_path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
        optimization_options=options,
    )
    fused = _fused(optimized)
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(out_path))
    return fused


def externalize_weights(path: Path) -> Path | None:
    """Move the graph's initializers into `<file>.data` beside it (ONNX external data); returns that
    file, or None when the graph has no initializer large enough to move.

    onnxruntime memory-maps external data on the CPU, so weights read only in part (the 30,522-row
    word embedding) stay on disk until a token touches them, and every process serving the same
    files shares the pages. Measured with the four demo models: 39 MB of RSS per loaded model
    instead of 55, the same speed.
    """
    import onnx

    model = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    if not data.exists():
        return None
    # onnx creates the data file owner-only; a server running as another user (the image's) must read it.
    data.chmod(path.stat().st_mode & 0o777)
    return data


def quantize_int8(fp32_optimized_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantization of the weights (the CPU variant); activations quantized at run time."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference cannot type the outputs of contrib ops (EmbedLayerNormalization, Attention):
    # they are float tensors. The "run pre-processing first" advice targets static quantization.
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(
        str(fp32_optimized_path),
        str(out_path),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
