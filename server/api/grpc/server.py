"""The grpc.aio server that shares the process and event loop with uvicorn: health, reflection,
and the servicers of every gRPC API (each a thin translation over the same service)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api.grpc.typed import SERVICE_NAME as TYPED_SERVICE
from server.api.grpc.typed import ElectraServicer
from server.api.kserve.grpc_servicer import SERVICE_NAME as KSERVE_SERVICE
from server.api.kserve.grpc_servicer import InferenceServicer
from server.api.repository import RepositoryControl
from server.core.service import InferenceService

log = logging.getLogger("electra.grpc")
OVERALL = ""  # the health service's name for the whole server
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Keeps grpc.health.v1 statuses (overall and per model) in step with readiness and draining:
    at once on every change of the model registry, and every `period_s` for what changes without
    one (a model whose runs keep failing)."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self.servicer = servicer
        self._last: dict[str, bool] = {}
        self._changed = asyncio.Event()

    async def set_serving(self, serving: bool, names: list[str] | None = None) -> None:
        for name in [OVERALL, *(names or [])]:
            await self.servicer.set(name, SERVING if serving else NOT_SERVING)
            self._last[name] = serving

    def poke(self) -> None:
        self._changed.set()

    async def sync(self, service: InferenceService) -> None:
        current = {OVERALL: service.ready, **{name: service.model_ready(name) for name in service.catalogue.names()}}
        for name in set(self._last) - set(current):
            current[name] = False  # an unloaded model stops serving
        for name, serving in current.items():
            if self._last.get(name) != serving:
                await self.servicer.set(name, SERVING if serving else NOT_SERVING)
                self._last[name] = serving

    async def follow(self, service: InferenceService, stop: asyncio.Event, period_s: float = 0.5) -> None:
        service.catalogue.subscribe(self.poke)
        while not stop.is_set():
            self._changed.clear()
            try:
                await self.sync(service)
            except Exception:  # a failed update must not end health reporting for good
                log.exception("updating gRPC health failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), period_s)
        await self.set_serving(False, list(self._last))


def create_grpc_server(
    service: InferenceService,
    *,
    max_receive_bytes: int,
    max_send_bytes: int,
    max_concurrent_rpcs: int | None = None,
    control: RepositoryControl | None = None,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, HealthReporter]:
    """The server, its servicers registered (no port bound yet). `reuse_port`: API workers share
    the port; otherwise a second server on it fails instead of silently splitting the traffic."""
    options = [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    # Past max_concurrent_rpcs grpc answers RESOURCE_EXHAUSTED at once instead of queueing calls.
    server = grpc.aio.server(
        options=options, maximum_concurrent_rpcs=max_concurrent_rpcs, interceptors=interceptors or None
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers(
        (ElectraServicer(service).handlers(), InferenceServicer(service, control).handlers())
    )
    names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection([*names, TYPED_SERVICE, KSERVE_SERVICE], server)
    return server, HealthReporter(health_servicer)
