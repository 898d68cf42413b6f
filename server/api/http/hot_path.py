"""The HTTP server's front door: one ASGI app before FastAPI that

1. gives every request its id (the client's `x-request-id` when it is a sane token, else a new
   one) and returns it on every response;
2. checks the API key when keys are configured (`server.api.security`);
3. sends the inference routes straight to their endpoint, past FastAPI's middleware stack and
   router. Each HTTP request otherwise crosses about ten ASGI layers (error, exception, body-limit
   and exit-stack middleware, then a linear regex scan of every route) before its endpoint runs,
   and every response message crosses them again on the way out: about a quarter of the event
   loop's CPU per inference request in a py-spy profile at 32 clients.

The `@hot` routes keep their FastAPI registration (OpenAPI, and the same endpoint when the app is
mounted elsewhere). Everything else goes to FastAPI unchanged. FastAPI middleware would run for
some requests and not for others, so building the dispatcher over an app that has any is refused:
what must run on every request belongs here.

Inference endpoints run their work inside `tracked`: the service's request wrapper (one outcome
count per request) and the error table's response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from server.api.http.exchange import BODY_HOLD_KEY, error_response, json_response
from server.api.metadata import REQUEST_ID_HEADER
from server.core.body_budget import BodyBudget
from server.core.config import DEFAULT_CONFIG
from server.core.errors import ServeError
from server.core.service import Call, InferenceService, new_request_id

log = logging.getLogger("electra.http")

Endpoint = Callable[..., Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)
REQUEST_ID_KEY = "electra.request_id"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def hot(endpoint: E) -> E:
    """Mark an endpoint for the dispatcher. It must take `request: Request` (by that name) and
    string path parameters only, and catch its own errors into a response (`tracked` does)."""
    endpoint.hot_path = True  # type: ignore[attr-defined]
    return endpoint


def hot_routes(routers: Iterable[APIRouter]) -> list[APIRoute]:
    """The `@hot` routes of routers included in an app without a prefix."""
    return [
        route
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and getattr(route.endpoint, "hot_path", False)
    ]


def request_id_of(scope: Scope) -> str:
    """The id the dispatcher gave this request (one is made for requests that did not pass it)."""
    request_id = scope.get(REQUEST_ID_KEY)
    if request_id is None:
        request_id = scope[REQUEST_ID_KEY] = _client_request_id(scope) or new_request_id()
    return request_id


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            # Only a plain token is echoed and logged: anything else could forge log lines.
            return value.decode("ascii") if _REQUEST_ID.fullmatch(value) else None
    return None


async def tracked(
    service: InferenceService, request: Request, protocol: str, work: Callable[[Call], Awaitable[Response]]
) -> Response:
    """Run one inference request's work inside the service's request wrapper, answering errors
    with the error table's status and body."""
    try:
        with service.track(protocol, request_id_of(request.scope)) as call:
            return await work(call)
    except ServeError as error:
        return error_response(error)


Guard = Callable[[Scope], Awaitable[Response | None]]


class HotPathDispatcher:
    """ASGI app: request ids and authentication for every request, the hot routes directly,
    every other request through `app`."""

    def __init__(
        self, app: FastAPI, routes: Iterable[APIRoute], guard: Guard | None = None, bodies: BodyBudget | None = None
    ) -> None:
        if app.user_middleware:
            raise ValueError(
                "the hot-path dispatcher would skip FastAPI middleware for inference routes: "
                "put what must run on every request into the dispatcher instead"
            )
        self.app = app
        self.routes = list(routes)
        self.guard = guard
        # Request bodies held at once, shared with the gRPC server of the same process.
        self.bodies = bodies or BodyBudget(DEFAULT_CONFIG.max_body_buffer_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        if self.guard is not None:
            refusal = await self.guard(scope)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
        with self.bodies.hold() as hold:
            scope[BODY_HOLD_KEY] = hold
            if scope["method"] == "POST":
                for route in self.routes:
                    match, child = route.matches(scope)
                    if match is Match.FULL:
                        await self._serve(route, {**scope, **child}, receive, send_with_id)
                        return
            await self.app(scope, receive, send_with_id)

    async def _serve(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app
        try:
            response = await route.endpoint(request=Request(scope, receive), **scope["path_params"])
        except Exception:
            # What FastAPI's ServerErrorMiddleware would do, in this server's error shape.
            log.exception(
                "unhandled error in %s %s (request id %s)", scope["method"], scope["path"], scope.get(REQUEST_ID_KEY)
            )
            response = json_response({"error": f"internal error (request id {scope.get(REQUEST_ID_KEY)})"}, 500)
        await response(scope, receive, send)
