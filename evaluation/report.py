"""The side-by-side table electra-eval prints."""

from __future__ import annotations

from evaluation.run import Evaluation

# Counts are not scores: they stay out of the table's metric columns.
HIDDEN = ("HasAns_total", "NoAns_total", "total")


def table(result: Evaluation) -> str:
    metric_names: list[str] = []
    for score in result.scores.values():
        metric_names.extend(name for name in score.metrics if name not in metric_names and name not in HIDDEN)
    # The primary metric first: it is the one the gate reads.
    metric_names.sort(key=lambda name: name != result.metric)
    header = ["variant", *metric_names, f"vs {result.reference or 'ref'}", "examples/s"]
    rows = [header]
    for name, score in result.scores.items():
        drop = result.drop(name)
        rows.append(
            [
                name,
                *(f"{score.metrics[m]:.2f}" if m in score.metrics else "-" for m in metric_names),
                "-" if drop is None else f"{0.0 - drop:+.2f}",  # negative: points lost
                f"{score.examples_per_second:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    title = (
        f"{result.eval_set.task} on {result.eval_set.path} ({len(result.eval_set)} examples, "
        f"sha256 {result.eval_set.sha256[:12]}); gate: {result.metric}, max drop {result.max_drop:g} points"
        + (f" below {result.reference}" if result.reference else "")
    )
    return "\n".join([title, *lines])
