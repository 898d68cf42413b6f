"""QaTask against transformers' `question-answering` pipeline on the same small checkpoints.

Random heads give arbitrary spans; what is checked is parity: the same windows, the same
answers at the same character offsets, scores within 1e-4, for every parameter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from server.core.errors import ErrorKind, ServeError
from server.core.manifest import Manifest
from server.core.tasks.base import Encoded
from server.core.tasks.qa import QaParams, QaTask
from tests.torch_reference import load_torch_model, run_rows

TASK = QaTask()
SCORE_TOLERANCE = 1e-4

QUESTION = "Where was Marie Curie born?"
SHORT = (
    "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. "
    "She was born in Warsaw in 1867 and moved to Paris in 1891."
)
# Several hundred tokens, with sub-word splits, numbers, hyphens and apostrophes: many windows.
LONG = " ".join(
    f"Section {i}: the unbelievably well-documented photosynthesis experiment number {i * 37} "
    f"ran for {i + 3} days in laboratory {chr(65 + i % 26)}, where Dr. O'Brien's state-of-the-art "
    f"spectrometers measured {i * 1.5} micromoles of oxygen."
    for i in range(11)
)
ACCENTS = (
    "Le café de Zoë à Paris servait des crêpes; Ångström et Müller y étaient naïfs. "
    "São Paulo, Łódź et Dvořák: façade, rôle, Straße."
)
CJK = "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다. Tokyo is large."
EMOJI = "I love 🍕 pizza 😀 and ❤️ coffee ☕. The 👩‍👩‍👧 family lives in 🇫🇷 France since 2001."
LONG_QUESTION = " ".join(["what did the unbelievably careful researchers measure"] * 6) + "?"


@dataclass
class Model:
    manifest: Manifest
    tokenizer: Tokenizer
    torch_model: Any
    pipe: Any


def manifest_for(max_seq_len: int) -> Manifest:
    return Manifest(
        name="test",
        task="qa",
        max_seq_len=max_seq_len,
        variants={"fp32": {"file": "x", "sha256": "0", "parity": {"max_abs_error": 0, "top1_agreement": 1}}},
        source={"model": "test"},
    )


def build(ckpt: Path, max_seq_len: int) -> Model:
    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline("question-answering", model=str(ckpt), device="cpu")
    return Model(
        manifest=manifest_for(max_seq_len),
        tokenizer=Tokenizer.from_file(str(ckpt / "tokenizer.json")),
        torch_model=load_torch_model(ckpt),
        pipe=pipe,
    )


@pytest.fixture(scope="module")
def models(make_checkpoint) -> dict[str, Model]:
    return {
        "seed0": build(make_checkpoint("qa"), 128),
        "seed1": build(make_checkpoint("qa", seed=1), 128),
        # A short model: long contexts become many windows.
        "small": build(make_checkpoint("qa", seed=2, max_position_embeddings=64), 64),
    }


def serve(model: Model, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
    items, params, is_list = TASK.parse(inputs, parameters, model.manifest)
    encoded = TASK.encode(model.tokenizer, items, params, model.manifest)
    results = [TASK.decode(e, run_rows(model.torch_model, "qa", e.rows), params, model.manifest) for e in encoded]
    shaped = [TASK.pipeline_json(r) for r in results]  # what REST answers
    return shaped if is_list else shaped[0]


def decode_json(encoded: Encoded, outputs: list[dict[str, Any]], params: QaParams, manifest: Manifest) -> Any:
    """One item's answers as the pipeline (and REST) gives them."""
    return TASK.pipeline_json(TASK.decode(encoded, outputs, params, manifest))


def reference(model: Model, question: Any, context: Any, parameters: dict[str, Any]) -> Any:
    # The checkpoint's tokenizer says 512 tokens while the model has fewer positions: the
    # pipeline's default (min(512, 384)) would overrun them, so give it the model's own
    # maximum, which is the server's default.
    given = {"max_seq_len": model.manifest.max_seq_len, **parameters}
    given.pop("null_score_diff_threshold", None)
    return model.pipe(question=question, context=context, **given)


def assert_same(ours: Any, theirs: Any) -> None:
    assert isinstance(ours, dict) == isinstance(theirs, dict), (ours, theirs)
    ours_list = [ours] if isinstance(ours, dict) else ours
    theirs_list = [theirs] if isinstance(theirs, dict) else theirs
    assert len(ours_list) == len(theirs_list), (ours_list, theirs_list)
    for a, b in zip(ours_list, theirs_list, strict=True):
        assert set(a) == {"score", "start", "end", "answer"}
        assert (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"]), (a, b)
        assert isinstance(a["score"], float)
        assert abs(a["score"] - b["score"]) <= SCORE_TOLERANCE, (a, b)


CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("seed0", QUESTION, SHORT, {}),
    ("seed0", QUESTION, SHORT, {"top_k": 3}),
    ("seed0", QUESTION, SHORT, {"top_k": 100}),  # argpartition over many tied zeros (100 is the cap)
    ("seed0", QUESTION, "Paris, 1867.", {"top_k": 100}),  # more than there are candidates
    ("seed0", QUESTION, "Paris, 1867.", {"top_k": 100, "align_to_words": False}),
    ("seed0", QUESTION, SHORT, {"handle_impossible_answer": True}),
    ("seed0", QUESTION, SHORT, {"handle_impossible_answer": True, "top_k": 4}),
    ("seed0", QUESTION, SHORT, {"max_answer_len": 1, "top_k": 3}),
    ("seed0", QUESTION, LONG, {}),
    ("seed0", QUESTION, LONG, {"top_k": 5}),
    ("seed0", QUESTION, LONG, {"top_k": 40, "align_to_words": False}),
    ("seed0", QUESTION, LONG, {"doc_stride": 0, "top_k": 3}),
    ("seed0", QUESTION, LONG, {"doc_stride": 20, "top_k": 3}),
    ("seed0", QUESTION, LONG, {"doc_stride": 100, "top_k": 3}),
    ("seed0", QUESTION, LONG, {"max_answer_len": 1, "top_k": 3}),
    ("seed0", QUESTION, LONG, {"max_answer_len": 40, "top_k": 3}),
    ("seed0", QUESTION, LONG, {"max_seq_len": 48, "top_k": 2}),
    ("seed0", QUESTION, LONG, {"max_seq_len": 100, "doc_stride": 30}),
    ("seed0", QUESTION, LONG, {"max_question_len": 2}),  # ignored, as by the pipeline
    ("seed0", QUESTION, LONG, {"handle_impossible_answer": True}),
    ("seed0", QUESTION, LONG, {"handle_impossible_answer": True, "top_k": 6, "align_to_words": False}),
    ("seed0", QUESTION, LONG, {"handle_impossible_answer": False, "align_to_words": True, "top_k": 2}),
    ("seed0", "Qui était naïf au café?", ACCENTS, {"top_k": 3}),
    ("seed0", "Qui était naïf au café?", ACCENTS, {"top_k": 3, "align_to_words": False}),
    ("seed0", "日本の首都は?", CJK, {"top_k": 3}),
    ("seed0", "日本の首都は?", CJK, {"top_k": 3, "align_to_words": False}),
    ("seed0", "What does 😀 love?", EMOJI, {"top_k": 3}),
    ("seed0", "What does 😀 love?", EMOJI, {"top_k": 3, "align_to_words": False, "max_answer_len": 4}),
    ("seed0", "Who wrote this?", "[CLS] marks the start; the author is [SEP] Jane.", {"top_k": 3}),
    ("seed0", "Anything?", "   ", {}),  # whitespace: no context token at all
    ("seed0", "Anything?", "   ", {"handle_impossible_answer": True, "top_k": 2}),
    # The question leaves no more than doc_stride tokens of room, but the context fits.
    ("seed0", LONG_QUESTION, SHORT, {"top_k": 2}),
    ("seed1", QUESTION, LONG, {"top_k": 5, "handle_impossible_answer": True}),
    ("seed1", "Qui était naïf au café?", ACCENTS + " " + CJK + " " + EMOJI, {"top_k": 4}),
    ("seed1", QUESTION, SHORT, {"align_to_words": False, "top_k": 2}),
    ("small", QUESTION, LONG, {}),
    ("small", QUESTION, LONG, {"top_k": 4, "doc_stride": 16}),
    (
        "small",
        QUESTION,
        LONG,
        {"max_seq_len": 40, "doc_stride": 5, "top_k": 3, "handle_impossible_answer": True},
    ),
    ("small", "日本の首都は?", (CJK + " ") * 8, {"top_k": 3, "align_to_words": False}),
]


@pytest.mark.parametrize(("model_name", "question", "context", "parameters"), CASES)
def test_parity_with_pipeline(models, model_name, question, context, parameters) -> None:
    model = models[model_name]
    ours = serve(model, {"question": question, "context": context}, parameters)
    assert_same(ours, reference(model, question, context, parameters))


def test_long_contexts_really_use_many_windows(models) -> None:
    for name, minimum in (("seed0", 5), ("small", 15)):
        model = models[name]
        items, params, _ = TASK.parse({"question": QUESTION, "context": LONG}, None, model.manifest)
        (encoded,) = TASK.encode(model.tokenizer, items, params, model.manifest)
        assert len(encoded.rows) >= minimum


@pytest.mark.parametrize(
    "parameters",
    [{}, {"doc_stride": 0}, {"doc_stride": 50, "max_seq_len": 90}, {"max_seq_len": 20, "doc_stride": 3}],
)
def test_windows_are_the_pipelines_features(models, parameters) -> None:
    model = models["seed0"]
    items, params, _ = TASK.parse({"question": QUESTION, "context": LONG}, parameters, model.manifest)
    (encoded,) = TASK.encode(model.tokenizer, items, params, model.manifest)
    features = model.pipe.tokenizer(
        QUESTION,
        LONG,
        truncation="only_second",
        max_length=params.max_seq_len,
        stride=params.doc_stride,
        return_token_type_ids=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert [r.input_ids.tolist() for r in encoded.rows] == features["input_ids"]
    assert [r.token_type_ids.tolist() for r in encoded.rows] == features["token_type_ids"]
    for row in encoded.rows:
        assert row.input_ids.dtype == np.int64 and row.token_type_ids.dtype == np.int64
        assert len(row) <= params.max_seq_len
    # Never cut: together the windows hold every context token.
    model.tokenizer.no_truncation()
    context_tokens = model.tokenizer.encode(LONG, add_special_tokens=False).offsets
    seen = {
        offset
        for window in encoded.state.windows
        for offset, sequence in zip(window.offsets, window.sequence_ids, strict=True)
        if sequence == 1
    }
    assert set(context_tokens) <= seen


def test_list_of_inputs(models) -> None:
    model = models["seed0"]
    inputs = [
        {"question": QUESTION, "context": SHORT},
        {"question": QUESTION, "context": LONG},
        {"question": "Qui était naïf au café?", "context": ACCENTS},
    ]
    parameters = {"top_k": 2}
    ours = serve(model, inputs, parameters)
    theirs = reference(model, [i["question"] for i in inputs], [i["context"] for i in inputs], parameters)
    assert isinstance(ours, list) and len(ours) == len(inputs)
    for a, b in zip(ours, theirs, strict=True):
        assert_same(a, b)
    # Batched equals single, and a one-element list is still a list.
    for item, result in zip(inputs, ours, strict=True):
        assert serve(model, item, parameters) == result
        assert serve(model, [item], parameters) == [result]


def test_defaults(models) -> None:
    params = TASK.default_params(models["seed0"].manifest)
    assert params == QaParams(
        top_k=1,
        doc_stride=64,
        max_answer_len=15,
        max_seq_len=128,
        max_question_len=64,
        handle_impossible_answer=False,
        align_to_words=True,
        null_score_diff_threshold=None,
    )
    # With a 512-token model the pipeline's 384 / 128 apply.
    big = TASK.default_params(manifest_for(512))
    assert (big.max_seq_len, big.doc_stride) == (384, 128)
    # doc_stride follows a smaller max_seq_len; null means the default.
    _, params, _ = TASK.parse({"question": "q", "context": "c"}, {"max_seq_len": 100, "top_k": None}, big)
    assert (params.max_seq_len, params.doc_stride, params.top_k) == (100, 50, 1)


# ---------------------------------------------------------------- errors


def status_of(model: Model, inputs: Any, parameters: Any = None) -> tuple[int, str]:
    with pytest.raises(ServeError) as caught:
        items, params, _ = TASK.parse(inputs, parameters, model.manifest)
        TASK.encode(model.tokenizer, items, params, model.manifest)
    return caught.value.kind.http_status, caught.value.message


GOOD = {"question": QUESTION, "context": SHORT}


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ([], "empty"),
        (None, "object"),
        ("just a string", "object"),
        (["just a string"], "inputs[0]"),
        ({"question": QUESTION}, "context"),
        ({"context": SHORT}, "question"),
        ({"question": QUESTION, "context": SHORT, "answer": "x"}, "answer"),
        ({"question": "", "context": SHORT}, "question must not be empty"),
        ({"question": QUESTION, "context": ""}, "context must not be empty"),
        ({"question": 5, "context": SHORT}, "question must be a string"),
        ({"question": QUESTION, "context": None}, "context must be a string"),
        ({"question": QUESTION, "context": ["a", "b"]}, "context must be a string"),
        ([GOOD, {"question": QUESTION, "context": 3}], "inputs[1].context"),
    ],
)
def test_invalid_inputs_are_422(models, inputs, fragment) -> None:
    status, message = status_of(models["seed0"], inputs)
    assert status == ErrorKind.INVALID_INPUT.http_status == 422
    assert fragment in message


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ("top_k=3", "object"),
        ({"topk": 3, "stride": 2}, "stride, topk"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"max_answer_len": 0}, "max_answer_len"),
        ({"max_seq_len": 129}, "max_seq_len"),  # above the model's maximum
        ({"max_seq_len": 4}, "max_seq_len"),
        ({"doc_stride": -1}, "doc_stride"),
        ({"doc_stride": 129}, "larger than max_seq_len"),
        ({"max_seq_len": 60, "doc_stride": 61}, "larger than max_seq_len"),
        ({"max_seq_len": 60, "doc_stride": 59}, "at most max_seq_len minus 2"),  # the tokenizer's rule
        ({"max_question_len": 0}, "max_question_len"),
        ({"handle_impossible_answer": "yes"}, "handle_impossible_answer"),
        ({"align_to_words": 1}, "align_to_words"),
        ({"null_score_diff_threshold": "high"}, "null_score_diff_threshold"),
    ],
)
def test_invalid_parameters_are_400(models, parameters, fragment) -> None:
    status, message = status_of(models["seed0"], GOOD, parameters)
    assert status == ErrorKind.BAD_REQUEST.http_status == 400
    assert fragment in message


def test_question_leaving_no_room_is_422_where_the_pipeline_fails_too(models) -> None:
    model = models["seed0"]
    huge_question = " ".join(["why"] * 130)
    status, message = status_of(model, {"question": huge_question, "context": LONG})
    assert status == 422 and "question is 130 tokens long" in message and "doc_stride" in message
    with pytest.raises(Exception, match="too short"):
        reference(model, huge_question, LONG, {})
    # Room for some context, but not more than doc_stride: windows could not advance.
    status, message = status_of(model, [GOOD, {"question": LONG_QUESTION, "context": LONG}])
    assert status == 422 and message.startswith("inputs[1].question is")
    # The same question passes with a smaller stride.
    assert isinstance(serve(model, {"question": LONG_QUESTION, "context": LONG}, {"doc_stride": 10}), dict)


# ---------------------------------------------------------------- SQuAD 2.0 null threshold


def encoded_item(model: Model, context: str, parameters: dict[str, Any]) -> tuple[Encoded, QaParams]:
    items, params, _ = TASK.parse({"question": "q?", "context": context}, parameters, model.manifest)
    (encoded,) = TASK.encode(model.tokenizer, items, params, model.manifest)
    return encoded, params


def logits_for(encoded: Encoded, spans: dict[int, tuple[float, float, int, int, float]]) -> list[dict[str, Any]]:
    """Per window: CLS start/end logits, and one span (first, last context token) with a logit."""
    outputs = []
    for k, row in enumerate(encoded.rows):
        cls_start, cls_end, s, e, span_logit = spans[k]
        start = np.zeros(len(row), dtype=np.float32)
        end = np.zeros(len(row), dtype=np.float32)
        start[0], end[0] = cls_start, cls_end
        start[s] += span_logit
        end[e] += span_logit
        outputs.append({"start_logits": start, "end_logits": end})
    return outputs


def null_probability(encoded: Encoded, outputs: list[dict[str, Any]]) -> float:
    """min over windows of softmax(start)[0] * softmax(end)[0] over [CLS] + context tokens."""
    best = np.inf
    for p_mask, out in zip(encoded.state.p_masks, outputs, strict=True):
        allowed = ~p_mask
        ps = np.exp(out["start_logits"][allowed].astype(np.float64))
        pe = np.exp(out["end_logits"][allowed].astype(np.float64))
        best = min(best, ps[0] / ps.sum() * pe[0] / pe.sum())
    return float(best)


def first_context_token(encoded: Encoded, window: int = 0) -> int:
    return encoded.state.windows[window].sequence_ids.index(1)


def test_null_threshold_answers_empty_when_null_wins(models) -> None:
    model = models["seed0"]
    encoded, params = encoded_item(model, SHORT, {"null_score_diff_threshold": 0.0})
    c = first_context_token(encoded)
    # null = 5 + 5 = 10; best span = 3 + 3 = 6 (tokens c+2 .. c+2): 10 - 6 = 4 > 0.
    outputs = logits_for(encoded, {0: (5.0, 5.0, c + 2, c + 2, 3.0)})
    result = decode_json(encoded, outputs, params, model.manifest)
    assert result["answer"] == "" and (result["start"], result["end"]) == (0, 0)
    assert result["score"] == pytest.approx(null_probability(encoded, outputs), rel=1e-5)

    # Threshold 4 is not exceeded by 4: the span is answered, and the null answer is not listed
    # even with handle_impossible_answer.
    params4 = TASK.parse(
        GOOD,
        {
            "null_score_diff_threshold": 4,
            "handle_impossible_answer": True,
            "top_k": 3,
            "align_to_words": False,
        },
        model.manifest,
    )[1]
    ranked = decode_json(encoded, outputs, params4, model.manifest)
    assert isinstance(ranked, list) and ranked and all(a["answer"] != "" for a in ranked)
    window = encoded.state.windows[0]
    assert ranked[0]["start"] == window.offsets[c + 2][0]

    # top_k > 1 when null wins: the null answer first, then the pipeline's own ranking.
    params3 = TASK.parse(GOOD, {"null_score_diff_threshold": -1.5, "top_k": 3}, model.manifest)[1]
    plain = TASK.parse(GOOD, {"top_k": 3}, model.manifest)[1]
    ranked = decode_json(encoded, outputs, params3, model.manifest)
    assert ranked[0]["answer"] == "" and ranked[1:] == decode_json(encoded, outputs, plain, model.manifest)[:2]


def test_null_threshold_takes_the_minimum_null_over_windows(models) -> None:
    model = models["small"]
    encoded, params = encoded_item(model, LONG, {"max_seq_len": 40, "doc_stride": 5, "null_score_diff_threshold": 1.0})
    assert len(encoded.rows) >= 3
    c = first_context_token(encoded)
    spans = {k: (4.0, 4.0, c, c + 1, 1.0) for k in range(len(encoded.rows))}  # null 8, best 2: gap 6
    spans[1] = (0.5, 0.5, c, c + 1, 1.0)  # null 1 in one window: min null 1 - best 2 = -1
    outputs = logits_for(encoded, spans)
    assert decode_json(encoded, outputs, params, model.manifest)["answer"] != ""
    # Without that window's low null, the null answer wins.
    spans[1] = (4.0, 4.0, c, c + 1, 1.0)
    outputs = logits_for(encoded, spans)
    assert decode_json(encoded, outputs, params, model.manifest)["answer"] == ""


def test_null_threshold_best_span_respects_max_answer_len(models) -> None:
    model = models["seed0"]
    encoded, _ = encoded_item(model, SHORT, {})
    c = first_context_token(encoded)
    # null = 2 + 2 = 4. The 6-token span c..c+5 sums to 10; any shorter span reaches only 5.
    outputs = logits_for(encoded, {0: (2.0, 2.0, c, c + 5, 5.0)})

    def answer(threshold: float, max_answer_len: int) -> str:
        parameters = {"null_score_diff_threshold": threshold, "max_answer_len": max_answer_len}
        params = TASK.parse(GOOD, parameters, model.manifest)[1]
        return decode_json(encoded, outputs, params, model.manifest)["answer"]

    assert answer(0.0, 6) != "" and answer(0.0, 5) != ""  # gaps -6 and -1
    assert answer(-1.5, 6) != ""  # -6 is not above -1.5
    assert answer(-1.5, 5) == ""  # -1 is: the 10-logit span is too long to count


def test_null_threshold_off_is_the_pipeline(models) -> None:
    model = models["seed0"]
    encoded, params = encoded_item(model, SHORT, {"handle_impossible_answer": True, "top_k": 3})
    outputs = run_rows(model.torch_model, "qa", encoded.rows)
    assert_same(
        decode_json(encoded, outputs, params, model.manifest),
        reference(model, "q?", SHORT, {"handle_impossible_answer": True, "top_k": 3}),
    )
