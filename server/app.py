"""The FastAPI application: routers for every HTTP protocol and one error shape for all of them,
served behind the hot-path dispatcher (request ids, authentication, the inference routes)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api.http import hf, rerank, rest
from server.api.http.exchange import HttpLimits, error_response, json_response
from server.api.http.hot_path import Guard, HotPathDispatcher, hot_routes
from server.api.kserve import http_routes as v2_http
from server.api.repository import RepositoryControl
from server.core.errors import ServeError
from server.core.service import InferenceService


def build_app(
    service: InferenceService,
    limits: HttpLimits,
    exposition: Callable[[], tuple[bytes, str]],
    control: RepositoryControl | None = None,
) -> FastAPI:
    app = FastAPIOffline(
        # A trailing slash is a 404 in the error shape, not a redirect a client may not follow.
        redirect_slashes=False,
        title="electra-serve",
        version="0.1.0",
        description="ELECTRA inference (classify, qa, tag, discriminate) over REST, HF Inference API, KServe v2.",
    )
    routers = [
        rest.build_router(service, limits, exposition),
        hf.build_router(service, limits),
        rerank.build_router(service, limits),
        v2_http.build_router(service, limits, control),
    ]
    for router in routers:
        app.include_router(router)

    @app.exception_handler(ServeError)
    async def serve_error(_: Request, error: ServeError) -> Response:
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        return json_response({"error": str(error.detail)}, error.status_code, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> Response:
        return json_response({"error": f"invalid request: {error.errors()}"}, 422)

    app.state.service = service
    app.state.hot_routes = hot_routes(routers)
    return app


def build_asgi(
    service: InferenceService,
    limits: HttpLimits,
    exposition: Callable[[], tuple[bytes, str]],
    control: RepositoryControl | None = None,
    guard: Guard | None = None,
) -> HotPathDispatcher:
    """What uvicorn serves: the app, with its inference routes dispatched past FastAPI's stack."""
    app = build_app(service, limits, exposition, control)
    return HotPathDispatcher(app, app.state.hot_routes, guard, service.bodies)
