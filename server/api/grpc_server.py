"""The grpc.aio server that shares the process and event loop with uvicorn: health, reflection,
and the servicers of every gRPC API (each a thin translation over the same service)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.core.service import InferenceService
from server.settings import Settings

OVERALL = ""  # the health service's name for the whole server


class HealthReporter:
    """Keeps grpc.health.v1 statuses (overall and per model) in step with readiness and draining."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self.servicer = servicer

    async def set_serving(self, serving: bool, names: list[str] | None = None) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in [OVERALL, *(names or [])]:
            await self.servicer.set(name, status)

    async def follow(self, service: InferenceService, stop: asyncio.Event, period_s: float = 0.5) -> None:
        last: dict[str, bool] = {}
        while not stop.is_set():
            current = {OVERALL: service.ready, **{name: service.model_ready(name) for name in service.models}}
            for name, serving in current.items():
                if last.get(name) != serving:
                    status = (
                        health_pb2.HealthCheckResponse.SERVING
                        if serving
                        else health_pb2.HealthCheckResponse.NOT_SERVING
                    )
                    await self.servicer.set(name, status)
            last = current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)
        await self.set_serving(False, list(service.models))


def create_grpc_server(service: InferenceService, settings: Settings) -> tuple[grpc.aio.Server, HealthReporter]:
    options = [
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    try:
        from server.api import grpc_services
    except ImportError:  # typed and KServe v2 servicers are optional in a trimmed build
        grpc_services = None
    if grpc_services is not None:
        service_names += grpc_services.register(server, service, settings)
    reflection.enable_server_reflection(service_names, server)
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    return server, HealthReporter(health_servicer)
