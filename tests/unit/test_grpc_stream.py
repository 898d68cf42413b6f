"""The stream driver of both gRPC APIs (`concurrently`): requests handled at once up to a window,
responses in completion order, and a slot given back only once its response was taken (sent), so a
consumer that stops taking responses stops the work instead of piling responses up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.api.grpc.calls import concurrently


async def numbers(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield str(i).encode()


async def test_responses_come_in_completion_order_and_all_arrive() -> None:
    async def handle(raw: bytes) -> bytes:
        await asyncio.sleep(0.001 * (10 - int(raw)))
        return raw

    got = [r async for r in concurrently(numbers(10), handle, window=10)]  # type: ignore[arg-type]
    assert sorted(got) == [str(i).encode() for i in range(10)]
    assert got[0] == b"9"  # the quickest first


async def test_a_consumer_that_stops_taking_responses_stops_the_work() -> None:
    handled = 0

    async def handle(raw: bytes) -> bytes:
        nonlocal handled
        handled += 1
        return raw

    stream = concurrently(numbers(10_000), handle, window=8)  # type: ignore[arg-type]
    first = await stream.__anext__()  # then the consumer takes nothing more (a stalled transport)
    await asyncio.sleep(0.2)
    # The window's requests and the one whose response was taken; before, every request was handled
    # and its response queued.
    assert first and handled <= 8 + 1, handled
    await stream.aclose()


async def test_work_still_running_when_the_consumer_leaves_is_cancelled() -> None:
    cancelled = 0

    async def handle(raw: bytes) -> bytes:
        nonlocal cancelled
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return raw

    async def consume() -> None:
        async for _ in concurrently(numbers(4), handle, window=4):  # type: ignore[arg-type]
            pass

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    consumer.cancel()  # what grpc.aio does when the client cancels the stream
    await asyncio.gather(consumer, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert cancelled == 4
