"""`POST /models/{name}`: the Hugging Face Inference API shape, so that
`huggingface_hub.InferenceClient(model="http://HOST:PORT/models/NAME")` works unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.http import openapi_responses as doc
from server.api.http.exchange import HttpLimits, TaskBody
from server.api.http.hot_path import hot, tracked
from server.api.http.openapi_examples import openapi_body
from server.api.http.rest import PROTOCOL, answer_task
from server.core.service import InferenceService, Result


def hf_shape(result: Result, inputs: Any) -> Any:
    # The Inference API answers text classification with a list of lists, even for one input.
    value = result.pipeline_json()
    if result.task.task == "classify" and not isinstance(inputs, list):
        return [value]
    return value


def zero_shot_wanted(body: TaskBody) -> bool:
    """`InferenceClient.zero_shot_classification` sends candidate labels: a classifier's own
    parameters never include them."""
    return isinstance(body.parameters, dict) and "candidate_labels" in body.parameters


def build_router(service: InferenceService, limits: HttpLimits) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/models/{name}",
        tags=["huggingface"],
        summary="Hugging Face Inference API compatible",
        openapi_extra={**openapi_body(None), "parameters": [doc.TIMEOUT_PARAMETER]},
        responses={
            **doc.ok(doc.HfOutput, "The Inference API's answer for the model's task", doc.TIMING_DOC),
            **doc.errors(*doc.INFERENCE_ERRORS),
        },
    )
    @hot
    async def infer(name: str, request: Request) -> Response:
        return await tracked(
            service,
            request,
            PROTOCOL,
            lambda call: answer_task(
                service, limits, request, call, None, model=name, shape=hf_shape, zero_shot=zero_shot_wanted
            ),
        )

    return router
