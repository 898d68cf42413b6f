"""The demo models answer the README's four requests as a person expects, with confident scores, when
run exactly as the server runs them (the task's encode / decode and OnnxModelRuntime, fp32 on the CPU),
and their manifests carry the evaluation they were exported with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluation.backends import OnnxBackend
from server.core.manifest import Manifest

CONFIDENT = 0.9


def ask(repository: Path, name: str, inputs: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
    return OnnxBackend(repository / name, "fp32").predict(inputs, parameters)


def test_classify_reads_the_sentiment(demo_repository: Path) -> None:
    positive, negative = ask(
        demo_repository,
        "demo-classify",
        ["Great film!", {"text": "The acting was awful.", "text_pair": "A boring, dull film."}],
    )
    assert positive[0]["label"] == "POSITIVE" and positive[0]["score"] > CONFIDENT
    assert negative[0]["label"] == "NEGATIVE" and negative[0]["score"] > CONFIDENT


def test_qa_finds_who_and_knows_when_there_is_no_answer(demo_repository: Path) -> None:
    parameters = {"handle_impossible_answer": True}
    who, where = ask(
        demo_repository,
        "demo-qa",
        [
            {"question": "Who?", "context": "Clark proposed ELECTRA."},
            {"question": "Where?", "context": "Clark proposed ELECTRA."},
        ],
        parameters,
    )
    assert (who["answer"], who["start"], who["end"]) == ("Clark", 0, 5) and who["score"] > CONFIDENT
    assert where["answer"] == "" and where["score"] > CONFIDENT  # no place in that sentence


def test_tag_finds_the_person_and_the_place(demo_repository: Path) -> None:
    (entities,) = ask(demo_repository, "demo-tag", ["Ada Lovelace lived in London"], {"aggregation_strategy": "first"})
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities] == [
        ("PER", "ada lovelace", 0, 12),
        ("LOC", "london", 22, 28),
    ]
    assert all(e["score"] > CONFIDENT for e in entities)


def test_discriminator_flags_only_the_replaced_word(demo_repository: Path) -> None:
    original, replaced = ask(
        demo_repository, "demo-discriminator", ["the chef ate the meal", "the chef ate the quantum"], {"threshold": 0.5}
    )
    assert [w["replaced"] for w in original["words"]] == [False] * 5
    assert all(w["score"] < 1 - CONFIDENT for w in original["words"])
    assert [w["replaced"] for w in replaced["words"]] == [False, False, False, False, True]
    assert replaced["words"][-1]["token"] == "quantum" and replaced["words"][-1]["score"] > 0.8


@pytest.mark.parametrize(("name", "metric", "floor"), [("demo-classify", "accuracy", 95), ("demo-qa", "f1", 70),
                                                        ("demo-tag", "f1", 90)])  # fmt: skip
def test_demo_manifests_record_their_evaluation(demo_repository: Path, name: str, metric: str, floor: float) -> None:
    evaluation = Manifest.read(demo_repository / name).evaluation
    assert evaluation is not None and evaluation.metric == metric and evaluation.examples == 100
    assert set(evaluation.scores) == {"pytorch", "fp32", "fp16", "int8"}
    assert evaluation.scores["pytorch"][metric] >= floor
    assert abs(evaluation.scores["fp32"][metric] - evaluation.scores["pytorch"][metric]) <= 0.1
