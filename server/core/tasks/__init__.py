"""Task registry: one handler per task, each pure (encode / decode)."""

from __future__ import annotations

from server.core.tasks.base import TaskHandler
from server.core.tasks.classify import ClassifyTask
from server.core.tasks.discriminate import DiscriminateTask
from server.core.tasks.qa import QaTask
from server.core.tasks.rerank import RerankTask
from server.core.tasks.tag import TagTask

TASKS: dict[str, TaskHandler] = {
    "classify": ClassifyTask(),
    "qa": QaTask(),
    "tag": TagTask(),
    "discriminate": DiscriminateTask(),
    "rerank": RerankTask(),
}

__all__ = ["TASKS", "TaskHandler"]
