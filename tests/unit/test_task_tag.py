"""TagTask against the `token-classification` pipeline on the same small checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.synthetic import CONLL_LABELS
from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.rows import Row
from server.core.tasks.tag import TagTask
from tests.torch_reference import load_torch_model, run_rows

MAX_LEN = 32
AUTO_STRIDE = MAX_LEN // 4
TASK = TagTask()
STRATEGIES = ["none", "simple", "first", "average", "max"]

SHORT = [
    "John Smith works at Microsoft in Seattle.",
    "",
    "Café naïve résumé: déjà vu à Zürich, François!",
    "東京と北京は大都市です。",
    "Emoji 🙂🚀 in the middle 🔥 of text",
    "한국어 텍스트와 ﬁne ligatures",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "   spaced    out\ttabs\nnewlines  ",
]
LONG = [
    " ".join(["Angela Merkel met Emmanuel Macron in Paris and Berlin to discuss the European Union."] * 3),
    "Straße " * 5 + "東京 " * 10 + "🙂 " * 5 + "supercalifragilistic " * 4 + "end.",
    " ".join(f"word{i}" for i in range(60)),
]


def manifest_for() -> Manifest:
    return Manifest(
        name="test",
        task="tag",
        max_seq_len=MAX_LEN,
        labels=CONLL_LABELS,
        variants={"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}},
        source={"model": "test"},
    )


class Harness:
    def __init__(self, ckpt: Path) -> None:
        from transformers import AutoTokenizer, pipeline

        self.manifest = manifest_for()
        self.tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.model = load_torch_model(ckpt)
        self.hf_tokenizer = AutoTokenizer.from_pretrained(str(ckpt), model_max_length=MAX_LEN)
        self.pipe = pipeline("token-classification", model=self.model, tokenizer=self.hf_tokenizer)
        self._outputs: dict[bytes, Any] = {}

    def run(self, rows: list[Row]) -> list[Any]:
        out = []
        for row in rows:
            key = row.input_ids.tobytes()
            if key not in self._outputs:
                self._outputs[key] = run_rows(self.model, "tag", [row])[0]
            out.append(self._outputs[key])
        return out

    def ours(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        items, params, is_list = TASK.parse(inputs, parameters, self.manifest)
        encoded = TASK.encode(self.tokenizer, items, params, self.manifest)
        results = [TASK.decode(e, self.run(e.rows), params, self.manifest) for e in encoded]
        return results if is_list else results[0]

    def theirs(self, inputs: Any, parameters: dict[str, Any]) -> Any:
        return self.pipe(inputs, **parameters)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest, and spinning OpenMP threads crawl on a busy 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def h(make_checkpoint) -> Harness:
    return Harness(make_checkpoint("tag", seed=5, labels=CONLL_LABELS, max_position_embeddings=MAX_LEN))


def assert_same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert set(a) == set(b)
        for key in a:
            if key == "score":
                assert isinstance(a["score"], float)
                assert a["score"] == pytest.approx(float(b["score"]), abs=1e-4)
            else:
                assert a[key] == b[key], (key, a, b)
                assert type(a[key]) in (int, str)


def test_model_predicts_varied_labels(h) -> None:
    # Parity only means something if the random head predicts more than one label.
    found = {e["entity"] for text in SHORT for e in h.ours(text, {"aggregation_strategy": "none", "ignore_labels": []})}
    assert len(found) >= 4


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ignore_labels", [None, [], ["O", "B-PER", "PER"]])
def test_short_texts_match_pipeline(h, strategy, ignore_labels) -> None:
    params: dict[str, Any] = {"aggregation_strategy": strategy}
    if ignore_labels is not None:
        params["ignore_labels"] = ignore_labels
    for text in SHORT:
        ours = h.ours(text, params)
        assert_same(ours, h.theirs(text, params))
        for entity in ours:
            assert 0 <= entity["start"] <= entity["end"] <= len(text)
    # A list of texts gives a list of results, in order.
    batch = h.ours(SHORT, params)
    assert batch == [h.ours(text, params) for text in SHORT]


def test_empty_text_and_default_strategy(h) -> None:
    assert h.ours("") == []
    assert h.ours([""]) == [[]]
    text = SHORT[0]
    assert_same(h.ours(text), h.theirs(text, {"aggregation_strategy": "simple"}))
    assert "entity_group" in h.ours(text, {"ignore_labels": []})[0]


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
@pytest.mark.parametrize("stride", [None, 0, 5, AUTO_STRIDE, 20])
def test_long_texts_are_windowed_like_the_pipeline(h, strategy, stride) -> None:
    for ignore_labels in ([], ["O"]):
        params: dict[str, Any] = {"aggregation_strategy": strategy, "ignore_labels": ignore_labels}
        if stride is not None:
            params["stride"] = stride
        for text in LONG:
            items, parsed, _ = TASK.parse(text, params, h.manifest)
            assert len(TASK.encode(h.tokenizer, items, parsed, h.manifest)[0].rows) > 1
            expected = h.theirs(text, {**params, "stride": AUTO_STRIDE if stride is None else stride})
            assert_same(h.ours(text, params), expected)


def test_stride_on_a_text_that_fits_changes_nothing(h) -> None:
    text = SHORT[0]
    for strategy in ["simple", "max"]:
        assert h.ours(text, {"aggregation_strategy": strategy, "stride": 10}) == h.ours(
            text, {"aggregation_strategy": strategy}
        )


def test_none_over_windows_gives_every_token_once_from_its_best_window(h) -> None:
    for text in LONG:
        full = h.hf_tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        count = len(full["input_ids"]) - 2
        assert count > MAX_LEN
        for stride in (None, 3, 12):
            params: dict[str, Any] = {"aggregation_strategy": "none", "ignore_labels": []}
            if stride is not None:
                params["stride"] = stride
            ours = h.ours(text, params)
            # Each token once, in order, indexed and offset as in one unwindowed encoding.
            assert [e["index"] for e in ours] == list(range(1, count + 1))
            assert [(e["start"], e["end"]) for e in ours] == [tuple(o) for o in full["offset_mapping"][1:-1]]
            # Scores come from the window where the token has the most context (oracle below).
            used = AUTO_STRIDE if stride is None else stride
            windows = h.hf_tokenizer(text, truncation=True, return_overflowing_tokens=True, stride=used)["input_ids"]
            probabilities = [_softmax(h.run([_row(ids)])[0]["logits"]) for ids in windows]
            expected = _best_window_scores(full["input_ids"], windows, probabilities, used)
            for entity, (label, score) in zip(ours, expected, strict=True):
                assert entity["entity"] == label
                assert entity["score"] == pytest.approx(score, abs=1e-5)
            # ignore_labels filters this path too.
            kept = h.ours(text, {**params, "ignore_labels": ["O"]})
            assert kept == [e for e in ours if e["entity"] != "O"]


@pytest.mark.parametrize(
    ("inputs", "parameters", "kind", "fragment"),
    [
        ([], None, ErrorKind.INVALID_INPUT, "empty"),
        (None, None, ErrorKind.INVALID_INPUT, "inputs"),
        ({"text": "x"}, None, ErrorKind.INVALID_INPUT, "object"),
        (["ok", 1], None, ErrorKind.INVALID_INPUT, "inputs[1]"),
        ("x", {"aggregation_strategy": "best"}, ErrorKind.BAD_REQUEST, "aggregation_strategy"),
        ("x", {"aggregation_strategy": 2}, ErrorKind.BAD_REQUEST, "aggregation_strategy"),
        ("x", {"ignore_labels": "O"}, ErrorKind.BAD_REQUEST, "ignore_labels"),
        ("x", {"ignore_labels": ["O", 1]}, ErrorKind.BAD_REQUEST, "ignore_labels"),
        ("x", {"stride": -1}, ErrorKind.BAD_REQUEST, "stride"),
        ("x", {"stride": "4"}, ErrorKind.BAD_REQUEST, "stride"),
        ("x", {"stride": 2.5}, ErrorKind.BAD_REQUEST, "stride"),
        ("x", {"grouped_entities": True}, ErrorKind.BAD_REQUEST, "grouped_entities"),
        ("x", "simple", ErrorKind.BAD_REQUEST, "parameters"),
    ],
)
def test_bad_requests(h, inputs, parameters, kind, fragment) -> None:
    with pytest.raises(ServeError) as err:
        TASK.parse(inputs, parameters, h.manifest)
    assert err.value.kind is kind
    assert fragment in err.value.message


def test_stride_too_large_for_the_model_is_rejected_before_tokenizing(h) -> None:
    """Windows hold MAX_LEN - 2 text tokens and must advance by at least an eighth of them, so a
    stride close to the window is refused: each window would add a token or two (work amplification)."""
    room = MAX_LEN - 2
    largest = room - -(-room // 8)
    for stride in (largest + 1, MAX_LEN - 3, MAX_LEN - 2, MAX_LEN, 1000):
        items, params, _ = TASK.parse(LONG[0], {"stride": stride}, h.manifest)
        with pytest.raises(ServeError) as err:
            TASK.encode(h.tokenizer, items, params, h.manifest)
        assert err.value.kind is ErrorKind.BAD_REQUEST
        assert f"at most {largest}" in err.value.message
    items, params, _ = TASK.parse(LONG[0], {"stride": largest}, h.manifest)
    assert len(TASK.encode(h.tokenizer, items, params, h.manifest)[0].rows) > 1


def test_windows_are_counted_before_they_are_built(h) -> None:
    """A request that would need more windows than allowed is a 413 naming the limit, decided from
    the token count alone (the tokenizer's own windowing never runs)."""
    items, params, _ = TASK.parse(LONG, None, h.manifest)
    needed = sum(len(e.rows) for e in TASK.encode(h.tokenizer, items, params, h.manifest))
    assert len(TASK.encode(h.tokenizer, items, params, h.manifest, max_rows=needed)) == len(items)
    with pytest.raises(ServeError) as err:
        TASK.encode(h.tokenizer, items, params, h.manifest, max_rows=needed - 1)
    assert err.value.kind is ErrorKind.TOO_LARGE
    assert f"needs {needed} model windows" in err.value.message and f"at most {needed - 1}" in err.value.message


def test_parameter_spellings_and_defaults(h) -> None:
    _, params, _ = TASK.parse("x", None, h.manifest)
    assert (params.aggregation_strategy, params.ignore_labels, params.stride) == ("simple", ("O",), AUTO_STRIDE)
    _, params, _ = TASK.parse("x", {"aggregation_strategy": "MAX", "ignore_labels": None, "stride": None}, h.manifest)
    assert (params.aggregation_strategy, params.ignore_labels) == ("max", ("O",))
    assert TASK.default_params(h.manifest) == TASK.parse("x", None, h.manifest)[1]


# ---------------------------------------------------------------- oracle helpers


def _row(ids: list[int]) -> Row:
    ids_array = np.asarray(ids, dtype=np.int64)
    return Row(input_ids=ids_array, token_type_ids=np.zeros_like(ids_array))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _best_window_scores(
    full_ids: list[int], windows: list[list[int]], probabilities: list[np.ndarray], stride: int
) -> list[tuple[str, float]]:
    """For each text token: the label and score of the window that gives it the most context on
    both sides (ties: the earlier window). Consecutive windows share `stride` tokens."""
    text_ids = full_ids[1:-1]
    best: dict[int, tuple[float, str, float]] = {}
    start = 0
    for ids, probs in zip(windows, probabilities, strict=True):
        length = len(ids) - 2
        assert ids[1:-1] == text_ids[start : start + length]
        for local in range(length):
            context = min(local, length - 1 - local) + 0.01 * length
            if start + local not in best or context > best[start + local][0]:
                p = probs[local + 1]
                best[start + local] = (context, CONLL_LABELS[int(p.argmax())], float(p.max()))
        start += length - stride
    assert sorted(best) == list(range(len(text_ids)))
    return [best[t][1:] for t in range(len(text_ids))]
