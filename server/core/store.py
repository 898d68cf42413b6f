"""Who holds this process's models, as the service sees it: the registry, which loads them (one
process, or the model owner of `--workers`), or a worker's mirror, which asks the owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from server.core.catalogue import Catalogue
from server.core.stats import ModelStats


class ModelStore(Protocol):
    @property
    def catalogue(self) -> Catalogue: ...

    @property
    def started(self) -> bool:
        """Start-up loading finished (and, in a worker, the owner is heard): readiness needs it."""
        ...

    @property
    def load_error(self) -> str | None:
        """Why start-up loading failed, if it did."""
        ...

    @property
    def heap_tuned(self) -> bool:
        """Whether model runs in this process tune the heap (then the service trims it when idle)."""
        ...

    async def start(self, names: list[str] | None, warm: Callable[[], None]) -> None:
        """Start-up: the models serve (all of the repository's when `names` is None), then `warm`
        runs in a thread; raises when loading failed."""

    def in_repository(self, name: str) -> bool: ...

    def version_policy(self, name: str) -> dict[str, Any]: ...

    async def load(self, name: str, *, retry_failed: bool = True) -> list[str]: ...

    async def unload(self, name: str) -> None: ...

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]: ...

    async def cluster_stats(self) -> ModelStats | None:
        """Statistics summed over processes, when more than this one answers requests."""
        ...

    async def stop(self, timeout_s: float) -> None:
        """Shutdown: what was accepted finishes (bounded)."""
