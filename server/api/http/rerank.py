"""The rerank routes, in the shapes rerank clients already speak:

- `POST /rerank`: text-embeddings-inference's (`query`, `texts`, `raw_scores`, `return_text`,
  `truncate`, `truncation_direction`), answering its sorted `[{"index", "score", "text"?}]`; a body
  with `documents` instead of `texts` is Jina's shape (vLLM serves it there too) and is answered as
  `/v1/rerank` is;
- `POST /v1/rerank`: the shape Jina and Cohere v1 share (`model`, `query`, `documents` as strings or
  `{"text"}` objects, `top_n`, `return_documents`);
- `POST /v2/rerank`: Cohere v2's (`documents` as strings, `top_n`, `max_tokens_per_doc`).
Both answer `{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage",
"meta"}`. `model` is optional everywhere: without it the one rerank model loaded answers. Every
shape also takes this server's own options: `aggregation` (max | first | mean) and `stride` for
documents split into windows, and `truncate` as a boolean (cut instead of windows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.http import openapi_responses as doc
from server.api.http.exchange import (
    HttpLimits,
    json_response,
    read_json,
    timeout_of,
    timing_headers,
    until_disconnect,
)
from server.api.http.hot_path import hot, tracked
from server.api.http.rest import PROTOCOL
from server.core.errors import bad_request, invalid, too_large
from server.core.service import Call, InferenceService, Result, TaskRequest
from server.core.tasks import rerank
from server.core.tasks.params import type_name


@dataclass(slots=True)
class RerankCall:
    """One rerank request, whatever its shape."""

    query: Any
    documents: list[str]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    given: dict[str, Any] = field(default_factory=dict)  # the task's parameters


def _string(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{key} must be a string, got {type_name(value)}")
    return value


def _flag(payload: dict[str, Any], key: str, default: bool) -> bool:
    value = payload.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{key} must be a boolean, got {type_name(value)}")
    return value


def _documents(payload: dict[str, Any], key: str, objects: bool) -> list[str]:
    documents = payload.get(key)
    if not isinstance(documents, list) or not documents:
        raise invalid(f"{key} must be a non-empty list of {'texts' if key == 'texts' else 'documents'}")
    if len(documents) > rerank.MAX_DOCUMENTS:
        raise too_large(f"{len(documents)} {key}; at most {rerank.MAX_DOCUMENTS} may be reranked in one request")
    texts = []
    for i, document in enumerate(documents):
        if objects and isinstance(document, dict):
            document = document.get("text")
        if not isinstance(document, str):
            wanted = "a string or an object {text}" if objects else "a string"
            raise invalid(f"{key}[{i}] must be {wanted}, got {type_name(document)}")
        texts.append(document)
    return texts


def _options(payload: dict[str, Any]) -> dict[str, Any]:
    """This server's own options, valid in every shape (checked by the task's parameter table)."""
    given: dict[str, Any] = {key: payload[key] for key in ("aggregation", "stride") if payload.get(key) is not None}
    truncate = payload.get("truncate")
    if truncate is not None:
        if not isinstance(truncate, bool):
            raise bad_request(f"truncate must be a boolean, got {type_name(truncate)}")
        given["truncate"] = "cut" if truncate else "windows"
    direction = payload.get("truncation_direction")
    if direction is not None:
        if not isinstance(direction, str) or direction.lower() not in rerank.DIRECTIONS:
            raise bad_request(f"truncation_direction must be Right or Left, got {direction!r}")
        given["truncation_direction"] = direction.lower()
    max_tokens = payload.get("max_tokens_per_doc")
    if max_tokens is not None:
        given["max_tokens_per_doc"] = max_tokens
    return given


def _top_n(payload: dict[str, Any]) -> int | None:
    top_n = payload.get("top_n")
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise bad_request(f"top_n must be a positive integer, got {top_n!r}")
    return top_n


def tei_call(payload: dict[str, Any]) -> RerankCall:
    return RerankCall(
        query=payload.get("query"),
        documents=_documents(payload, "texts", objects=False),
        model=_string(payload, "model"),
        return_documents=_flag(payload, "return_text", False),
        raw_scores=_flag(payload, "raw_scores", False),
        given=_options(payload),
    )


def listed_call(payload: dict[str, Any], *, objects: bool, return_documents: bool) -> RerankCall:
    """Jina's and Cohere's shape: `documents` (with `objects`, also {"text"} objects), `top_n`."""
    return RerankCall(
        query=payload.get("query"),
        documents=_documents(payload, "documents", objects=objects),
        model=_string(payload, "model"),
        top_n=_top_n(payload),
        return_documents=_flag(payload, "return_documents", return_documents),
        given=_options(payload),
    )


def tei_answer(result: Result, request: RerankCall, call: Call) -> Any:
    key = "raw_score" if request.raw_scores else "score"
    answer = []
    for index, value in rerank.ranked(result.values, request.top_n):
        entry: dict[str, Any] = {"index": index, "score": value[key]}
        if request.return_documents:
            entry["text"] = request.documents[index]
        answer.append(entry)
    return answer


def listed_answer(version: str) -> Callable[[Result, RerankCall, Call], Any]:
    def answer(result: Result, request: RerankCall, call: Call) -> Any:
        results = []
        for index, value in rerank.ranked(result.values, request.top_n):
            entry: dict[str, Any] = {"index": index, "relevance_score": value["score"]}
            if request.return_documents:
                entry["document"] = {"text": request.documents[index]}
            results.append(entry)
        tokens = sum(value[0]["tokens"] for value in result.values)
        return {
            "id": call.request_id,
            "model": result.model,
            "results": results,
            "usage": {"total_tokens": tokens},
            "meta": {"api_version": {"version": version}, "tokens": {"input_tokens": tokens}},
        }

    return answer


Shape = tuple[Callable[[dict[str, Any]], RerankCall], Callable[[Result, RerankCall, Call], Any]]
TEI: Shape = (tei_call, tei_answer)
JINA: Shape = (functools.partial(listed_call, objects=True, return_documents=True), listed_answer("1"))
COHERE_V2: Shape = (functools.partial(listed_call, objects=False, return_documents=False), listed_answer("2"))


async def answer_rerank(
    service: InferenceService, limits: HttpLimits, request: Request, call: Call, shape: Shape | None
) -> Response:
    payload = await read_json(request, limits)
    if not isinstance(payload, dict):
        raise bad_request("request body must be a JSON object with 'query' and the documents")
    if shape is None:  # /rerank: TEI's shape, or Jina's when it names `documents`
        shape = JINA if "documents" in payload and "texts" not in payload else TEI
    parse, answer = shape
    rerank_call = parse(payload)
    items = [rerank.pair(rerank_call.query, d, f"documents[{i}]") for i, d in enumerate(rerank_call.documents)]
    call.deadline = service.deadline_in(timeout_of(request))
    work = TaskRequest("rerank", rerank_call.model, items=items, given=rerank_call.given)
    result = await until_disconnect(request, service.infer(call, work))
    headers = timing_headers(result.timings, result.model, result.version)
    return json_response(answer(result, rerank_call, call), headers=headers)


_OPTIONS: dict[str, Any] = {
    "model": {"type": "string"},
    "truncate": {"type": "boolean"},
    "truncation_direction": {"type": "string", "enum": ["Right", "Left", "right", "left"]},
    "aggregation": {"type": "string", "enum": list(rerank.AGGREGATIONS)},
    "stride": {"type": "integer", "minimum": 0},
    "max_tokens_per_doc": {"type": "integer", "minimum": 1},
}
_TEXTS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": rerank.MAX_DOCUMENTS}
_DOCUMENTS = {
    "type": "array",
    "minItems": 1,
    "maxItems": rerank.MAX_DOCUMENTS,
    "items": {
        "anyOf": [
            {"type": "string"},
            {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        ]
    },
}
_LISTED = {
    "type": "object",
    "required": ["query", "documents"],
    "properties": {
        **_OPTIONS,
        "query": {"type": "string", "minLength": 1},
        "documents": _DOCUMENTS,
        "top_n": {"type": "integer", "minimum": 1},
        "return_documents": {"type": "boolean"},
    },
}
_TEI = {
    "type": "object",
    "required": ["query", "texts"],
    "properties": {
        **_OPTIONS,
        "query": {"type": "string", "minLength": 1},
        "texts": _TEXTS,
        "raw_scores": {"type": "boolean"},
        "return_text": {"type": "boolean"},
    },
}


def request_body(path: str) -> dict[str, Any]:
    """The OpenAPI request body of a rerank route."""
    schema = {"anyOf": [_TEI, _LISTED]} if path == "/rerank" else _LISTED
    example = {"query": "What is ELECTRA?", "documents": ["ELECTRA is a discriminator.", "A fruit."], "top_n": 1}
    if path == "/rerank":
        example = {"query": "What is ELECTRA?", "texts": ["ELECTRA is a discriminator.", "A fruit."]}
    return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}


def build_router(service: InferenceService, limits: HttpLimits) -> APIRouter:
    router = APIRouter()

    def route(path: str, shape: Shape | None, summary: str) -> None:
        answer_model: Any = {"/rerank": doc.AnyRerank, "/v1/rerank": doc.RerankResults}.get(path, doc.RerankResults)

        @hot
        async def endpoint(request: Request) -> Response:
            return await tracked(
                service, request, PROTOCOL, lambda call: answer_rerank(service, limits, request, call, shape)
            )

        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            name=f"rerank{path.replace('/', '_')}",
            summary=summary,
            openapi_extra={"requestBody": request_body(path), "parameters": [doc.TIMEOUT_PARAMETER]},
            responses={
                **doc.ok(answer_model, "The documents, best first", doc.TIMING_DOC),
                **doc.errors(*doc.INFERENCE_ERRORS),
            },
            tags=["rerank"],
        )

    route("/rerank", None, "Rerank: text-embeddings-inference's shape (texts), or Jina's (documents)")
    route("/v1/rerank", JINA, "Rerank: the shape Jina and Cohere v1 share")
    route("/v2/rerank", COHERE_V2, "Rerank: Cohere v2's shape")
    return router
