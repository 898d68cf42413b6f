"""Open-loop arrival schedules: Poisson processes with a fixed seed, so every run offers the same load."""

from __future__ import annotations

import numpy as np


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Arrival times (seconds from the start, increasing, all < duration_s) of a Poisson process.

    Inter-arrival gaps are exponential with mean 1/rate; the same (rate, duration, seed) always
    gives the same schedule.
    """
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    rng = np.random.default_rng(seed)
    expected = rate_per_s * duration_s
    # Draw enough gaps in one go (mean + 6 sigma + slack), then top up in the rare case it fell short.
    n = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))
    while times[-1] < duration_s:
        more = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n)) + times[-1]
        times = np.concatenate([times, more])
    return times[times < duration_s]


def rate_ladder(saturation_per_s: float, fractions: list[float]) -> list[float]:
    """Offered rates as fractions of a measured saturation throughput (at least 0.5 req/s each)."""
    return [max(0.5, round(saturation_per_s * f, 2)) for f in fractions]
