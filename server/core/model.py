"""One loaded version of one model, and its life: loading, ready, unloading, unavailable, failed.

Requests hold a lease on the version they resolved, from tokenization to decode: an unload (or
a reload that replaces the version) first stops new leases, waits for the held ones to end, then
stops the batcher and releases the runtime.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePath
from typing import Any

from server.core.batching.interface import Batcher
from server.core.manifest import Manifest
from server.core.runtime import RuntimeInfo
from server.core.tasks.base import TaskHandler
from server.core.tokenizer import TokenizerPool


class State(Enum):
    """Triton's repository index states."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: str
    path: Path
    manifest: Manifest
    task: TaskHandler
    tokenizers: TokenizerPool
    runtime: RuntimeInfo
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)
    # (inode, mtime) of its manifest when loaded: a re-export renamed in place shows as a change.
    manifest_stamp: tuple[int, int] = (0, 0)
    leases: int = 0
    retiring: bool = False
    _released: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return not self.retiring and self.batcher.healthy

    def acquire(self) -> None:
        self.leases += 1

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self._released is not None:
            self._released.set()

    async def wait_released(self, timeout_s: float) -> bool:
        """Wait until no request holds this version (True), or the timeout (False)."""
        if self.leases == 0:
            return True
        self._released = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await self._released.wait()
            return True
        except TimeoutError:
            return self.leases == 0

    def describe(self) -> dict[str, Any]:
        """What `/v1/models` shows of it (no filesystem paths: those stay in the logs)."""
        variant = self.manifest.variants[self.runtime.precision]  # type: ignore[index]
        described = {
            "name": self.name,
            "version": self.version,
            "task": self.manifest.task,
            "labels": self.manifest.labels,
            "precision": self.runtime.precision,
            "device": self.runtime.device,
            "providers": self.runtime.providers,
            "max_seq_len": self.manifest.max_seq_len,
            "problem_type": self.manifest.problem_type,
            "parity": variant.parity.model_dump(),
            "source": {
                "model": public_source(self.manifest.source.model),
                "revision": self.manifest.source.revision,
                "architecture": self.manifest.source.architecture,
            },
            "evaluation": self.manifest.evaluation.model_dump() if self.manifest.evaluation else None,
            "ready": self.ready,
        }
        if self.manifest.task == "rerank":
            described["score_activation"] = self.manifest.score_activation
            described["relevant_label"] = self.manifest.relevant_label
        return described


def public_source(model: str) -> str:
    """A hub id as it is; a local checkpoint directory by its last part only (paths stay in the logs)."""
    if model.startswith(("/", "./", "../", "~")) or "\\" in model:
        return PurePath(model).name
    return model
