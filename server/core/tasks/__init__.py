"""Task registry: one handler per task, each pure (encode / decode)."""

from __future__ import annotations

from server.core.tasks.base import TaskHandler
from server.core.tasks.classify import ClassifyTask
from server.core.tasks.discriminate import DiscriminateTask
from server.core.tasks.qa import QaTask
from server.core.tasks.rerank import RerankTask
from server.core.tasks.tag import TagTask
from server.core.tasks.zero_shot import ZeroShotTask

TASKS: dict[str, TaskHandler] = {
    "classify": ClassifyTask(),
    "qa": QaTask(),
    "tag": TagTask(),
    "discriminate": DiscriminateTask(),
    "rerank": RerankTask(),
}

# Served on models of another task (an NLI classifier), never a manifest's task.
ZERO_SHOT = ZeroShotTask()

__all__ = ["TASKS", "ZERO_SHOT", "TaskHandler"]
