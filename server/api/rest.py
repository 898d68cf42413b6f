"""REST: /v1 task routes, /v1/models, health and metrics (CONTRACT §3, §5)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.hot_path import hot
from server.api.http_common import (
    deadline_of,
    error_response,
    json_response,
    read_json,
    task_body,
    timing_headers,
    until_disconnect,
)
from server.api.model_stats import stats_of
from server.api.openapi_examples import openapi_body
from server.core.errors import ErrorKind, ServeError
from server.core.service import InferenceService, Result

TASK_ROUTES = ("classify", "qa", "tag", "discriminate")


async def answer(
    request: Request,
    service: InferenceService,
    protocol: str,
    task: str | None,
    run: Callable[[Any], Awaitable[Result]],
    shape: Callable[[Result], Any] = lambda result: result.value,
) -> Response:
    """Parse, run (cancelled if the client leaves), translate and count one task request."""
    started = time.perf_counter()
    model_label, task_label = "unknown", task or "unknown"
    inflight = service.metrics.labelled(service.metrics.inflight, protocol)
    inflight.inc()
    try:
        payload = await read_json(request, service.settings.max_request_bytes)
        result = await until_disconnect(request, run(payload))
        model_label, task_label = result.model, result.task
        stats_of(service).record_success(result.model, result.items, result.timings)
        response = json_response(shape(result), headers=timing_headers(result.timings, result.model))
    except ServeError as error:
        if error.model in service.models:
            model_label, task_label = error.model, service.models[error.model].manifest.task
            stats_of(service).record_failure(error.model, time.perf_counter() - started)
        response = error_response(error)
    finally:
        inflight.dec()
    service.metrics.observe_request(
        model_label, task_label, protocol, response.status_code, time.perf_counter() - started
    )
    return response


def build_router(service: InferenceService) -> APIRouter:
    router = APIRouter()

    def task_route(task: str) -> None:
        @hot
        async def route(request: Request) -> Response:
            async def run(payload: Any) -> Result:
                model, inputs, parameters = task_body(payload)
                return await service.run(task, model, inputs, parameters, deadline_of(request))

            return await answer(request, service, "rest", task, run)

        router.add_api_route(
            f"/v1/{task}",
            route,
            methods=["POST"],
            name=task,
            summary=f"{task}: one input or a list",
            openapi_extra=openapi_body(task),
            tags=["tasks"],
        )

    for task in TASK_ROUTES:
        task_route(task)

    @router.get("/v1/models", tags=["models"])
    async def list_models() -> Response:
        return json_response({"models": [m.describe() for m in service.models.values()]})

    @router.get("/v1/models/{name}", tags=["models"])
    async def describe_model(name: str) -> Response:
        model = service.models.get(name)
        if model is None:
            return error_response(ServeError(ErrorKind.NOT_FOUND, f"model '{name}' is not loaded"))
        return json_response(model.describe())

    @router.get("/health/live", tags=["health"])
    async def live() -> Response:
        return json_response({"status": "live"})

    @router.get("/health/ready", tags=["health"])
    async def ready() -> Response:
        if service.ready:
            return json_response({"status": "ready"})
        reason = (
            "draining" if service.draining else service.load_error or ("loading" if not service.loaded else "unhealthy")
        )
        return json_response({"status": "not ready", "error": reason}, 503)

    @router.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    return router
