"""What the bench reads from the server's /metrics: batch size and padding ratio between two scrapes."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@dataclass(frozen=True, slots=True)
class BatchStats:
    batches: int
    rows: int
    mean_batch_size: float | None
    mean_padding_ratio: float | None  # mean over model runs of padded / all tokens
    padded_tokens: float
    dropped: float

    @classmethod
    def between(cls, before: Samples, after: Samples, model: str) -> BatchStats:
        def delta(name: str, **labels: str) -> float:
            return value(after, name, model=model, **labels) - value(before, name, model=model, **labels)

        batches = delta("electra_batch_size_count")
        rows = delta("electra_batch_size_sum")
        padding = delta("electra_padding_ratio_sum")
        return cls(
            batches=round(batches),
            rows=round(rows),
            mean_batch_size=rows / batches if batches else None,
            mean_padding_ratio=padding / batches if batches else None,
            padded_tokens=delta("electra_batch_tokens_sum"),
            dropped=delta("electra_dropped_total"),
        )
