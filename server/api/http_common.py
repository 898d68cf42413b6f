"""What every HTTP route shares: body parsing, the error body, timing headers, deadlines and
client-disconnect cancellation. Routes stay thin translators over the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import Response

from server.core.errors import ErrorKind, ServeError
from server.core.service import Timings

T = TypeVar("T")
TIMEOUT_HEADER = "x-request-timeout-ms"


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")


def error_response(error: ServeError) -> Response:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    return json_response({"error": error.message}, error.kind.http_status, headers)


def timing_headers(timings: Timings, model: str) -> dict[str, str]:
    return {
        "x-model-name": model,
        "x-total-time": f"{timings.total_s * 1000:.3f}",
        "x-tokenization-time": f"{timings.tokenization_s * 1000:.3f}",
        "x-queue-time": f"{timings.queue_s * 1000:.3f}",
        "x-inference-time": f"{timings.inference_s * 1000:.3f}",
    }


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it (or its declared length) passes max_bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ServeError(ErrorKind.TOO_LARGE, f"request body of {declared} bytes exceeds {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ServeError(ErrorKind.TOO_LARGE, f"request body exceeds {max_bytes} bytes")
    return bytes(body)


async def read_json(request: Request, max_bytes: int) -> Any:
    body = await read_body(request, max_bytes)
    if not body:
        raise ServeError(ErrorKind.BAD_REQUEST, "request body is empty: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServeError(ErrorKind.BAD_REQUEST, f"request body is not valid JSON: {exc}") from exc


def task_body(payload: Any) -> tuple[str | None, Any, dict[str, Any] | None]:
    """(model, inputs, parameters) of a task request body."""
    if not isinstance(payload, dict):
        raise ServeError(ErrorKind.BAD_REQUEST, "request body must be a JSON object with 'inputs'")
    if "inputs" not in payload:
        raise ServeError(ErrorKind.INVALID_INPUT, "'inputs' is required")
    return payload.get("model"), payload["inputs"], payload.get("parameters")


def deadline_of(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        timeout_ms = float(raw)
    except ValueError as exc:
        raise ServeError(ErrorKind.BAD_REQUEST, f"{TIMEOUT_HEADER} must be a number of milliseconds") from exc
    if not timeout_ms > 0:  # also refuses NaN, which would otherwise expire at once (504)
        raise ServeError(ErrorKind.BAD_REQUEST, f"{TIMEOUT_HEADER} must be positive")
    return time.monotonic() + timeout_ms / 1000


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
