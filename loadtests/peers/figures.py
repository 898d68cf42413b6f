"""The peers' rounds reduced to the report's figures (pure: plain dicts in, plain dicts out).

Every server runs at every client count in every round, one after the other, so each round holds
neighbours in time. Per server and client count the table gives the median over the rounds; each
ratio "ours ÷ peer" is the median of the rounds' own ratios, and "ours ÷ best peer @32" compares
ours with the best peer of the same round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadtests.stats import median

OURS = "ours"


def _runs(runs: Sequence[dict[str, Any]], server: str, clients: int) -> list[dict[str, Any]]:
    return [r for r in runs if r["server"] == server and int(r["concurrency"]) == clients]


def per_cpu_s(run: dict[str, Any]) -> float | None:
    """Sequences per CPU-second of the server's process tree: what a server gets out of the CPU it
    was given, robust to other processes taking cores from it on a shared host."""
    cpu = run.get("cpu") or {}
    used = (cpu.get("server_cores") or 0) * (cpu.get("wall_s") or 0)
    return run["seqs_per_s"] * (cpu.get("wall_s") or 0) / used if used > 0 else None


METRICS = {"seqs_per_s": lambda r: r["seqs_per_s"], "per_cpu_s": per_cpu_s}


def _by_round(
    runs: Sequence[dict[str, Any]], server: str, clients: int, metric: str = "seqs_per_s"
) -> dict[int, float]:
    values = {int(r["round"]): METRICS[metric](r) for r in _runs(runs, server, clients)}
    return {k: v for k, v in values.items() if v is not None}


def ours_over(runs: Sequence[dict[str, Any]], peer: str, clients: int, metric: str = "seqs_per_s") -> float | None:
    """Median over the rounds of ours ÷ the peer, each at `clients` in the same round."""
    ours, theirs = _by_round(runs, OURS, clients, metric), _by_round(runs, peer, clients, metric)
    ratios = [ours[i] / theirs[i] for i in ours.keys() & theirs.keys() if theirs[i] > 0]
    return median(ratios) if ratios else None


def ours_over_best(
    runs: Sequence[dict[str, Any]], peers: Sequence[str], clients: int = 32, metric: str = "seqs_per_s"
) -> dict[str, Any]:
    """Ours ÷ the best peer of each round at `clients` (by `metric`: throughput, or sequences per
    CPU-second), the median over the rounds, and which peer was best most often (ties: the first
    named)."""
    ours = _by_round(runs, OURS, clients, metric)
    ratios, best_names = [], []
    for i, our_rate in sorted(ours.items()):
        rates = {p: _by_round(runs, p, clients, metric).get(i) for p in peers}
        rates = {p: v for p, v in rates.items() if v}
        if not rates:
            continue
        best = max(rates, key=lambda p: rates[p])
        best_names.append(best)
        ratios.append(our_rate / rates[best])
    most = max(dict.fromkeys(best_names), key=best_names.count) if best_names else None
    return {
        "clients": clients,
        "metric": metric,
        "ratio": median(ratios) if ratios else None,
        "rounds": ratios,
        "best_peer": most,
    }


def table(runs: Sequence[dict[str, Any]], servers: Sequence[str], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    """One row per server and client count: median throughput over the rounds; latency, errors
    and CPU from the round whose throughput is the median one; ours ÷ that server."""
    rows = []
    for server in servers:
        for c in concurrencies:
            got = sorted(_runs(runs, server, c), key=lambda r: r["seqs_per_s"])
            if not got:
                continue
            shown = got[len(got) // 2]
            cpu = shown.get("cpu") or {}
            cpu_rates = [v for v in map(per_cpu_s, got) if v is not None]
            rows.append(
                {
                    "server": server,
                    "clients": c,
                    "rounds": len(got),
                    "seqs_per_s": median([r["seqs_per_s"] for r in got]),
                    "per_cpu_s": median(cpu_rates) if cpu_rates else None,
                    "p50_s": shown["latency"]["p50_s"],
                    "p99_s": shown["latency"]["p99_s"],
                    "errors": sum(int(r["errors"]) for r in got),
                    "server_cores": cpu.get("server_cores"),
                    "client_cores": cpu.get("client_cores"),
                    "other_cores": cpu.get("other_cores"),
                    "idle_servers_cores": cpu.get("idle_servers_cores"),
                    "ours_over": None if server == OURS else ours_over(runs, server, c),
                    "ours_over_cpu": None if server == OURS else ours_over(runs, server, c, "per_cpu_s"),
                }
            )
    return rows


def series(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(clients, seq/s) points per server, for the plot."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        out.setdefault(r["server"], []).append((int(r["clients"]), float(r["seqs_per_s"])))
    return {k: sorted(v) for k, v in out.items()}
