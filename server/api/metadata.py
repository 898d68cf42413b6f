"""Names and values that HTTP headers and gRPC metadata share: the request id, the deadline, the
model and version that answered, and the timings (milliseconds), so both protocols say the same."""

from __future__ import annotations

from server.core.timings import Timings

TIMEOUT_HEADER = "x-request-timeout-ms"
REQUEST_ID_HEADER = "x-request-id"
MODEL_HEADER = "x-model-name"
VERSION_HEADER = "x-model-version"
TIMING_HEADERS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


def timing_values(timings: Timings) -> tuple[str, str, str, str]:
    return (
        f"{timings.total_s * 1000:.3f}",
        f"{timings.tokenization_s * 1000:.3f}",
        f"{timings.queue_s * 1000:.3f}",
        f"{timings.inference_s * 1000:.3f}",
    )


def timing_pairs(timings: Timings, model: str, version: str) -> list[tuple[str, str]]:
    """(name, value) for the REST headers and the gRPC trailing metadata alike."""
    return [(MODEL_HEADER, model), (VERSION_HEADER, version), *zip(TIMING_HEADERS, timing_values(timings), strict=True)]
