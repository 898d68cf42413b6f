"""DiscriminateTask against ElectraForPreTraining's own logits on the same small checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.rows import Row
from server.core.tasks.discriminate import DiscriminateTask
from tests.torch_reference import load_torch_model, run_rows

MAX_LEN = 32
STRIDE = MAX_LEN // 4
TASK = DiscriminateTask()

SHORT = [
    "The chef cooked the meal and the guests ate it.",
    "Café naïve résumé: déjà vu à Zürich, François!",
    "東京と北京は大都市です。",
    "Emoji 🙂🚀 in the middle 🔥 of text",
    "한국어 ﬁne",
    "supercalifragilisticexpialidocious don't",
    "   spaced    out\ttabs\nnewlines  ",
]
LONG = [
    " ".join(["The quick brown fox jumps over the lazy dog while the cat sleeps."] * 6),
    "Straße " * 5 + "東京 " * 12 + "🙂 " * 5 + "supercalifragilistic " * 5 + "end.",
    " ".join(f"token{i}" for i in range(70)),
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest, and spinning OpenMP threads crawl on a busy 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Harness:
    def __init__(self, ckpt: Path) -> None:
        from transformers import AutoTokenizer

        self.manifest = Manifest(
            name="test",
            task="discriminate",
            max_seq_len=MAX_LEN,
            variants={"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}},
            source={"model": "test"},
        )
        self.tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.hf_tokenizer = AutoTokenizer.from_pretrained(str(ckpt), model_max_length=MAX_LEN)
        self.model = load_torch_model(ckpt)

    def ours(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        items, params, is_list = TASK.parse(inputs, parameters, self.manifest)
        encoded = TASK.encode(self.tokenizer, items, params, self.manifest)
        results = [TASK.decode(e, run_rows(self.model, "discriminate", e.rows), params, self.manifest) for e in encoded]
        return results if is_list else results[0]

    def probabilities(self, ids: list[int]) -> np.ndarray:
        """sigmoid(ElectraForPreTraining logits) for one unpadded sequence."""
        ids_array = np.asarray(ids, dtype=np.int64)
        row = Row(input_ids=ids_array, token_type_ids=np.zeros_like(ids_array))
        logits = run_rows(self.model, "discriminate", [row])[0]["logits"].astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))


@pytest.fixture(scope="module")
def h(make_checkpoint) -> Harness:
    return Harness(make_checkpoint("discriminate", max_position_embeddings=MAX_LEN))


def check_words(text: str, result: dict[str, Any], word_ids: list[int | None], threshold: float) -> None:
    """Words: one per pre-tokenizer word, spanning its tokens, scored by its most suspicious token."""
    tokens = result["tokens"]
    groups: dict[int, list[dict[str, Any]]] = {}
    for token, word in zip(tokens, word_ids, strict=True):
        groups.setdefault(word, []).append(token)
    assert len(result["words"]) == len(groups)
    for word, group in zip(result["words"], groups.values(), strict=True):
        assert (word["start"], word["end"]) == (group[0]["start"], group[-1]["end"])
        assert word["token"] == text[word["start"] : word["end"]]
        assert word["score"] == max(t["score"] for t in group)
        assert word["replaced"] == (word["score"] > threshold)


def test_short_texts_match_the_discriminator(h) -> None:
    for text in SHORT:
        enc = h.hf_tokenizer(text, return_offsets_mapping=True)
        assert len(enc["input_ids"]) <= MAX_LEN
        expected = h.probabilities(enc["input_ids"])[1:-1]
        result = h.ours(text)
        tokens = result["tokens"]
        assert [t["token"] for t in tokens] == h.hf_tokenizer.convert_ids_to_tokens(enc["input_ids"])[1:-1]
        assert [(t["start"], t["end"]) for t in tokens] == [tuple(o) for o in enc["offset_mapping"][1:-1]]
        for token, p in zip(tokens, expected, strict=True):
            assert isinstance(token["score"], float)
            assert token["score"] == pytest.approx(p, abs=1e-5)
            assert token["replaced"] == (token["score"] > 0.5)
        assert result["replaced_rate"] == pytest.approx(sum(t["replaced"] for t in tokens) / len(tokens))
        check_words(text, result, enc.word_ids()[1:-1], 0.5)


def test_words_follow_the_pre_tokenizer(h) -> None:
    result = h.ours("Supercalifragilistic don't")
    # "supercalifragilistic" is several wordpieces but one word; "don't" is three words (don ' t).
    assert len(result["tokens"]) > 4
    assert [w["token"] for w in result["words"]] == ["Supercalifragilistic", "don", "'", "t"]


@pytest.mark.parametrize("threshold", [0, 0.0, 0.25, 0.5, 0.75, 1, 1.0])
def test_threshold(h, threshold) -> None:
    text = SHORT[0]
    base = h.ours(text)
    result = h.ours(text, {"threshold": threshold})
    assert [t["score"] for t in result["tokens"]] == [t["score"] for t in base["tokens"]]
    for entry in result["tokens"] + result["words"]:
        assert entry["replaced"] == (entry["score"] > threshold)
    flagged = sum(t["replaced"] for t in result["tokens"])
    assert result["replaced_rate"] == flagged / len(result["tokens"])
    if threshold == 1:
        assert result["replaced_rate"] == 0.0


def test_empty_text_and_lists(h) -> None:
    assert h.ours("") == {"tokens": [], "words": [], "replaced_rate": 0.0}
    batch = h.ours(["", SHORT[0], SHORT[2]])
    assert batch == [h.ours(""), h.ours(SHORT[0]), h.ours(SHORT[2])]
    assert h.ours([SHORT[1]]) == [h.ours(SHORT[1])]


def test_long_texts_are_windowed_never_cut(h) -> None:
    for text in LONG:
        full = h.hf_tokenizer(text, return_offsets_mapping=True)
        text_ids = full["input_ids"][1:-1]
        assert len(text_ids) > 2 * MAX_LEN
        items, params, _ = TASK.parse(text, None, h.manifest)
        (encoded,) = TASK.encode(h.tokenizer, items, params, h.manifest)
        assert len(encoded.rows) > 2 and all(len(row) <= MAX_LEN for row in encoded.rows)
        result = TASK.decode(encoded, run_rows(h.model, "discriminate", encoded.rows), params, h.manifest)

        # Every text token exactly once, in order, with offsets into the text.
        tokens = result["tokens"]
        assert [t["token"] for t in tokens] == h.hf_tokenizer.convert_ids_to_tokens(text_ids)
        assert [(t["start"], t["end"]) for t in tokens] == [tuple(o) for o in full["offset_mapping"][1:-1]]
        assert all(0 <= t["start"] <= t["end"] <= len(text) for t in tokens)
        check_words(text, result, full.word_ids()[1:-1], 0.5)

        # Each score is the discriminator's on the window where that token has the most context.
        windows = h.hf_tokenizer(text, truncation=True, return_overflowing_tokens=True, stride=STRIDE)["input_ids"]
        assert [row.input_ids.tolist() for row in encoded.rows] == windows
        expected = _best_window_scores(text_ids, windows, [h.probabilities(w) for w in windows])
        for token, p in zip(tokens, expected, strict=True):
            assert token["score"] == pytest.approx(p, abs=1e-5)


def test_window_choice_keeps_context_on_both_sides(h) -> None:
    """A token scored near the middle of its window: at least STRIDE // 2 tokens of context on
    each side, unless it is that close to an end of the text."""
    text = LONG[2]
    items, params, _ = TASK.parse(text, None, h.manifest)
    (encoded,) = TASK.encode(h.tokenizer, items, params, h.manifest)
    tokens = encoded.state.tokens
    for i, token in enumerate(tokens):
        row_length = len(encoded.rows[token.window]) - 2
        left, right = token.position - 1, row_length - token.position
        assert min(left, right) >= min(STRIDE // 2, i, len(tokens) - 1 - i)


@pytest.mark.parametrize(
    ("inputs", "parameters", "kind", "fragment"),
    [
        ([], None, ErrorKind.INVALID_INPUT, "empty"),
        (None, None, ErrorKind.INVALID_INPUT, "inputs"),
        (3.5, None, ErrorKind.INVALID_INPUT, "number"),
        ({"text": "x"}, None, ErrorKind.INVALID_INPUT, "object"),
        (["ok", None], None, ErrorKind.INVALID_INPUT, "inputs[1]"),
        ("x", {"threshold": 1.5}, ErrorKind.BAD_REQUEST, "threshold"),
        ("x", {"threshold": -0.1}, ErrorKind.BAD_REQUEST, "threshold"),
        ("x", {"threshold": float("nan")}, ErrorKind.BAD_REQUEST, "threshold"),
        ("x", {"threshold": "0.5"}, ErrorKind.BAD_REQUEST, "threshold"),
        ("x", {"threshold": True}, ErrorKind.BAD_REQUEST, "threshold"),
        ("x", {"top_k": 3}, ErrorKind.BAD_REQUEST, "top_k"),
        ("x", [0.5], ErrorKind.BAD_REQUEST, "parameters"),
    ],
)
def test_bad_requests(h, inputs, parameters, kind, fragment) -> None:
    with pytest.raises(ServeError) as err:
        TASK.parse(inputs, parameters, h.manifest)
    assert err.value.kind is kind
    assert fragment in err.value.message


def test_defaults(h) -> None:
    assert TASK.default_params(h.manifest).threshold == 0.5
    assert TASK.parse("x", {"threshold": None}, h.manifest)[1].threshold == 0.5


def _best_window_scores(text_ids: list[int], windows: list[list[int]], probabilities: list[np.ndarray]) -> list:
    """For each text token: its probability in the window that gives it the most context on both
    sides (SQuAD's max-context rule, ties to the earlier window). Consecutive windows share STRIDE tokens."""
    best: dict[int, tuple[float, float]] = {}
    start = 0
    for ids, probs in zip(windows, probabilities, strict=True):
        length = len(ids) - 2
        assert ids[1:-1] == text_ids[start : start + length]
        for local in range(length):
            context = min(local, length - 1 - local) + 0.01 * length
            if start + local not in best or context > best[start + local][0]:
                best[start + local] = (context, float(probs[local + 1]))
        start += length - STRIDE
    assert sorted(best) == list(range(len(text_ids)))
    return [best[t][1] for t in range(len(text_ids))]
