"""Which queued rows make the next batch: a pure policy over row lengths (no asyncio, no clock).

The window is a list of row lengths in queue order (the queue builds it fairly, see `queue`);
the first row is the oldest and is always in the batch. A batch is bounded by rows, padded tokens
(rows x longest row: the model pads, so that is what it computes), optionally attention cells
(rows x longest row squared) and a padding ratio. With a sort window the rows closest in length
to the oldest one join it; in FIFO mode rows join in queue order until a limit stops them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.core.config import BatchPolicy


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_rows: int
    max_tokens: int  # rows x longest row
    max_attention: int | None = None  # rows x longest row^2; None: no limit
    max_padding_ratio: float | None = None  # None: no limit
    fifo: bool = False  # rows in queue order (a sort window of 0)
    window: int = 0  # rows a selection looks at; 0: four batches' worth (max_rows when fifo)

    @classmethod
    def from_policy(cls, policy: BatchPolicy) -> BatchLimits:
        sort_window = 4 * policy.max_batch_size if policy.sort_window is None else policy.sort_window
        fifo = sort_window == 0
        return cls(
            max_rows=policy.max_batch_size,
            max_tokens=policy.max_batch_tokens,
            max_attention=policy.max_batch_attention,
            max_padding_ratio=policy.max_padding_ratio,
            fifo=fifo,
            window=policy.max_batch_size if fifo else max(sort_window, policy.max_batch_size),
        )

    @property
    def window_size(self) -> int:
        if self.window:
            return self.window
        return self.max_rows if self.fifo else 4 * self.max_rows

    def too_big(self, rows: int, longest: int) -> bool:
        """Whether a batch of `rows` padded to `longest` passes the token or attention limit."""
        padded = rows * longest
        return padded > self.max_tokens or (self.max_attention is not None and padded * longest > self.max_attention)

    @property
    def padding_slack(self) -> float | None:
        """The padding limit as a bound on padded tokens: rows x longest <= real x slack."""
        return None if self.max_padding_ratio is None else 1.0 / (1.0 - self.max_padding_ratio)


# What the batcher calls to choose a batch: (window lengths, limits) -> (positions, a limit was reached).
Selector = Callable[[Sequence[int], BatchLimits], tuple[list[int], bool]]


def select_batch(lengths: Sequence[int], limits: BatchLimits) -> tuple[list[int], bool]:
    """Positions (into `lengths`) of the rows of the next batch, always including position 0, and
    whether a limit was reached (the batch is worth running now rather than waiting to grow)."""
    if not lengths:
        return [], False
    if limits.fifo:
        return _select_fifo(lengths, limits)
    return _select_sorted(lengths, limits)


def _select_fifo(lengths: Sequence[int], limits: BatchLimits) -> tuple[list[int], bool]:
    slack = limits.padding_slack
    chosen: list[int] = []
    longest = real = 0
    for position, length in enumerate(lengths):
        longest_if = max(longest, length)
        too_big = limits.too_big(len(chosen) + 1, longest_if)
        padded_if = (len(chosen) + 1) * longest_if
        if chosen and (too_big or (slack is not None and padded_if > slack * (real + length))):
            return chosen, too_big
        chosen.append(position)
        longest = longest_if
        real += length
        if len(chosen) == limits.max_rows:
            return chosen, True
    return chosen, False


def _select_sorted(lengths: Sequence[int], limits: BatchLimits) -> tuple[list[int], bool]:
    """Sort the window by length (ties keep window order) and grow a contiguous run around the
    oldest row, always taking the neighbour closest in length: similar lengths end up together,
    and rows far from this batch's length stay for a batch of their own."""
    slack = limits.padding_slack
    order = sorted(range(len(lengths)), key=lambda p: lengths[p])  # stable: the oldest first among equals
    lo = hi = order.index(0)
    shortest = longest = real = lengths[0]
    while hi - lo + 1 < limits.max_rows:
        count = hi - lo + 2
        candidates = []
        if lo > 0:
            left = lengths[order[lo - 1]]
            candidates.append((shortest - left, 0, longest, left))
        if hi + 1 < len(order):
            right = lengths[order[hi + 1]]
            candidates.append((right - longest, 1, right, right))
        if not candidates:
            return order[lo : hi + 1], False
        for _, side, longest_if, length in sorted(candidates):
            if limits.too_big(count, longest_if):
                continue
            if slack is not None and count * longest_if > slack * (real + length):
                continue
            if side == 0:
                lo -= 1
                shortest = length
            else:
                hi += 1
                longest = longest_if
            real += length
            break
        else:
            # Held back by padding, the batch is as good as the queue allows: cut it now (and stage
            # it while every thread is busy) rather than idle a thread for rows that would rarely fit
            # better.
            return order[lo : hi + 1], True
    return order[lo : hi + 1], True
