"""KServe v2 / Open Inference Protocol over HTTP (docs/REFERENCE.md §3.6), with the binary tensor data
extension and the Triton routes perf_analyzer needs (config, stats). Thin: requests are
translated to the v2 data plane and back.

Binary extension: a request body may be a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw data of each input whose `parameters.binary_data_size` is set, in
input order. Outputs are returned raw (same framing) when the request sets
`parameters.binary_data_output` or an output's `parameters.binary_data`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.http import openapi_responses as doc
from server.api.http.exchange import (
    HttpLimits,
    check_content_type,
    error_response,
    json_response,
    read_body,
    timeout_of,
    timing_headers,
    until_disconnect,
)
from server.api.http.hot_path import hot, tracked
from server.api.kserve import openapi as kdoc
from server.api.kserve import tensors as t
from server.api.kserve.dataplane import PROTOCOL, InferOutcome, V2Dataplane, shorter_timeout
from server.api.repository import RepositoryControl
from server.core.errors import ServeError
from server.core.service import Call, InferenceService

HEADER_LENGTH = "inference-header-content-length"
# Every model takes one or two tensors; anything far beyond is a malformed (or hostile) request.
MAX_TENSORS = 8


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise t.bad(f"{what} must be a JSON object")
    return value


def split_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """(JSON header, binary tail) of an infer request body."""
    if header_length is None:
        size = len(body)
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise t.bad(f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes")
        size = int(header_length)
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise t.bad(f"inference request header is not valid JSON: {exc}") from exc
    return _object(header, "the inference request"), memoryview(body)[size:]


def parse_inputs(header: dict[str, Any], binary: memoryview, max_rows: int | None = None) -> list[t.InputTensor]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise t.bad("'inputs' must be a non-empty list of tensors")
    if len(inputs) > MAX_TENSORS:
        raise t.bad(f"{len(inputs)} input tensors; a request holds at most {MAX_TENSORS}")
    tensors, offset = [], 0
    for i, entry in enumerate(inputs):
        entry = _object(entry, f"inputs[{i}]")
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise t.bad(f"inputs[{i}] needs 'name', 'datatype' and 'shape'")
        size = _object(entry.get("parameters"), f"input '{name}' parameters").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise t.bad(f"input '{name}': binary_data_size {size!r} does not fit the binary data")
            tensors.append(t.from_raw(name, datatype, shape, binary[offset : offset + size], max_rows))
            offset += size
        elif "data" in entry:
            tensors.append(t.from_json(name, datatype, shape, entry["data"], max_rows))
        else:
            raise t.bad(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise t.bad(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tensors


def parse_outputs(header: dict[str, Any]) -> tuple[list[str] | None, dict[str, bool]]:
    """(requested output names or None for all, name -> binary wanted)."""
    default_binary = _object(header.get("parameters"), "parameters").get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise t.bad("parameters.binary_data_output must be a boolean")
    outputs = header.get("outputs")
    if outputs is None:
        return None, {"*": default_binary}
    if not isinstance(outputs, list):
        raise t.bad("'outputs' must be a list")
    names, binary = [], {"*": default_binary}
    for i, entry in enumerate(outputs):
        entry = _object(entry, f"outputs[{i}]")
        name = entry.get("name")
        if not isinstance(name, str):
            raise t.bad(f"outputs[{i}] needs a 'name'")
        parameters = _object(entry.get("parameters"), f"output '{name}' parameters")
        if parameters.get("classification"):
            raise t.bad(f"output '{name}': the classification extension is not supported; read RESULT instead")
        wanted = parameters.get("binary_data", default_binary)
        if not isinstance(wanted, bool):
            raise t.bad(f"output '{name}': parameters.binary_data must be a boolean")
        names.append(name)
        binary[name] = wanted
    return names, binary


def timeout_s(header: dict[str, Any], request: Request) -> float | None:
    """The shorter of the x-request-timeout-ms header and Triton's `timeout` parameter (microseconds)."""
    return shorter_timeout(timeout_of(request), _object(header.get("parameters"), "parameters").get("timeout"))


def infer_response(outcome: InferOutcome, request_id: Any, binary: dict[str, bool]) -> Response:
    described, tail = [], []
    for output in outcome.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if binary.get(output.name, binary["*"]):
            raw = output.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = output.json_data()
        described.append(entry)
    body: dict[str, Any] = {"model_name": outcome.model, "model_version": outcome.version, "outputs": described}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    header = orjson.dumps(body)
    headers = timing_headers(outcome.timings, outcome.model, outcome.version)
    if not tail:
        return Response(header, 200, headers, media_type="application/json")
    headers["Inference-Header-Content-Length"] = str(len(header))
    return Response(b"".join([header, *tail]), 200, headers, media_type="application/octet-stream")


async def _json_object(request: Request, limits: HttpLimits, what: str) -> dict[str, Any]:
    """An optional JSON object body (an empty body is {})."""
    check_content_type(request)
    body = await read_body(request, limits.max_request_bytes, limits.body_timeout_s)
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise t.bad(f"the {what} request must be a JSON object")
    return parsed


def build_router(service: InferenceService, limits: HttpLimits, control: RepositoryControl | None = None) -> APIRouter:
    router = APIRouter(tags=["kserve-v2"])
    plane = V2Dataplane(service)

    def answer(build: Callable[[], Any]) -> Response:
        try:
            return json_response(build())
        except ServeError as error:
            return error_response(error)

    async def answer_async(build: Callable[[], Awaitable[Any]]) -> Response:
        try:
            return json_response(await build())
        except ServeError as error:
            return error_response(error)

    @router.get(
        "/v2",
        summary="Server metadata (name, version, extensions)",
        responses={**doc.ok(kdoc.ServerMetadata, "Server metadata"), **doc.errors(401)},
    )
    async def server_metadata() -> Response:
        return json_response(plane.server_metadata())

    @router.get("/v2/health/live", responses=_probe(kdoc.Live, "live"))
    async def live() -> Response:
        return json_response({"live": service.live}, 200 if service.live else 503)

    @router.get("/v2/health/ready", responses=_probe(kdoc.Ready, "ready"))
    async def ready() -> Response:
        return json_response({"ready": service.ready}, 200 if service.ready else 503)

    @router.get(
        "/v2/models/stats",
        summary="Statistics of every model",
        responses={**doc.ok(kdoc.ModelStats, "Triton's statistics"), **doc.errors(401)},
    )
    async def all_stats() -> Response:
        return await answer_async(plane.statistics)

    @router.post(
        "/v2/repository/index",
        summary="Models and their state",
        openapi_extra=kdoc.json_body(kdoc.INDEX_REQUEST_SCHEMA),
        responses={**doc.ok(kdoc.RepositoryIndex, "The repository index"), **doc.errors(*doc.BODY_ERRORS)},
    )
    async def repository_index(request: Request) -> Response:
        try:
            ready_only = (await _json_object(request, limits, "repository index")).get("ready", False)
            if not isinstance(ready_only, bool):
                raise t.bad("'ready' must be a boolean")
        except ServeError as error:
            return error_response(error)
        return await answer_async(lambda: plane.repository_index(ready_only))

    if control is not None:
        _control_routes(router, control, limits)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        _model_routes(router, service, limits, plane, prefix, answer, answer_async)
    return router


def _probe(model: type, state: str) -> dict[int | str, dict[str, Any]]:
    """KServe's health answers: the status says it (503: not {state}), the body as well."""
    return {**doc.ok(model, state), 503: {"model": model, "description": f"not {state}"}, **doc.errors(401)}


def _control_routes(router: APIRouter, control: RepositoryControl, limits: HttpLimits) -> None:
    async def parameters(request: Request) -> dict[str, Any]:
        given = (await _json_object(request, limits, "repository")).get("parameters") or {}
        if not isinstance(given, dict):
            raise t.bad("'parameters' must be a JSON object")
        return given

    # 400 also in every model control mode but explicit; 503 while the server shuts down.
    control_responses = {**doc.ok(kdoc.Empty, "Done"), **doc.errors(*doc.BODY_ERRORS, 404, 422, 503)}

    def control_route(action: str, summary: str) -> None:
        async def endpoint(name: str, request: Request) -> Response:
            try:
                await getattr(control, action)(name, await parameters(request))
            except ServeError as error:
                return error_response(error)
            return json_response({})

        router.add_api_route(
            f"/v2/repository/models/{{name}}/{action}",
            endpoint,
            methods=["POST"],
            name=action,
            summary=summary,
            openapi_extra=kdoc.json_body(kdoc.LOAD_REQUEST_SCHEMA),
            responses=control_responses,
        )

    control_route("load", "Load or reload a model (explicit model control)")
    control_route("unload", "Unload a model (explicit model control)")


def _model_routes(
    router: APIRouter,
    service: InferenceService,
    limits: HttpLimits,
    plane: V2Dataplane,
    prefix: str,
    answer: Callable[[Callable[[], Any]], Response],
    answer_async: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Response]],
) -> None:
    @router.get(
        prefix,
        summary="Model metadata (tensors)",
        responses={**doc.ok(kdoc.ModelMetadata, "Model metadata"), **doc.errors(*doc.MODEL_ERRORS)},
    )
    async def model_metadata(name: str, version: str = "") -> Response:
        return answer(lambda: plane.model_metadata(name, version))

    @router.get(
        f"{prefix}/ready",
        responses={
            **doc.ok(kdoc.ModelReady, "Ready"),
            503: {"model": kdoc.ModelReady, "description": "Loaded but not ready"},
            **doc.errors(*doc.MODEL_ERRORS),
        },
    )
    async def model_ready(name: str, version: str = "") -> Response:
        try:
            is_ready = plane.model_ready(name, version)
        except ServeError as error:
            return error_response(error)
        return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @router.get(
        f"{prefix}/config",
        summary="Triton model configuration",
        responses={**doc.ok(kdoc.ModelConfig, "Triton model configuration"), **doc.errors(*doc.MODEL_ERRORS)},
    )
    async def model_config(name: str, version: str = "") -> Response:
        return answer(lambda: plane.model_config(name, version))

    @router.get(
        f"{prefix}/stats",
        summary="Triton model statistics",
        responses={**doc.ok(kdoc.ModelStats, "Triton's statistics"), **doc.errors(*doc.MODEL_ERRORS)},
    )
    async def model_stats(name: str, version: str = "") -> Response:
        return await answer_async(lambda: plane.statistics(name, version))

    async def work(call: Call, name: str, version: str, request: Request) -> Response:
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise t.bad("compressed request bodies are not supported")
        check_content_type(request, binary_ok=True)
        body = await read_body(request, limits.max_request_bytes, limits.body_timeout_s)
        header, binary = split_request(body, request.headers.get(HEADER_LENGTH))
        tensors = parse_inputs(header, binary, service.config.max_inputs_per_request)
        names, binary_outputs = parse_outputs(header)
        call.deadline = service.deadline_in(timeout_s(header, request))
        outcome = await until_disconnect(request, plane.infer(call, name, version, tensors, names))
        return infer_response(outcome, header.get("id"), binary_outputs)

    # Inference is a hot route (server.api.http.hot_path): its parameters come from the path alone.
    summary = "Inference over BYTES tensors (JSON or binary)"
    documented: dict[str, Any] = {
        "summary": summary,
        "openapi_extra": kdoc.infer_openapi_extra(),
        "responses": kdoc.infer_responses(),
    }
    if "{version}" in prefix:

        @router.post(f"{prefix}/infer", **documented)
        @hot
        async def infer_version(name: str, version: str, request: Request) -> Response:
            return await tracked(service, request, PROTOCOL, lambda call: work(call, name, version, request))

    else:

        @router.post(f"{prefix}/infer", **documented)
        @hot
        async def infer_latest(name: str, request: Request) -> Response:
            return await tracked(service, request, PROTOCOL, lambda call: work(call, name, "", request))
