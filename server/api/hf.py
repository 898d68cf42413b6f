"""`POST /models/{name}`: the Hugging Face Inference API shape, so that
`huggingface_hub.InferenceClient(model="http://HOST:PORT/models/NAME")` works unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.hot_path import hot
from server.api.http_common import deadline_of, task_body
from server.api.rest import answer
from server.core.service import InferenceService, Result


def hf_shape(result: Result, inputs_were_list: bool) -> Any:
    # The Inference API answers text classification with a list of lists, even for one input.
    if result.task == "classify" and not inputs_were_list:
        return [result.value]
    return result.value


def build_router(service: InferenceService) -> APIRouter:
    router = APIRouter()

    @router.post("/models/{name}", tags=["huggingface"], summary="Hugging Face Inference API compatible")
    @hot
    async def infer(name: str, request: Request) -> Response:
        was_list = False

        async def run(payload: Any) -> Result:
            nonlocal was_list
            _, inputs, parameters = task_body(payload)
            was_list = isinstance(inputs, list)
            return await service.run(None, name, inputs, parameters, deadline_of(request))

        return await answer(request, service, "rest", None, run, lambda result: hf_shape(result, was_list))

    return router
