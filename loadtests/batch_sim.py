"""How close can a server's batches come to the offline ceiling's? A closed-loop simulation.

The offline ceiling sorts all of its rows by length before cutting batches (1-2% padding, full
batches). A server at 32 clients holds 32 rows at most, some of them running: the batcher picks
from the rest. This simulation replays the bench's closed loop (C clients, each sending its next
text `overhead_ms` after its answer) against the server's own batching policy (`select_batch`,
the same code) and W model runs in parallel, with a cost model of one
model run (fixed + per padded token), and compares it with the offline plan on the same lengths
and cost model. No model runs and no clock: it isolates what batch composition alone costs.

    python -m loadtests.batch_sim                       # the bench's defaults
    python -m loadtests.batch_sim --padding 0.05 0.1 0.2 --max-batch-size 8 16

Fit the cost model to a model with `OnnxModelRuntime.run` timings at a few shapes; the defaults
are the demo classifier, fp32, one thread (2026-11, this 2-core host: ~1.5 ms + 0.17 ms a token).
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from loadtests.data import target_lengths
from loadtests.offline import plan_batches
from server.core.batching import BatchLimits, select_batch
from server.core.config import BatchPolicy

FIXED_MS, PER_TOKEN_MS = 1.5, 0.17


@dataclass(frozen=True, slots=True)
class CostModel:
    fixed_ms: float = FIXED_MS
    per_token_ms: float = PER_TOKEN_MS

    def run_ms(self, rows: int, width: int) -> float:
        return self.fixed_ms + self.per_token_ms * rows * width


@dataclass(frozen=True, slots=True)
class SimResult:
    seqs_per_s: float
    mean_batch: float
    padding_ratio: float  # padded / all tokens over every run


Queued = tuple[float, int]  # (arrived at, ms; row length)


def offline(lengths: Sequence[int], batch_size: int, workers: int, cost: CostModel) -> SimResult:
    """The offline ceiling's plan: globally length-sorted batches, spread evenly over the workers."""
    batches = plan_batches(lengths, batch_size, "sorted")
    total_ms = sum(cost.run_ms(len(b), max(lengths[i] for i in b)) for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return SimResult(len(lengths) / (total_ms / workers) * 1000, len(lengths) / len(batches), 1 - sum(lengths) / padded)


def closed_loop(
    lengths: Sequence[int],
    cost: CostModel,
    *,
    clients: int = 32,
    workers: int = 2,
    max_batch_size: int = 8,
    max_batch_tokens: int = 2048,
    max_padding_ratio: float | None = 0.1,
    max_queue_delay_ms: float = 2.0,
    overhead_ms: float = 0.9,
    answers: int = 6000,
    seed: int = 1,
) -> SimResult:
    """The server at `clients` concurrent clients, as the batcher would cut and stage its batches."""
    limits = BatchLimits.from_policy(
        BatchPolicy(
            max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens,
            max_padding_ratio=max_padding_ratio,
            max_inflight_batches=workers,
        )
    )
    rng = random.Random(seed)
    queue: list[Queued] = []
    events: list[tuple[float, int, str, list[Queued] | None]] = []  # (ms, tiebreak, kind, batch)
    order = 0

    def push(at: float, kind: str, batch: list[Queued] | None = None) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, batch))

    for _ in range(clients):
        push(rng.random(), "arrive")
    running, staged = 0, None
    done = rows = runs = real = padded = 0
    now = 0.0

    def start(batch: list[Queued]) -> None:
        nonlocal running, rows, runs, real, padded
        running += 1
        width = max(length for _, length in batch)
        rows, runs = rows + len(batch), runs + 1
        real, padded = real + sum(length for _, length in batch), padded + len(batch) * width
        push(now + cost.run_ms(len(batch), width), "finish", batch)

    def cut() -> None:
        # the batcher's rules (server.core.batching.batcher): a full batch goes (staged while every run is busy);
        # a partial one only to a free run once its oldest row has waited the queue delay.
        nonlocal staged
        while queue and (staged is None or running < workers):
            window = queue[: limits.window_size]
            positions, full = select_batch([length for _, length in window], limits)
            chosen = [window[p] for p in positions]
            full = full or len(queue) > len(window)
            free = running < workers
            wait = window[0][0] + max_queue_delay_ms - now
            if not (full or (free and wait <= 0)):
                if free:
                    push(now + wait, "tick")
                return
            taken = set(positions)  # the window is the queue's head: positions index the queue
            queue[:] = [e for i, e in enumerate(queue) if i not in taken]
            if free:
                start(chosen)
            else:
                staged = chosen

    while done < answers:
        now, _, kind, batch = heapq.heappop(events)
        if kind == "arrive":
            queue.append((now, lengths[rng.randrange(len(lengths))]))
        elif kind == "finish":
            running -= 1
            done += len(batch or [])
            for _ in batch or []:
                push(now + overhead_ms, "arrive")
            if staged is not None:
                next_batch, staged = staged, None
                start(next_batch)
        cut()
    return SimResult(done / now * 1000, rows / runs, 1 - real / padded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="model runs in parallel (server and offline)")
    parser.add_argument("--padding", type=float, nargs="+", default=[0.05, 0.1, 0.15], help="max padding ratios")
    parser.add_argument("--max-batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--offline-batch", type=int, default=8)
    parser.add_argument("--fixed-ms", type=float, default=FIXED_MS)
    parser.add_argument("--per-token-ms", type=float, default=PER_TOKEN_MS)
    parser.add_argument("--texts", type=int, default=2000, help="lengths drawn like the bench's mixed set")
    args = parser.parse_args(argv)
    cost = CostModel(args.fixed_ms, args.per_token_ms)
    lengths = target_lengths(args.texts, seed=7)
    ceiling = offline(lengths, args.offline_batch, args.workers, cost)
    print(
        f"offline ceiling b{args.offline_batch} sorted: {ceiling.seqs_per_s:.0f} seq/s, "
        f"padding {ceiling.padding_ratio:.3f}"
    )
    for size in args.max_batch_size:
        for padding in args.padding:
            served = closed_loop(lengths, cost, clients=args.clients, workers=args.workers, max_batch_size=size,
                                 max_padding_ratio=padding)  # fmt: skip
            print(
                f"server @{args.clients}, max batch {size}, max padding {padding}: {served.seqs_per_s:.0f} seq/s "
                f"= {served.seqs_per_s / ceiling.seqs_per_s:.3f}x the ceiling (batch {served.mean_batch:.1f}, "
                f"padding {served.padding_ratio:.3f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
