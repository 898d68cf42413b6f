"""Pure statistics for the bench: percentiles, latency summaries, ratios and markdown tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    NaN for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    @classmethod
    def of(cls, latencies_s: Sequence[float]) -> LatencySummary:
        if not latencies_s:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        return cls(
            count=len(latencies_s),
            mean_s=sum(latencies_s) / len(latencies_s),
            p50_s=percentile(latencies_s, 50),
            p90_s=percentile(latencies_s, 90),
            p99_s=percentile(latencies_s, 99),
            max_s=max(latencies_s),
        )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing, NaN, or the denominator is 0."""
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    """A table cell: '-' for missing values, thousands separators for large numbers."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers right-aligned, text left-aligned (by the first row)."""
    rows = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]  # type: ignore[arg-type]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} headers: {row}")
    numeric = [bool(rows) and all(_looks_numeric(r[i]) for r in rows) for i in range(len(headers))]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if numeric[i] else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(list(headers)), rule, *(line(r) for r in rows)])


def _looks_numeric(cell: str) -> bool:
    text = cell.replace(",", "").replace("x", "").replace("%", "").strip()
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
