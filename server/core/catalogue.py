"""The model table: every model name, its loaded versions and the state of each, and the read-only
questions front ends ask of it (resolve, versions, serving, readiness).

One implementation, held by whoever owns the models of this process: the registry, which loads
them (one process, or the model owner of `--workers`), or a worker's mirror, which rebuilds it from
the owner's table. Front ends and the service read it through `Catalogue`; only its holder changes
it (its `slots`), and calls `changed` after each change so that subscribers (gRPC health, the
owner's table) hear of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from server.core.errors import ErrorKind, ServeError, not_loaded
from server.core.model import ModelVersion, State

log = logging.getLogger("electra.registry")


@dataclass
class VersionStatus:
    state: State
    reason: str = ""


class ModelSlot:
    """One model name: its loaded versions and the state of every version it has had."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loaded: dict[str, ModelVersion] = {}
        self.status: dict[str, VersionStatus] = {}
        # Versions that failed to load, with the stamp of what failed: polling does not try an
        # unchanged broken version again and again (an explicit load does).
        self.failed: dict[str, tuple[int, int]] = {}

    def serving(self) -> ModelVersion | None:
        """The version a request without a version gets: the newest ready one."""
        ready = [v for v in self.loaded.values() if v.ready]
        return max(ready, key=lambda v: int(v.version)) if ready else None

    @property
    def ready(self) -> bool:
        return self.serving() is not None


class Catalogue(Protocol):
    """What front ends and the service may ask of the models (never change)."""

    def subscribe(self, listener: Callable[[], None]) -> None: ...

    def names(self) -> list[str]: ...

    def versions(self) -> Iterator[ModelVersion]: ...

    def serving(self) -> list[ModelVersion]: ...

    def version_names(self, name: str) -> list[str]: ...

    def find(self, name: str, version: str = "") -> ModelVersion: ...

    def resolve(self, task: str | None, name: str | None, version: str | None = None) -> ModelVersion: ...

    def model_ready(self, name: str, version: str | None = None) -> bool: ...

    def failing(self) -> list[str]: ...

    @property
    def all_ready(self) -> bool: ...

    def executions(self, model: str, version: str) -> int: ...


class ModelTable:
    def __init__(self) -> None:
        self.slots: dict[str, ModelSlot] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- for the holder ----------------------------------------------------------------------

    def slot(self, name: str) -> ModelSlot:
        return self.slots.get(name) or self.slots.setdefault(name, ModelSlot(name))

    def changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a model table listener failed")

    # -- Catalogue ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Called (on the event loop) after every change of a model's state."""
        self._listeners.append(listener)

    def names(self) -> list[str]:
        return list(self.slots)

    def versions(self) -> Iterator[ModelVersion]:
        """Every loaded version (ready or draining)."""
        for slot in list(self.slots.values()):
            yield from list(slot.loaded.values())

    def serving(self) -> list[ModelVersion]:
        """The version each model serves by default, by name."""
        return [v for slot in sorted(self.slots.values(), key=lambda s: s.name) if (v := slot.serving())]

    def version_names(self, name: str) -> list[str]:
        """The loaded versions of a model, oldest first."""
        slot = self.slots.get(name)
        return sorted(slot.loaded, key=int) if slot else []

    def find(self, name: str, version: str = "") -> ModelVersion:
        """A loaded version, ready or not ("": the one that serves by default), else 404."""
        slot = self.slots.get(name)
        found = None
        if slot is not None:
            found = slot.loaded.get(version) if version else slot.serving()
        if found is None:
            raise not_loaded(name, version or None)
        return found

    def model_ready(self, name: str, version: str | None = None) -> bool:
        slot = self.slots.get(name)
        if slot is None:
            return False
        if not version:
            return slot.ready
        loaded = slot.loaded.get(version)
        return bool(loaded and loaded.ready)

    def failing(self) -> list[str]:
        """Models with a loaded version of which none is ready."""
        return sorted(name for name, slot in self.slots.items() if slot.loaded and not slot.ready)

    @property
    def all_ready(self) -> bool:
        """Some model serves, and every model with a loaded version serves (a model that is loading
        for the first time, failed, or was unloaded does not make the server unready)."""
        loaded = [slot for slot in self.slots.values() if slot.loaded]
        return bool(loaded) and all(slot.ready for slot in loaded)

    def executions(self, model: str, version: str) -> int:
        slot = self.slots.get(model)
        loaded = slot.loaded.get(version) if slot else None
        return loaded.batcher.executions if loaded else 0

    def resolve(self, task: str | None, name: str | None, version: str | None = None) -> ModelVersion:
        """The version a request names (or the newest ready one), or the only model serving its task."""
        if name is not None:
            if not isinstance(name, str):
                raise ServeError(ErrorKind.BAD_REQUEST, "model must be a string")
            slot = self.slots.get(name)
            if slot is None:
                raise not_loaded(name)
            found = slot.loaded.get(version) if version else slot.serving()
            if found is None or not found.ready:
                raise _unavailable(slot, version)
            if task is not None and found.manifest.task != task:
                raise ServeError(ErrorKind.BAD_REQUEST, f"model '{name}' serves {found.manifest.task}, not {task}")
            return found
        candidates = [v for v in self.serving() if v.manifest.task == task]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise ServeError(ErrorKind.NOT_FOUND, f"no loaded model serves {task}")
        names = ", ".join(v.name for v in candidates)
        raise ServeError(ErrorKind.BAD_REQUEST, f"several models serve {task} ({names}): name one with 'model'")


def _unavailable(slot: ModelSlot, version: str | None) -> ServeError:
    """Why a model that has a slot cannot take this request: 503 while it is loading or its loaded
    version is unhealthy (worth a retry), 404 when nothing of it is (or will soon be) loaded."""
    loading = (slot.status.get(version) if version else None) or next(
        (s for s in slot.status.values() if s.state is State.LOADING), None
    )
    if loading is not None and loading.state is State.LOADING:
        what = f"model '{slot.name}'" + (f" version {version}" if version else "")
        return ServeError(ErrorKind.UNAVAILABLE, f"{what} is still loading", retry_after_s=1.0)
    serving = [v for v in slot.loaded.values() if not v.retiring and (not version or v.version == version)]
    if serving:
        return ServeError(
            ErrorKind.UNAVAILABLE, f"model '{slot.name}' is not ready (its model runs fail)", retry_after_s=1.0
        )
    return not_loaded(slot.name, version)
