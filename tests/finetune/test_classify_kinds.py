"""Classification beyond single-label names: label ids, multi-label and regression files set the
head's problem type and label names, and electra-eval scores such models with their own metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.__main__ import main as eval_main
from evaluation.report import table
from evaluation.run import Evaluation, VariantScore
from finetune.__main__ import main as finetune_main

KINDS = [
    # (file name, rows, expected problem type, expected labels, eval metric)
    pytest.param(
        "ids.tsv",
        "sentence\tlabel\n" + "".join(f"{'good' if i % 2 else 'bad'} film {i}\t{i % 2}\n" for i in range(24)),
        "single_label_classification",
        ["LABEL_0", "LABEL_1"],
        "accuracy",
        id="label-ids",
    ),
    pytest.param(
        "multi.jsonl",
        "".join(
            json.dumps({"sentence": f"film {i}", "label": ["plot", "music"][: 1 + i % 2]}) + "\n" for i in range(24)
        ),
        "multi_label_classification",
        ["music", "plot"],
        "f1",
        id="multi-label",
    ),
    pytest.param(
        "scores.csv",
        "sentence,label\n" + "".join(f"film {i},{i % 5 + 0.5}\n" for i in range(24)),
        "regression",
        ["label"],
        "pearson",
        id="regression",
    ),
]


@pytest.mark.parametrize(("name", "rows", "problem_type", "labels", "metric"), KINDS)
def test_label_kinds(name, rows, problem_type, labels, metric, base_checkpoint, tmp_path, capsys):
    data = tmp_path / name
    data.write_text(rows)
    out = tmp_path / "checkpoint"
    code = finetune_main(
        ["--task", "classify", "--model", str(base_checkpoint), "--train-file", str(data),
         "--text-column", "sentence", "--output", str(out), "--max-steps", "3", "--quiet",
         "--export", str(tmp_path / "repo"), "--precision", "fp32"]
    )  # fmt: skip
    assert code == 0
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(out))  # LABEL_i names are transformers' defaults: not in the file
    assert config.problem_type == problem_type
    assert [config.id2label[i] for i in range(config.num_labels)] == labels
    report = tmp_path / "eval.json"
    capsys.readouterr()
    code = eval_main(
        ["--task", "classify", "--data", str(data), "--text-column", "sentence", "--checkpoint", str(out),
         "--model-dir", str(tmp_path / "repo" / "checkpoint"), "--json", str(report)]
    )  # fmt: skip
    scores = json.loads(report.read_text())["variants"]
    assert set(scores) == {"pytorch", "fp32"} and metric in scores["pytorch"]
    assert abs(scores["fp32"][metric] - scores["pytorch"][metric]) <= 0.1
    assert code == 0


def test_gate_and_table_from_scores() -> None:
    from evaluation.data import EvalSet

    eval_set = EvalSet("tag", Path("dev.conll"), "ab" * 32, ["x"] * 10, {}, lambda answers: {}, "f1")
    result = Evaluation(eval_set, max_drop=0.5)
    for name, f1 in (("pytorch", 90.0), ("fp32", 90.0), ("fp16", 89.6), ("int8", 88.0)):
        result.scores[name] = VariantScore(name, {"f1": f1, "precision": f1 + 1}, seconds=0.5, examples=10)
    assert result.reference == "pytorch"
    assert [result.drop(n) for n in result.scores] == [None, 0.0, 0.4, 2.0]
    assert result.failures() == ["int8 is 2.00 points below pytorch on f1 (--max-drop 0.5)"]
    assert result.as_json()["passed"] is False
    lines = table(result).splitlines()
    assert lines[1].split() == ["variant", "f1", "precision", "vs", "pytorch", "examples/s"]
    assert lines[-1].split() == ["int8", "88.00", "89.00", "-2.00", "20.0"]
