"""Turns one model version on disk into a ready `ModelVersion`: manifest, runtime (warmed up),
tokenizer, batcher. Synchronous (it runs in a thread); the registry decides when and what.

The runtime comes from an injectable factory: the onnxruntime one by default, a simulated one for
front-end benchmarks, fakes in tests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.core.batching import DynamicBatcher
from server.core.config import BatchPolicy, CoreConfig, Device
from server.core.device import select_device, select_precision
from server.core.errors import ModelLoadError
from server.core.heap import limit_heap_retention
from server.core.manifest import Manifest, Precision
from server.core.model import ModelVersion
from server.core.observer import BatchObserver
from server.core.repository import ModelSource
from server.core.runtime import ModelRuntime, OnnxModelRuntime, RuntimeOptions, warmup_buckets
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool

log = logging.getLogger("electra.loader")


RuntimeFactory = Callable[[Path, Manifest, Device, Precision, RuntimeOptions], ModelRuntime]


def onnx_runtime(
    path: Path, manifest: Manifest, device: Device, precision: Precision, options: RuntimeOptions
) -> ModelRuntime:
    return OnnxModelRuntime(path, manifest, device, precision, options)


def runtime_options(config: CoreConfig, device: Device, policy: BatchPolicy) -> RuntimeOptions:
    """How the server creates each model's runtime (the offline benchmark uses the same).

    CPU: one session per model, shared by the in-flight batches (each run single-threaded on its
    own executor thread): the weights are held once. No memory arena: the arena keeps its peak
    (a batch of long rows) for good, per model, while freed buffers go back to the system.
    """
    return RuntimeOptions(
        intra_op_threads=config.intra_op_threads,
        cpu_sessions=1,
        runs_per_session=policy.max_inflight_batches if device == "cpu" else 1,
        enable_cpu_mem_arena=device != "cpu",
        tensorrt=config.tensorrt,
        max_batch_size=policy.max_batch_size,
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelLoader:
    """Loads model versions on one device, with one policy; shares tokenizers between models."""

    def __init__(
        self,
        config: CoreConfig,
        observer: Callable[[str], BatchObserver] | None = None,
        runtime_factory: RuntimeFactory = onnx_runtime,
        device: Device | None = None,
    ) -> None:
        """device: what the runtime stands for when it is not what `config.device` finds (the
        simulated GPU); None: chosen from the config on first use."""
        self.config = config
        self._observer = observer
        self._runtime_factory = runtime_factory
        self._device: Device | None = device
        self._lock = threading.Lock()
        # Models exported from one base share its tokenizer: one pool (and one copy per
        # tokenizing thread) serves them all, keyed by the tokenizer file's digest.
        self._tokenizers: dict[str, TokenizerPool] = {}
        self.heap_tuned = False

    @property
    def device(self) -> Device:
        """Chosen on first use (the CUDA probe is not free), then fixed for the process."""
        with self._lock:
            if self._device is None:
                self._device = select_device(self.config.device)
                if self._device == "cpu":
                    # CPU sessions run without onnxruntime's arena: bound what glibc keeps of freed activations.
                    self.heap_tuned = limit_heap_retention()
            return self._device

    @property
    def policy(self) -> BatchPolicy:
        return self.config.batch_policy(self.device)

    def load(self, source: ModelSource) -> ModelVersion:
        """Read, verify, load and warm one version; raises ModelLoadError with a readable reason."""
        try:
            manifest = Manifest.read(source.path)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:5])
            raise ModelLoadError(f"model {source.name} version {source.version}: invalid manifest: {problems}") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {source.name} version {source.version}: unreadable manifest: {exc}") from exc
        device, policy = self.device, self.policy
        precision = select_precision(self.config.precision, device, manifest)
        tokenizers = self._tokenizer_pool(source, manifest)
        runtime = self._runtime_factory(
            source.path, manifest, device, precision, runtime_options(self.config, device, policy)
        )
        try:
            runtime.warmup(warmup_buckets(device, policy.max_batch_size, manifest.max_seq_len, policy.max_batch_tokens))
        except Exception as exc:
            runtime.close()
            raise ModelLoadError(f"model {source.name} version {source.version}: warm-up failed: {exc}") from exc
        label = source.name
        batcher = DynamicBatcher(
            runtime.run,
            policy,
            pad_token_id=tokenizers.pad_token_id,
            sequence_outputs=runtime.sequence_outputs,
            observer=self._observer(label) if self._observer else None,
            name=f"{source.name}:{source.version}",
        )
        log.info(
            "model %s version %s loaded: %s, %s on %s", source.name, source.version, manifest.task, precision, device
        )
        return ModelVersion(
            name=source.name,
            version=source.version,
            path=source.path,
            manifest=manifest,
            task=TASKS[manifest.task],
            tokenizers=tokenizers,
            runtime=runtime,
            batcher=batcher,
        )

    def _tokenizer_pool(self, source: ModelSource, manifest: Manifest) -> TokenizerPool:
        directory = source.path.resolve()
        path = (directory / manifest.tokenizer).resolve()
        if not path.is_relative_to(directory):
            raise ModelLoadError(f"model {source.name}: the manifest names a tokenizer outside its directory")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"model {source.name}: cannot read its tokenizer {manifest.tokenizer}: {exc}") from exc
        digest = sha256_hex(data)
        expected = manifest.tokenizer_sha256
        if expected is not None and expected.lower() != digest:
            raise ModelLoadError(
                f"model {source.name}: {manifest.tokenizer} is corrupt or was replaced "
                f"(sha256 {digest} does not match the manifest's {expected})"
            )
        with self._lock:
            pool = self._tokenizers.get(digest)
            if pool is None:
                try:
                    pool = self._tokenizers[digest] = TokenizerPool(data.decode("utf-8"))
                except Exception as exc:
                    raise ModelLoadError(
                        f"model {source.name}: {manifest.tokenizer} is not a tokenizer: {exc}"
                    ) from exc
            return pool

    def forget_unused_tokenizers(self, in_use: list[Any]) -> None:
        """Drop tokenizer pools no loaded model uses any more (after an unload)."""
        keep = {id(pool) for pool in in_use}
        with self._lock:
            for digest in [d for d, pool in self._tokenizers.items() if id(pool) not in keep]:
                del self._tokenizers[digest]
