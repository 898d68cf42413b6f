"""REST: /v1 task routes, /v1/models, health and metrics (docs/REFERENCE.md §3, §6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from server.api.http import openapi_responses as doc
from server.api.http.exchange import (
    HttpLimits,
    TaskBody,
    error_response,
    json_response,
    read_json,
    task_body,
    timeout_of,
    timing_headers,
    until_disconnect,
)
from server.api.http.hot_path import hot, tracked
from server.api.http.openapi_examples import openapi_body
from server.core.errors import not_loaded
from server.core.service import Call, InferenceService, Result, TaskRequest
from server.core.tasks import ZERO_SHOT

TASK_ROUTES = ("classify", "qa", "tag", "discriminate")
PROTOCOL = "rest"


async def answer_task(
    service: InferenceService,
    limits: HttpLimits,
    request: Request,
    call: Call,
    task: str | None,
    model: str | None = None,
    shape: Callable[[Result, Any], Any] = lambda result, _: result.pipeline_json(),
    zero_shot: Callable[[TaskBody], bool] = lambda body: False,
) -> Response:
    """One task request: read the body, run it (cancelled if the client leaves), answer the
    pipeline's JSON (`shape` may reshape it: the HF route). A body `zero_shot` picks is zero-shot
    classification on a classifier."""
    body = task_body(await read_json(request, limits))
    call.deadline = service.deadline_in(timeout_of(request))
    handler = ZERO_SHOT if zero_shot(body) else None
    work = TaskRequest(
        "classify" if handler else task,
        model or body.model,
        body.version,
        inputs=body.inputs,
        parameters=body.parameters,
        handler=handler,
    )
    result = await until_disconnect(request, service.infer(call, work))
    return json_response(
        shape(result, body.inputs), headers=timing_headers(result.timings, result.model, result.version)
    )


def build_router(
    service: InferenceService, limits: HttpLimits, exposition: Callable[[], tuple[bytes, str]]
) -> APIRouter:
    router = APIRouter()

    def task_route(task: str) -> None:
        @hot
        async def route(request: Request) -> Response:
            return await tracked(
                service, request, PROTOCOL, lambda call: answer_task(service, limits, request, call, task)
            )

        router.add_api_route(
            f"/v1/{task}",
            route,
            methods=["POST"],
            name=task,
            summary=f"{task}: one input or a list",
            openapi_extra={**openapi_body(task), "parameters": [doc.TIMEOUT_PARAMETER]},
            responses={
                **doc.ok(doc.TASK_OUTPUTS[task], "The pipeline's answer", doc.TIMING_DOC),
                **doc.errors(*doc.INFERENCE_ERRORS),
            },
            tags=["tasks"],
        )

    for task in TASK_ROUTES:
        task_route(task)

    @hot
    async def zero_shot(request: Request) -> Response:
        return await tracked(
            service,
            request,
            PROTOCOL,
            lambda call: answer_task(service, limits, request, call, "classify", zero_shot=lambda body: True),
        )

    router.add_api_route(
        "/v1/zero-shot",
        zero_shot,
        methods=["POST"],
        name="zero-shot",
        summary="zero-shot classification on an NLI classifier: one text or a list",
        openapi_extra={**openapi_body("zero-shot"), "parameters": [doc.TIMEOUT_PARAMETER]},
        responses={
            **doc.ok(doc.ZeroShotOutput, "The pipeline's answer", doc.TIMING_DOC),
            **doc.errors(*doc.INFERENCE_ERRORS),
        },
        tags=["tasks"],
    )

    @router.get(
        "/v1/models", tags=["models"], responses={**doc.ok(doc.ModelList, "The models that serve"), **doc.errors(401)}
    )
    async def list_models() -> Response:
        return json_response({"models": [describe(service, v) for v in service.catalogue.serving()]})

    @router.get(
        "/v1/models/{name}",
        tags=["models"],
        responses={**doc.ok(doc.ModelDescription, "The model"), **doc.errors(*doc.MODEL_ERRORS)},
    )
    async def describe_model(name: str) -> Response:
        serving = next((v for v in service.catalogue.serving() if v.name == name), None)
        if serving is None:
            return error_response(not_loaded(name))
        return json_response(describe(service, serving))

    @router.get("/health/live", tags=["health"], responses=_probe("live", "a model's batching loop keeps failing"))
    async def live() -> Response:
        if not service.live:
            return json_response({"status": "dead", "error": "a model's batching loop keeps failing"}, 503)
        return json_response({"status": "live"})

    @router.get("/health/ready", tags=["health"], responses=_probe("ready", "not every model is loaded and warm"))
    async def ready() -> Response:
        if service.ready:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "error": service.not_ready_reason()}, 503)

    @router.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,  # the document's media type; the route answers Prometheus' own
        responses={200: {"description": "Prometheus text exposition"}, **doc.errors(401)},
    )
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return router


def _probe(state: str, why_not: str) -> dict[int | str, dict[str, Any]]:
    """A probe's answers: 401 only with --api-keys-file and --auth-probes."""
    return {
        **doc.ok(doc.Health, f"{state}"),
        503: {"model": doc.Health, "description": f"not {state}: {why_not} (the error says why)"},
        **doc.errors(401),
    }


def describe(service: InferenceService, version: Any) -> dict[str, Any]:
    """A model as /v1/models shows it: the version that serves by default, and every version loaded."""
    described = version.describe()
    if versions := service.catalogue.version_names(version.name):
        described["versions"] = versions
    return described
