"""What every gRPC servicer shares: raw-bytes handlers (requests are decoded in the handler, so
undecodable bytes get INVALID_ARGUMENT rather than grpc.aio's UNKNOWN), the service's request
wrapper around inference calls (client deadlines, one outcome count, per-stage timings and the
request id in trailing metadata), the one error table, and concurrent, flow-controlled streams.

Cancellation needs no code here: when a client cancels (or its deadline passes) grpc.aio
cancels the handler's task, and the CancelledError reaches the batcher, which drops the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from server.api.metadata import REQUEST_ID_HEADER, timing_pairs
from server.core.errors import ErrorKind, ServeError, internal_error
from server.core.service import Call, InferenceService, new_request_id

log = logging.getLogger("electra.grpc")

M = TypeVar("M", bound=Message)
Behaviour = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]
Inference = Callable[[bytes, grpc.aio.ServicerContext, Call], Awaitable[Message]]
# Requests in flight (or answered but not yet sent) per stream: beyond it the stream stops reading
# until a response has gone out, so a client that never reads cannot grow the server's memory.
STREAM_WINDOW = 256
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def decode(message_type: type[M], raw: bytes) -> M:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        raise ServeError(ErrorKind.BAD_REQUEST, f"request bytes do not decode as {name}: {exc}") from exc


def detached(error: ServeError) -> ServeError:
    """The same error without its traceback and causes. grpc.aio keeps an aborted handler's frames
    in a reference cycle until a full garbage collection: a traceback into the handlers (the request's
    bytes, its decoded message, its texts) kept every refused 4 MB message alive, and 32 of them
    left ~100-240 MB behind each time; the handler drops `raw` before aborting for the same reason."""
    return ServeError(error.kind, error.message, error.retry_after_s)


def status_code(kind: ErrorKind) -> grpc.StatusCode:
    return grpc.StatusCode[kind.grpc_code_name]


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The client's `x-request-id` metadata when it is a plain token, else a new id."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return new_request_id()


def trailing(call: Call) -> tuple[tuple[str, str], ...]:
    """The request id and, once answered, the REST timing headers' names and values."""
    pairs = [(REQUEST_ID_HEADER, call.request_id)]
    if call.timings is not None:
        pairs += timing_pairs(call.timings, call.model, call.version)
    return tuple(pairs)


async def abort(context: grpc.aio.ServicerContext, failure: ServeError, metadata: tuple[tuple[str, str], ...]) -> None:
    if (retry_after := failure.retry_after_header) is not None:
        metadata = (*metadata, ("retry-after", retry_after))
    context.set_trailing_metadata(metadata)
    await context.abort(status_code(failure.kind), failure.message)


@contextlib.contextmanager
def holding_body(service: InferenceService, raw: bytes) -> Iterator[None]:
    """Count a request message's bytes in the process's body buffer until it is answered (a
    stream's messages one by one); past the buffer a large message is refused (RESOURCE_EXHAUSTED)."""
    with service.bodies.hold() as hold:
        hold.grow_to(len(raw))
        yield


def unary(behaviour: Behaviour) -> grpc.RpcMethodHandler:
    """A unary handler on raw bytes (metadata, health, control) whose ServeErrors become the table's
    status codes."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return (await behaviour(raw, context)).SerializeToString()
        except ServeError as error:
            failure = detached(error)
        except Exception:  # a bug must still answer with a status, not UNKNOWN
            request_id = new_request_id()
            log.exception("unexpected error in a gRPC handler (request id %s)", request_id)
            failure = internal_error(request_id)
        del raw  # see detached()
        await abort(context, failure, ())
        raise AssertionError("unreachable: abort raises")

    # No (de)serializers: the handler gets and returns bytes.
    return grpc.unary_unary_rpc_method_handler(handler)


def inference_unary(service: InferenceService, protocol: str, behaviour: Inference) -> grpc.RpcMethodHandler:
    """A unary inference handler: the call runs inside the service's request wrapper with the client's
    deadline; timings and the request id travel back in trailing metadata."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call: Call | None = None
        try:
            with service.track(protocol, request_id_of(context)) as call, holding_body(service, raw):
                call.deadline = service.deadline_in(context.time_remaining())
                response = await behaviour(raw, context, call)
            context.set_trailing_metadata(trailing(call))
            return response.SerializeToString()
        except ServeError as error:
            failure = detached(error)
        del raw  # see detached()
        await abort(context, failure, trailing(call) if call is not None else ())
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(handler)


def stream(handle: Behaviour) -> grpc.RpcMethodHandler:
    """A bidirectional stream: each request is handled concurrently (up to STREAM_WINDOW at a time)
    and its response sent as soon as it is ready. `handle` reports failures in its response."""

    async def handler(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for response in concurrently(requests, lambda raw: handle(raw, context)):
            yield response.SerializeToString()

    return grpc.stream_stream_rpc_method_handler(handler)


async def concurrently(
    requests: AsyncIterator[bytes], handle: Callable[[bytes], Awaitable[Message]], window: int = STREAM_WINDOW
) -> AsyncIterator[Message]:
    """Responses in completion order; work still running when the consumer stops is cancelled.

    A request's slot is given back only once its response has been taken by the consumer (grpc.aio
    resumes a response generator after the message is written), so at most `window` requests are
    running or waiting to be sent: a client that stops reading stops the stream from reading."""
    done: asyncio.Queue[Message | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    running: set[asyncio.Task[None]] = set()

    async def one(raw: bytes) -> None:
        try:
            done.put_nowait(await handle(raw))
        except asyncio.CancelledError:
            slots.release()
            raise
        except Exception:  # handle() reports failures itself; this is a bug, keep the stream alive
            log.exception("stream request failed without a response")
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
            slots.release()
        await reader  # the request stream's own error, if any
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()
