"""Unusable data fails before any training with one clear line on stderr and exit code 2: missing
columns, labels outside the label set, answers that are not in their context, empty files, tags
that are not BIO. electra-finetune's main() runs in-process; one case runs the real console
entry point as a subprocess, and electra-export --eval-file and electra-eval are checked too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.__main__ import main as eval_main
from export.__main__ import main as export_main
from finetune.__main__ import main as finetune_main

ROOT = Path(__file__).resolve().parents[2]
SQUAD_OK = {"version": "v2.0", "data": [{"paragraphs": [{"context": "Ada wrote it.", "qas": [
    {"id": "1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}]}]}]}  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _squad_with(answer: dict) -> str:
    document = json.loads(json.dumps(SQUAD_OK))
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"] = [answer]
    return json.dumps(document)


CASES = [
    # (task, train file (name, text), validation file or None, extra flags, expected message)
    pytest.param(
        "classify",
        ("t.csv", "sentence,label\nok,POSITIVE\n"),
        None,
        [],
        "no column 'text'",
        id="classify-missing-column",
    ),
    pytest.param(
        "classify",
        ("t.csv", "text,label\ngood,POSITIVE\nbad,NEGATIVE\n"),
        ("v.csv", "text,label\nmeh,NEUTRAL\n"),
        [],
        "label 'NEUTRAL' is not in the label set (NEGATIVE, POSITIVE)",
        id="classify-unknown-label",
    ),
    pytest.param(
        "classify",
        ("t.jsonl", '{"text": "good", "label": 3}\n'),
        None,
        ["--labels", "NEGATIVE,POSITIVE"],
        "label 3 is not in the label set",
        id="classify-id-out-of-range",
    ),
    pytest.param("classify", ("t.csv", ""), None, [], "empty file", id="classify-empty-file"),
    pytest.param("classify", ("t.tsv", "text\tlabel\n"), None, [], "no examples", id="classify-header-only"),
    pytest.param(
        "qa",
        ("t.json", _squad_with({"text": "Babbage", "answer_start": 0})),
        None,
        [],
        "answer 'Babbage' is not in its context",
        id="qa-answer-not-in-context",
    ),
    pytest.param(
        "qa",
        ("t.json", _squad_with({"text": "wrote", "answer_start": 0})),
        None,
        [],
        "answer 'wrote' is not in its context at offset 0",
        id="qa-answer-at-wrong-offset",
    ),
    pytest.param("qa", ("t.json", '{"version": "v2.0", "data": []}'), None, [], "no questions", id="qa-no-questions"),
    pytest.param("qa", ("t.json", "  \n"), None, [], "empty file", id="qa-empty-file"),
    pytest.param(
        "tag",
        ("t.conll", "Ada B-PER\nlives O\n"),
        ("v.conll", "Ada B-PER\nLondon B-LOC\n"),
        [],
        "tag 'B-LOC' is not in the label set (O, B-PER, I-PER)",
        id="tag-unknown-label",
    ),
    pytest.param("tag", ("t.conll", "Ada PER\n"), None, [], "tag 'PER' is not a BIO/IOB2 tag", id="tag-not-bio"),
    pytest.param("tag", ("t.conll", "Ada\n"), None, [], "expected a token and its tag", id="tag-one-column"),
    pytest.param("tag", ("t.conll", "\n\n"), None, [], "empty file", id="tag-empty-file"),
]


@pytest.mark.parametrize(("task", "train", "validation", "flags", "message"), CASES)
def test_bad_data_gives_one_line_and_exit_2(task, train, validation, flags, message, base_checkpoint, tmp_path, capsys):
    argv = ["--task", task, "--model", str(base_checkpoint), "--output", str(tmp_path / "out"), "--epochs", "1"]
    argv += ["--train-file", str(_write(tmp_path / train[0], train[1]))]
    if validation:
        argv += ["--validation-file", str(_write(tmp_path / validation[0], validation[1]))]
    code = finetune_main(argv + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("electra-finetune: error: ") and message in err[0], err[0]
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_missing_file_is_bad_data(base_checkpoint, tmp_path, capsys):
    code = finetune_main(
        ["--task", "tag", "--model", str(base_checkpoint), "--train-file", str(tmp_path / "nope.conll"),
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 2 and "nope.conll: no such file" in capsys.readouterr().err


def test_console_script_reports_bad_data_as_a_subprocess(base_checkpoint, tmp_path):
    train = _write(tmp_path / "train.csv", "review,label\nGreat,POSITIVE\n")
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "--task", "classify", "--model", str(base_checkpoint),
         "--train-file", str(train), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"electra-finetune: error: {train}: no column 'text' (columns: review, label); "
                     "name the right ones with --text-column / --text-pair-column / --label-column"], lines  # fmt: skip


def test_export_eval_file_with_bad_data_exits_2(make_checkpoint, tmp_path, capsys):
    checkpoint = make_checkpoint("classify", labels=["NEGATIVE", "POSITIVE"], seed=41)
    eval_file = _write(tmp_path / "eval.csv", "text,label\nfine,MAYBE\n")
    code = export_main(
        ["--model", str(checkpoint), "--output", str(tmp_path / "repo"), "--precision", "fp32",
         "--eval-file", str(eval_file), "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "label 'MAYBE' is not in the label set (NEGATIVE, POSITIVE)" in err[0]
    assert not (tmp_path / "repo").exists()  # the file is checked before the export starts


def test_eval_with_tags_outside_the_models_labels_exits_2(export_model, tmp_path, capsys):
    model_dir = export_model("tag", labels=["O", "B-PER", "I-PER"], seed=42)
    data = _write(tmp_path / "eval.conll", "Ada B-PER\nLondon B-LOC\n")
    code = eval_main(["--task", "tag", "--data", str(data), "--model-dir", str(model_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == f"electra-eval: error: {data}:2: tag 'B-LOC' is not in the model's label set (O, B-PER, I-PER)"


def test_eval_of_a_model_of_another_task_exits_2(export_model, tmp_path, capsys):
    model_dir = export_model("tag", labels=["O", "B-PER", "I-PER"], seed=42)
    data = _write(tmp_path / "eval.csv", "text,label\nx,O\n")
    assert eval_main(["--task", "classify", "--data", str(data), "--model-dir", str(model_dir)]) == 2
    assert "the model serves tag, not classify" in capsys.readouterr().err


def test_a_missing_data_file_is_said_before_the_model_is_looked_for(tmp_path):
    """A hub id that cannot be reached would take its own error first; the data file comes first."""
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "--task", "classify", "--model", "electra-serve-tests/not-a-real-model",
         "--train-file", str(tmp_path / "train.tsv"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == f"electra-finetune: error: --train-file {tmp_path / 'train.tsv'}: no such file"


def test_the_readmes_fine_tuning_walk_through_runs_as_written(tmp_path):
    """README's "Fine-tune, export, serve, evaluate" block, verbatim but for the port, from an empty
    folder: the shipped example, the fine-tuning (it must learn), the export gate, the server, the
    evaluation against it."""
    import re

    from tests.e2e.conftest import ROOT, free_port

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Fine-tune, export, serve, evaluate", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    http_port = free_port()
    script = block.group(1).replace("localhost:8000", f"127.0.0.1:{http_port}").replace(":8000", f":{http_port}")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "ELECTRA_HTTP_PORT": str(http_port),
        "ELECTRA_GRPC_PORT": str(free_port()),
    }
    # Not part of the block: whatever happens, the server it started in the background goes.
    script = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + script
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "validation accuracy: 100.00" in done.stdout, done.stdout[-2000:]
    scores = json.loads((tmp_path / "eval.json").read_text())["variants"]
    assert {"pytorch", "fp32", "fp16", "int8", "server"} <= set(scores)
    assert scores["server"]["accuracy"] == scores["pytorch"]["accuracy"] >= 95, scores
