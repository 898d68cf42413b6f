"""API keys for the gRPC server (see `server.api.security`): an interceptor that ends calls
without a valid key with UNAUTHENTICATED before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from server.api.security import OPEN_GRPC_METHODS, UNAUTHORIZED, ApiKeys, bearer


class GrpcAuth(grpc.aio.ServerInterceptor):
    """For the gRPC server: calls without a valid key end with UNAUTHENTICATED before any handler runs."""

    def __init__(self, keys: ApiKeys, protect_probes: bool) -> None:
        self.keys = keys
        self.protect_probes = protect_probes

    def _allowed(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> bool:
        if not self.protect_probes and method in OPEN_GRPC_METHODS:
            return True
        token = next((bearer(value) for key, value in metadata or () if key == "authorization"), None)
        return self.keys.verify(token)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or self._allowed(details.method, details.invocation_metadata):
            return handler
        return refusal(handler)


def refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without reading the request."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED)
        yield  # pragma: no cover - abort raises; this makes it a generator

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
