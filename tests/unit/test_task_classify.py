"""ClassifyTask against the `text-classification` pipeline on the same small checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.rows import Row
from server.core.tasks.classify import ClassifyTask
from tests.torch_reference import load_torch_model, run_rows

MAX_LEN = 32
TASK = ClassifyTask()

TEXTS = [
    "This movie was great, I loved it!",
    "",
    "Café naïve résumé: déjà vu à Zürich.",
    "東京は日本の首都です。",
    "I feel 🙂 today 🚀🔥",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]
PAIRS = [
    {"text": "Who wrote it?", "text_pair": "The book was written by a careful author."},
    {"text": "Only the text here"},
    {"text": "", "text_pair": ""},
    {"text": "Ünïcödé", "text_pair": "北京 🙂"},
]
# Longer than MAX_LEN tokens: alone and as either side of a pair.
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)
LONG_PAIRS = [
    {"text": LONG, "text_pair": "short pair"},
    {"text": "short text", "text_pair": LONG},
    {"text": LONG, "text_pair": LONG + " and a bit more"},
]

HEADS = {
    "binary": {"labels": ["NEGATIVE", "POSITIVE"]},
    "three": {"labels": ["neg", "neu", "pos"], "seed": 3},
    "one": {"labels": ["SCORE"], "seed": 1},
    "regression": {"labels": ["VALUE"], "problem_type": "regression", "seed": 2},
    "multi": {"labels": ["a", "b", "c", "d"], "problem_type": "multi_label_classification", "seed": 4},
}


def manifest_for(ckpt: Path, labels: list[str], problem_type: str | None) -> Manifest:
    return Manifest(
        name="test",
        task="classify",
        max_seq_len=MAX_LEN,
        labels=labels,
        problem_type=problem_type,
        variants={"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}},
        source={"model": "test"},
    )


class Harness:
    def __init__(self, ckpt: Path, labels: list[str], problem_type: str | None) -> None:
        from transformers import AutoTokenizer, pipeline

        self.manifest = manifest_for(ckpt, labels, problem_type)
        self.tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.model = load_torch_model(ckpt)
        hf_tokenizer = AutoTokenizer.from_pretrained(str(ckpt), model_max_length=MAX_LEN)
        self.pipe = pipeline("text-classification", model=self.model, tokenizer=hf_tokenizer)
        self._outputs: dict[tuple[bytes, bytes], Any] = {}

    def run(self, rows: list[Row]) -> list[Any]:
        # The reference is deterministic: run each distinct row once across the parameter matrix.
        out = []
        for row in rows:
            key = (row.input_ids.tobytes(), row.token_type_ids.tobytes())
            if key not in self._outputs:
                self._outputs[key] = run_rows(self.model, "classify", [row])[0]
            out.append(self._outputs[key])
        return out

    def ours(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        items, params, is_list = TASK.parse(inputs, parameters, self.manifest)
        encoded = TASK.encode(self.tokenizer, items, params, self.manifest)
        results = [TASK.decode(e, self.run(e.rows), params, self.manifest) for e in encoded]
        return results if is_list else results[0]

    def theirs(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        kwargs = dict(parameters or {})
        kwargs.setdefault("top_k", 1)  # ours always answers a list, which the pipeline does when top_k is given
        if kwargs.pop("truncate", False):
            kwargs["truncation"] = True
        return self.pipe(inputs, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is fastest, and spinning OpenMP threads crawl on a busy 2-core runner."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def heads(make_checkpoint) -> dict[str, Harness]:
    out = {}
    for name, spec in HEADS.items():
        ckpt = make_checkpoint("classify", max_position_embeddings=MAX_LEN, **spec)
        out[name] = Harness(ckpt, spec["labels"], spec.get("problem_type"))
    return out


def assert_same(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [e["label"] for e in ours] == [e["label"] for e in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a["score"], float)
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize(
    ("top_k", "function"),
    [(1, None), (2, None), (None, None), (None, "softmax"), (None, "sigmoid"), (None, "none")],
)
def test_single_texts_match_pipeline(heads, head, top_k, function) -> None:
    h = heads[head]
    params: dict[str, Any] = {"top_k": top_k}
    if function is not None:
        params["function_to_apply"] = function
    for text in TEXTS:
        ours = h.ours(text, params)
        assert_same(ours, h.theirs(text, params))
        expected_len = len(HEADS[head]["labels"]) if top_k is None else min(top_k, len(HEADS[head]["labels"]))
        assert len(ours) == expected_len
        assert [e["score"] for e in ours] == sorted((e["score"] for e in ours), reverse=True)


@pytest.mark.parametrize("head", ["binary", "three", "multi"])
def test_pairs_and_lists_match_pipeline(heads, head) -> None:
    h = heads[head]
    for pair in PAIRS:
        assert_same(h.ours(pair, {"top_k": None}), h.theirs(pair, {"top_k": None}))
    mixed = [TEXTS[0], PAIRS[0], TEXTS[3], PAIRS[1]]
    ours = h.ours(mixed, {"top_k": 2})
    theirs = h.theirs(mixed, {"top_k": 2})
    assert len(ours) == len(mixed)
    for a, b in zip(ours, theirs, strict=True):
        assert_same(a, b)
    # A one-element list is still a list of results.
    single = h.ours([TEXTS[0]])
    assert len(single) == 1 and len(single[0]) == 1


def test_defaults_follow_the_pipeline(heads) -> None:
    # Default function: softmax for several labels, sigmoid for one label or multi-label, none for regression.
    for name, expected in [
        ("binary", "softmax"),
        ("one", "sigmoid"),
        ("multi", "sigmoid"),
        ("regression", "none"),
    ]:
        h = heads[name]
        _, params, _ = TASK.parse("x", None, h.manifest)
        assert (params.function_to_apply, params.top_k, params.truncate) == (expected, 1, False)
        assert_same(h.ours("a fine day"), h.theirs("a fine day"))
    softmax_scores = heads["three"].ours("a fine day", {"top_k": None})
    assert sum(e["score"] for e in softmax_scores) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("head", ["binary", "three"])
def test_truncation_cuts_longest_first_like_transformers(heads, head) -> None:
    h = heads[head]
    for inputs in [LONG, *LONG_PAIRS]:
        items, params, _ = TASK.parse(inputs, {"truncate": True}, h.manifest)
        (encoded,) = TASK.encode(h.tokenizer, items, params, h.manifest)
        assert len(encoded.rows[0]) == MAX_LEN
        expected = h.pipe.tokenizer(**({"text": inputs} if isinstance(inputs, str) else inputs), truncation=True)
        assert encoded.rows[0].input_ids.tolist() == expected["input_ids"]
        assert encoded.rows[0].token_type_ids.tolist() == expected["token_type_ids"]
        params_ = {"truncate": True, "top_k": None}
        assert_same(h.ours(inputs, params_), h.theirs(inputs, params_))


def test_too_long_without_truncate_is_422(heads) -> None:
    h = heads["binary"]
    for inputs in [LONG, LONG_PAIRS[1], [TEXTS[0], LONG]]:
        items, params, _ = TASK.parse(inputs, None, h.manifest)
        with pytest.raises(ServeError) as err:
            TASK.encode(h.tokenizer, items, params, h.manifest)
        assert err.value.kind is ErrorKind.INVALID_INPUT
        assert f"maximum of {MAX_LEN}" in err.value.message and "truncate" in err.value.message
    items, params, _ = TASK.parse([TEXTS[0], LONG], None, h.manifest)
    with pytest.raises(ServeError, match=r"inputs\[1\]"):
        TASK.encode(h.tokenizer, items, params, h.manifest)
    # Exactly max_seq_len tokens fits.
    fits = " ".join(["word"] * (MAX_LEN - 2))
    items, params, _ = TASK.parse(fits, {"truncate": False}, h.manifest)
    assert len(TASK.encode(h.tokenizer, items, params, h.manifest)[0].rows[0]) == MAX_LEN


@pytest.mark.parametrize(
    ("inputs", "parameters", "kind", "fragment"),
    [
        ([], None, ErrorKind.INVALID_INPUT, "empty"),
        (None, None, ErrorKind.INVALID_INPUT, "inputs"),
        (5, None, ErrorKind.INVALID_INPUT, "integer"),
        (["ok", 3], None, ErrorKind.INVALID_INPUT, "inputs[1]"),
        ({"text_pair": "no text"}, None, ErrorKind.INVALID_INPUT, "inputs.text"),
        ({"text": 1}, None, ErrorKind.INVALID_INPUT, "inputs.text"),
        ({"text": "a", "text_pair": ["b"]}, None, ErrorKind.INVALID_INPUT, "text_pair"),
        ({"text": "a", "pair": "b"}, None, ErrorKind.INVALID_INPUT, "pair"),
        ([["a", "b"]], None, ErrorKind.INVALID_INPUT, "inputs[0]"),
        ("x", {"top_k": 0}, ErrorKind.BAD_REQUEST, "top_k"),
        ("x", {"top_k": "2"}, ErrorKind.BAD_REQUEST, "top_k"),
        ("x", {"top_k": True}, ErrorKind.BAD_REQUEST, "top_k"),
        ("x", {"top_k": 1.5}, ErrorKind.BAD_REQUEST, "top_k"),
        ("x", {"function_to_apply": "relu"}, ErrorKind.BAD_REQUEST, "function_to_apply"),
        ("x", {"function_to_apply": 1}, ErrorKind.BAD_REQUEST, "function_to_apply"),
        ("x", {"truncate": "yes"}, ErrorKind.BAD_REQUEST, "truncate"),
        ("x", {"truncation": True, "foo": 1}, ErrorKind.BAD_REQUEST, "foo, truncation"),
        ("x", ["top_k"], ErrorKind.BAD_REQUEST, "parameters"),
    ],
)
def test_bad_requests(heads, inputs, parameters, kind, fragment) -> None:
    with pytest.raises(ServeError) as err:
        TASK.parse(inputs, parameters, heads["binary"].manifest)
    assert err.value.kind is kind
    assert fragment in err.value.message


def test_parameter_spellings(heads) -> None:
    m = heads["binary"].manifest
    assert TASK.parse("x", {"function_to_apply": "SIGMOID"}, m)[1].function_to_apply == "sigmoid"
    assert TASK.parse("x", {"function_to_apply": None, "truncate": None}, m)[1].function_to_apply == "softmax"
    assert TASK.parse("x", {"top_k": None}, m)[1].top_k is None
    assert TASK.parse("x", {"top_k": 7}, m)[1].top_k == 7
    assert len(heads["binary"].ours("x", {"top_k": 7})) == 2
    assert TASK.default_params(m).top_k == 1


def test_every_protocol_builds_the_same_items_and_empty_pairs_are_no_pairs(heads) -> None:
    """JSON items and the item constructor the typed gRPC and KServe front ends call agree; an empty
    text_pair is no pair, as in transformers."""
    from server.core.tasks.classify import item

    h = heads["binary"]
    _, params, _ = TASK.parse("x", None, h.manifest)
    parsed, _, _ = TASK.parse(["a text", {"text": "a text", "text_pair": "a pair"}, {"text": "t", "text_pair": ""}],
                              None, h.manifest)  # fmt: skip
    assert parsed == [("a text", None), ("a text", "a pair"), ("t", None)]
    assert parsed == [item("a text", None, "p"), item("a text", "a pair", "p"), item("t", "", "p")]
    empty_pair = TASK.encode(h.tokenizer, [item("a text", "", "p")], params, h.manifest)[0].rows[0]
    alone = TASK.encode(h.tokenizer, [("a text", None)], params, h.manifest)[0].rows[0]
    assert empty_pair.input_ids.tolist() == alone.input_ids.tolist()
    with pytest.raises(ServeError, match=r"inputs\[0\]\.text"):
        item(3, None, "inputs[0]")
