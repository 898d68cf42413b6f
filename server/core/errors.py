"""One error table for every protocol.

Each kind maps to an HTTP status and a gRPC status code *name*; the API layers turn the
name into `grpc.StatusCode[name]` so that this module stays free of protocol imports. The
`code` label of `electra_requests_total` is the kind's HTTP status on every protocol, so one
dashboard query counts the same outcome whichever protocol asked.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    # (HTTP status, gRPC status code name)
    BAD_REQUEST = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    NOT_FOUND = (404, "NOT_FOUND")
    REQUEST_TIMEOUT = (408, "DEADLINE_EXCEEDED")  # the body did not arrive in time
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNSUPPORTED_MEDIA_TYPE = (415, "INVALID_ARGUMENT")
    INVALID_INPUT = (422, "INVALID_ARGUMENT")
    OVERLOADED = (429, "RESOURCE_EXHAUSTED")
    CANCELLED = (499, "CANCELLED")
    INTERNAL = (500, "INTERNAL")
    UNAVAILABLE = (503, "UNAVAILABLE")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code_name(self) -> str:
        return self.value[1]

    @property
    def code_label(self) -> str:
        """The `code` label of request metrics and logs: the HTTP status, whatever the protocol."""
        return str(self.value[0])


OK_CODE = "200"


class ModelLoadError(RuntimeError):
    """A model cannot be loaded as asked (device, precision, file, integrity, provider, graph)."""


class ServeError(Exception):
    """An error that reaches the client with a clear message and the right status."""

    def __init__(self, kind: ErrorKind, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"ServeError({self.kind.name}, {self.message!r})"

    @property
    def retry_after_header(self) -> str | None:
        """`Retry-After` (HTTP header, gRPC trailing metadata): whole seconds, at least 1."""
        return None if self.retry_after_s is None else str(max(1, round(self.retry_after_s)))


def invalid(message: str) -> ServeError:
    return ServeError(ErrorKind.INVALID_INPUT, message)


def bad_request(message: str) -> ServeError:
    return ServeError(ErrorKind.BAD_REQUEST, message)


def too_large(message: str) -> ServeError:
    return ServeError(ErrorKind.TOO_LARGE, message)


def not_loaded(name: str, version: str | None = None) -> ServeError:
    what = f"model '{name}'" if not version else f"model '{name}' version '{version}'"
    return ServeError(ErrorKind.NOT_FOUND, f"{what} is not loaded")


def internal_error(request_id: str) -> ServeError:
    """What a client sees of an unexpected failure: no internals, a request id to find the log line."""
    return ServeError(ErrorKind.INTERNAL, f"internal error (request id {request_id})")
