"""The serving core for a set of settings: one metrics registry, one loader, one model owner
(the registry, which holds every version), one service. No transport is imported here: the front
ends (`server.runner`, tests, tools) put theirs around it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.core.config import Device
from server.core.loader import ModelLoader, RuntimeFactory, onnx_runtime
from server.core.registry import ModelRegistry
from server.core.service import InferenceService
from server.core.simulated import CostModel, simulated_factory
from server.metrics import Metrics
from server.settings import Settings


@dataclass
class Assembly:
    metrics: Metrics
    registry: ModelRegistry
    service: InferenceService


def runtime_of(settings: Settings) -> tuple[RuntimeFactory, Device | None]:
    """The runtime factory the settings ask for, and the device it stands for (None: detected)."""
    if settings.runtime == "simulated":
        return simulated_factory(CostModel(settings.sim_batch_ms, settings.sim_token_us)), "cuda"
    return onnx_runtime, None


def assemble(settings: Settings, repository: Path, runtime_factory: RuntimeFactory | None = None) -> Assembly:
    config = settings.core_config()
    metrics = Metrics()
    device: Device | None = None
    if runtime_factory is None:
        runtime_factory, device = runtime_of(settings)
    loader = ModelLoader(config, metrics.batcher, runtime_factory, device)

    def removed(name: str) -> None:
        # An unloaded model's series and statistics go with it (`service` is bound below).
        metrics.model_removed(name)
        service.stats.forget(name)

    registry = ModelRegistry(
        loader,
        repository,
        default_policy=settings.policy(),
        unload_timeout_s=settings.drain_timeout_s,
        on_ready=metrics.model_ready,
        on_removed=removed,
    )
    service = InferenceService(config, registry, metrics)
    return Assembly(metrics, registry, service)
