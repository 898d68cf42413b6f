"""The process's body buffer (server/core/body_budget.py): large bodies past it are refused with
429 and Retry-After, small ones always pass, and every request gives back what it held."""

from __future__ import annotations

import pytest

from server.core.body_budget import COPIES, LARGE_BODY_BYTES, SMALL_BODY_BYTES, BodyBudget
from server.core.errors import ErrorKind, ServeError

MB = 1 << 20


def test_large_bodies_past_the_buffer_are_refused_until_one_is_answered() -> None:
    budget = BodyBudget(10 * MB * COPIES)
    first, second, third = budget.hold(), budget.hold(), budget.hold()
    first.grow_to(4 * MB)
    second.grow_to(4 * MB)
    with pytest.raises(ServeError) as refused:
        third.grow_to(4 * MB)
    assert refused.value.kind is ErrorKind.OVERLOADED and refused.value.retry_after_s == 1.0
    assert f"{8 * MB * COPIES} bytes" in refused.value.message and "--max-body-buffer-mb" in refused.value.message
    assert budget.held_bytes == 8 * MB * COPIES and third.held_bytes == 0
    first.release()
    third.grow_to(4 * MB)
    assert budget.held_bytes == 8 * MB * COPIES


def test_a_body_that_arrives_in_chunks_is_counted_as_it_grows() -> None:
    budget = BodyBudget(3 * MB * COPIES)
    with budget.hold() as hold:
        for size in (MB, 2 * MB, 3 * MB):
            hold.grow_to(size)
        assert budget.held_bytes == 3 * MB * COPIES
        with pytest.raises(ServeError):
            hold.grow_to(3 * MB + 1)
    assert budget.held_bytes == 0


def test_small_bodies_always_pass_and_still_count() -> None:
    budget = BodyBudget(SMALL_BODY_BYTES * COPIES)
    big = budget.hold()
    big.grow_to(SMALL_BODY_BYTES)
    small = [budget.hold() for _ in range(10)]
    for hold in small:
        hold.grow_to(1000)
    assert budget.held_bytes == (SMALL_BODY_BYTES + 10_000) * COPIES
    for hold in [big, *small]:
        hold.release()
        hold.release()  # twice is harmless
    assert budget.held_bytes == 0


def test_a_large_body_asks_for_the_heap_to_be_trimmed() -> None:
    budget = BodyBudget(64 * MB)
    with budget.hold() as hold:
        hold.grow_to(LARGE_BODY_BYTES - 1)
    assert not budget.large_seen
    with budget.hold() as hold:
        hold.grow_to(LARGE_BODY_BYTES)
    assert budget.large_seen


def test_a_body_the_buffer_could_never_hold_is_too_large_not_overloaded() -> None:
    budget = BodyBudget(8 * MB)
    with budget.hold() as hold, pytest.raises(ServeError) as refused:
        hold.grow_to(4 * MB)  # counted 16 MB
    assert refused.value.kind is ErrorKind.TOO_LARGE and refused.value.retry_after_s is None
    assert budget.held_bytes == 0
