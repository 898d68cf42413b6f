"""The API worker's side of the model owner: a mirror of its model table and a batcher that sends
rows to it.

`MirrorRegistry` holds this worker's models (the service's `ModelStore`): a model table rebuilt
from the owner's table (each version's manifest and tokenizer read from the same repository on
disk), so the service, the front ends and readiness work as in one process; loading and
unloading are asked of the owner. A version the owner retires stops taking requests here at once;
once the requests this worker holds on it are answered, the worker tells the owner, which frees it
only when every worker has.

`RemoteBatcher.submit` sends a request's rows to the owner's batcher for that version and waits
for their outputs; a cancelled request (client gone, deadline) is cancelled at the owner too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from server.core.batching import SubmitResult
from server.core.catalogue import ModelSlot, ModelTable, VersionStatus
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ModelLoadError, ServeError
from server.core.loader import sha256_hex
from server.core.manifest import Manifest
from server.core.model import ModelVersion, State
from server.core.repository import VersionPolicy, scan, version_policy
from server.core.rows import Row
from server.core.stats import ModelStats
from server.core.tasks import TASKS
from server.core.tokenizer import TokenizerPool
from server.workers import messages as m
from server.workers.owner_client import OwnerClient

log = logging.getLogger("electra.worker")

# The owner's table comes every half second: a worker that hears nothing for six of them turns not
# ready until the owner speaks again.
OWNER_SILENCE_S = 3.0


class VersionView:
    """The owner's latest word on one loaded version, shared by its remote batcher and runtime."""

    def __init__(self, info: m.VersionInfo) -> None:
        self.info = info


class RemoteBatcher:
    """The owner's batcher of one version, as the service sees a batcher (`Batcher`)."""

    def __init__(self, client: OwnerClient, name: str, version: str, view: VersionView) -> None:
        self.client = client
        self.name = f"{name}:{version}"
        self._model, self._version = name, version
        self._view = view
        info = view.info
        self.policy = BatchPolicy(**info.policy) if info.policy else BatchPolicy()

    @property
    def healthy(self) -> bool:
        return self._view.info.ready and self._view.info.alive

    @property
    def alive(self) -> bool:
        return self._view.info.alive

    @property
    def executions(self) -> int:
        return self._view.info.executions

    @property
    def queue_depth(self) -> int:
        return self._view.info.queue_depth

    def check_capacity(self) -> None:
        """The owner refuses a full queue itself; this only saves tokenizing when it is known full."""
        if self._view.info.queue_depth >= self.policy.max_queue_size:
            raise ServeError(
                ErrorKind.OVERLOADED, f"model {self.name} is overloaded: its queue is full", retry_after_s=1.0
            )

    async def submit(self, rows: Sequence[Row], deadline: float | None = None) -> SubmitResult:
        request_id, future = self.client.submit(self._model, self._version, deadline, rows)
        try:
            queue_s, inference_s, outputs = await future
        except asyncio.CancelledError:
            self.client.cancel(request_id)  # its rows leave the owner's queue too
            raise
        return SubmitResult(outputs, queue_s, inference_s)

    def start(self) -> None:
        """The owner's batcher runs from the owner's start-up on."""

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """The owner stops its batchers (after every worker drained)."""


class RemoteRuntime:
    """What `describe` and the v2 config read of a runtime (`RuntimeInfo`); models run at the owner."""

    def __init__(self, view: VersionView) -> None:
        self._view = view

    @property
    def precision(self) -> str:
        return self._view.info.precision

    @property
    def device(self) -> str:
        return self._view.info.device

    @property
    def providers(self) -> list[str]:
        return self._view.info.providers

    @property
    def sequence_outputs(self) -> tuple[str, ...]:
        return tuple(self._view.info.sequence_outputs)

    def close(self) -> None:
        """Nothing of the model is held in this process."""


class MirrorRegistry:
    """This worker's `ModelStore`: the owner's table mirrored, and the owner asked for the rest."""

    def __init__(
        self,
        client: OwnerClient,
        repository: Path,
        *,
        default_policy: VersionPolicy | None = None,
        unload_timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.repository = Path(repository)
        self.default_policy = default_policy or VersionPolicy()
        self.unload_timeout_s = unload_timeout_s
        self.table = ModelTable()
        self._views: dict[tuple[str, str], VersionView] = {}
        self._tokenizers: dict[str, TokenizerPool] = {}
        self.owner_loaded = False  # the owner finished its start-up loading
        self.owner_draining = False
        self.load_error: str | None = None
        self._table_seen = asyncio.Event()  # the owner's start-up ended (loaded or failed)
        self.epoch = -1
        self.stopping = False

    # -- ModelStore ------------------------------------------------------------------------

    @property
    def catalogue(self) -> ModelTable:
        return self.table

    @property
    def started(self) -> bool:
        """The owner loaded its models and is heard. (Not waiting for this worker's tokenizer warm-up:
        workers share the ports, so a worker that listens but is not ready answers 503 to whatever
        the kernel sends it, while another worker already reports the server ready.)"""
        heard = time.monotonic() - self.client.last_heard <= OWNER_SILENCE_S
        return self.owner_loaded and heard

    @property
    def heap_tuned(self) -> bool:
        return False  # no model runs in this process: nothing to trim for

    async def start(self, names: list[str] | None, warm: Callable[[], None]) -> None:
        """Wait for the owner's start-up (it loads `names`), then warm this worker's tokenizers."""
        await self._table_seen.wait()
        if self.load_error:
            raise RuntimeError(self.load_error)
        await asyncio.to_thread(warm)

    def in_repository(self, name: str) -> bool:
        return name in self.table.slots or name in scan(self.repository, self.default_policy)

    def version_policy(self, name: str) -> dict[str, Any]:
        return version_policy(self.repository, self.default_policy, name).describe()

    async def load(self, name: str, *, retry_failed: bool = True) -> list[str]:
        result = await self._control("load", name=name)
        return list(result)

    async def unload(self, name: str) -> None:
        await self._control("unload", name=name)

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return list(await self._control("index", ready=ready_only))

    async def cluster_stats(self) -> ModelStats | None:
        """Every worker's statistics summed (each worker counts the requests it answered)."""
        answer = await self.client.request(m.Stats(self.client.next_id()), timeout_s=10)
        merged = ModelStats(self.table.executions)
        merged.merge(answer.stats)
        return merged

    async def stop(self, timeout_s: float) -> None:
        """The owner stops the batchers (after every worker has drained)."""
        self.stopping = True

    async def _control(self, action: Literal["load", "unload", "index"], name: str = "", ready: bool = False) -> Any:
        control = m.Control(self.client.next_id(), action, name, ready)
        answer = await self.client.request(control, timeout_s=600)
        if answer.ok:
            return answer.result
        if answer.load_error:
            raise ModelLoadError(answer.message)
        raise ServeError(ErrorKind[answer.kind], answer.message, answer.retry_after_s)

    # -- the owner's table -----------------------------------------------------------------

    def apply(self, table: m.Table) -> None:
        if table.epoch <= self.epoch:
            return
        self.epoch = table.epoch
        self.owner_loaded, self.owner_draining, self.load_error = table.loaded, table.draining, table.load_error
        if table.loaded or table.load_error:
            self._table_seen.set()
        slots = self.table.slots
        for name, model in table.models.items():
            slot = self.table.slot(name)
            slot.status = {v: VersionStatus(State(state), reason) for v, (state, reason) in model.status.items()}
            for version, info in model.versions.items():
                current = slot.loaded.get(version)
                view = self._views.get((name, version))
                if current is not None and view is not None and str(current.path) == info.path and not current.retiring:
                    view.info = info
                    if info.retiring:
                        self._retire_here(slot, current)
                    continue
                if info.retiring:
                    continue
                try:
                    fresh = self._version(name, version, info)
                except (OSError, ValueError, ModelLoadError) as exc:
                    log.error("model %s version %s: cannot mirror it here: %s", name, version, exc)
                    continue
                if current is not None:
                    self._retire_here(slot, current)
                slot.loaded[version] = fresh
            for version in [v for v in slot.loaded if v not in model.versions]:
                self._retire_here(slot, slot.loaded[version])
        for name in [n for n in slots if n not in table.models]:
            for gone in list(slots[name].loaded.values()):
                self._retire_here(slots[name], gone)
        self.table.changed()

    def _version(self, name: str, version: str, info: m.VersionInfo) -> ModelVersion:
        path = Path(info.path)
        manifest = Manifest.read(path)
        data = (path / manifest.tokenizer).read_bytes()
        digest = sha256_hex(data)
        pool = self._tokenizers.get(digest) or self._tokenizers.setdefault(digest, TokenizerPool(data.decode("utf-8")))
        view = self._views[(name, version)] = VersionView(info)
        return ModelVersion(
            name=name,
            version=version,
            path=path,
            manifest=manifest,
            task=TASKS[manifest.task],
            tokenizers=pool,
            runtime=RemoteRuntime(view),
            batcher=RemoteBatcher(self.client, name, version, view),
        )

    def _retire_here(self, slot: ModelSlot, version: ModelVersion) -> None:
        """No new request here; tell the owner once this worker's accepted ones are answered."""
        if version.retiring:
            return
        version.retiring = True
        asyncio.get_running_loop().create_task(self._release(slot, version))

    async def _release(self, slot: ModelSlot, version: ModelVersion) -> None:
        await version.wait_released(self.unload_timeout_s)
        if slot.loaded.get(version.version) is version:
            del slot.loaded[version.version]
        with contextlib.suppress(Exception):
            self.client.send(m.Release(version.name, version.version, str(version.path)))


def worker_identity(index: int) -> str:
    return f"w{index}-{os.getpid()}"
