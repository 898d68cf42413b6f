"""One error table for every protocol.

Each kind maps to an HTTP status and a gRPC status code *name*; the API layers turn the
name into `grpc.StatusCode[name]` so that this module stays free of protocol imports.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    # (HTTP status, gRPC status code name)
    BAD_REQUEST = (400, "INVALID_ARGUMENT")
    INVALID_INPUT = (422, "INVALID_ARGUMENT")
    NOT_FOUND = (404, "NOT_FOUND")
    TOO_LARGE = (413, "INVALID_ARGUMENT")
    OVERLOADED = (429, "RESOURCE_EXHAUSTED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")
    CANCELLED = (499, "CANCELLED")
    INTERNAL = (500, "INTERNAL")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code_name(self) -> str:
        return self.value[1]


class ServeError(Exception):
    """An error that reaches the client with a clear message and the right status."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.model: str | None = None  # set once the request's model is known, for per-model error metrics

    def __repr__(self) -> str:
        return f"ServeError({self.kind.name}, {self.message!r})"


def invalid(message: str) -> ServeError:
    return ServeError(ErrorKind.INVALID_INPUT, message)


def bad_request(message: str) -> ServeError:
    return ServeError(ErrorKind.BAD_REQUEST, message)
