"""A real electra-serve process on loopback ports, started once per session and drained at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The server-process harness is the benches' too (loadtests/servers.py); the end-to-end tests
# import these names from here.
from loadtests.servers import ROOT, ServerProcess, free_port, start_server

__all__ = ["ROOT", "ServerProcess", "free_port", "serve_as", "start_server"]


@pytest.fixture(scope="session")
def served_repository(
    tmp_path_factory: pytest.TempPathFactory, demo_repository: Path, export_model: Callable[..., Path]
) -> Path:
    """The demo models plus test models of other shapes, label sets and heads (linked, not copied).

    Names: demo-classify, demo-discriminator, demo-qa, demo-tag, and
    cls3 (3 labels), multilabel (multi-label head, 4 labels), qa-short (max_seq_len 64: long
    contexts need many windows), tag5 (5 labels, max_position_embeddings 48), disc-short
    (discriminator, max_position_embeddings 40), ranker (a CrossEncoder, one logit with a sigmoid,
    max_position_embeddings 48: long documents need windows).
    """
    repository = tmp_path_factory.mktemp("served")
    for model_dir in demo_repository.iterdir():
        if (model_dir / "manifest.json").is_file():
            (repository / model_dir.name).symlink_to(model_dir)
    extra = {
        "cls3": export_model("classify", labels=["contradiction", "entailment", "neutral"], seed=31),
        "multilabel": export_model(
            "classify", labels=["w", "x", "y", "z"], problem_type="multi_label_classification", seed=32
        ),
        "qa-short": export_model("qa", seed=33, max_position_embeddings=64),
        "tag5": export_model("tag", labels=["O", "B-A", "I-A", "B-B", "I-B"], seed=34, max_position_embeddings=48),
        "disc-short": export_model("discriminate", seed=35, max_position_embeddings=40),
        # A sentence-transformers cross-encoder (sigmoid), detected as a reranker by the export.
        "ranker": export_model("rerank", seed=36, max_position_embeddings=48),
    }
    for name, model_dir in extra.items():
        serve_as(model_dir, repository, name)
    return repository


def serve_as(model_dir: Path, repository: Path, name: str) -> Path:
    """An exported model in `repository` under another name: a copy of its manifest with the new
    name, its ONNX and tokenizer files hard-linked (the runtime refuses model files that resolve
    outside their directory, so no symlinks)."""
    target = repository / name
    target.mkdir()
    for item in model_dir.iterdir():
        if item.name != "manifest.json":
            os.link(item, target / item.name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="session")
def server(served_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One electra-serve for the session's end-to-end tests (all models of `served_repository`)."""
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    handle = start_server(served_repository, log_path, "--max-queue-delay-ms", "5")
    try:
        handle.wait_ready()
        yield handle
    finally:
        code = handle.stop()
        assert code == 0, f"server exited {code} on SIGTERM:\n{handle.log()[-3000:]}"
