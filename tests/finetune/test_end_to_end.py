"""Fine-tune -> export -> serve -> evaluate, for each task, on small synthetic sets a small model can
learn (sentiment words, the slot a question word points at, names and places): the validation metric
rises well above chance, the export records its evaluation in the manifest, the server shows it, and
electra-eval finds PyTorch, every ONNX variant offline and the running server (over REST and over
gRPC) in agreement (fp32 and the server within 0.1 points of PyTorch, gRPC scoring exactly as REST)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evaluation.__main__ import main as eval_main
from finetune.__main__ import main as finetune_main
from server.core.manifest import Manifest
from tests.e2e.conftest import ServerProcess, start_server
from toolchain.metrics import squad_metrics
from toolchain.readers import read_squad

# Per task: the training flags, and the validation score a model that learnt nothing cannot reach.
RUNS = {
    "classify": (["--text-pair-column", "text_pair", "--epochs", "4", "--learning-rate", "1e-3",
                  "--early-stopping-patience", "2"], "accuracy", 90.0),  # chance: 50 (balanced labels)
    "qa": (["--epochs", "6", "--learning-rate", "2e-3"], "f1", None),  # chance: the always-empty baseline
    "tag": (["--epochs", "3", "--learning-rate", "1e-3"], "f1", 80.0),  # chance: ~0 entity F1
}  # fmt: skip
AGREEMENT = 0.1  # points: fp32 ONNX and the server (REST and gRPC) against PyTorch


def eval_process(args: list[str]) -> subprocess.CompletedProcess[str]:
    """electra-eval in its own process: its gRPC backend loads the project's KServe stubs, whose
    message names are tritonclient's too, and the test session has already imported tritonclient's
    (one process's protobuf pool cannot hold both)."""
    return subprocess.run([sys.executable, "-m", "evaluation", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetuned-repository")


@pytest.fixture(scope="module")
def trained(
    base_checkpoint: Path, datasets: dict[str, Path], repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, float]]]:
    """Each task fine-tuned with `electra-finetune ... --export REPO`: (checkpoint, validation metrics)."""
    out: dict[str, tuple[Path, dict[str, float]]] = {}
    for task, (flags, _, _) in RUNS.items():
        checkpoint = tmp_path_factory.mktemp(f"checkpoint-{task}") / task
        code = finetune_main(
            ["--task", task, "--model", str(base_checkpoint), "--train-file", str(datasets[f"{task}-train"]),
             "--validation-file", str(datasets[f"{task}-validation"]), "--output", str(checkpoint),
             "--batch-size", "16", "--seed", "3", "--quiet", "--export", str(repository),
             "--export-name", f"ft-{task}", "--precision", "fp32,fp16,int8", *flags]
        )  # fmt: skip
        assert code == 0, task
        out[task] = (checkpoint, json.loads((checkpoint / "finetune.json").read_text())["metrics"])
    return out


@pytest.fixture(scope="module")
def server(trained: dict, repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handle = start_server(repository, tmp_path_factory.mktemp("ft-server") / "server.log", "--max-queue-delay-ms", "2")
    try:
        handle.wait_ready()
        yield handle
    finally:
        assert handle.stop() == 0, handle.log()[-2000:]


def _chance(task: str, datasets: dict[str, Path]) -> float:
    if task != "qa":
        return RUNS[task][2]
    examples, _ = read_squad(datasets["qa-validation"])
    empty = squad_metrics({e.id: "" for e in examples}, {e.id: [a.text for a in e.answers] for e in examples})
    return empty["f1"] + 20.0  # well above answering nothing


@pytest.mark.parametrize("task", list(RUNS))
def test_validation_metric_rises_well_above_chance(task, trained, datasets):
    checkpoint, metrics = trained[task]
    metric = RUNS[task][1]
    assert metrics[metric] >= _chance(task, datasets), metrics
    config = json.loads((checkpoint / "config.json").read_text())
    if task == "classify":
        assert config["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
        assert config["problem_type"] == "single_label_classification"
    if task == "tag":
        assert config["id2label"]["0"] == "O" and {"B-PER", "I-LOC", "B-MISC"} <= set(config["id2label"].values())


@pytest.mark.parametrize("task", list(RUNS))
def test_eval_agrees_across_pytorch_onnx_and_the_server(task, trained, server, repository, datasets, tmp_path, capsys):
    checkpoint, metrics = trained[task]
    name = f"ft-{task}"
    out = tmp_path / "eval.json"
    data = ["--task", task, "--data", str(datasets[f"{task}-validation"])]
    if task == "classify":
        data += ["--text-pair-column", "text_pair"]
    printed = eval_process(
        [*data, "--checkpoint", str(checkpoint), "--model-dir", str(repository / name), "--url", server.url,
         "--grpc", server.grpc_target, "--model", name, "--json", str(out)]
    )  # fmt: skip
    code = printed.returncode
    assert out.exists(), printed.stderr[-3000:]
    report = json.loads(out.read_text())
    metric = report["metric"]
    variants = report["variants"]
    assert set(variants) == {"pytorch", "fp32", "fp16", "int8", "server", "server-grpc"}
    assert report["reference"] == "pytorch" and report["examples"] > 50
    reference = variants["pytorch"][metric]
    assert abs(variants["fp32"][metric] - reference) <= AGREEMENT, variants
    assert abs(variants["server"][metric] - reference) <= AGREEMENT, variants
    # The typed gRPC API answers what REST answers: every metric the same.
    assert variants["server-grpc"] == variants["server"], variants
    assert abs(variants["server-grpc"][metric] - reference) <= AGREEMENT, variants
    assert abs(variants["fp16"][metric] - reference) <= 0.5 + 1e-9, variants
    # The exit code is the gate: 0 exactly when no variant fell more than 0.5 points.
    assert code == (0 if report["passed"] else 1)
    assert report["passed"] == all(reference - v[metric] <= 0.5 for v in variants.values())
    for variant in variants:  # one table row each, with the throughput
        assert any(line.startswith(variant) for line in printed.stdout.splitlines()), printed.stdout
    assert all(value > 0 for value in report["examples_per_second"].values())
    # The PyTorch pipeline here scores what the Trainer's validation measured (tag and classify decode alike).
    if task != "qa":
        assert reference == pytest.approx(metrics[metric], abs=1e-6)

    # The export recorded the same evaluation: same file, same decoding, same scores.
    recorded = Manifest.read(repository / name).evaluation
    assert recorded is not None and recorded.metric == metric and recorded.data_sha256 == report["data_sha256"]
    for variant in ("pytorch", "fp32", "fp16", "int8"):
        assert recorded.scores[variant] == variants[variant], variant
    described = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"]}
    assert described[name]["evaluation"]["scores"]["fp32"][metric] == variants["fp32"][metric]

    # gRPC alone describes the model itself (labels, window length, the head's problem type): same scores.
    alone = tmp_path / "grpc.json"
    answered = eval_process([*data, "--grpc", server.grpc_target, "--model", name, "--json", str(alone)])
    assert answered.returncode == 0, answered.stderr[-3000:]
    grpc_report = json.loads(alone.read_text())
    assert grpc_report["reference"] is None and grpc_report["parameters"] == report["parameters"]
    assert grpc_report["variants"] == {"server-grpc": variants["server"]}


def test_the_gate_fails_a_variant_that_drops_too_far(trained, repository, datasets, capsys):
    # Any variant is "more than -100 points below" the reference: every one fails the gate.
    code = eval_main(
        ["--task", "tag", "--data", str(datasets["tag-validation"]), "--checkpoint", str(trained["tag"][0]),
         "--model-dir", str(repository / "ft-tag"), "--precision", "fp32", "--max-drop", "-100"]
    )  # fmt: skip
    assert code == 1
    assert "electra-eval: FAILED: fp32 is" in capsys.readouterr().err


def test_onnx_alone_is_gated_against_fp32(trained, repository, datasets, tmp_path):
    out = tmp_path / "eval.json"
    code = eval_main(
        ["--task", "classify", "--data", str(datasets["classify-validation"]), "--text-pair-column", "text_pair",
         "--model-dir", str(repository / "ft-classify"), "--json", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["reference"] == "fp32" and set(report["variants"]) == {"fp32", "fp16", "int8"}
    assert code == (0 if report["passed"] else 1)
