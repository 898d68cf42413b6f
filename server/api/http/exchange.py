"""What every HTTP route shares: body reading (size, content type, read timeout), the error body,
timing headers, deadlines and client-disconnect cancellation. Routes stay thin translators."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response

from server.api.metadata import TIMEOUT_HEADER, timing_pairs
from server.core.body_budget import BodyHold
from server.core.errors import ErrorKind, ServeError
from server.core.timings import Timings

T = TypeVar("T")
# The ASGI scope key of a request's share of the process's body buffer (core/body_budget.py).
BODY_HOLD_KEY = "electra.body_hold"

# Content types a JSON body may come with. Anything else is refused (415): a browser on another
# origin can POST `text/plain` without a CORS preflight, and must not reach the models that way.
JSON_TYPES = ("application/json", "application/x-ndjson")
BINARY_TYPES = ("application/octet-stream", "application/vnd.kserve-inference")


@dataclass(frozen=True)
class HttpLimits:
    max_request_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float | None = 30.0  # None: wait for ever


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")


def error_response(error: ServeError) -> Response:
    headers = {}
    if (retry_after := error.retry_after_header) is not None:
        headers["Retry-After"] = retry_after
    return json_response({"error": error.message}, error.kind.http_status, headers)


def timing_headers(timings: Timings, model: str, version: str) -> dict[str, str]:
    return dict(timing_pairs(timings, model, version))


def check_content_type(request: Request, binary_ok: bool = False) -> None:
    """A body must say it is JSON (or, where the route takes it, binary tensor data); none is JSON."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json") or (binary_ok and media in BINARY_TYPES):
        return
    raise ServeError(
        ErrorKind.UNSUPPORTED_MEDIA_TYPE,
        f"content type {media or declared!r} is not accepted: send application/json",
    )


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) passes max_bytes, and
    with 408 when it does not arrive within `timeout_s` (a slow client must not hold a task for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ServeError(ErrorKind.TOO_LARGE, f"request body of {declared} bytes exceeds {max_bytes}")
    # The process's body buffer (the dispatcher gives it back when the request is answered).
    hold: BodyHold | None = request.scope.get(BODY_HOLD_KEY)
    if hold is not None and declared is not None and declared.isdigit():
        hold.grow_to(int(declared))

    async def collect() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise ServeError(ErrorKind.TOO_LARGE, f"request body exceeds {max_bytes} bytes")
            if hold is not None:
                hold.grow_to(len(body))
        return bytes(body)

    if timeout_s is None:
        return await collect()
    try:
        async with asyncio.timeout(timeout_s):
            return await collect()
    except TimeoutError:
        raise ServeError(ErrorKind.REQUEST_TIMEOUT, f"the request body did not arrive within {timeout_s:g}s") from None


def parse_json(body: bytes) -> Any:
    if not body:
        raise ServeError(ErrorKind.BAD_REQUEST, "request body is empty: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses invalid UTF-8, lone surrogates and nesting deeper than 1024 levels.
        raise ServeError(ErrorKind.BAD_REQUEST, f"request body is not valid JSON: {exc}") from exc


async def read_json(request: Request, limits: HttpLimits) -> Any:
    """A JSON body: its content type checked, its size and arrival bounded, then parsed."""
    check_content_type(request)
    return parse_json(await read_body(request, limits.max_request_bytes, limits.body_timeout_s))


@dataclass(frozen=True, slots=True)
class TaskBody:
    model: str | None
    version: str | None
    inputs: Any
    parameters: Any


def task_body(payload: Any) -> TaskBody:
    """A task request body: {"model"?, "model_version"?, "inputs", "parameters"?}."""
    if not isinstance(payload, dict):
        raise ServeError(ErrorKind.BAD_REQUEST, "request body must be a JSON object with 'inputs'")
    if "inputs" not in payload:
        raise ServeError(ErrorKind.INVALID_INPUT, "'inputs' is required")
    model, version = payload.get("model"), payload.get("model_version")
    for key, value in (("model", model), ("model_version", version)):
        if value is not None and not isinstance(value, str):
            raise ServeError(ErrorKind.BAD_REQUEST, f"{key} must be a string")
    return TaskBody(model, version or None, payload["inputs"], payload.get("parameters"))


def timeout_of(request: Request) -> float | None:
    """Seconds the client allows (x-request-timeout-ms), or None."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        timeout_ms = float(raw)
    except ValueError as exc:
        raise ServeError(ErrorKind.BAD_REQUEST, f"{TIMEOUT_HEADER} must be a number of milliseconds") from exc
    if not (timeout_ms > 0 and math.isfinite(timeout_ms)):  # also refuses NaN, which would expire at once
        raise ServeError(ErrorKind.BAD_REQUEST, f"{TIMEOUT_HEADER} must be a positive number")
    return timeout_ms / 1000


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it if the client goes away first, so its queued rows never reach the model.

    The body has been read, so the next ASGI message can only be the disconnect. The work runs in
    the request's own task; only the watcher gets a task of its own.
    """
    current = asyncio.current_task()
    assert current is not None
    running = True

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        if running and not watcher.cancelled():
            current.cancel()

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise  # cancelled from outside (shutdown), not by the client leaving
        current.uncancel()
        raise ServeError(ErrorKind.CANCELLED, "client disconnected") from None
    finally:
        running = False
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
