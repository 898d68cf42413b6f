"""Pairs whose second text is split into stride windows, each window holding the first text whole
(QA's question and context, rerank's query and document): counted before any window is built, so
a refusal costs the budget's work, not the text's, and refused with a clear message when a window
could not advance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenizers import Tokenizer

from server.core.errors import ServeError
from server.core.tasks.common import check_rows, max_tokens, min_advance, refuse_rows, tokens_within, window_count
from server.core.tasks.token_budget import Count, count_each, count_tokens, one_length

# (index of the pair, the first text's count, room for the second text, step, special tokens) -> 422.
NoRoom = Callable[[int, Count, int, int, int], ServeError]


def check_pair_windows(
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    max_seq_len: int,
    stride: int,
    max_rows: int | None,
    no_room: NoRoom,
) -> None:
    """Refuse, before any window is built, the pairs whose windows could not advance (or would
    barely advance), and requests that would need more than `max_rows` windows.

    Each window holds max_seq_len - specials - first-text tokens of the second text; consecutive
    windows share `stride` of them. When that room is not larger than the stride and the second
    text does not fit in one window, the Rust tokenizer fails (or panics): `no_room` says why
    instead. `max_tokens` bounds a text's tokens without tokenizing it: second texts are only
    counted when that bound is not enough to decide, and then only as far as the windows still
    allowed reach. First texts are counted up to max_seq_len: a longer one leaves no room."""
    specials = tokenizer.num_special_tokens_to_add(True)
    firsts = count_each(tokenizer, [first for first, _ in pairs], max_seq_len)
    rooms = [max_seq_len - specials - first.tokens for first in firsts]
    steps = [room - stride for room in rooms]
    bounds = [max_tokens(second) for _, second in pairs]
    maybe_long = [i for i, room in enumerate(rooms) if bounds[i] > room]
    tight = {i for i in maybe_long if rooms[i] <= 0 or steps[i] < min_advance(rooms[i])}
    strided = sum(window_count(bounds[i], rooms[i], steps[i]) for i in maybe_long if i not in tight)
    bound = len(pairs) - len(maybe_long) + strided
    count_all = max_rows is not None and bound + len(tight) > max_rows
    windows = len(pairs) - len(maybe_long)
    later = len(maybe_long)  # windows the pairs not yet counted need at least
    for i in maybe_long:
        later -= 1
        room, step, second = rooms[i], steps[i], pairs[i][1]
        if i in tight:
            counted = count_tokens(tokenizer, second, max(room, 0))
            if not counted.exact:  # a one-word run was skipped: only the whole count can tell
                counted = Count(one_length(tokenizer, second), len(second), True)
            if counted.passed(room):
                raise no_room(i, firsts[i], room, step, specials)
            windows += 1  # fits in one window: nothing to stride over
        elif not count_all:
            windows += window_count(bounds[i], room, step)
        else:
            assert max_rows is not None  # count_all
            counted = count_tokens(tokenizer, second, tokens_within(max_rows - windows - later, room, step))
            windows += window_count(counted.tokens, room, step)
            if windows + later > max_rows:
                refuse_rows(windows + later, max_rows, exact=counted.exact and counted.end == len(second))
    check_rows(windows, max_rows)
