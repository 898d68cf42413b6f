"""The export stage: parity per task (on checkpoints and inputs the exporter never saw), the
manifest, fp16/int8 variants, atomicity, unsupported inputs and demo determinism."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import optimize, parity
from export.exporter import export_checkpoint
from server.core.manifest import INPUT_NAMES, OUTPUT_NAMES, Manifest, list_models
from tests.torch_reference import load_torch_model
from toolchain.errors import ExportError

MANIFEST_KEYS = {"name", "task", "max_seq_len", "labels", "problem_type", "tokenizer", "variants", "source", "exporter"}

# Inputs the exporter's probe set does not contain: other words, batch shapes and lengths.
UNSEEN_TEXTS = [
    "Zürich's Bahnhofstraße glitters at dusk.",
    "ok",
    "ثلاثة أيام في القاهرة — 三日間",
    "🙂🙃 " * 9,
    "Gradient descent with warm restarts converges on the validation plateau " * 3,
]


def _run_onnx(path: Path, task: str, ids, mask, types) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = session.run(list(OUTPUT_NAMES[task]), dict(zip(INPUT_NAMES, (ids, mask, types), strict=True)))
    return dict(zip(OUTPUT_NAMES[task], values, strict=True))


def _unseen_batch(model_dir: Path, pairs: bool = False):

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    encodings = [tok.encode(t, UNSEEN_TEXTS[0]) for t in UNSEEN_TEXTS] if pairs else tok.encode_batch(UNSEEN_TEXTS)
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
        types[i, : len(e.ids)] = e.type_ids
    return ids, mask, types


def _torch(checkpoint: Path, task: str, ids, mask, types) -> dict[str, np.ndarray]:
    import torch

    model = load_torch_model(checkpoint)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    return {name: getattr(out, name).numpy() for name in OUTPUT_NAMES[task]}


CASES = [
    pytest.param("discriminate", {}, id="discriminator-head"),
    pytest.param("classify", {"labels": ["a", "b", "c"], "seed": 5}, id="classify-3-labels"),
    pytest.param(
        "classify",
        {
            "labels": ["x", "y", "z", "w"],
            "problem_type": "multi_label_classification",
            "seed": 6,
            "hidden_size": 96,
            "num_attention_heads": 3,
        },
        id="classify-multi-label",
    ),
    pytest.param("classify", {"labels": ["score"], "seed": 7}, id="classify-regression"),
    pytest.param("qa", {"seed": 8, "num_hidden_layers": 3}, id="qa"),
    pytest.param("tag", {"labels": ["O", "B-X", "I-X", "B-Y", "I-Y"], "seed": 9}, id="tag-5-labels"),
]


@pytest.mark.parametrize(("task", "kwargs"), CASES)
def test_export_matches_pytorch_on_unseen_inputs(task, kwargs, export_model, make_checkpoint):
    model_dir = export_model(task, precisions=("fp32", "fp16", "int8"), **kwargs)
    checkpoint = make_checkpoint(task, **kwargs)
    manifest = Manifest.read(model_dir)
    raw = json.loads((model_dir / "manifest.json").read_text())
    assert raw.keys() >= MANIFEST_KEYS
    assert manifest.task == task
    assert set(manifest.variants) == {"fp32", "fp16", "int8"}
    for variant in manifest.variants.values():
        path = model_dir / variant.file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == variant.sha256
        # The weights ship as external data beside the graph (memory-mapped at load), hashed too.
        data = model_dir / variant.data_file
        assert data.name == f"{variant.file}.data"
        assert hashlib.sha256(data.read_bytes()).hexdigest() == variant.data_sha256
        assert variant.data_size_bytes == data.stat().st_size > 50 * path.stat().st_size
        assert data.stat().st_mode & 0o777 == path.stat().st_mode & 0o777  # readable as the graph is
        assert variant.parity.probes > 20
    for precision, variant in manifest.variants.items():
        fusions = optimize.GPU_FUSIONS if precision == "fp16" else optimize.CPU_FUSIONS
        assert set(fusions) <= set(variant.fused_ops), precision
    assert manifest.variants["fp32"].parity.max_abs_error <= parity.FP32_MAX_ABS_ERROR
    assert manifest.variants["fp16"].parity.top1_agreement >= parity.FP16_MIN_TOP1
    if task in ("classify", "tag"):
        assert manifest.labels == kwargs["labels"]

    ids, mask, types = _unseen_batch(model_dir, pairs=task in ("classify", "qa"))
    want = _torch(checkpoint, task, ids, mask, types)
    valid = mask.astype(bool)
    for precision, tolerance in (("fp32", 1e-4), ("fp16", 3e-2)):
        got = _run_onnx(model_dir / manifest.variants[precision].file, task, ids, mask, types)
        for name in OUTPUT_NAMES[task]:
            assert got[name].dtype == np.float32
            assert got[name].shape == want[name].shape
            have, ref = (got[name], want[name]) if task == "classify" else (got[name][valid], want[name][valid])
            assert np.abs(have - ref).max() <= tolerance, (precision, name)
    got8 = _run_onnx(model_dir / manifest.variants["int8"].file, task, ids, mask, types)
    assert all(np.isfinite(v).all() for v in got8.values())


def test_discriminator_head_is_the_checkpoints_own(export_model, make_checkpoint):
    """optimum's token-classification task would reload the checkpoint with a random classifier;
    the exported logits must be ElectraForPreTraining's own replaced-token-detection scores."""
    model_dir = export_model("discriminate", precisions=("fp32", "fp16", "int8"))
    checkpoint = make_checkpoint("discriminate")
    ids, mask, types = _unseen_batch(model_dir)
    got = _run_onnx(model_dir / "model.fp32.onnx", "discriminate", ids, mask, types)["logits"]
    want = _torch(checkpoint, "discriminate", ids, mask, types)["logits"]
    assert got.shape == ids.shape  # [batch, sequence]: one logit per token
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4)


def test_fp16_keeps_int64_inputs_and_float32_outputs(export_model):
    model_dir = export_model("qa", precisions=("fp16",), seed=11)
    session = ort.InferenceSession(str(model_dir / "model.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [(n, "tensor(int64)") for n in INPUT_NAMES]
    assert [(o.name, o.type) for o in session.get_outputs()] == [(n, "tensor(float)") for n in OUTPUT_NAMES["qa"]]
    for tensor in session.get_inputs():
        assert [str(d) for d in tensor.shape] == ["batch_size", "sequence_length"]
    assert not (model_dir / "model.fp32.onnx").exists()
    assert not (model_dir / "model.fp32.onnx.data").exists()
    assert set(Manifest.read(model_dir).variants) == {"fp16"}


def test_max_seq_len_is_recorded_and_bounded(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("classify", labels=["n", "p"])
    manifest, _ = export_checkpoint(str(checkpoint), tmp_path, name="short", max_seq_len=40, quiet=True)
    assert manifest.max_seq_len == 40
    with pytest.raises(ExportError, match="max_position_embeddings"):
        export_checkpoint(str(checkpoint), tmp_path, name="long", max_seq_len=4096, quiet=True)


def test_parity_failure_fails_the_export_and_leaves_nothing(make_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "FP32_MAX_ABS_ERROR", -1.0)
    checkpoint = make_checkpoint("classify", labels=["n", "p"])
    with pytest.raises(ExportError, match="fp32 parity failed: max abs error"):
        export_checkpoint(str(checkpoint), tmp_path, name="drifting", quiet=True)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


def test_cli_exports_and_reports(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("tag", labels=["O", "B-PER", "I-PER"], seed=3)
    result = _cli("--model", str(checkpoint), "--output", str(tmp_path), "--name", "ner", "--precision", "fp32,int8")
    assert result.returncode == 0, result.stderr
    assert "ner fp32" in result.stdout and "ner int8" in result.stdout
    assert "[electra-export] ner:" in result.stderr  # progress lines
    assert [p.name for p in list_models(tmp_path)] == ["ner"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda mk, tmp: mk("generator"), "generator"),
        (lambda mk, tmp: tmp / "missing", "no such directory"),
        (lambda mk, tmp: _bert_checkpoint(tmp), "not ELECTRA"),
        (lambda mk, tmp: (tmp / "empty").mkdir() or tmp / "empty", "no config.json"),
    ],
    ids=["generator", "missing-dir", "bert", "not-a-checkpoint"],
)
def test_unsupported_checkpoints_fail_with_one_clear_line(make, message, make_checkpoint, tmp_path):
    model = make(make_checkpoint, tmp_path)
    result = _cli("--model", str(model), "--output", str(tmp_path / "out"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("electra-export: error:") and message in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "summarize"], "unknown task"),
        (["--precision", "fp8"], "unknown precision"),
        (["--task", "qa"], "serves 'classify', not 'qa'"),
    ],
)
def test_bad_options_fail_clearly(args, message, make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("classify", labels=["n", "p"])
    result = _cli("--model", str(checkpoint), "--output", str(tmp_path), *args)
    assert result.returncode != 0 and message in result.stderr


def _bert_checkpoint(tmp: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    path = tmp / "bert"
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


def test_killed_export_leaves_no_manifest(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("qa", seed=21)
    out = tmp_path / "repo"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "export",
            "--model",
            str(checkpoint),
            "--output",
            str(out),
            "--name",
            "victim",
            "--precision",
            "fp32,fp16,int8",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        for line in process.stderr:  # kill it in the middle: after the graph exists, before publishing
            if "fp16: optimizing" in line or time.monotonic() > deadline:
                break
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (out / "victim").exists()
    assert list_models(out) == []
    leftovers = [p.name for p in out.iterdir()]
    assert all(name.startswith(".victim.tmp-") for name in leftovers)


def test_reexport_replaces_a_model_atomically(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint("classify", labels=["n", "p"])
    export_checkpoint(str(checkpoint), tmp_path, name="m", quiet=True)
    export_checkpoint(str(checkpoint), tmp_path, name="m", precisions=["fp32", "int8"], quiet=True)
    assert set(Manifest.read(tmp_path / "m").variants) == {"fp32", "int8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_demo_repository_is_byte_identical_and_served_by_default(demo_repository, tmp_path, monkeypatch):
    """`electra-serve` with no arguments generates the demo repository on first use (through the
    `electra-export --demo` CLI in a child process) and serves it; the files equal the fixture's byte for byte."""
    from server.demo_repository import ensure_demo_repository
    from tests.e2e.conftest import ServerProcess, free_port

    names = sorted(p.name for p in list_models(demo_repository))
    assert names == ["demo-classify", "demo-discriminator", "demo-qa", "demo-tag"]
    monkeypatch.setenv("ELECTRA_CACHE_DIR", str(tmp_path / "cache"))
    generated = ensure_demo_repository()
    assert generated.parent == tmp_path / "cache"
    assert ensure_demo_repository() == generated  # second use: the cache, no regeneration

    def digests(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    assert digests(demo_repository) == digests(generated)
    manifest = Manifest.read(demo_repository / "demo-tag")
    assert manifest.labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    assert Manifest.read(demo_repository / "demo-classify").labels == ["NEGATIVE", "POSITIVE"]

    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ELECTRA_CACHE_DIR": str(tmp_path / "cache")},
        )
    handle = ServerProcess(process, http_port, grpc_port, generated, log_path)
    try:
        handle.wait_ready()
        import httpx

        models = httpx.get(f"{handle.url}/v1/models", timeout=10).json()["models"]
        assert sorted(m["name"] for m in models) == names
        assert handle.url.startswith("http://127.0.0.1:")
    finally:
        assert handle.stop() == 0, handle.log()[-2000:]


def test_serving_path_imports_no_torch():
    """Every module under server/ imported in a fresh interpreter: neither torch nor transformers loads."""
    code = (
        "import importlib, pkgutil, sys, server\n"
        "for m in pkgutil.walk_packages(server.__path__, 'server.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'transformers', 'optimum'))\n"
        "assert not bad, bad\n"
        "print('ok', len([n for n in sys.modules if n.startswith('server')]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_exported_folders_are_readable_by_other_users(export_model):
    """The staging folder is mkdtemp's 0700: published, it has the mode the umask gives any folder,
    so a server running as another user (the image's uid 10001) can read what root exported."""
    from server.core.folders import current_umask

    model = export_model("classify")
    mask = current_umask()
    for path in [model, *model.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if path.is_dir():
            assert mode == 0o777 & ~mask, f"{path}: {oct(mode)}"
        else:
            assert mode & 0o044 == 0o044 & ~mask, f"{path}: {oct(mode)}"


def test_prune_keeps_only_the_variants_served(export_model, tmp_path, capsys):
    """An image carries what it serves: --prune drops the other variants' files and manifest entries,
    and refuses (changing nothing) when a model would be left with nothing."""
    from export.__main__ import main
    from server.core.manifest import Manifest

    source = export_model("classify", precisions=("fp32", "int8"))
    repository = tmp_path / "repo"
    shutil.copytree(source, repository / "m")
    before = sorted(p.name for p in (repository / "m").iterdir())

    assert main(["--prune", "--precision", "fp16", "--output", str(repository)]) == 1
    assert "would leave it nothing to serve" in capsys.readouterr().err
    assert sorted(p.name for p in (repository / "m").iterdir()) == before

    assert main(["--prune", "--precision", "fp32", "--output", str(repository)]) == 0
    manifest = Manifest.read(repository / "m")
    assert list(manifest.variants) == ["fp32"]
    left = {p.name for p in (repository / "m").iterdir()}
    assert {manifest.variants["fp32"].file, manifest.variants["fp32"].data_file} <= left
    assert not any("int8" in name for name in left), left


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HF_ENDPOINT": "http://127.0.0.1:1"},
            "the Hugging Face hub cannot be reached (127.0.0.1: Connection refused)",
        ),
        ({"HF_HUB_OFFLINE": "1"}, "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"),
    ],
)
def test_a_hub_id_without_the_hub_fails_in_seconds_with_one_line(env, message, tmp_path):
    """No 30 s of huggingface_hub retries: a model id that can be neither downloaded nor found in the
    cache is one line naming the way out (a local directory, HF_HUB_OFFLINE)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", "electra-serve-tests/not-a-real-model", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env},
    )  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert time.monotonic() - started < 20
