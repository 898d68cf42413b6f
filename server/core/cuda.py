"""Everything that only matters on a GPU: probing CUDA, provider options, IO binding.

Kept apart so that the rest of the runtime is exercised by CPU tests. Nothing here touches
CUDA at import time; `IoBindingRunner` takes the device type as an argument, so the same code
runs (and is tested) with CPU OrtValues.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"

# onnxruntime reports tensor element types as strings; IO binding needs numpy dtypes.
_ORT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def cuda_usable() -> tuple[bool, str]:
    """Whether onnxruntime can run on a GPU here, and why not when it cannot.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU, so the driver is
    asked too (libcuda honours CUDA_VISIBLE_DEVICES), without importing torch.
    """
    if CUDA_PROVIDER not in ort.get_available_providers():
        return False, (
            f"onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
            "(install onnxruntime-gpu instead of onnxruntime: pip install 'electra-serve[gpu]')"
        )
    library = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        libcuda = ctypes.CDLL(library)
    except OSError:
        return False, f"the NVIDIA driver library {library} cannot be loaded (no GPU driver on this machine)"
    if libcuda.cuInit(0) != 0:
        return False, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False, "the NVIDIA driver reports no GPU (check CUDA_VISIBLE_DEVICES)"
    return True, f"{count.value} GPU(s)"


@functools.cache
def preload_dlls() -> None:
    """Load the CUDA and cuDNN libraries from the nvidia-* wheels before the first CUDA session.

    Without it onnxruntime-gpu only finds them on the system library path, and a missing cuDNN
    shows up later as a session silently created without the CUDA provider.
    """
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a failed preload is not fatal: the system path may still have them
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def providers(
    *,
    device_id: int,
    precision: str,
    tensorrt: bool,
    max_batch_size: int,
    max_seq_len: int,
    trt_cache_dir: Path | None,
) -> list[Any]:
    """The provider list for a CUDA session: TensorRT first when asked for, then CUDA. No CPU
    fallback on purpose: a graph the GPU cannot run must fail loudly, not crawl on the CPU."""
    cuda_options = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
    chain: list[Any] = []
    if tensorrt:
        if TENSORRT_PROVIDER not in ort.get_available_providers():
            raise RuntimeError(f"TensorRT was asked for but onnxruntime {ort.__version__} has no {TENSORRT_PROVIDER}")
        # One optimisation profile covering every shape the batcher can send, so TensorRT does
        # not rebuild engines for new shapes at serving time.
        names = ("input_ids", "attention_mask", "token_type_ids")

        def shapes(b: int, seq: int) -> str:
            return ",".join(f"{n}:{b}x{seq}" for n in names)

        trt_options: dict[str, Any] = {
            "device_id": device_id,
            "trt_fp16_enable": precision == "fp16",
            "trt_int8_enable": False,
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(max_batch_size, min(128, max_seq_len)),
            "trt_profile_max_shapes": shapes(max_batch_size, max_seq_len),
        }
        if trt_cache_dir is not None:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            trt_options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir)}
        chain.append((TENSORRT_PROVIDER, trt_options))
    chain.append((CUDA_PROVIDER, cuda_options))
    return chain


class _Bucket:
    """Buffers of one padded shape, bound once; the lock keeps two threads off the same buffers."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.lock = threading.Lock()
        self.binding: ort.IOBinding | None = None
        self.inputs: dict[str, ort.OrtValue] = {}
        self.outputs: dict[str, ort.OrtValue] = {}  # only those whose shape is known up front


class IoBindingRunner:
    """Runs a session with inputs and outputs bound to device buffers, one set per shape bucket.

    Inputs are padded up to the bucket (attention mask zero on padding, so real rows are not
    affected), copied into the bucket's buffers in place, and the outputs are sliced back.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        output_names: Collection[str],
        sequence_outputs: Collection[str],
        bucket: Callable[[int, int], tuple[int, int]],
        device_type: str = "cuda",
        device_id: int = 0,
    ) -> None:
        self._session = session
        self._output_names = tuple(output_names)
        self._sequence_outputs = frozenset(sequence_outputs)
        self._bucket_of = bucket
        self._device = (device_type, device_id)
        self._input_names = [i.name for i in session.get_inputs()]
        self._outputs_meta = {o.name: o for o in session.get_outputs()}
        missing = [n for n in self._output_names if n not in self._outputs_meta]
        if missing:
            raise RuntimeError(f"the ONNX graph has no output(s) {missing}")
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._buckets_lock = threading.Lock()

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def _output_shape(self, name: str, batch: int, seq: int) -> list[int] | None:
        shape: list[int] = []
        for axis, dim in enumerate(self._outputs_meta[name].shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            elif axis == 1 and name in self._sequence_outputs:
                shape.append(seq)
            else:
                return None  # a dimension we cannot predict: let onnxruntime allocate it
        return shape

    def _get_bucket(self, shape: tuple[int, int]) -> _Bucket:
        with self._buckets_lock:
            bucket = self._buckets.get(shape)
            if bucket is None:
                bucket = self._buckets[shape] = self._allocate(shape)
            return bucket

    def _allocate(self, shape: tuple[int, int]) -> _Bucket:
        device_type, device_id = self._device
        bucket = _Bucket(shape)
        binding = self._session.io_binding()
        for name in self._input_names:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.int64, device_type, device_id)
            binding.bind_ortvalue_input(name, value)
            bucket.inputs[name] = value
        for name in self._output_names:
            out_shape = self._output_shape(name, *shape)
            if out_shape is None:
                binding.bind_output(name, device_type, device_id)
                continue
            dtype = _ORT_TYPES.get(self._outputs_meta[name].type, np.float32)
            value = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, dtype, device_type, device_id)
            binding.bind_ortvalue_output(name, value)
            bucket.outputs[name] = value
        bucket.binding = binding
        return bucket

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch, seq = feeds["input_ids"].shape
        bucket = self._get_bucket(self._bucket_of(batch, seq))
        padded_batch, _ = bucket.shape
        host = {}
        for name in self._input_names:
            array = np.zeros(bucket.shape, dtype=np.int64)
            array[:batch, :seq] = feeds[name]
            host[name] = array
        if "attention_mask" in host and padded_batch > batch:
            # Filler rows attend to one position: a fully masked row can yield NaN in some kernels.
            host["attention_mask"][batch:, 0] = 1
        with bucket.lock:
            assert bucket.binding is not None
            for name, array in host.items():
                bucket.inputs[name].update_inplace(array)
            bucket.binding.synchronize_inputs()
            self._session.run_with_iobinding(bucket.binding)
            bucket.binding.synchronize_outputs()
            values = dict(zip(self._output_names, bucket.binding.get_outputs(), strict=True))
            result: dict[str, np.ndarray] = {}
            for name in self._output_names:
                array = values[name].numpy()[:batch]
                if name in self._sequence_outputs:
                    array = array[:, :seq]
                # Copy out while holding the lock: on CPU numpy() is a view of the reused buffer.
                result[name] = np.array(array, dtype=np.float32, copy=True)
        return result
