"""The model owner: every loaded version of every model (its `table`, which requests resolve
through the service's catalogue), and the operations that change them (load, unload, reload, poll).
Requests hold a lease on the version they got; nothing else keeps a reference to a loaded version.

All state changes happen on the event loop (loading itself runs in a thread and hands back a
finished `ModelVersion`), so readers never see a table that changes under them. Operations on one
model are serialized by its lock; different models load independently.

A (re)load is atomic for clients: the new version loads and warms beside the old one, then
traffic moves to it, then the old one drains the requests it accepted and is released. A load
that fails leaves what was serving as it was and records why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from server.core.catalogue import ModelSlot, ModelTable, VersionStatus
from server.core.errors import ErrorKind, ModelLoadError, ServeError, not_loaded
from server.core.heap import release_free_heap
from server.core.loader import ModelLoader
from server.core.model import ModelVersion, State
from server.core.repository import ModelSource, RepositoryModel, VersionPolicy, scan, version_policy
from server.core.stats import ModelStats

log = logging.getLogger("electra.registry")


class ModelRegistry:
    def __init__(
        self,
        loader: ModelLoader,
        repository: Path,
        *,
        default_policy: VersionPolicy | None = None,
        unload_timeout_s: float = 30.0,
        on_ready: Callable[[str, bool], None] | None = None,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        self.loader = loader
        self.repository = Path(repository)
        self.default_policy = default_policy or VersionPolicy()
        self.unload_timeout_s = unload_timeout_s
        self.table = ModelTable()
        self._locks: dict[str, asyncio.Lock] = {}  # one per model: its operations run one at a time
        self._on_ready = on_ready
        self._on_removed = on_removed
        self.stopping = False
        self.started = False  # start-up loading finished
        self.load_error: str | None = None
        # Awaited before a retiring version is freed (the multi-process owner waits there for every
        # worker to release it); none: only this process's leases count.
        self._retire_gates: list[Callable[[ModelVersion, float], Awaitable[None]]] = []

    @property
    def catalogue(self) -> ModelTable:
        return self.table

    def add_retire_gate(self, gate: Callable[[ModelVersion, float], Awaitable[None]]) -> None:
        """`gate(version, timeout_s)` is awaited before a retiring version is freed."""
        self._retire_gates.append(gate)

    async def start(self, names: list[str] | None, warm: Callable[[], None]) -> None:
        """Start-up: load the models (`load_all`), then `warm` (in a thread); `started` turns true
        after both, `load_error` says why when loading failed. A shutdown meanwhile stops it."""
        try:
            await self.load_all(names)
            if self.stopping:
                log.info("loading stopped: the server is shutting down")
                return
            await asyncio.to_thread(warm)
            self.started = True
        except Exception as exc:
            self.load_error = str(exc)
            log.error("loading models failed: %s", exc)
            raise

    # -- reading ---------------------------------------------------------------------------

    def _changed(self, name: str) -> None:
        slot = self.table.slots.get(name)
        if self._on_ready is not None and slot is not None:
            self._on_ready(name, slot.ready)
        self.table.changed()

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model of the repository and every version the server
        knows, with its state and, when it is not ready, why."""
        entries: dict[tuple[str, str], dict[str, str]] = {}
        for name, model in scan(self.repository, self.default_policy).items():
            for problem in model.problems:
                entries[(name, "")] = {"name": name, "version": "", "state": State.UNAVAILABLE.value, "reason": problem}
            selected = {s.version for s in model.selected()}
            for version in map(str, model.versions):
                entries[(name, version)] = {
                    "name": name,
                    "version": version,
                    "state": State.UNAVAILABLE.value,
                    "reason": "not loaded" if version in selected else "not selected by the version policy",
                }
        for name, slot in self.table.slots.items():
            for version, status in slot.status.items():
                entries[(name, version)] = {
                    "name": name,
                    "version": version,
                    "state": status.state.value,
                    "reason": status.reason,
                }
        listed = sorted(entries.values(), key=lambda e: (e["name"], int(e["version"] or 0)))
        return [e for e in listed if e["state"] == State.READY.value] if ready_only else listed

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The index as the repository API answers it (the multi-process front end asks the owner)."""
        return self.index(ready_only)

    async def cluster_stats(self) -> ModelStats | None:
        """Statistics summed over processes, when requests are answered by more than this one."""
        return None

    @property
    def heap_tuned(self) -> bool:
        return self.loader.heap_tuned

    def in_repository(self, name: str) -> bool:
        """Whether the repository holds the model, or this server has known it."""
        return name in self.table.slots or name in self.scan()

    def version_policy(self, name: str) -> dict[str, Any]:
        """The model's version policy as Triton's config shows it."""
        return version_policy(self.repository, self.default_policy, name).describe()

    # -- changing --------------------------------------------------------------------------

    def scan(self) -> dict[str, RepositoryModel]:
        return scan(self.repository, self.default_policy)

    async def load(self, name: str, *, retry_failed: bool = True) -> list[str]:
        """(Re)load a model as the repository holds it now: the versions its policy selects load (and
        warm) beside whatever serves; once all of them serve, traffic moves to them and versions no
        longer selected drain and go. Returns the versions that serve afterwards.

        A version that fails to load is recorded (UNAVAILABLE, with the reason) and nothing else
        changes: what served before keeps serving; the failure raises ModelLoadError, which says so."""
        if self.stopping:
            raise ServeError(ErrorKind.UNAVAILABLE, "server is shutting down")
        slot = self.table.slot(name)
        async with self._lock(name):
            model = self.scan().get(name)
            if model is None:
                raise self._failed(slot, f"model '{name}' is not in the repository {self.repository}")
            if model.problems:
                raise self._failed(slot, "; ".join(model.problems))
            wanted = model.selected()
            if not wanted:
                raise self._failed(
                    slot,
                    f"model '{name}': its version policy selects none of the versions on disk "
                    f"({', '.join(map(str, sorted(model.versions))) or 'none'})",
                )
            slot.status.pop("", None)  # a model-level problem of an earlier attempt
            failures = await self._load_versions(slot, [s for s in wanted if self._needs_load(slot, s, retry_failed)])
            if not failures:
                selected = {s.version for s in wanted}
                await self._retire(slot, [v for v in slot.loaded.values() if v.version not in selected])
                for version in [v for v in slot.status if v not in slot.loaded]:
                    del slot.status[version]
            self._changed(name)
            if failures:
                serving = f" (versions {', '.join(sorted(slot.loaded, key=int))} still serve)" if slot.loaded else ""
                raise ModelLoadError("; ".join(f"version {v}: {why}" for v, why in failures.items()) + serving)
            return sorted(slot.loaded, key=int)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.get(name) or self._locks.setdefault(name, asyncio.Lock())

    def _failed(self, slot: ModelSlot, reason: str) -> ModelLoadError:
        """Record a load that could not even start (nothing changes in what serves)."""
        if not slot.loaded:
            slot.status = {"": VersionStatus(State.UNAVAILABLE, reason)}
        self._changed(slot.name)
        return ModelLoadError(reason)

    @staticmethod
    def _needs_load(slot: ModelSlot, source: ModelSource, retry_failed: bool = True) -> bool:
        stamp = _stamp(source.path)
        current = slot.loaded.get(source.version)
        if current is not None and not current.retiring:
            # The same version rewritten in place (a re-export renames a new directory in): load it again.
            return current.path.resolve() != source.path.resolve() or stamp != current.manifest_stamp
        return retry_failed or slot.failed.get(source.version) != stamp

    async def _load_versions(self, slot: ModelSlot, sources: list[ModelSource]) -> dict[str, str]:
        failures: dict[str, str] = {}
        for source in sources:
            if self.stopping:
                break
            slot.status[source.version] = VersionStatus(State.LOADING)
            self._changed(slot.name)
            try:
                loaded = await asyncio.to_thread(self.loader.load, source)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                log.error("model %s version %s failed to load: %s", slot.name, source.version, reason)
                failures[source.version] = reason
                slot.failed[source.version] = _stamp(source.path)
                old = slot.loaded.get(source.version)
                slot.status[source.version] = VersionStatus(
                    State.READY if old is not None and old.ready else State.UNAVAILABLE,
                    reason if old is None else f"a new copy failed to load, the previous one serves: {reason}",
                )
                continue
            loaded.manifest_stamp = _stamp(source.path)
            slot.failed.pop(source.version, None)
            loaded.batcher.start()
            previous = slot.loaded.get(source.version)
            slot.loaded[source.version] = loaded
            slot.status[source.version] = VersionStatus(State.READY)
            if previous is not None:
                await self._retire(slot, [previous], keep_status=True)
            self._changed(slot.name)
        return failures

    async def unload(self, name: str) -> None:
        """Stop serving every version of a model: new requests get 404 at once, accepted ones are
        answered (bounded by the unload timeout), then the memory is released."""
        slot = self.table.slots.get(name)
        if slot is None:
            raise not_loaded(name)
        async with self._lock(name):
            await self._retire(slot, list(slot.loaded.values()))
            slot.status = {v: VersionStatus(State.UNAVAILABLE, "unloaded") for v in slot.status if v}
            self._changed(name)
            if self._on_removed is not None:
                self._on_removed(name)

    async def _retire(self, slot: ModelSlot, versions: list[ModelVersion], keep_status: bool = False) -> None:
        """Take versions out of service, drain them, release them."""
        if not versions:
            return
        for version in versions:
            version.retiring = True
            if not keep_status and version.version in slot.status:
                slot.status[version.version] = VersionStatus(State.UNLOADING)
        self._changed(slot.name)
        await asyncio.gather(*(self._release(slot, v) for v in versions))
        gc.collect()
        # Model runs free their activations; give the heap's free pages back now, not at the next idle trim.
        await asyncio.to_thread(release_free_heap)

    async def _release(self, slot: ModelSlot, version: ModelVersion) -> None:
        for gate in self._retire_gates:
            await gate(version, self.unload_timeout_s)
        if not await version.wait_released(self.unload_timeout_s):
            log.warning(
                "model %s version %s: %d requests still held it after %.0fs; stopping it anyway",
                slot.name,
                version.version,
                version.leases,
                self.unload_timeout_s,
            )
        await version.batcher.stop(drain_timeout_s=self.unload_timeout_s)
        version.runtime.close()
        if slot.loaded.get(version.version) is version:
            del slot.loaded[version.version]
        self.loader.forget_unused_tokenizers([v.tokenizers for v in self.table.versions() if v is not version])
        log.info("model %s version %s released", slot.name, version.version)

    async def load_all(self, names: list[str] | None = None) -> None:
        """Start-up: load the named models (all of the repository's when None), one after another;
        any failure raises (a server must not start with less than it was asked to serve)."""
        available = self.scan()
        wanted = names if names is not None else sorted(available)
        missing = [name for name in wanted if name not in available]
        if missing:
            raise ServeError(ErrorKind.NOT_FOUND, f"models not in {self.repository}: {', '.join(missing)}")
        if not wanted and names is None:
            raise ServeError(ErrorKind.NOT_FOUND, f"no models in {self.repository}")
        for name in wanted:
            if self.stopping:
                return
            await self.load(name)

    async def poll(self) -> None:
        """Poll mode: load what is new or changed in the repository, unload what left it."""
        available = self.scan()
        for name in sorted(n for n, slot in self.table.slots.items() if slot.loaded and n not in available):
            with contextlib.suppress(ServeError):
                await self.unload(name)
        for name, model in sorted(available.items()):
            slot = self.table.slots.get(name)
            if slot is not None and not self._changed_on_disk(slot, model):
                continue
            try:
                await self.load(name, retry_failed=False)
            except (ModelLoadError, ServeError) as exc:
                log.error("poll: model %s: %s", name, exc)

    def _changed_on_disk(self, slot: ModelSlot, model: RepositoryModel) -> bool:
        if model.problems:
            return slot.status.get("", VersionStatus(State.READY)).reason != "; ".join(model.problems)
        wanted = model.selected()
        if any(self._needs_load(slot, s, retry_failed=False) for s in wanted):
            return True
        failed = [s for s in wanted if s.version in slot.failed]
        # Loaded versions the policy no longer selects go, unless a selected one is broken (then
        # what serves keeps serving).
        return not failed and bool(set(slot.loaded) - {s.version for s in wanted})

    async def stop(self, timeout_s: float) -> None:
        """Shutdown: every batcher finishes what it accepted (bounded), then stops."""
        self.stopping = True
        await asyncio.gather(
            *(v.batcher.stop(drain_timeout_s=timeout_s) for v in self.table.versions()), return_exceptions=True
        )


def _stamp(path: Path) -> tuple[int, int]:
    """What changes when a version directory is replaced (a re-export renames a new one in)."""
    try:
        stat = (path / "manifest.json").stat()
    except OSError:
        return (0, 0)
    return (stat.st_ino, stat.st_mtime_ns)
