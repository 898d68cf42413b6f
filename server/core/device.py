"""Where a model runs and at which precision: the `auto` choices, resolved once at load."""

from __future__ import annotations

import logging

from server.core import cuda
from server.core.config import Device
from server.core.errors import ModelLoadError
from server.core.manifest import PRECISIONS, Manifest, Precision

log = logging.getLogger(__name__)

# What `auto` prefers, best first, among the variants a manifest has.
_AUTO_PRECISION: dict[Device, tuple[Precision, ...]] = {"cuda": ("fp16", "fp32"), "cpu": ("fp32",)}


def select_device(device: str) -> Device:
    """`auto` -> CUDA when onnxruntime-gpu has its CUDA provider and the driver sees a GPU, else CPU."""
    if device == "cpu":
        return "cpu"
    if device not in ("auto", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}: expected auto, cpu or cuda")
    usable, reason = cuda.cuda_usable()
    if usable:
        return "cuda"
    if device == "cuda":
        raise ModelLoadError(f"--device cuda was asked for but CUDA is not usable: {reason}")
    log.info("device auto -> cpu (%s)", reason)
    return "cpu"


def select_precision(precision: str, device: Device, manifest: Manifest) -> Precision:
    """`auto` -> fp16 on CUDA (fp32 when the export has no fp16), fp32 on CPU."""
    available = [p for p in PRECISIONS if p in manifest.variants]
    if precision == "auto":
        for candidate in _AUTO_PRECISION[device]:
            if candidate in manifest.variants:
                return candidate
        raise ModelLoadError(
            f"model {manifest.name!r} has no variant usable on {device} by default "
            f"(it has: {', '.join(available) or 'none'}); pass --precision explicitly"
        )
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: expected auto, {', '.join(PRECISIONS)}")
    if precision not in manifest.variants:
        raise ModelLoadError(
            f"model {manifest.name!r} has no {precision} variant (it has: {', '.join(available) or 'none'}); "
            f"re-export with --precision {precision} or choose one of those"
        )
    if precision == "int8" and device == "cuda":
        log.warning(
            "model %s: int8 variants are dynamically quantized for CPU; on CUDA some nodes fall "
            "back to the CPU and it is usually slower than fp16",
            manifest.name,
        )
    if precision == "fp16" and device == "cpu":
        log.warning("model %s: fp16 on CPU runs mostly through casts and is usually slower than fp32", manifest.name)
    return precision
