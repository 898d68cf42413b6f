"""The inference routes straight from uvicorn, past FastAPI's middleware stack and router.

Each HTTP request otherwise crosses about ten ASGI layers (error, exception, body-limit and
exit-stack middleware, then a linear regex scan of every route) before its endpoint runs, and
every response message crosses them again on the way out: about a quarter of the event loop's
CPU per inference request in a py-spy profile at 32 clients. The routes marked `@hot` keep their
FastAPI registration (OpenAPI, and the same endpoint when the app is mounted elsewhere); this
dispatcher finds them first and calls the very same endpoint with the request and its path
parameters. Everything else goes to FastAPI unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from server.api.http_common import json_response

log = logging.getLogger("electra.http")

Endpoint = Callable[..., Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)


def hot(endpoint: E) -> E:
    """Mark an endpoint for the dispatcher. It must take `request: Request` (by that name) and
    string path parameters only, and catch its own errors into a response."""
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


class HotPathDispatcher:
    """ASGI app: the given hot routes directly, every other request through `app`."""

    def __init__(self, app: FastAPI, routes: Iterable[APIRoute]) -> None:
        self.app = app
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    await self._serve(route, {**scope, **child}, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app
        try:
            response = await route.endpoint(request=Request(scope, receive), **scope["path_params"])
        except Exception:
            # What FastAPI's ServerErrorMiddleware would do, in this server's error shape.
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            response = json_response({"error": "internal server error"}, 500)
        await response(scope, receive, send)
