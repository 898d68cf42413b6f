"""The FastAPI application: routers for every HTTP protocol and one error shape for all of them."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api import hf, rest
from server.api.hot_path import HotPathDispatcher, hot_routes
from server.api.http_common import error_response, json_response
from server.core.errors import ServeError
from server.core.service import InferenceService


def build_app(service: InferenceService) -> FastAPI:
    app = FastAPI(
        title="electra-serve",
        version="0.1.0",
        description="ELECTRA inference (classify, qa, tag, discriminate) over REST, HF Inference API, KServe v2.",
    )
    routers = [rest.build_router(service), hf.build_router(service)]
    try:
        from server.api import v2_http
    except ImportError:  # the KServe v2 HTTP routes are optional in a trimmed build
        v2_http = None
    if v2_http is not None:
        routers.append(v2_http.build_router(service))
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


def build_asgi(service: InferenceService) -> HotPathDispatcher:
    """What uvicorn serves: the app, with its inference routes dispatched past FastAPI's stack."""
    app = build_app(service)
    return HotPathDispatcher(app, app.state.hot_routes)
