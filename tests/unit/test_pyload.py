"""The Python load generator's typed gRPC senders (unary calls, the bidirectional Stream, and the
closed loop on grpc's synchronous API) against a small in-process fake of
electra.v1.ElectraService, and the report's Stream rows. No model, no timing assertions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import orjson
import pytest
import pytest_asyncio

from loadtests.clients import pyload
from proto.electra.v1 import electra_pb2 as pb

SERVICE = "electra.v1.ElectraService"
GOOD, BAD, SILENT = "good", "bad", "silent"  # the fake answers OK / INVALID_ARGUMENT / never


class FakeService:
    """Classify (unary) and Stream on raw bytes, like the real server's handlers."""

    def __init__(self) -> None:
        self.classify_models: list[str] = []
        self.stream_ids: list[str] = []

    async def classify(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = pb.ClassifyRequest.FromString(raw)
        self.classify_models.append(request.model)
        if request.model == BAD:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad model")
        if request.model == SILENT:
            await asyncio.sleep(3600)  # until the client's deadline or the server stops
        context.set_trailing_metadata((("x-queue-time", "1.5"), ("x-total-time", "4.0")))
        return pb.ClassifyResponse(model=request.model).SerializeToString()

    async def stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        done: asyncio.Queue[bytes] = asyncio.Queue()
        tasks = set()

        async def one(raw: bytes) -> None:
            message = pb.StreamRequest.FromString(raw)
            self.stream_ids.append(message.id)
            model = message.classify.model
            if model == SILENT:
                return
            # Even ids wait a little: responses come back out of order.
            await asyncio.sleep(0.02 if int(message.id) % 2 == 0 else 0)
            code = 3 if model == BAD else 0
            response = pb.StreamResponse(
                id=message.id,
                status=pb.Status(code=code),
                timings=pb.Timings(total_ms=4.0, queue_ms=1.5, inference_ms=2.0, tokenization_ms=0.5),
            )
            if code == 0:
                response.classify.model = model
            done.put_nowait(response.SerializeToString())

        async def read() -> None:
            async for raw in requests:
                task = asyncio.ensure_future(one(raw))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        reader = asyncio.ensure_future(read())
        try:
            # Until the client is done writing and every answered request has its response.
            while not (reader.done() and not tasks and done.empty()):
                waiting = asyncio.ensure_future(done.get())
                await asyncio.wait({waiting, reader, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield waiting.result()
                else:
                    waiting.cancel()
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Classify": grpc.unary_unary_rpc_method_handler(self.classify),
                "Stream": grpc.stream_stream_rpc_method_handler(self.stream),
            },
        )


# On the tests' own loop (the project's default fixture loop is the session's).
@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[tuple[FakeService, str, grpc.aio.Server]]:
    service = FakeService()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}", server
    finally:
        await server.stop(None)


@pytest.fixture(autouse=True)
def clean_stages() -> Iterator[None]:
    for recorded in pyload.stages.values():
        recorded.clear()
    yield
    for recorded in pyload.stages.values():
        recorded.clear()


def bodies(*models: str) -> list[bytes]:
    return [orjson.dumps({"model": m, "inputs": f"text {i}"}) for i, m in enumerate(models)]


def test_stream_request_bytes_are_the_id_and_the_pre_serialized_request() -> None:
    request = pb.ClassifyRequest(model="m", inputs=[pb.ClassifyInput(text="hello", text_pair="there")])
    payload = pb.StreamRequest(classify=request).SerializeToString()
    for n in (0, 7, 10, 123456789, 10**30):
        message = pb.StreamRequest.FromString(pyload.stream_id_field(n) + payload)
        assert message.id == str(n)
        assert message.WhichOneof("request") == "classify"
        assert message.classify == request


async def test_unary_sender_checks_each_status_and_samples_the_stages(fake) -> None:
    service, address, _ = fake
    models = [GOOD, GOOD, GOOD, BAD, GOOD]
    send, close = await pyload.grpc_sender(address, "classify", bodies(*models), timeout_s=5.0)
    try:
        n = 5 * pyload.STAGE_SAMPLE
        outcomes = await asyncio.gather(*(send(i) for i in range(n)))
    finally:
        await close()
    assert outcomes == [models[i % 5] == GOOD for i in range(n)]
    # The server got the typed request of each body, one per call.
    assert sorted(service.classify_models) == sorted(models[i % 5] for i in range(n))
    # Stages are read on a sample of the successful calls only, in the server's milliseconds.
    recorded = pyload.stages["x-queue-time"]
    assert 1 <= len(recorded) <= n // pyload.STAGE_SAMPLE
    assert set(recorded) == {1.5} and set(pyload.stages["x-total-time"]) == {4.0}


async def test_stream_sender_matches_out_of_order_responses_by_id(fake) -> None:
    service, address, _ = fake
    models = [GOOD, BAD, GOOD, GOOD, GOOD]
    send, close = await pyload.grpc_sender(address, "classify", bodies(*models), timeout_s=5.0, call="stream")
    try:
        n = 4 * pyload.STAGE_SAMPLE
        outcomes = await asyncio.gather(*(send(i) for i in range(n)))
    finally:
        await close()
    assert outcomes == [models[i % 5] == GOOD for i in range(n)]
    assert sorted(service.stream_ids, key=int) == [str(k) for k in range(1, n + 1)]  # one message each
    assert pyload.stages["x-queue-time"] and set(pyload.stages["x-queue-time"]) == {1.5}
    assert set(pyload.stages["x-inference-time"]) == {2.0}


async def test_stream_sender_in_the_closed_loop_spreads_over_channels(fake) -> None:
    _, address, _ = fake
    send, close = await pyload.grpc_sender(
        address, "classify", bodies(GOOD, GOOD, GOOD), timeout_s=5.0, channels=2, call="stream"
    )
    try:
        result = await pyload.closed_loop(send, concurrency=4, duration_s=0.3, n_bodies=3, offset=0)
    finally:
        await close()
    assert result["errors"] == 0 and len(result["latencies"]) >= 4


async def test_stream_request_without_an_answer_times_out_as_an_error(fake) -> None:
    _, address, _ = fake
    send, close = await pyload.grpc_sender(address, "classify", bodies(SILENT, GOOD), timeout_s=0.2, call="stream")
    try:
        silent, answered = await asyncio.wait_for(asyncio.gather(send(0), send(1)), timeout=10)
    finally:
        await close()
    assert silent is False and answered is True


async def test_stream_that_breaks_fails_what_is_pending_and_what_follows(fake) -> None:
    _, address, server = fake
    send, close = await pyload.grpc_sender(address, "classify", bodies(SILENT), timeout_s=60.0, call="stream")
    try:
        pending = asyncio.ensure_future(send(0))
        await asyncio.sleep(0.1)
        await server.stop(None)
        assert await asyncio.wait_for(pending, timeout=10) is False
        assert await asyncio.wait_for(send(1), timeout=10) is False
    finally:
        await close()


async def test_futures_closed_loop_counts_outcomes_and_stops_by_itself(fake) -> None:
    service, address, _ = fake
    models = [GOOD, GOOD, BAD]
    # Blocking (grpc's synchronous API): run it off this loop, which serves the fake.
    result = await asyncio.to_thread(
        pyload.closed_loop_futures,
        address,
        "classify",
        bodies(*models),
        concurrency=4,
        duration_s=0.5,
        offset=0,
        timeout_s=5.0,
        channels=2,
    )
    answered = len(service.classify_models) - 1  # the unmeasured first call
    assert answered == len(result["latencies"]) + result["errors"]
    # Each client walks the bodies in order, so a third of its calls hit the BAD model.
    assert result["errors"] >= 4 and len(result["latencies"]) >= 8
    assert 0.5 <= result["duration_s"] < 5.0 and result["client_cpu_s"] > 0
    assert set(pyload.stages["x-queue-time"]) == {1.5}  # sampled from successful calls


async def test_futures_closed_loop_counts_unanswered_calls_as_errors(fake) -> None:
    _, address, _ = fake
    result = await asyncio.to_thread(
        pyload.closed_loop_futures,
        address,
        "classify",
        bodies(GOOD, SILENT),
        concurrency=2,
        duration_s=0.3,
        offset=0,
        timeout_s=0.5,
    )
    assert result["errors"] >= 1 and result["latencies"]
