"""The metric functions against cases computed by hand: SQuAD 2.0 (normalisation, unanswerable
questions, empty predictions, several gold answers, HasAns / NoAns), GLUE's classification and
regression scores, seqeval's entity F1."""

from __future__ import annotations

import math

import pytest

from toolchain.metrics import (
    classification_metrics,
    exact_match,
    normalize_answer,
    primary_metric,
    squad_metrics,
    tagging_metrics,
    token_f1,
)


def test_answer_normalisation_is_squads() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("") == ""


def test_token_f1_by_hand() -> None:
    # gold {big, red, dog}, prediction {red, dog, barked}: 2 shared, P = R = 2/3.
    assert token_f1("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    assert token_f1("Paris", "paris.") == 1.0
    assert token_f1("Paris", "London") == 0.0
    # Empty on either side: 1 only when both are empty (after normalisation).
    assert token_f1("", "") == 1.0
    assert token_f1("", "a") == 1.0  # "a" normalises to nothing
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0
    assert exact_match("The Eiffel Tower", "eiffel tower") == 1


def test_squad_v2_scores_by_hand() -> None:
    gold = {
        "a": ["Paris"],  # answerable, right
        "b": ["the big red dog", "a dog"],  # answerable, best of two golds: "dog barked" vs "a dog" -> F1 2/3
        "c": ["London"],  # answerable, left unanswered: 0
        "d": [],  # unanswerable, left unanswered: 1
        "e": [],  # unanswerable, answered: 0
    }
    predictions = {"a": "paris", "b": "dog barked", "c": "", "d": "", "e": "Rome"}
    scores = squad_metrics(predictions, gold)
    f1_b = 2 * (1 / 2) * (1 / 1) / (1 / 2 + 1)  # vs "a dog" -> {dog}: P 1/2, R 1 -> 2/3
    assert scores["exact"] == pytest.approx(100 * 2 / 5)
    assert scores["f1"] == pytest.approx(100 * (1 + f1_b + 0 + 1 + 0) / 5, abs=1e-3)
    assert scores["HasAns_exact"] == pytest.approx(100 / 3, abs=1e-3)
    assert scores["HasAns_f1"] == pytest.approx(100 * (1 + f1_b) / 3, abs=1e-3)
    assert scores["NoAns_exact"] == scores["NoAns_f1"] == 50.0
    assert (scores["total"], scores["HasAns_total"], scores["NoAns_total"]) == (5, 3, 2)


def test_squad_all_empty_predictions_score_only_the_unanswerable() -> None:
    gold = {"a": ["x y"], "b": [], "c": [], "d": ["z"]}
    scores = squad_metrics(dict.fromkeys(gold, ""), gold)
    assert scores["exact"] == scores["f1"] == 50.0
    assert scores["HasAns_f1"] == 0.0 and scores["NoAns_f1"] == 100.0


def test_squad_without_unanswerable_has_no_noans_block() -> None:
    scores = squad_metrics({"a": "x"}, {"a": ["x"]})
    assert scores["exact"] == 100.0 and "NoAns_f1" not in scores


def test_squad_missing_prediction_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prediction"):
        squad_metrics({}, {"a": ["x"]})


def test_binary_classification_by_hand() -> None:
    # TP 2, TN 1, FP 1, FN 0.
    scores = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], "single_label_classification", 2)
    assert scores["accuracy"] == 75.0
    assert scores["f1"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 1 + 0))  # 2TP / (2TP + FP + FN) = 0.8
    assert scores["matthews"] == pytest.approx(100 * (2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 2 * 1), abs=1e-3)


def test_multiclass_f1_is_macro() -> None:
    # Class 0: P 1, R 1/2 -> 2/3; class 1: P 1/2, R 1 -> 2/3; class 2: perfect -> 1.
    scores = classification_metrics([0, 1, 1, 2], [0, 0, 1, 2], "single_label_classification", 3)
    assert scores["accuracy"] == 75.0
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3, abs=1e-3)


def test_regression_correlations_by_hand() -> None:
    # x = 1, 2, 3 and y = 1, 2, 4: covariance sum 3, sums of squares 2 and 42/9.
    scores = classification_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], "regression", 1)
    assert scores["pearson"] == pytest.approx(100 * 3 / math.sqrt(2 * 42 / 9), abs=1e-3)
    assert scores["spearman"] == 100.0  # same ranks
    assert primary_metric("classify", "regression") == "pearson"


def test_multi_label_micro_f1_by_hand() -> None:
    # Predicted pairs {0,1}, {2}; gold {0}, {1,2}: TP 2 (0, 2), FP 1 (1), FN 1 (1) -> micro F1 2/3.
    scores = classification_metrics([[0, 1], [2]], [[0], [1, 2]], "multi_label_classification", 3)
    assert scores["f1"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert scores["accuracy"] == 0.0  # no exact label set


def test_seqeval_entity_f1_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]  # 1 right of 2 predicted, 3 gold
    scores = tagging_metrics(predicted, gold)
    precision, recall = 1 / 2, 1 / 3
    assert scores["precision"] == pytest.approx(100 * precision)
    assert scores["recall"] == pytest.approx(100 * recall, abs=1e-3)
    assert scores["f1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall), abs=1e-3)
    # A span that is off by one token is wrong as a whole.
    assert tagging_metrics([["B-PER", "O"]], [["B-PER", "I-PER"]])["f1"] == 0.0


def test_seqeval_empty_predictions() -> None:
    scores = tagging_metrics([["O", "O", "O"]], [["B-PER", "I-PER", "O"]])
    assert scores["f1"] == 0.0 and scores["precision"] == 0.0 and scores["recall"] == 0.0
    assert scores["accuracy"] == pytest.approx(100 / 3, abs=1e-3)
