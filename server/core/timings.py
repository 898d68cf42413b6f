"""Where a request's time went, in seconds: reported in headers / trailing metadata, metrics,
Triton statistics and the request log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Timings:
    tokenization_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0
