"""What every gRPC servicer shares: raw-bytes handlers (requests are decoded in the handler, so
undecodable bytes get INVALID_ARGUMENT rather than grpc.aio's UNKNOWN), client deadlines, the one
error table, per-stage timings in trailing metadata, request metrics, and concurrent streams.

Cancellation needs no code here: when a client cancels (or its deadline passes) grpc.aio
cancels the handler's task, and the CancelledError reaches the batcher, which drops the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from server.core.errors import ErrorKind, ServeError
from server.core.service import InferenceService, Timings

log = logging.getLogger("electra.grpc")

M = TypeVar("M", bound=Message)
Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
# Requests in flight per stream: beyond it the stream stops reading until one completes.
STREAM_WINDOW = 256


def decode(message_type: type[M], raw: bytes) -> M:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        raise ServeError(ErrorKind.BAD_REQUEST, f"request bytes do not decode as {name}: {exc}") from exc


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the batcher's clock (`time.monotonic()`), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def status_code(kind: ErrorKind) -> grpc.StatusCode:
    return grpc.StatusCode[kind.grpc_code_name]


def timing_metadata(timings: Timings, model: str) -> tuple[tuple[str, str], ...]:
    """The same names and units (milliseconds) as the REST timing headers."""
    return (
        ("x-model-name", model),
        ("x-total-time", f"{timings.total_s * 1000:.3f}"),
        ("x-tokenization-time", f"{timings.tokenization_s * 1000:.3f}"),
        ("x-queue-time", f"{timings.queue_s * 1000:.3f}"),
        ("x-inference-time", f"{timings.inference_s * 1000:.3f}"),
    )


def internal(exc: BaseException) -> ServeError:
    log.exception("unexpected error in a gRPC handler", exc_info=exc)
    return ServeError(ErrorKind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def unary(behaviour: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]) -> grpc.RpcMethodHandler:
    """A unary handler on raw bytes whose ServeErrors become the table's status codes."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return (await behaviour(raw, context)).SerializeToString()
        except ServeError as error:
            failure = error
        except Exception as exc:  # a bug must still answer with a status, not UNKNOWN
            failure = internal(exc)
        if failure.retry_after_s is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, round(failure.retry_after_s)))),))
        await context.abort(status_code(failure.kind), failure.message)
        raise AssertionError("unreachable: abort raises")

    # No (de)serializers: the handler gets and returns bytes.
    return grpc.unary_unary_rpc_method_handler(handler)


def stream(handle: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]) -> grpc.RpcMethodHandler:
    """A bidirectional stream: each request is handled concurrently (up to STREAM_WINDOW at a time)
    and its response sent as soon as it is ready. `handle` reports failures in its response."""

    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for response in concurrently(requests, lambda raw: handle(raw, context)):
            yield response.SerializeToString()

    return grpc.stream_stream_rpc_method_handler(handler)


async def concurrently(
    requests: AsyncIterator[bytes], handle: Callable[[bytes], Awaitable[Message]], window: int = STREAM_WINDOW
) -> AsyncIterator[Message]:
    """Responses in completion order; work still running when the consumer stops is cancelled."""
    done: asyncio.Queue[Message | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    running: set[asyncio.Task[None]] = set()

    async def one(raw: bytes) -> None:
        try:
            done.put_nowait(await handle(raw))
        except asyncio.CancelledError:
            raise
        except Exception:  # handle() reports failures itself; this is a bug, keep the stream alive
            log.exception("stream request failed without a response")
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for raw in requests:
                await slots.acquire()
                task = asyncio.create_task(one(raw))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.wait(set(running))
        finally:
            done.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (response := await done.get()) is not None:
            yield response
        await reader  # the request stream's own error, if any
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()


@dataclass(slots=True)
class Call:
    """One counted request: handlers fill in the model and task once they know them."""

    model: str = "unknown"
    task: str = "unknown"
    code: str = "OK"


@contextlib.contextmanager
def counted(service: InferenceService, protocol: str, call: Call, context: grpc.aio.ServicerContext) -> Iterator[Call]:
    """Inflight gauge and electra_requests_total / _duration for one request (any outcome)."""
    started = time.perf_counter()
    service.metrics.labelled(service.metrics.inflight, protocol).inc()
    try:
        yield call
    except ServeError as error:
        call.code = error.kind.grpc_code_name
        if error.model and call.model == "unknown":  # the service resolved it before failing
            call.model = error.model
        raise
    except asyncio.CancelledError:
        # grpc.aio cancels the handler both when the client cancels and when its deadline passes.
        remaining = context.time_remaining()
        call.code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        raise
    except Exception:
        call.code = "INTERNAL"
        raise
    finally:
        service.metrics.labelled(service.metrics.inflight, protocol).dec()
        service.metrics.observe_request(call.model, call.task, protocol, call.code, time.perf_counter() - started)


def model_label(service: InferenceService, name: Any) -> tuple[str, str]:
    """(model, task) labels for a model name from a request: "unknown" for names not loaded."""
    loaded = service.models.get(name) if isinstance(name, str) else None
    return (loaded.name, loaded.manifest.task) if loaded else ("unknown", "unknown")
