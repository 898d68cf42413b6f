"""The inference routes' dispatcher (past FastAPI's stack) and the disconnect watcher, over ASGI in
process. The real server serves through the same `build_asgi` (tests/e2e)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from server.api.http.exchange import HttpLimits, until_disconnect
from server.api.http.hot_path import HotPathDispatcher
from server.app import build_app, build_asgi
from server.assembly import Assembly, assemble
from server.core.errors import ErrorKind, ServeError
from server.core.service import InferenceService
from server.settings import Settings

LIMITS = HttpLimits(max_request_bytes=64 * 1024, body_timeout_s=5)


class SpyApp:
    """Stands in for the FastAPI app behind the dispatcher and records what reached it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope.get("path", ""))
        await self.app(scope, receive, send)


@pytest.fixture
def parts(tmp_path: Any) -> Assembly:
    return assemble(Settings(device="cpu"), tmp_path)  # an empty repository: nothing loads


@pytest.fixture
def service(parts: Assembly) -> InferenceService:
    return parts.service


@pytest.fixture
def dispatcher(parts: Assembly) -> Any:
    asgi = build_asgi(parts.service, LIMITS, lambda: (parts.metrics.exposition(), parts.metrics.content_type))
    asgi.app = SpyApp(asgi.app)
    return asgi


def client(asgi: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://test")


def test_the_hot_routes_are_the_inference_routes(dispatcher: Any) -> None:
    paths = {route.path for route in dispatcher.routes}
    assert paths == {
        "/v1/classify",
        "/v1/qa",
        "/v1/tag",
        "/v1/discriminate",
        "/v1/zero-shot",
        "/models/{name}",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    }


async def test_inference_requests_skip_fastapi_and_others_do_not(dispatcher: Any) -> None:
    async with client(dispatcher) as http:
        response = await http.post("/v1/classify", json={"inputs": "a text"})
        assert response.status_code == 503
        assert response.json() == {"error": "models are still loading"}
        assert response.headers["retry-after"] == "1"
        assert dispatcher.app.paths == []
        assert (await http.get("/health/live")).status_code == 200
        # A GET on an inference path is FastAPI's to refuse (405), in the server's error shape.
        refused = await http.get("/v1/classify")
        assert refused.status_code == 405 and "error" in refused.json()
    assert dispatcher.app.paths == ["/health/live", "/v1/classify"]


async def test_path_parameters_reach_the_endpoint(dispatcher: Any, parts: Assembly) -> None:
    parts.registry.started = True
    async with client(dispatcher) as http:
        response = await http.post("/models/no-such-model", json={"inputs": "a text"})
    assert response.status_code == 404
    assert response.json() == {"error": "model 'no-such-model' is not loaded"}
    assert dispatcher.app.paths == []


async def test_errors_keep_their_shape_on_the_hot_path(dispatcher: Any, parts: Assembly) -> None:
    parts.registry.started = True
    async with client(dispatcher) as http:
        bad_json = await http.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
        too_big = await http.post("/v1/classify", content=b"x" * (LIMITS.max_request_bytes + 1))
        wrong_type = await http.post("/v1/classify", content=b'{"inputs": "x"}', headers={"content-type": "text/plain"})
    assert bad_json.status_code == 400 and bad_json.json()["error"].startswith("request body is not valid JSON")
    assert too_big.status_code == 413 and "exceeds" in too_big.json()["error"]
    # A browser may POST text/plain across origins without a preflight: refused.
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["error"]


async def test_an_unexpected_error_is_a_counted_json_500_with_the_request_id(
    dispatcher: Any, parts: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr(parts.service, "infer", broken)
    async with client(dispatcher) as http:
        response = await http.post("/v1/classify", json={"inputs": "a text"}, headers={"x-request-id": "abc-123"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (request id abc-123)"}
    assert response.headers["x-request-id"] == "abc-123"
    counted = parts.metrics.registry.get_sample_value(
        "electra_requests_total", {"model": "unknown", "task": "unknown", "protocol": "rest", "code": "500"}
    )
    assert counted == 1


async def test_every_response_carries_a_request_id(dispatcher: Any) -> None:
    async with client(dispatcher) as http:
        given = await http.get("/health/live", headers={"x-request-id": "client.id:42"})
        made = await http.get("/health/live")
        forged = await http.get("/health/live", headers={"x-request-id": "bad id\nINFO fake log line"})
        hot = await http.post("/v1/classify", json={"inputs": "x"})
    assert given.headers["x-request-id"] == "client.id:42"
    assert made.headers["x-request-id"] and made.headers["x-request-id"] != "client.id:42"
    assert forged.headers["x-request-id"] != "bad id\nINFO fake log line"  # not echoed into logs
    assert hot.status_code == 503 and hot.headers["x-request-id"]


def test_fastapi_middleware_would_be_skipped_so_it_is_refused(parts: Assembly) -> None:
    app = build_app(parts.service, LIMITS, lambda: (b"", "text/plain"))

    async def middleware(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    app.middleware("http")(middleware)
    with pytest.raises(ValueError, match="skip FastAPI middleware"):
        HotPathDispatcher(app, app.state.hot_routes)


# ------------------------------------------------------------------ until_disconnect


class FakeRequest:
    """What until_disconnect reads: `receive()`, which answers http.disconnect once `gone` is set."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, str]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_work_that_finishes_first_is_returned() -> None:
    request = FakeRequest()
    assert await until_disconnect(request, asyncio.sleep(0.01, result="done")) == "done"  # type: ignore[arg-type]
    request.gone.set()
    await asyncio.sleep(0.01)  # a late disconnect cancels nothing: the task is still usable
    assert await asyncio.sleep(0, result="still running") == "still running"


async def test_a_client_leaving_cancels_the_work() -> None:
    request = FakeRequest()
    work_cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            work_cancelled.set()
            raise
        return "never"

    asyncio.get_running_loop().call_later(0.02, request.gone.set)
    with pytest.raises(ServeError) as caught:
        await until_disconnect(request, work())  # type: ignore[arg-type]
    assert caught.value.kind is ErrorKind.CANCELLED
    assert work_cancelled.is_set()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # the request's task may go on answering


async def test_cancellation_from_outside_is_not_a_disconnect() -> None:
    request = FakeRequest()
    task = asyncio.ensure_future(until_disconnect(request, asyncio.sleep(30)))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
