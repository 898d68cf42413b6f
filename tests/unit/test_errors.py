"""The one error table: every kind has an HTTP status and a real gRPC status code; the metrics'
`code` label is the HTTP status on every protocol; internal errors carry a request id, not internals."""

from __future__ import annotations

import grpc
import pytest

from server.core.errors import OK_CODE, ErrorKind, ServeError, internal_error, not_loaded

EXPECTED = {
    ErrorKind.BAD_REQUEST: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.UNAUTHENTICATED: (401, grpc.StatusCode.UNAUTHENTICATED),
    ErrorKind.NOT_FOUND: (404, grpc.StatusCode.NOT_FOUND),
    ErrorKind.REQUEST_TIMEOUT: (408, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorKind.TOO_LARGE: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.UNSUPPORTED_MEDIA_TYPE: (415, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.INVALID_INPUT: (422, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.OVERLOADED: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.CANCELLED: (499, grpc.StatusCode.CANCELLED),
    ErrorKind.INTERNAL: (500, grpc.StatusCode.INTERNAL),
    ErrorKind.UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_maps_to_http_and_grpc(kind: ErrorKind) -> None:
    status, code = EXPECTED[kind]
    assert kind.http_status == status
    assert grpc.StatusCode[kind.grpc_code_name] is code
    assert kind.code_label == str(status)


def test_code_labels_are_distinct_http_statuses() -> None:
    labels = [kind.code_label for kind in ErrorKind]
    assert len(set(labels)) == len(labels) and OK_CODE not in labels
    assert set(EXPECTED) == set(ErrorKind)


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert ServeError(ErrorKind.OVERLOADED, "x", retry_after_s=0.2).retry_after_header == "1"
    assert ServeError(ErrorKind.OVERLOADED, "x", retry_after_s=2.6).retry_after_header == "3"
    assert ServeError(ErrorKind.BAD_REQUEST, "x").retry_after_header is None


def test_messages_clients_see() -> None:
    error = internal_error("abc-1")
    assert error.kind is ErrorKind.INTERNAL and error.message == "internal error (request id abc-1)"
    assert not_loaded("m").message == "model 'm' is not loaded"
    assert not_loaded("m", "3").message == "model 'm' version '3' is not loaded"
    assert not_loaded("m").kind is ErrorKind.NOT_FOUND
