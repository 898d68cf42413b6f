"""Property tests (hypothesis) of the task encoders and decoders in server/core/tasks.

No model runs here: the tokenizer is the demo models' own (uncased WordPiece over export's ELECTRA
vocab, built as tests/unit/test_loadtests.py builds it, plus the WordPiece decoder that the
checkpoints' tokenizer.json carries), and the model outputs are logits drawn by hypothesis. What is
checked must hold for every text, every parameter the server accepts and every head:

- stride windows cover every token of the text, in order, within max_seq_len, and there are exactly
  as many as the window limit counted before building them (QA contexts, tag and discriminate texts);
- QA answers lie inside their context, within top_k and max_answer_len, best first, with the null
  answer as `handle_impossible_answer` and `null_score_diff_threshold` document it;
- tag entities lie inside the text, each built from the tokens of one window, never overlapping,
  and with strategy none every token is decided once, by the window that owns it;
- classification and replaced-token scores are probabilities, ranked, within top_k.

Derandomized (the seed comes from each test) and without an example database, so that every run,
CI included, tests the same examples.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tokenizers import Encoding, Tokenizer, decoders

from export.synthetic import vocab_path
from loadtests import data as load_data
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.tasks.classify import ClassifyTask
from server.core.tasks.discriminate import DiscriminateTask
from server.core.tasks.qa import QaTask
from server.core.tasks.tag import STRATEGIES, TagTask

QA = QaTask()
TAG = TagTask()
CLASSIFY = ClassifyTask()
DISCRIMINATE = DiscriminateTask()
TAG_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
VARIANTS = {"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}}


def profile(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def manifest(task: str, max_seq_len: int, labels: list[str] | None = None, problem_type: str | None = None) -> Manifest:
    return Manifest(
        name="test",
        task=task,
        max_seq_len=max_seq_len,
        labels=labels or [],
        problem_type=problem_type,
        variants=VARIANTS,
        source={"model": "test"},
    )


@functools.cache
def tokenizer() -> Tokenizer:
    """The tokenizer the tasks get (they configure it: truncation, stride)."""
    tok = load_data.bert_tokenizer(vocab_path())
    tok.decoder = decoders.WordPiece()  # ElectraTokenizerFast's, as in the checkpoints' tokenizer.json
    return tok


@functools.cache
def _oracle() -> Tokenizer:
    return Tokenizer.from_str(tokenizer().to_str())


def whole(text: str) -> Encoding:
    """A text's tokens, no special tokens, never truncated: what the windows must cover."""
    tok = _oracle()
    tok.no_truncation()
    tok.no_padding()
    return tok.encode(text, add_special_tokens=False)


CLS_ID = tokenizer().token_to_id("[CLS]")
SEP_ID = tokenizer().token_to_id("[SEP]")


def squash(text: str) -> str:
    """Normalized as the tokenizer sees it (lower case, no accents, CJK spaced), without whitespace."""
    return "".join(_oracle().normalizer.normalize_str(text).split())


def multi_token_char(char: str) -> bool:
    """A character that becomes several tokens (Hangul syllables into jamo, some Indic vowel signs):
    those tokens share the character's offsets."""
    return len(whole(char)) > 1


# ---------------------------------------------------------------- strategies

# Sub-word splits, punctuation, apostrophes, accents, CJK, Hangul, emoji, unknown characters, a
# ligature, a dotted capital I, a lone combining mark, a zero-width joiner, tabs and newlines. No
# "d", "n", "o" or "t" in the alphabet and no word "do" or "not": the WordPiece decoder's cleanup
# turns " do not" into " don't", the one rewrite of letters it makes.
ALPHABET = "abcxyzABXYZ0189 .,;:!?'-#()éüÅß東京한국ো🙂\t\n\u0301\u200dİﬁ"
WORDS = [
    "Ada",
    "Lovelace",
    "London",
    "unbelievably",
    "photosynthesis",
    "O'Brien's",
    "state-of-the-art",
    "1867",
    "3.14",
    "café",
    "Zürich",
    "naïve",
    "Straße",
    "東京都",
    "北京是",
    "한국어",
    "서울은",
    "🙂🚀",
    "👩\u200d👩\u200d👧",
    "ﬁne",
    "İstanbul",
    "supercalifragilistic",
    "x",
    "##",
    "--",
]


def texts(min_pieces: int = 0, max_pieces: int = 30) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(WORDS), st.text(alphabet=ALPHABET, min_size=1, max_size=8))
    return st.lists(piece, min_size=min_pieces, max_size=max_pieces).map(" ".join)


# Logits on a grid of quarters: cheap for hypothesis to draw densely, with ties it can find.
LOGIT = st.integers(-48, 48).map(lambda v: v / 4)
# Also values whose softmax underflows to exact zeros (float32), as saturated heads give; above the
# -1e4 that the QA decoder (as the pipeline) writes over the tokens that cannot answer.
EXTREME_LOGIT = st.one_of(LOGIT, st.sampled_from([-5000.0, -200.0, 200.0, 5000.0]))


def logits(shape: tuple[int, ...], extreme: bool = False) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shape, elements=EXTREME_LOGIT if extreme else LOGIT, fill=st.nothing())


# ---------------------------------------------------------------- oracles (independent of the tasks)


def min_advance(room: int) -> int:
    """Windows must advance by at least an eighth of their text (common.MIN_WINDOW_ADVANCE)."""
    return max(1, math.ceil(room / 8))


def window_count(n_tokens: int, room: int, step: int) -> int:
    return 1 if n_tokens <= room else 1 + math.ceil((n_tokens - room) / step)


def owners(n_tokens: int, lengths: list[int], step: int) -> list[tuple[int, int]]:
    """For each text token: (window, position among its text tokens) of the window where it has the
    most context on both sides, min(left, right) + 0.01 * window length, the earlier on ties."""
    out = []
    for t in range(n_tokens):
        best: tuple[float, int, int] | None = None
        for k, length in enumerate(lengths):
            local = t - k * step
            if 0 <= local < length:
                score = min(local, length - 1 - local) + 0.01 * length
                if best is None or score > best[0]:
                    best = (score, k, local)
        assert best is not None, f"token {t} is in no window"
        out.append(best[1:])
    return out


def masked_softmax(x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    x = np.where(allowed, x.astype(np.float64), -np.inf)
    e = np.exp(x - x.max())
    return e / e.sum()


def assert_refused(kind: ErrorKind, call: Any, *args: Any, **kwargs: Any) -> ServeError:
    with pytest.raises(ServeError) as err:
        call(*args, **kwargs)
    assert err.value.kind is kind, err.value
    return err.value


def assert_single_windows(rows: list[Any], texts_in: list[str], max_seq_len: int, stride: int) -> list[Encoding]:
    """Rows of single-sequence windows ([CLS] text [SEP]) of the texts, in order: each text's windows
    hold consecutive runs of its tokens, `room - stride` apart, the last reaching its end."""
    room = max_seq_len - 2
    step = room - stride
    at = 0
    fulls = []
    for text in texts_in:
        full = whole(text)
        fulls.append(full)
        n = len(full)
        count = window_count(n, room, step)
        covered = set()
        for k, row in enumerate(rows[at : at + count]):
            ids = row.input_ids.tolist()
            assert len(ids) <= max_seq_len
            assert ids[0] == CLS_ID and ids[-1] == SEP_ID
            start = k * step
            assert ids[1:-1] == full.ids[start : start + room], (text, k)
            assert len(ids) - 2 == min(room, n - start)
            assert row.token_type_ids.tolist() == [0] * len(ids)
            covered.update(range(start, start + len(ids) - 2))
        assert covered == set(range(n)), text
        at += count
    assert at == len(rows)
    return fulls


# ---------------------------------------------------------------- (1) windows


@profile(300)
@given(
    items=st.lists(texts(0, 50), min_size=1, max_size=3),
    max_seq_len=st.integers(5, 32),
    data=st.data(),
)
def test_tag_windows_cover_every_token_and_are_counted_before_they_are_built(items, max_seq_len, data) -> None:
    m = manifest("tag", max_seq_len, TAG_LABELS)
    room = max_seq_len - 2
    largest = room - min_advance(room)
    stride = data.draw(st.integers(0, largest + 4), label="stride")
    _, params, _ = TAG.parse(items, {"stride": stride}, m)
    if stride > largest:
        # The windows could not advance (the tokenizer would panic) or would barely advance.
        error = assert_refused(ErrorKind.BAD_REQUEST, TAG.encode, tokenizer(), items, params, m)
        assert f"at most {largest}" in error.message
        return

    encoded = TAG.encode(tokenizer(), items, params, m)
    assert len(encoded) == len(items)
    rows = [row for e in encoded for row in e.rows]
    fulls = assert_single_windows(rows, items, max_seq_len, stride)
    for e, full in zip(encoded, fulls, strict=True):
        # What decode reads of each window agrees with the row, offsets included.
        for k, (row, window) in enumerate(zip(e.rows, e.state.windows, strict=True)):
            assert window.ids == row.input_ids.tolist()
            assert window.positions == list(range(1, len(row) - 1))
            start = k * e.state.step
            assert [window.offsets[p] for p in window.positions] == full.offsets[start : start + len(row) - 2]

    # The window limit is decided before any window is built, and exactly.
    needed = len(rows)
    assert len(TAG.encode(tokenizer(), items, params, m, max_rows=needed)) == len(items)
    error = assert_refused(ErrorKind.TOO_LARGE, TAG.encode, tokenizer(), items, params, m, max_rows=needed - 1)
    assert f"needs {needed} model windows" in error.message


@profile(100)
@given(items=st.lists(texts(0, 50), min_size=1, max_size=3), max_seq_len=st.integers(5, 32))
def test_discriminate_windows_cover_every_token_once(items, max_seq_len) -> None:
    m = manifest("discriminate", max_seq_len)
    stride = max_seq_len // 4
    _, params, _ = DISCRIMINATE.parse(items, None, m)
    encoded = DISCRIMINATE.encode(tokenizer(), items, params, m)
    rows = [row for e in encoded for row in e.rows]
    fulls = assert_single_windows(rows, items, max_seq_len, stride)
    for e, full in zip(encoded, fulls, strict=True):
        # Every token once, in order, each read from the window that owns it.
        tokens = e.state.tokens
        assert [(t.token, t.start, t.end) for t in tokens] == [
            (name, s, end) for name, (s, end) in zip(full.tokens, full.offsets, strict=True)
        ]
        expected = owners(len(full), [len(r) - 2 for r in e.rows], max_seq_len - 2 - stride)
        assert [(t.window, t.position) for t in tokens] == [(k, pos + 1) for k, pos in expected]
    needed = len(rows)
    DISCRIMINATE.encode(tokenizer(), items, params, m, max_rows=needed)
    assert_refused(ErrorKind.TOO_LARGE, DISCRIMINATE.encode, tokenizer(), items, params, m, max_rows=needed - 1)


QA_MAX_SEQ_LEN = 48


@profile(300)
@given(
    pairs=st.lists(st.tuples(texts(1, 2), texts(1, 50)), min_size=1, max_size=3),
    max_seq_len=st.integers(5, 32),
    data=st.data(),
)
def test_qa_windows_cover_every_context_token_and_are_counted_before_they_are_built(pairs, max_seq_len, data) -> None:
    m = manifest("qa", QA_MAX_SEQ_LEN)
    # Mostly strides that leave the windows room to advance; also the ones refused.
    doc_stride = data.draw(
        st.one_of(st.integers(0, max(0, max_seq_len // 2 - 4)), st.integers(0, max_seq_len)), label="doc_stride"
    )
    inputs = [{"question": q, "context": c} for q, c in pairs]
    items, params, _ = QA.parse(inputs, {"max_seq_len": max_seq_len, "doc_stride": doc_stride}, m)
    if doc_stride > max_seq_len - 2:
        assert_refused(ErrorKind.BAD_REQUEST, QA.encode, tokenizer(), items, params, m)
        return
    expected = []
    for question, context in pairs:
        q, c = whole(question), whole(context)
        room = max_seq_len - 3 - len(q)  # context tokens beside [CLS] question [SEP] ... [SEP]
        step = room - doc_stride
        if len(c) > room and (room <= 0 or step < min_advance(room)):
            # The context needs windows that could not advance (or barely): a clear 422, never a
            # panic of the tokenizer, whatever the window limit.
            for max_rows in (None, 1000):
                error = assert_refused(ErrorKind.INVALID_INPUT, QA.encode, tokenizer(), items, params, m, max_rows)
                assert "cannot be split into windows" in error.message
            return
        expected.append((q, c, room, step, window_count(len(c), room, step)))

    encoded = QA.encode(tokenizer(), items, params, m)
    assert len(encoded) == len(pairs)
    for e, (q, c, room, step, count) in zip(encoded, expected, strict=True):
        assert len(e.rows) == len(e.state.windows) == len(e.state.p_masks) == count
        covered: set[int] = set()
        for k, (row, window, p_mask) in enumerate(zip(e.rows, e.state.windows, e.state.p_masks, strict=True)):
            ids = row.input_ids.tolist()
            assert len(ids) <= max_seq_len
            assert ids == window.ids
            assert ids[: len(q) + 2] == [CLS_ID, *q.ids, SEP_ID] and ids[-1] == SEP_ID
            context_positions = [i for i, s in enumerate(window.sequence_ids) if s == 1]
            start = k * step
            assert [ids[i] for i in context_positions] == c.ids[start : start + room]
            assert [window.offsets[i] for i in context_positions] == c.offsets[start : start + room]
            assert len(context_positions) == min(room, len(c) - start)
            assert context_positions == list(range(len(q) + 2, len(ids) - 1))
            assert row.token_type_ids.tolist() == [0] * (len(q) + 2) + [1] * (len(ids) - len(q) - 2)
            # Only [CLS] and the context may answer.
            assert np.flatnonzero(~p_mask).tolist() == [0, *context_positions]
            covered.update(range(start, start + len(context_positions)))
        assert covered == set(range(len(c)))

    # The window limit is decided before any window is built, and exactly.
    needed = sum(count for *_, count in expected)
    assert len(QA.encode(tokenizer(), items, params, m, max_rows=needed)) == len(pairs)
    error = assert_refused(ErrorKind.TOO_LARGE, QA.encode, tokenizer(), items, params, m, max_rows=needed - 1)
    assert f"needs {needed} model windows" in error.message


# ---------------------------------------------------------------- (2) QA answers


def _null_oracle(encoded: Any, outputs: list[dict[str, np.ndarray]], max_answer_len: int) -> tuple[float, float, float]:
    """(null probability, null logit, best span logit) over the windows, from the documented rules."""
    null_p, null_logit, best_logit = math.inf, math.inf, -math.inf
    for p_mask, out in zip(encoded.state.p_masks, outputs, strict=True):
        allowed = ~p_mask
        start, end = out["start_logits"], out["end_logits"]
        null_p = min(null_p, masked_softmax(start, allowed)[0] * masked_softmax(end, allowed)[0])
        null_logit = min(null_logit, float(start[0]) + float(end[0]))
        positions = [i for i in np.flatnonzero(allowed).tolist() if i != 0]
        for s in positions:
            for e in positions:
                if s <= e < s + max_answer_len:
                    best_logit = max(best_logit, float(start[s]) + float(end[e]))
    return null_p, null_logit, best_logit


def _spans(encoded: Any, answer: dict[str, Any], align_to_words: bool) -> list[tuple[int, int]]:
    """(window, tokens or words) of every way one window's context tokens give this answer's span."""
    found = []
    for k, window in enumerate(encoded.state.windows):
        positions = [i for i, s in enumerate(window.sequence_ids) if s == 1]
        if align_to_words:
            words = sorted({window.token_to_word(i) for i in positions})
            chars = {w: window.word_to_chars(w, sequence_index=1) for w in words}
            for a in words:
                for b in words:
                    if a <= b and chars[a][0] == answer["start"] and chars[b][1] == answer["end"]:
                        found.append((k, b - a + 1))
        else:
            for a in positions:
                for b in positions:
                    if a <= b and window.offsets[a][0] == answer["start"] and window.offsets[b][1] == answer["end"]:
                        found.append((k, b - a + 1))
    return found


@profile(500)
@given(
    question=st.lists(st.sampled_from(WORDS), min_size=1, max_size=2).map(" ".join),
    context=texts(1, 30),
    max_seq_len=st.integers(16, QA_MAX_SEQ_LEN),
    top_k=st.integers(1, 12),
    max_answer_len=st.integers(1, 12),
    handle_impossible_answer=st.booleans(),
    align_to_words=st.booleans(),
    threshold=st.one_of(st.none(), st.integers(-40, 40).map(lambda v: v / 2)),
    extreme=st.booleans(),
    data=st.data(),
)
def test_qa_answers_lie_inside_their_context(
    question,
    context,
    max_seq_len,
    top_k,
    max_answer_len,
    handle_impossible_answer,
    align_to_words,
    threshold,
    extreme,
    data,
) -> None:
    m = manifest("qa", QA_MAX_SEQ_LEN)
    doc_stride = data.draw(st.integers(0, max_seq_len // 2), label="doc_stride")
    given_params = {
        "max_seq_len": max_seq_len,
        "doc_stride": doc_stride,
        "top_k": top_k,
        "max_answer_len": max_answer_len,
        "handle_impossible_answer": handle_impossible_answer,
        "align_to_words": align_to_words,
        "null_score_diff_threshold": threshold,
    }
    note(f"question={question!r} context={context!r} parameters={given_params!r}")
    items, params, _ = QA.parse({"question": question, "context": context}, given_params, m)
    try:
        (encoded,) = QA.encode(tokenizer(), items, params, m)
    except ServeError as error:
        assert error.kind is ErrorKind.INVALID_INPUT  # a question too long for these windows
        assume(False)
    assume(sum(len(row) for row in encoded.rows) <= 600)  # what hypothesis can draw densely
    outputs = []
    for row in encoded.rows:
        start_end = data.draw(logits((2, len(row)), extreme), label="start/end logits")
        outputs.append({"start_logits": start_end[0], "end_logits": start_end[1]})

    answers = QA.decode(encoded, outputs, params, m)
    n_windows = len(encoded.rows)
    null_p, null_logit, best_logit = _null_oracle(encoded, outputs, max_answer_len)
    null_first = threshold is not None and null_logit - best_logit > threshold
    null_ranked = threshold is None and handle_impossible_answer

    def is_null(answer: dict[str, Any]) -> bool:
        # Zero-score filler may be an empty span at [CLS] too; it is then the null answer's equal.
        null = (answer["start"], answer["end"], answer["answer"]) == (0, 0, "")
        return null and answer["score"] == pytest.approx(null_p, rel=1e-4, abs=1e-7)

    assert len(answers) <= top_k
    for answer in answers:
        assert set(answer) == {"score", "start", "end", "answer"}
        assert isinstance(answer["score"], float) and type(answer["start"]) is int and type(answer["end"]) is int
        assert 0 <= answer["start"] <= len(context) and 0 <= answer["end"] <= len(context), answer
        # Only the pipeline's score-0 filler may end before it starts (kept for parity).
        assert answer["start"] <= answer["end"] or (answer["score"] == 0.0 and answer["answer"] == ""), answer
        assert answer["answer"] == context[answer["start"] : answer["end"]]
        # The probabilities of one window's spans sum to at most 1; the pipeline's merge of answers
        # of the same text adds those of several windows.
        assert 0.0 <= answer["score"] <= (1.0 if n_windows == 1 else n_windows) + 1e-6
        if answer["score"] > 0 and answer["answer"] == "":
            # Only the null answer is empty and scored, and only where asked for.
            assert (null_ranked or null_first) and is_null(answer), answer
        elif answer["score"] > 0:
            # A real span: a run of one window's context tokens (whole words when aligned), no
            # longer than max_answer_len of them. (Score-0 answers are the pipeline's filler when
            # top_k outruns the spans: still inside the context, nothing more is promised.)
            spans = _spans(encoded, answer, align_to_words)
            assert spans and min(length for _, length in spans) <= max_answer_len, (answer, spans)
    real = [a for a in answers if a["answer"] != "" or not (null_ranked or null_first)]
    assert sum(a["score"] for a in real) <= n_windows + 1e-5

    if null_first:
        # null_score_diff_threshold: the null answer first when null - best span logit > threshold,
        # whatever handle_impossible_answer says.
        assert answers and is_null(answers[0]), (answers, null_p)
        ranked = answers[1:]
    else:
        ranked = answers
    scores = [a["score"] for a in ranked]
    assert scores == sorted(scores, reverse=True)
    if null_ranked and not any(is_null(a) for a in answers):
        # handle_impossible_answer: the null answer, scored min over windows of p_start([CLS]) *
        # p_end([CLS]), is ranked with the others: only top_k better answers leave it out.
        assert len(answers) == top_k and all(a["score"] >= null_p - 1e-6 for a in answers), (answers, null_p)


# ---------------------------------------------------------------- (3) tag entities


@profile(500)
@given(
    text=texts(0, 30),
    max_seq_len=st.integers(6, 24),
    strategy=st.sampled_from(STRATEGIES),
    ignore=st.sampled_from([(), ("O",), ("O", "B-LOC", "I-LOC")]),
    data=st.data(),
)
def test_tag_entities_stay_inside_one_window_and_never_overlap(text, max_seq_len, strategy, ignore, data) -> None:
    m = manifest("tag", max_seq_len, TAG_LABELS)
    room = max_seq_len - 2
    stride = data.draw(st.integers(0, room - min_advance(room)), label="stride")
    parameters = {"aggregation_strategy": strategy, "stride": stride, "ignore_labels": list(ignore)}
    note(f"text={text!r} max_seq_len={max_seq_len} parameters={parameters!r}")
    items, params, _ = TAG.parse(text, parameters, m)
    (encoded,) = TAG.encode(tokenizer(), items, params, m)
    assume(sum(len(row) for row in encoded.rows) <= 300)  # what hypothesis can draw densely
    outputs = [{"logits": data.draw(logits((len(row), len(TAG_LABELS))), label="logits")} for row in encoded.rows]
    entities = TAG.decode(encoded, outputs, params, m)
    windows = encoded.state.windows
    full = whole(text)
    label_key = "entity" if strategy == "none" else "entity_group"
    keys = {label_key, "score", "word", "start", "end"} | ({"index"} if strategy == "none" else set())

    for entity in entities:
        assert set(entity) == keys
        assert 0 <= entity["start"] < entity["end"] <= len(text), entity
        assert isinstance(entity["score"], float) and 0.0 <= entity["score"] <= 1.0
        assert entity[label_key] not in ignore
        # word is the decoded tokens: the text of the span as the tokenizer normalizes it; a span
        # that starts inside a word keeps the "##" of its first token. Tokens of one character
        # (Hangul jamo) share its offsets, so a span may hold only some of them.
        word, span = squash(entity["word"]), squash(text[entity["start"] : entity["end"]])
        core = word[2:] if word.startswith("##") and not span.startswith("##") else word
        edges = multi_token_char(text[entity["start"]]) or multi_token_char(text[entity["end"] - 1])
        assert core == span or (edges and core and core in span), (entity, text)
        # Never across a seam: the span is a run of one window's tokens.
        assert any(
            any(w.offsets[p][0] == entity["start"] for p in w.positions)
            and any(w.offsets[p][1] == entity["end"] for p in w.positions)
            and min(w.offsets[p][0] for p in w.positions) <= entity["start"]
            and entity["end"] <= max(w.offsets[p][1] for p in w.positions)
            for w in windows
            if w.positions
        ), (entity, text)

    # In text order, never overlapping, but for the tokens of one character, which share its offsets.
    starts = [e["start"] for e in entities]
    assert starts == sorted(starts)
    for a, b in itertools.pairwise(entities):
        if b["start"] < a["end"]:
            assert strategy in ("none", "simple") and a["end"] - b["start"] == 1, (a, b)
            assert multi_token_char(text[b["start"]]), (a, b)

    if strategy == "none":
        # Every token decided once, by the window where it has the most context; index as in one
        # unwindowed encoding.
        expected = []
        for t, (k, local) in enumerate(owners(len(full), [len(w.positions) for w in windows], room - stride)):
            probabilities = masked_softmax(
                outputs[k]["logits"][windows[k].positions[local]], np.ones(len(TAG_LABELS), bool)
            )
            label = TAG_LABELS[int(np.argmax(probabilities))]
            if label not in ignore:
                expected.append((label, t + 1, full.offsets[t], float(probabilities.max())))
        assert [(e["entity"], e["index"], (e["start"], e["end"])) for e in entities] == [x[:3] for x in expected]
        for entity, x in zip(entities, expected, strict=True):
            assert entity["score"] == pytest.approx(x[3], abs=1e-6)
    elif not ignore and len(windows) == 1:
        # One window and nothing ignored: the entities cover every token.
        for s, e in full.offsets:
            assert any(x["start"] <= s and e <= x["end"] for x in entities), ((s, e), entities)


# ---------------------------------------------------------------- classify and discriminate


@profile(200)
@given(
    n_logits=st.integers(1, 12),
    n_named=st.integers(0, 12),
    function=st.sampled_from([None, "softmax", "sigmoid", "none"]),
    problem_type=st.sampled_from([None, "single_label_classification", "multi_label_classification", "regression"]),
    top_k=st.one_of(st.none(), st.integers(1, 15)),
    data=st.data(),
)
def test_classify_scores_are_ranked_probabilities_within_top_k(
    n_logits, n_named, function, problem_type, top_k, data
) -> None:
    labels = [f"label{i}" for i in range(n_named)]
    m = manifest("classify", 32, labels, problem_type)
    parameters: dict[str, Any] = {"top_k": top_k}
    if function is not None:
        parameters["function_to_apply"] = function
    items, params, _ = CLASSIFY.parse("some text", parameters, m)
    (encoded,) = CLASSIFY.encode(tokenizer(), items, params, m)
    raw = data.draw(logits((n_logits,), extreme=data.draw(st.booleans(), label="extreme")), label="logits")
    ranked = CLASSIFY.decode(encoded, [{"logits": raw}], params, m)

    applied = params.function_to_apply
    if function is None:  # the pipeline's default for the head
        regression = problem_type == "regression"
        sigmoid = problem_type == "multi_label_classification" or n_named == 1
        assert applied == ("none" if regression else "sigmoid" if sigmoid else "softmax")
    names = [labels[i] if i < n_named else f"LABEL_{i}" for i in range(n_logits)]
    assert len(ranked) == (n_logits if top_k is None else min(top_k, n_logits))
    assert len({r["label"] for r in ranked}) == len(ranked) and all(r["label"] in names for r in ranked)
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    # Equal scores keep label order (a stable sort, as in the pipeline).
    for a, b in itertools.pairwise(ranked):
        if a["score"] == b["score"]:
            assert names.index(a["label"]) < names.index(b["label"])
    x = raw.astype(np.float64)
    if applied == "softmax":
        expected = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    elif applied == "sigmoid":
        with np.errstate(over="ignore"):
            expected = 1 / (1 + np.exp(-x))
    else:
        expected = x
    for r in ranked:
        assert r["score"] == pytest.approx(expected[names.index(r["label"])], rel=1e-6, abs=1e-12)
    if applied != "none":
        assert all(0.0 <= s <= 1.0 for s in scores)
    if applied == "softmax" and top_k is None:
        assert sum(scores) == pytest.approx(1.0, abs=1e-9)
    # The best label is the largest logit.
    assert ranked[0]["score"] == pytest.approx(expected.max(), rel=1e-6, abs=1e-12)


@profile(150)
@given(
    text=texts(0, 30),
    max_seq_len=st.integers(5, 32),
    threshold=st.integers(0, 20).map(lambda v: v / 20),
    data=st.data(),
)
def test_discriminate_scores_each_token_once_and_words_lie_inside_the_text(text, max_seq_len, threshold, data) -> None:
    m = manifest("discriminate", max_seq_len)
    items, params, _ = DISCRIMINATE.parse(text, {"threshold": threshold}, m)
    (encoded,) = DISCRIMINATE.encode(tokenizer(), items, params, m)
    assume(sum(len(row) for row in encoded.rows) <= 1200)
    extreme = data.draw(st.booleans(), label="extreme")
    outputs = [{"logits": data.draw(logits((len(row),), extreme), label="logits")} for row in encoded.rows]
    result = DISCRIMINATE.decode(encoded, outputs, params, m)
    full = whole(text)
    step = max_seq_len - 2 - max_seq_len // 4
    expected = owners(len(full), [len(row) - 2 for row in encoded.rows], step)

    tokens = result["tokens"]
    assert [(t["token"], t["start"], t["end"]) for t in tokens] == [
        (name, s, e) for name, (s, e) in zip(full.tokens, full.offsets, strict=True)
    ]
    for token, (k, local) in zip(tokens, expected, strict=True):
        assert 0.0 <= token["score"] <= 1.0
        logit = float(outputs[k]["logits"][local + 1])
        assert token["score"] == pytest.approx(1 / (1 + math.exp(-logit)) if logit > -700 else 0.0, abs=1e-9)
        assert token["replaced"] is (token["score"] > threshold)
    assert result["replaced_rate"] == pytest.approx(sum(t["replaced"] for t in tokens) / len(tokens) if tokens else 0.0)

    words = result["words"]
    for word in words:
        assert 0 <= word["start"] < word["end"] <= len(text)
        assert word["token"] == text[word["start"] : word["end"]]
        inside = [t for t in tokens if word["start"] <= t["start"] and t["end"] <= word["end"]]
        assert inside and word["score"] == max(t["score"] for t in inside)
        assert word["replaced"] is (word["score"] > threshold)
    for a, b in itertools.pairwise(words):
        assert a["end"] <= b["start"]
    # Every token belongs to a word.
    for t in tokens:
        assert any(w["start"] <= t["start"] and t["end"] <= w["end"] for w in words), t


# ---------------------------------------------------------------- what the properties found


def test_characters_do_not_bound_tokens_so_windows_are_counted_from_bytes() -> None:
    """A Hangul syllable is up to three tokens (jamo): 7 characters here, 16 tokens. Counted by
    characters, the 413 let through requests of more windows than allowed."""
    text = "한국어 한국어"
    assert len(whole(text)) == 16
    m = manifest("tag", 8, TAG_LABELS)
    _, params, _ = TAG.parse(text, {"stride": 0}, m)
    assert len(TAG.encode(tokenizer(), [text], params, m)[0].rows) == 3
    error = assert_refused(ErrorKind.TOO_LARGE, TAG.encode, tokenizer(), [text], params, m, max_rows=2)
    assert "needs 3 model windows" in error.message


def test_a_context_of_few_characters_and_many_tokens_is_a_422_not_a_tokenizer_panic() -> None:
    """6 characters, 16 tokens, 10 tokens of room and doc_stride 11: the context was taken to fit
    (characters) and the Rust tokenizer panicked (pyo3_runtime.PanicException, not an Exception)."""
    m = manifest("qa", 16)
    items, params, _ = QA.parse({"question": "who is it", "context": "한국어한국어"}, {"doc_stride": 11}, m)
    error = assert_refused(ErrorKind.INVALID_INPUT, QA.encode, tokenizer(), items, params, m)
    assert "cannot be split into windows" in error.message
    # And with a stride the windows can advance by, the windows the limit counted.
    items, params, _ = QA.parse({"question": "who is it", "context": "한국어한국어"}, {"doc_stride": 2}, m)
    assert len(QA.encode(tokenizer(), items, params, m)[0].rows) == 2
    assert_refused(ErrorKind.TOO_LARGE, QA.encode, tokenizer(), items, params, m, max_rows=1)


def test_no_scored_qa_answer_ends_before_it_starts() -> None:
    """With more candidates asked for than there are spans, the pipeline also returns cells that
    np.triu zeroed, end before start: {"score": 0.0, "start": 10, "end": 3, "answer": ""} here.
    Kept for parity with the pipeline, but only ever as empty, score-0 filler."""
    m = manifest("qa", 48)
    parameters = {"max_seq_len": 17, "doc_stride": 0, "top_k": 7, "max_answer_len": 1}
    items, params, _ = QA.parse({"question": "Ada 한국어", "context": "Ada Ada 東京都"}, parameters, m)
    (encoded,) = QA.encode(tokenizer(), items, params, m)
    zeros = np.zeros(len(encoded.rows[0]), dtype=np.float32)
    answers = QA.decode(encoded, [{"start_logits": zeros, "end_logits": zeros}], params, m)
    assert [a["answer"] for a in answers if a["score"] > 0] == ["Ada", "東", "京", "都"]
    assert all(0 <= a["start"] <= a["end"] for a in answers if a["score"] > 0), answers
    assert all(a["answer"] == "" for a in answers if a["start"] > a["end"]), answers
