"""One onnxruntime session per loaded model: integrity check, session options, warm-up, and a
thread-safe `run` that the batcher calls from its executor.

Device and precision choice live in `server.core.device`; GPU-only code (driver probe, provider
options, IO binding) in `server.core.cuda`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort

from server.core import cuda
from server.core.config import Device
from server.core.device import select_device, select_precision
from server.core.errors import ModelLoadError
from server.core.manifest import INPUT_NAMES, Manifest, Precision

log = logging.getLogger(__name__)


class RuntimeInfo(Protocol):
    """What the server shows of a loaded model variant (a worker's mirror has only this)."""

    # Read-only here: an implementation may narrow them (onnxruntime's are Device and Precision).
    @property
    def device(self) -> str: ...

    @property
    def precision(self) -> str: ...

    @property
    def sequence_outputs(self) -> tuple[str, ...]: ...

    @property
    def providers(self) -> list[str]: ...

    def close(self) -> None:
        """Release what it holds (sessions, device memory)."""


class ModelRuntime(RuntimeInfo, Protocol):
    """A loaded model variant that runs here: what the loader warms and the batcher calls."""

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> dict[str, np.ndarray]: ...

    def warmup(self, buckets: list[tuple[int, int]]) -> float: ...


GraphOptimization = Literal["disable", "basic", "extended", "all"]

_GRAPH_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# onnxruntime's CPU SkipLayerNormalization kernel is ~5x slower than the residual Add +
# LayerNormalization it fuses (see export/optimize.py for the measurements); CPU sessions keep
# them apart, as the export's CPU variants ship them.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sequence_output_names(manifest: Manifest) -> tuple[str, ...]:
    """Outputs with a sequence axis (axis 1), which must be cut back to each row's own length."""
    return () if manifest.task in ("classify", "rerank") else manifest.output_names


def _round_up(n: int, fine_until: int, step: int) -> int:
    """Powers of two up to `fine_until`, then multiples of `step`: few buckets, little padding."""
    if n <= fine_until:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // step) * step


def bucket_shape(batch: int, seq: int, max_seq_len: int) -> tuple[int, int]:
    """The padded shape a [batch, seq] input is run at when buffers are bound per bucket (CUDA)."""
    padded_seq = seq if seq >= max_seq_len else min(max(8, _round_up(seq, 64, 64)), max_seq_len)
    return _round_up(batch, 8, 8), padded_seq


def warmup_buckets(
    device: Device, max_batch_size: int, max_seq_len: int, max_batch_tokens: int
) -> list[tuple[int, int]]:
    """Shapes to run before the server reports ready.

    CUDA: every bucket the batcher can produce within its token budget (kernels are tuned and
    buffers bound per shape). CPU: onnxruntime does not specialise per shape, and a run at the
    full token budget costs as much the second time as the first, so two small runs (one row,
    then a few rows) are enough to start the thread pools, the arena and every kernel.
    """
    if device == "cuda":
        batches = sorted({bucket_shape(b, 1, max_seq_len)[0] for b in range(1, max_batch_size + 1)})
        lengths = sorted({bucket_shape(1, n, max_seq_len)[1] for n in range(1, max_seq_len + 1)})
        shapes = []
        for i, b in enumerate(batches):
            for j, n in enumerate(lengths):
                # The smallest input that lands in this bucket must fit the token budget.
                smallest_b = batches[i - 1] + 1 if i else 1
                smallest_n = lengths[j - 1] + 1 if j else 1
                if smallest_b == 1 or smallest_b * smallest_n <= max_batch_tokens:
                    shapes.append((b, n))
        return shapes
    rows = max(1, min(8, max_batch_size, max_batch_tokens // min(64, max_seq_len)))
    shapes = [(1, min(16, max_seq_len)), (rows, min(64, max_seq_len))]
    return list(dict.fromkeys(shapes))


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    graph_optimization: GraphOptimization = "all"
    enable_cpu_mem_arena: bool = True
    # Intra-op threads spin after each op by default, which steals cores from tokenization.
    allow_spinning: bool | None = None  # None: onnxruntime's default
    # CPU: several sessions let that many batches run at once, each on its own thread pool
    # (cores split between them when intra_op_threads is 0).
    cpu_sessions: int = 1
    # CPU: batches run at once on each session. onnxruntime's Run is reentrant, and with one
    # intra-op thread a run computes on its caller's thread, so two runs on one session use two
    # cores as two sessions would, with one copy of the weights instead of two (measured on the
    # demo classifier: same throughput, 60 MB less per model).
    runs_per_session: int = 1
    cuda_device_id: int = 0
    tensorrt: bool = False
    trt_cache_dir: Path | None = None
    max_batch_size: int = 32  # TensorRT optimisation profile only
    # Bind inputs/outputs to buffers per shape bucket. None: on CUDA only. (It uses one
    # session; on the CPU it exists for tests of that code path, cpu_sessions is then moot.)
    io_binding: bool | None = None
    verify_sha256: bool = True


class OnnxModelRuntime:
    """A loaded model variant. `run` is synchronous and thread-safe."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        device: Device = "cpu",
        precision: Precision = "fp32",
        options: RuntimeOptions | None = None,
    ) -> None:
        self.manifest = manifest
        self.device: Device = device
        self.precision: Precision = precision
        self.options = options or RuntimeOptions()
        self.sequence_outputs = sequence_output_names(manifest)
        self.warmed_up = False
        if precision not in manifest.variants:
            raise ModelLoadError(f"model {manifest.name!r} has no {precision} variant")
        self.variant = manifest.variants[precision]
        self.model_path = self._checked_file(Path(model_dir))

        if device == "cuda":
            cuda.preload_dlls()
        self._sessions = [self._create_session() for _ in range(self._session_count())]
        self._pool: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for _ in range(self._runs_per_session()):
            for session in self._sessions:
                self._pool.put(session)
        self._input_names = [i.name for i in self._sessions[0].get_inputs()]
        unknown = [n for n in self._input_names if n not in INPUT_NAMES]
        outputs = {o.name for o in self._sessions[0].get_outputs()}
        missing = [n for n in self.output_names if n not in outputs]
        if unknown or missing:
            raise ModelLoadError(
                f"{self.model_path}: graph inputs {self._input_names} / outputs {sorted(outputs)} do not "
                f"match the {manifest.task} contract (inputs {list(INPUT_NAMES)}, "
                f"outputs {list(self.output_names)})"
            )
        self._binder: cuda.IoBindingRunner | None = None
        io_binding = self.options.io_binding
        if io_binding is None:
            io_binding = device == "cuda"
        if io_binding:
            self._binder = cuda.IoBindingRunner(
                self._sessions[0],
                output_names=self.output_names,
                sequence_outputs=self.sequence_outputs,
                bucket=lambda b, n: bucket_shape(b, n, manifest.max_seq_len),
                device_type=device,
                device_id=self.options.cuda_device_id,
            )
        log.info(
            "model %s: %s %s on %s (%s)",
            manifest.name,
            precision,
            self.model_path.name,
            device,
            ", ".join(self.providers),
        )

    @classmethod
    def load(
        cls,
        model_dir: Path,
        device: str = "auto",
        precision: str = "auto",
        options: RuntimeOptions | None = None,
    ) -> OnnxModelRuntime:
        """Read the manifest, resolve `auto` choices, and load the variant."""
        try:
            manifest = Manifest.read(Path(model_dir))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the manifest of {model_dir}: {exc}") from exc
        chosen = select_device(device)
        return cls(model_dir, manifest, chosen, select_precision(precision, chosen, manifest), options)

    # -- loading ---------------------------------------------------------------------------

    def _checked_file(self, model_dir: Path) -> Path:
        """The variant's graph path, after checking it (and its external weights, if any) against the manifest."""
        graph = self._verified(model_dir, self.variant.file, self.variant.sha256, "variant file")
        if self.variant.data_file:
            self._verified(model_dir, self.variant.data_file, self.variant.data_sha256, "weights file")
        return graph

    def _verified(self, model_dir: Path, name: str, sha256: str | None, what: str) -> Path:
        path = (model_dir / name).resolve()
        if not path.is_relative_to(model_dir.resolve()):
            raise ModelLoadError(f"manifest of {self.manifest.name!r} names a file outside its directory: {name}")
        if not path.is_file():
            raise ModelLoadError(f"model {self.manifest.name!r}: {self.precision} {what} {path} is missing")
        if self.options.verify_sha256:
            if not sha256:
                # An empty digest must not turn verification off for that file.
                raise ModelLoadError(f"model {self.manifest.name!r}: the manifest gives no sha256 for {name}")
            actual = sha256_of(path)
            if actual != sha256.lower():
                raise ModelLoadError(
                    f"model {self.manifest.name!r}: {path.name} is corrupt or was replaced: sha256 {actual} "
                    f"does not match the manifest's {sha256}"
                )
        return path

    def _session_count(self) -> int:
        return max(1, self.options.cpu_sessions) if self.device == "cpu" else 1

    def _runs_per_session(self) -> int:
        return max(1, self.options.runs_per_session) if self.device == "cpu" else 1

    def _session_options(self) -> ort.SessionOptions:
        opts = self.options
        so = ort.SessionOptions()
        so.graph_optimization_level = _GRAPH_OPTIMIZATION[opts.graph_optimization]
        so.enable_cpu_mem_arena = opts.enable_cpu_mem_arena
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        intra = opts.intra_op_threads
        concurrent = self._session_count() * self._runs_per_session()
        if intra == 0 and concurrent > 1:
            intra = max(1, (os.cpu_count() or 1) // concurrent)
        so.intra_op_num_threads = intra
        so.inter_op_num_threads = opts.inter_op_threads
        if opts.allow_spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.allow_spinning else "0")
        so.log_severity_level = 3  # onnxruntime's warnings about unused initializers are noise here
        return so

    def _providers(self) -> list[object]:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        cache = self.options.trt_cache_dir
        if self.options.tensorrt and cache is None:
            cache = (
                Path.home() / ".cache" / "electra-serve" / "trt" / f"{self.manifest.name}-{self.variant.sha256[:16]}"
            )
        return cuda.providers(
            device_id=self.options.cuda_device_id,
            precision=self.precision,
            tensorrt=self.options.tensorrt,
            max_batch_size=self.options.max_batch_size,
            max_seq_len=self.manifest.max_seq_len,
            trt_cache_dir=cache,
        )

    def _create_session(self) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(
                str(self.model_path),
                sess_options=self._session_options(),
                providers=self._providers(),
                disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if self.device == "cpu" else None,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"model {self.manifest.name!r}: onnxruntime cannot load {self.model_path}: {exc}"
            ) from exc
        got = session.get_providers()
        if self.device == "cuda" and cuda.CUDA_PROVIDER not in got:
            # onnxruntime falls back to the CPU with only a log line when CUDA/cuDNN libraries are missing.
            raise ModelLoadError(
                f"model {self.manifest.name!r}: the session got providers {got} instead of CUDA "
                "(CUDA or cuDNN libraries missing? see onnxruntime's CUDA requirements, or use --device cpu)"
            )
        if self.options.tensorrt and cuda.TENSORRT_PROVIDER not in got:
            raise ModelLoadError(f"model {self.manifest.name!r}: TensorRT was asked for but the session got {got}")
        return session

    # -- serving ---------------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        """The providers the session really got, in priority order."""
        return list(self._sessions[0].get_providers())

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.manifest.output_names

    @property
    def max_seq_len(self) -> int:
        return self.manifest.max_seq_len

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> dict[str, np.ndarray]:
        """int64 [B, L] in; float32 outputs named as the manifest says, batch first."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        for name, array in feeds.items():
            if array.ndim != 2 or array.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {array.shape}; every input must be [batch, seq] like input_ids {input_ids.shape}"
                )
            feeds[name] = np.ascontiguousarray(array, dtype=np.int64)
        batch, seq = input_ids.shape
        if batch == 0 or seq == 0:
            raise ValueError(f"empty input of shape {input_ids.shape}")
        if seq > self.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds the model's max_seq_len {self.max_seq_len}")
        feeds = {name: feeds[name] for name in self._input_names}

        if self._binder is not None:
            return self._binder.run(feeds)
        if not self._sessions:
            raise RuntimeError(f"model {self.manifest.name!r} was unloaded")
        session = self._pool.get()
        try:
            values = session.run(list(self.output_names), feeds)
        finally:
            self._pool.put(session)
        return {
            name: np.asarray(value, dtype=np.float32) for name, value in zip(self.output_names, values, strict=True)
        }

    def close(self) -> None:
        """Release the sessions (and with them the weights, the arena and any GPU buffers); the
        runtime must not run afterwards. Called once the model's batcher has stopped."""
        self._binder = None
        self._sessions.clear()
        while not self._pool.empty():
            self._pool.get_nowait()

    def warmup(self, buckets: Iterable[tuple[int, int]]) -> float:
        """Run each (batch, seq) shape once on every session; returns the seconds it took."""
        started = time.perf_counter()
        for batch, seq in buckets:
            seq = min(seq, self.max_seq_len)
            ids = np.zeros((batch, seq), dtype=np.int64)
            ones = np.ones((batch, seq), dtype=np.int64)
            for _ in range(len(self._sessions)):
                # Each call takes a free session from the pool; sequential calls cycle through all.
                self.run(ids, ones, ids)
        self.warmed_up = True
        seconds = time.perf_counter() - started
        log.info("model %s: warmed up in %.2fs", self.manifest.name, seconds)
        return seconds
