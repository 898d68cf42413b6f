"""Counting tokens with work bounded by the budget (server/core/tasks/token_budget.py).

The pieces must count exactly what the whole text tokenizes to (the property tests, with pieces
as small as two characters so that every kind of cut happens), and the work must not grow with
the text once the count has passed its limit (a recording tokenizer counts what it was given)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from export.synthetic import vocab_path
from loadtests import data as load_data
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.tasks.classify import ClassifyTask
from server.core.tasks.common import count_single_windows, window_count
from server.core.tasks.discriminate import DiscriminateTask
from server.core.tasks.qa import QaTask
from server.core.tasks.tag import TagTask
from server.core.tasks.token_budget import (
    PIECE_CHARS,
    PIECES_PER_CALL,
    count_tokens,
    prefix_for,
    splitter,
)

PROFILE = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Whitespace the normalizer keeps or drops (\x0b, \x1c and \x85 are controls: removed, never a
# split), Unicode punctuation, CJK, accents (a lone combining mark too), Hangul, emoji, a
# zero-width joiner, an ideographic space and a no-break space.
ALPHABET = "abcxyz019 .,;!?'-#()«»¿éüß東京한국ো🙂\t\n\r\x01\x0b\x1c\x85\u0301\u200d\u3000\u00a0\u2028。、"
CHUNKS = st.one_of(
    st.text(ALPHABET, max_size=12),
    st.sampled_from(["unbelievably ", "photosynthesis", "state-of-the-art", "x" * 150, "東京" * 60, "a.b.c"]),
)
TEXTS = st.lists(CHUNKS, max_size=40).map("".join)


@functools.cache
def tokenizer() -> Tokenizer:
    return load_data.bert_tokenizer(vocab_path())


def whole(text: str) -> int:
    tok = tokenizer()
    tok.no_truncation()
    return len(tok.encode(text, add_special_tokens=False))


class Recording:
    """The tokenizer, counting the characters it was asked to tokenize."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.chars = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.chars += sum(len(t) for t in text) if isinstance(text, tuple) else len(text)
        return self.inner.encode(text, *args, **kwargs)

    def encode_batch_fast(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self.chars += sum(len(t) for t in texts)
        return self.inner.encode_batch_fast(texts, *args, **kwargs)

    def encode_batch(self, texts: list[Any], *args: Any, **kwargs: Any) -> Any:
        self.chars += sum(sum(len(p) for p in t) if isinstance(t, tuple) else len(t) for t in texts)
        return self.inner.encode_batch(texts, *args, **kwargs)


@PROFILE
@given(TEXTS, st.integers(2, 64))
def test_pieces_count_what_the_whole_text_tokenizes_to(text: str, piece_chars: int) -> None:
    counted = count_tokens(tokenizer(), text, 10**9, piece_chars=piece_chars)
    assert counted.end == len(text)
    if counted.exact:
        assert counted.tokens == whole(text)
    else:  # a one-word run was skipped: a lower bound
        assert counted.tokens <= whole(text)


@PROFILE
@given(TEXTS, st.integers(2, 64), st.integers(0, 40))
def test_counting_stops_past_the_limit_with_a_lower_bound(text: str, piece_chars: int, limit: int) -> None:
    counted = count_tokens(tokenizer(), text, limit, piece_chars=piece_chars)
    assert counted.tokens <= whole(text)
    if counted.end < len(text):
        assert counted.passed(limit)
        assert whole(text) > limit


@PROFILE
@given(TEXTS, st.integers(2, 64), st.integers(1, 40))
def test_a_prefix_keeps_the_texts_first_tokens(text: str, piece_chars: int, keep: int) -> None:
    prefix = prefix_for(tokenizer(), text, keep, piece_chars=piece_chars)
    assert text.startswith(prefix)
    tok = tokenizer()
    tok.no_truncation()
    full = tok.encode(text, add_special_tokens=False).ids
    kept = tok.encode(prefix, add_special_tokens=False).ids
    if prefix != text:
        assert len(kept) > keep
        assert full[: len(kept)] == kept


@pytest.mark.parametrize("unit", ["a ", "a.", "東", "ab" * 20 + " ", "é "])
def test_the_work_is_bounded_by_the_limit_not_the_text(unit: str) -> None:
    limit = 5_000
    seen = []
    for repeats in (200_000, 2_000_000):
        recording = Recording(tokenizer())
        counted = count_tokens(recording, unit * repeats, limit)  # type: ignore[arg-type]
        assert counted.passed(limit)
        seen.append(recording.chars)
    assert seen[0] == seen[1]
    # At most the limit's share of pieces, plus one call's worth.
    assert seen[1] <= 2 * limit * max(1, len(unit)) + PIECES_PER_CALL * PIECE_CHARS


def test_a_one_word_run_is_skipped_not_tokenized() -> None:
    recording = Recording(tokenizer())
    text = "a b " + "x" * 2_000_000 + " c d"
    counted = count_tokens(recording, text, 100)  # type: ignore[arg-type]
    assert counted.end == len(text) and not counted.exact
    assert counted.tokens <= whole(text)
    assert recording.chars < 1_000


def test_other_tokenizers_are_counted_whole() -> None:
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert splitter(tok) is None
    counted = count_tokens(tok, "a a b " * 100, 10)
    assert (counted.tokens, counted.exact, counted.end) == (300, True, 600)


def manifest(task: str, max_seq_len: int = 128) -> Manifest:
    variants = {"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}}
    return Manifest(
        name="t", task=task, max_seq_len=max_seq_len, labels=["O", "B-PER"], variants=variants, source={"model": "t"}
    )


HOSTILE = "a " * 3_000_000  # 6 MB: 3 million tokens, ~1.6 GB when tokenized whole
BOUND_CHARS = 2_000_000  # what refusing may tokenize: the budget's share, far below the text


@pytest.mark.parametrize("task", [TagTask(), DiscriminateTask()])
def test_too_many_windows_are_refused_after_counting_the_budget(task: Any) -> None:
    recording = Recording(tokenizer())
    params = task.resolve({}, manifest(task.task))
    with pytest.raises(ServeError) as refused:
        task.encode(recording, [HOSTILE], params, manifest(task.task), max_rows=512)
    assert refused.value.kind is ErrorKind.TOO_LARGE
    assert "needs at least" in refused.value.message and "at most 512" in refused.value.message
    assert recording.chars < BOUND_CHARS


def test_qa_contexts_and_questions_are_counted_within_the_budget() -> None:
    task = QaTask()
    params = task.resolve({}, manifest("qa"))
    recording = Recording(tokenizer())
    with pytest.raises(ServeError) as refused:
        task.encode(recording, [("who?", HOSTILE)], params, manifest("qa"), max_rows=512)  # type: ignore[arg-type]
    assert refused.value.kind is ErrorKind.TOO_LARGE
    assert recording.chars < BOUND_CHARS
    recording = Recording(tokenizer())
    with pytest.raises(ServeError) as refused:
        task.encode(recording, [(HOSTILE, "a context")], params, manifest("qa"), max_rows=512)  # type: ignore[arg-type]
    assert refused.value.kind is ErrorKind.INVALID_INPUT
    assert "question is over" in refused.value.message
    assert recording.chars < BOUND_CHARS


def test_classify_refuses_or_truncates_a_long_text_without_tokenizing_it_whole() -> None:
    task = ClassifyTask()
    recording = Recording(tokenizer())
    with pytest.raises(ServeError) as refused:
        task.encode(recording, [(HOSTILE, None)], task.resolve({}, manifest("classify")), manifest("classify"))  # type: ignore[arg-type]
    assert refused.value.kind is ErrorKind.INVALID_INPUT and "over 128" in refused.value.message
    assert recording.chars < BOUND_CHARS
    recording = Recording(tokenizer())
    params = task.resolve({"truncate": True}, manifest("classify"))
    [encoded] = task.encode(recording, [(HOSTILE, HOSTILE)], params, manifest("classify"))  # type: ignore[arg-type]
    assert len(encoded.rows[0].input_ids) == 128
    assert recording.chars < BOUND_CHARS


def test_a_text_within_the_budget_counts_exactly() -> None:
    text = "word " * 3600  # 3,600 tokens: 38 windows of 126, 94 apart
    assert window_count(whole(text), 126, 94) == 38
    count_single_windows(tokenizer(), [text], 126, 94, 38)
    with pytest.raises(ServeError, match="needs 38 model windows; at most 37"):
        count_single_windows(tokenizer(), [text], 126, 94, 37)
