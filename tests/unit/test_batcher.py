"""DynamicBatcher policy with a fake runtime (no model, no wall-clock assertions).

The fake computes outputs from the inputs (`pooled` = [sum of real ids, sum of token types],
`tokens` = ids as float), so every test can check that each row got its own result back after
being batched with others. Blocking is done with events, not sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from server.core.batching import DynamicBatcher, SubmitResult, select_batch
from server.core.config import BatchPolicy
from server.core.errors import ErrorKind, ServeError
from server.core.rows import Row

PAD = 0
WAIT = 10.0  # seconds: generous bound on anything that should happen "now"


class FakeRuntime:
    def __init__(
        self,
        *,
        fail_if: Callable[[np.ndarray], bool] | None = None,
        gate: threading.Event | None = None,
        barrier: threading.Barrier | None = None,
        latency_s: float = 0.0,
    ) -> None:
        self.fail_if = fail_if
        self.gate = gate  # when set up, every call waits for it
        self.barrier = barrier
        self.latency_s = latency_s
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self.batches.append((ids.copy(), mask.copy(), types.copy()))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(WAIT), "test gate never opened"
            if self.barrier is not None:
                self.barrier.wait(WAIT)
            if self.latency_s:
                time.sleep(self.latency_s)
            if self.fail_if is not None and self.fail_if(ids):
                raise RuntimeError("boom: poisoned batch")
            masked = ids * mask
            return {
                "pooled": np.stack([masked.sum(axis=1), types.sum(axis=1)], axis=1).astype(np.float32),
                "tokens": masked.astype(np.float32),
            }
        finally:
            with self._lock:
                self.active -= 1

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [b[0].shape for b in self.batches]  # type: ignore[misc]

    def seen_ids(self) -> set[int]:
        return {int(v) for ids, _, _ in self.batches for v in ids.ravel() if v != PAD}


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int, float]] = []
        self.drops: list[str] = []
        self.depths: list[int] = []
        self.failures: list[str] = []
        self.retried: list[int] = []
        self.restarts = 0

    def on_batch(self, model_rows: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batches.append((model_rows, real_tokens, padded_tokens, seconds))

    def on_drop(self, reason: str) -> None:
        self.drops.append(reason)

    def on_queue_depth(self, n: int) -> None:
        self.depths.append(n)

    def on_failure(self, kind: str) -> None:
        self.failures.append(kind)

    def on_retry(self, rows: int) -> None:
        self.retried.append(rows)

    def on_restart(self) -> None:
        self.restarts += 1


_next_id = 1


def row(length: int, type_ones: int = 0) -> Row:
    """A row of fresh, unique token ids (so a row's output identifies it)."""
    global _next_id
    ids = np.arange(_next_id, _next_id + length, dtype=np.int64)
    _next_id += length
    types = np.zeros(length, dtype=np.int64)
    types[length - type_ones :] = 1
    return Row(input_ids=ids, token_type_ids=types)


def check(rows: list[Row], result: SubmitResult) -> None:
    """Every row got its own outputs back, in order, sliced to its length."""
    assert len(result.outputs) == len(rows)
    for r, out in zip(rows, result.outputs, strict=True):
        np.testing.assert_array_equal(out["tokens"], r.input_ids.astype(np.float32))
        np.testing.assert_array_equal(out["pooled"], [r.input_ids.sum(), r.token_type_ids.sum()])
    assert result.queue_seconds >= 0 and result.inference_seconds >= 0


POLICY_FIELDS = set(BatchPolicy.__dataclass_fields__)


def make_batcher(run: Any, **kwargs: Any) -> DynamicBatcher:
    """A batcher from one flat set of keywords: the policy's limits and the batcher's own options."""
    policy = BatchPolicy(**{k: v for k, v in kwargs.items() if k in POLICY_FIELDS})
    options = {k: v for k, v in kwargs.items() if k not in POLICY_FIELDS}
    options.setdefault("pad_token_id", PAD)
    return DynamicBatcher(run, policy, **options)


@contextlib.asynccontextmanager
async def running(fake: FakeRuntime, **kwargs: Any) -> AsyncIterator[DynamicBatcher]:
    kwargs.setdefault("sequence_outputs", {"tokens"})
    kwargs.setdefault("max_queue_delay_ms", 20)
    batcher = make_batcher(fake, name="test", **kwargs)
    batcher.start()
    try:
        yield batcher
    finally:
        if fake.gate is not None:
            fake.gate.set()
        await batcher.stop(drain_timeout_s=WAIT)


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.001)


async def started(fake: FakeRuntime) -> None:
    assert await asyncio.to_thread(fake.started.wait, WAIT)


# -- batching -------------------------------------------------------------------------------------


async def test_concurrent_requests_share_few_batches() -> None:
    fake, observer = FakeRuntime(), Recorder()
    async with running(fake, max_batch_size=8, observer=observer) as batcher:
        requests = [[row(5)] for _ in range(20)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for r, res in zip(requests, results, strict=True):
        check(r, res)
    # all 20 are queued before the loop runs again: full batches of 8, then the rest
    assert fake.shapes == [(8, 5), (8, 5), (4, 5)]
    assert [(b[0], b[1], b[2]) for b in observer.batches] == [(8, 40, 40), (8, 40, 40), (4, 20, 20)]
    assert observer.depths[-1] == 0


async def test_batch_size_and_token_budget_are_respected() -> None:
    rng = np.random.default_rng(7)
    fake = FakeRuntime()
    async with running(fake, max_batch_size=6, max_batch_tokens=100) as batcher:
        requests = [[row(int(n)) for n in rng.integers(1, 41, rng.integers(1, 4))] for _ in range(40)]
        huge = [row(150)]  # longer than the whole token budget: runs alone
        results = await asyncio.gather(*(batcher.submit(r) for r in [*requests, huge]))
    for r, res in zip([*requests, huge], results, strict=True):
        check(r, res)
    for rows_, width in fake.shapes:
        assert rows_ <= 6
        assert rows_ * width <= 100 or rows_ == 1
    assert (1, 150) in fake.shapes


@pytest.mark.parametrize("sort_window", [None, 0], ids=["length-sorted", "fifo"])
async def test_attention_limit_keeps_long_rows_apart_and_short_ones_together(sort_window: int | None) -> None:
    """rows x longest^2 <= 10,000: rows of 100 run alone, rows of 60 in pairs, rows of 10 in eights."""
    fake = FakeRuntime()
    limits = {"max_batch_size": 8, "max_batch_tokens": 10_000, "max_batch_attention": 10_000}
    async with running(fake, sort_window=sort_window, **limits) as batcher:
        groups = [[row(100)] for _ in range(3)] + [[row(60)] for _ in range(4)] + [[row(10)] for _ in range(16)]
        results = await asyncio.gather(*(batcher.submit(g) for g in groups))
    for group, result in zip(groups, results, strict=True):
        check(group, result)
    assert all(rows_ * width * width <= 10_000 for rows_, width in fake.shapes)
    assert sorted(fake.shapes) == [(1, 100), (1, 100), (1, 100), (2, 60), (2, 60), (8, 10), (8, 10)]
    with pytest.raises(ValueError, match="max_batch_attention"):
        make_batcher(FakeRuntime(), max_batch_attention=0)


async def test_padding_uses_pad_token_and_zero_masks() -> None:
    fake = FakeRuntime()
    async with running(fake, max_batch_size=4) as batcher:
        short, long = row(2, type_ones=1), row(6, type_ones=3)
        await asyncio.gather(batcher.submit([short]), batcher.submit([long]))
    ((ids, mask, types),) = fake.batches
    assert ids.shape == (2, 6)
    j = int(np.flatnonzero(ids[:, 0] == short.input_ids[0])[0])
    np.testing.assert_array_equal(ids[j], [*short.input_ids, PAD, PAD, PAD, PAD])
    np.testing.assert_array_equal(mask[j], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(types[j], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask[1 - j], np.ones(6))


async def test_length_sorting_cuts_padding_versus_fifo() -> None:
    def padded(fake: FakeRuntime) -> int:
        return sum(b * n for b, n in fake.shapes)

    totals = {}
    for mode, window in (("sorted", None), ("fifo", 0)):
        fake = FakeRuntime()
        async with running(fake, max_batch_size=4, sort_window=window) as batcher:
            requests = [[row(4 if i % 2 == 0 else 60)] for i in range(32)]
            results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for r, res in zip(requests, results, strict=True):
            check(r, res)
        totals[mode] = padded(fake)
    assert totals["fifo"] == 8 * 4 * 60  # every FIFO batch mixes both lengths
    assert totals["sorted"] == 4 * 4 * 4 + 4 * 4 * 60  # short rows together, long rows together


@pytest.mark.parametrize("window", [None, 0], ids=["sorted", "fifo"])
async def test_padding_limit_keeps_mixed_lengths_apart(window: int | None) -> None:
    """With max_padding_ratio a batch stops growing before its padding passes the limit, in
    both selection modes, and every row still gets its own result."""
    fake = FakeRuntime()
    async with running(fake, max_batch_size=8, max_padding_ratio=0.1, sort_window=window) as batcher:
        lengths = [10, 40, 11, 41, 10, 40, 12, 39]
        requests = [[row(n)] for n in lengths]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for r, res in zip(requests, results, strict=True):
        check(r, res)
    for _, mask, _ in fake.batches:
        assert 1 - mask.sum() / mask.size <= 0.1 + 1e-9, fake.shapes
    assert sum(b for b, _ in fake.shapes) == len(lengths)


async def test_padding_limit_is_validated() -> None:
    with pytest.raises(ValueError, match="max_padding_ratio"):
        make_batcher(FakeRuntime(), max_padding_ratio=1.0)


async def test_oldest_row_is_never_starved_by_shorter_ones() -> None:
    fake = FakeRuntime()
    async with running(fake, max_batch_size=4, max_batch_tokens=120) as batcher:
        long = [row(50)]
        shorts = [[row(3)] for _ in range(20)]
        await asyncio.gather(batcher.submit(long), *(batcher.submit(s) for s in shorts))
    first_ids = fake.batches[0][0]
    assert long[0].input_ids[0] in first_ids[:, 0]  # submitted first, so served first


async def test_multi_row_request_is_reassembled_across_batches() -> None:
    fake = FakeRuntime()
    async with running(fake, max_batch_size=3) as batcher:
        big = [row(n, type_ones=n // 3) for n in (7, 2, 9, 4, 4, 11, 1, 6, 3, 8)]
        others = [[row(5), row(2)] for _ in range(4)]
        results = await asyncio.gather(batcher.submit(big), *(batcher.submit(o) for o in others))
    check(big, results[0])
    for o, res in zip(others, results[1:], strict=True):
        check(o, res)
    assert len(fake.shapes) >= 6  # 18 rows at most 3 a batch


async def test_sequence_outputs_guessed_from_padded_length() -> None:
    fake = FakeRuntime()
    async with running(fake, max_batch_size=8, sequence_outputs=None) as batcher:
        rows = [row(3), row(7), row(5)]
        result = await batcher.submit(rows)
    check(rows, result)  # tokens sliced per row; pooled ([B, 2], 2 != 7) left whole
    assert [o["pooled"].shape for o in result.outputs] == [(2,)] * 3


async def test_empty_request_and_malformed_rows() -> None:
    fake = FakeRuntime()
    async with running(fake) as batcher:
        assert (await batcher.submit([])).outputs == []
        bad = Row(input_ids=np.arange(3, dtype=np.int64), token_type_ids=np.zeros(2, dtype=np.int64))
        with pytest.raises(ServeError) as err:
            await batcher.submit([bad])
        assert err.value.kind is ErrorKind.INTERNAL
    assert fake.batches == []


# -- deadlines, cancellation, overload -----------------------------------------------------------


async def test_expired_rows_never_reach_the_model() -> None:
    fake, observer = FakeRuntime(gate=threading.Event()), Recorder()
    async with running(fake, max_batch_size=4, observer=observer) as batcher:
        first = [row(4)]
        running_task = asyncio.create_task(batcher.submit(first))
        await started(fake)  # the first batch holds the only in-flight slot
        late = [row(4), row(4)]
        with pytest.raises(ServeError) as err:
            await batcher.submit(late, deadline=time.monotonic() + 0.05)
        assert err.value.kind is ErrorKind.DEADLINE_EXCEEDED
        assert batcher.queue_depth == 0
        fake.gate.set()  # type: ignore[union-attr]
        check(first, await running_task)
        after = [row(3)]
        check(after, await batcher.submit(after, deadline=time.monotonic() + WAIT))
    seen = fake.seen_ids()
    assert not any(int(v) in seen for r in late for v in r.input_ids)
    assert "deadline" in observer.drops  # one request (of two rows)


async def test_deadline_already_passed_is_refused_at_once() -> None:
    fake, observer = FakeRuntime(), Recorder()
    async with running(fake, observer=observer) as batcher:
        with pytest.raises(ServeError) as err:
            await batcher.submit([row(3)], deadline=time.monotonic() - 1)
    assert err.value.kind is ErrorKind.DEADLINE_EXCEEDED
    assert observer.drops == ["deadline"]
    assert fake.batches == []


async def test_cancelled_request_rows_are_dropped_before_compute() -> None:
    fake, observer = FakeRuntime(gate=threading.Event()), Recorder()
    async with running(fake, max_batch_size=4, observer=observer) as batcher:
        first = [row(4)]
        running_task = asyncio.create_task(batcher.submit(first))
        await started(fake)
        gone = [row(4), row(5), row(6)]
        gone_task = asyncio.create_task(batcher.submit(gone))
        await wait_until(lambda: batcher.queue_depth == 3)
        gone_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone_task
        assert batcher.queue_depth == 0
        fake.gate.set()  # type: ignore[union-attr]
        check(first, await running_task)
        after = [row(2)]
        check(after, await batcher.submit(after))
    seen = fake.seen_ids()
    assert not any(int(v) in seen for r in gone for v in r.input_ids)
    assert "cancelled" in observer.drops
    assert len(fake.batches) == 2


async def test_full_queue_is_refused_with_retry_after_before_enqueuing() -> None:
    fake, observer = FakeRuntime(gate=threading.Event()), Recorder()
    async with running(fake, max_batch_size=4, max_queue_size=4, max_request_rows=4, observer=observer) as batcher:
        first = [row(2)]
        running_task = asyncio.create_task(batcher.submit(first))
        await started(fake)  # running, no longer queued
        queued = [row(2), row(2), row(2)]
        queued_task = asyncio.create_task(batcher.submit(queued))
        await wait_until(lambda: batcher.queue_depth == 3)
        with pytest.raises(ServeError) as err:
            await batcher.submit([row(2), row(2)])
        assert err.value.kind is ErrorKind.OVERLOADED
        assert err.value.retry_after_s is not None and err.value.retry_after_s >= 1
        assert batcher.queue_depth == 3  # nothing of the refused request was queued
        with pytest.raises(ServeError) as too_big:
            await batcher.submit([row(1)] * 5)
        assert too_big.value.kind is ErrorKind.TOO_LARGE
        fake.gate.set()  # type: ignore[union-attr]
        check(first, await running_task)
        check(queued, await queued_task)
    assert observer.drops == ["overload"]


# -- failures and shutdown -----------------------------------------------------------------------


async def test_a_failing_row_fails_only_its_request() -> None:
    """A batch whose run fails is run again one row at a time: only the request whose own row fails
    gets an error (INTERNAL, no internals in the message); its neighbours are answered."""
    poison_id = 10_000_000
    fake = FakeRuntime(fail_if=lambda ids: bool((ids == poison_id).any()))
    observer = Recorder()
    async with running(fake, max_batch_size=2, observer=observer) as batcher:
        poisoned = [Row(input_ids=np.array([poison_id, poison_id + 1]), token_type_ids=np.zeros(2, np.int64))]
        neighbour = [row(2)]
        later = [row(2), row(2), row(2)]
        outcomes = await asyncio.gather(
            batcher.submit(poisoned), batcher.submit(neighbour), batcher.submit(later), return_exceptions=True
        )
        assert isinstance(outcomes[0], ServeError) and outcomes[0].kind is ErrorKind.INTERNAL
        assert "boom" not in outcomes[0].message
        check(neighbour, outcomes[1])  # type: ignore[arg-type]  # shared the poisoned batch, still answered
        check(later, outcomes[2])  # type: ignore[arg-type]
        assert batcher.healthy
        again = [row(4)]
        check(again, await batcher.submit(again))
    assert observer.failures.count("error") >= 2  # the batch, then the poisoned row alone
    assert observer.retried and all(n >= 2 for n in observer.retried)


async def test_an_out_of_memory_batch_is_split_until_it_fits() -> None:
    """Out of memory above two rows: the batch is halved (not run row by row) and every row answered."""

    class OutOfMemory(FakeRuntime):
        def __call__(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
            try:
                return super().__call__(ids, mask, types)
            except RuntimeError:
                raise RuntimeError("onnxruntime: Failed to allocate memory for requested buffer") from None

    fake = OutOfMemory(fail_if=lambda ids: ids.shape[0] > 2)
    observer = Recorder()
    async with running(fake, max_batch_size=8, max_queue_delay_ms=200, observer=observer) as batcher:
        requests = [[row(3)] for _ in range(8)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    for r, result in zip(requests, results, strict=True):
        check(r, result)
    assert "oom" in observer.failures and "error" not in observer.failures
    sizes = sorted(shape[0] for shape in fake.shapes)
    assert sizes[-1] == 8 and 1 not in sizes  # halves (4, then 2), never single rows
    assert batcher.healthy


async def test_failing_runs_in_a_row_turn_unhealthy_until_a_probe_succeeds() -> None:
    broken = threading.Event()
    broken.set()
    fake = FakeRuntime(fail_if=lambda ids: broken.is_set())
    async with running(fake, max_batch_size=1, failure_threshold=3, probe_interval_s=0.02) as batcher:
        for _ in range(3):
            with pytest.raises(ServeError):
                await batcher.submit([row(2)])
        assert not batcher.healthy and batcher.alive  # not ready, but not dead: a restart would not help
        await asyncio.sleep(0.1)
        assert not batcher.healthy  # the probes fail too
        broken.clear()
        await wait_until(lambda: batcher.healthy)  # a probe run succeeded
        ok = [row(2)]
        check(ok, await batcher.submit(ok))


async def test_multi_row_request_fails_once_and_its_queued_rows_are_dropped() -> None:
    poison_id = 20_000_000
    fake = FakeRuntime(fail_if=lambda ids: bool((ids == poison_id).any()))
    async with running(fake, max_batch_size=1, sort_window=0) as batcher:
        rows = [Row(input_ids=np.array([poison_id]), token_type_ids=np.zeros(1, np.int64)), row(1), row(1)]
        with pytest.raises(ServeError) as err:
            await batcher.submit(rows)
        assert err.value.kind is ErrorKind.INTERNAL
        assert batcher.queue_depth == 0
        ok = [row(1)]
        check(ok, await batcher.submit(ok))
    # The second row was staged behind the poisoned one (it may or may not have run); the third
    # was still queued when the request failed, so it never reached the model.
    assert int(rows[2].input_ids[0]) not in fake.seen_ids()


async def test_requests_share_the_model_in_turn() -> None:
    """A request of many rows does not hold the model until it ends: the rows of a request that
    arrives later go in the next batches, interleaved with the long one's."""
    gate = threading.Event()
    fake = FakeRuntime(gate=gate)
    async with running(fake, max_batch_size=2, sort_window=0, max_queue_delay_ms=0) as batcher:
        blocker = asyncio.create_task(batcher.submit([row(3)]))
        await started(fake)
        long = [row(3) for _ in range(8)]
        long_task = asyncio.create_task(batcher.submit(long))
        # Two of its rows are staged (a full batch) while the blocker runs; six wait in the queue.
        await wait_until(lambda: batcher.queue_depth == 6)
        short = [row(3)]
        short_task = asyncio.create_task(batcher.submit(short))
        await wait_until(lambda: batcher.queue_depth == 7)
        gate.set()
        check(short, await short_task)
        check(long, await long_task)
        await blocker
    short_id = int(short[0].input_ids[0])
    batch_of_short = next(i for i, (ids, _, _) in enumerate(fake.batches) if (ids == short_id).any())
    # The blocker, the staged batch, then the short request's row shares the next batch (in strict
    # arrival order it would wait behind all eight of the long request's rows).
    assert batch_of_short == 2


async def test_batches_of_one_row_take_turns_between_requests() -> None:
    """When a batch holds one row (long windows on a CPU), the anchor row rotates between requests:
    a short request waits for one row of the long one, not all of them."""
    gate = threading.Event()
    fake = FakeRuntime(gate=gate)
    async with running(fake, max_batch_size=1, max_queue_delay_ms=0) as batcher:
        blocker = asyncio.create_task(batcher.submit([row(3)]))
        await started(fake)
        long = [row(3) for _ in range(6)]
        long_task = asyncio.create_task(batcher.submit(long))
        await wait_until(lambda: batcher.queue_depth == 5)  # one staged behind the blocker
        short = [row(3)]
        short_task = asyncio.create_task(batcher.submit(short))
        await wait_until(lambda: batcher.queue_depth == 6)
        gate.set()
        check(short, await short_task)
        check(long, await long_task)
        await blocker
    short_id = int(short[0].input_ids[0])
    order = next(i for i, (ids, _, _) in enumerate(fake.batches) if (ids == short_id).any())
    assert order == 3  # the blocker, the staged row of the long request, one more of it, then the short one


async def test_one_request_may_queue_only_its_share() -> None:
    async with running(FakeRuntime(), max_queue_size=8, max_request_rows=3) as batcher:
        with pytest.raises(ServeError) as err:
            await batcher.submit([row(2) for _ in range(4)])
        assert err.value.kind is ErrorKind.TOO_LARGE and "at most 3" in err.value.message
        rows = [row(2) for _ in range(3)]
        check(rows, await batcher.submit(rows))


async def test_stop_drains_accepted_work_then_refuses_new_work() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate=gate)
    batcher = make_batcher(fake, max_batch_size=2, sequence_outputs={"tokens"})
    batcher.start()
    accepted = [[row(3)], [row(4), row(5)], [row(6)]]
    tasks = [asyncio.create_task(batcher.submit(r)) for r in accepted]
    await started(fake)
    stopping = asyncio.create_task(batcher.stop(drain_timeout_s=WAIT))
    await wait_until(lambda: not batcher.accepting)
    with pytest.raises(ServeError) as err:
        await batcher.submit([row(2)])
    assert err.value.kind is ErrorKind.UNAVAILABLE
    assert not stopping.done()
    gate.set()
    await stopping
    for r, t in zip(accepted, tasks, strict=True):
        check(r, t.result())
    with pytest.raises(ServeError) as err:
        await batcher.submit([row(2)])
    assert err.value.kind is ErrorKind.UNAVAILABLE
    assert batcher.healthy


async def test_stop_after_drain_timeout_answers_everything() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate=gate)
    batcher = make_batcher(fake, max_batch_size=1, sequence_outputs={"tokens"})
    batcher.start()
    tasks = [asyncio.create_task(batcher.submit([row(2)])) for _ in range(3)]
    await started(fake)
    await batcher.stop(drain_timeout_s=0.05)  # the running batch is stuck behind the gate
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ServeError) and o.kind is ErrorKind.UNAVAILABLE for o in outcomes)
    gate.set()  # let the stuck executor thread finish


async def test_two_batches_run_at_once_with_two_inflight() -> None:
    # Each of the first two calls waits at a 2-party barrier: they only pass if they overlap.
    fake = FakeRuntime(barrier=threading.Barrier(2))
    async with running(fake, max_batch_size=1, max_inflight_batches=2) as batcher:
        a, b = [row(3)], [row(3)]
        results = await asyncio.gather(batcher.submit(a), batcher.submit(b))
    check(a, results[0])
    check(b, results[1])
    assert fake.max_active == 2


async def test_next_full_batch_is_staged_while_one_runs() -> None:
    gate = threading.Event()
    fake = FakeRuntime(gate=gate)
    async with running(fake, max_batch_size=2, max_queue_delay_ms=WAIT * 1000) as batcher:
        first = [row(3), row(3)]  # a full batch: runs at once despite the long queue delay
        first_task = asyncio.create_task(batcher.submit(first))
        await started(fake)
        more = [row(3), row(3), row(3)]
        more_task = asyncio.create_task(batcher.submit(more))
        # The one thread is busy: a full batch of two is handed to the executor anyway, the
        # partial rest stays queued where it can still grow.
        await wait_until(lambda: batcher.queue_depth == 1 and batcher.inflight_batches == 2)
        assert len(fake.batches) == 1
        extra = [row(3)]
        extra_task = asyncio.create_task(batcher.submit(extra))
        await wait_until(lambda: batcher.queue_depth == 2)
        gate.set()
        check(first, await first_task)
        check(more, await more_task)
        check(extra, await extra_task)
    # the leftover row and the late one shared a batch instead of going alone
    assert fake.shapes == [(2, 3), (2, 3), (2, 3)]
    assert fake.max_active == 1


async def test_one_inflight_batch_at_a_time_by_default() -> None:
    fake = FakeRuntime(latency_s=0.005)
    async with running(fake, max_batch_size=1) as batcher:
        requests = [[row(2)] for _ in range(6)]
        await asyncio.gather(*(batcher.submit(r) for r in requests))
    assert fake.max_active == 1
    assert len(fake.batches) == 6


async def test_a_dying_loop_is_restarted_then_declared_dead() -> None:
    fake = FakeRuntime()
    observer = Recorder()
    batcher = make_batcher(fake, observer=observer)

    def broken(lengths: Any, limits: Any) -> Any:
        raise RuntimeError("bug in the batching loop")

    batcher.selector = broken
    batcher.start()
    assert batcher.healthy and batcher.alive
    for _ in range(3):  # each death: the waiting request gets 503, the loop starts again
        with pytest.raises(ServeError) as err:
            await batcher.submit([row(2)])
        assert err.value.kind is ErrorKind.UNAVAILABLE
        assert batcher.alive
    batcher.selector = select_batch
    ok = [row(2)]
    check(ok, await batcher.submit(ok))
    batcher.selector = broken
    with pytest.raises(ServeError) as err:
        await batcher.submit([row(2)])
    assert err.value.kind is ErrorKind.UNAVAILABLE
    assert not batcher.alive and not batcher.healthy  # a fourth death within a minute: dead for good
    assert observer.restarts == 3
    with pytest.raises(ServeError) as err:
        await batcher.submit([row(2)])
    assert err.value.kind is ErrorKind.UNAVAILABLE
    await batcher.stop(drain_timeout_s=1)
    assert len(fake.batches) == 1


async def test_observer_failures_do_not_break_serving() -> None:
    class Broken:
        def on_batch(self, *args: Any) -> None:
            raise RuntimeError("metrics down")

        on_drop = on_queue_depth = on_failure = on_retry = on_restart = on_batch

    fake = FakeRuntime()
    async with running(fake, observer=Broken()) as batcher:
        rows = [row(3)]
        check(rows, await batcher.submit(rows))
        assert batcher.healthy
