"""Session fixtures: small deterministic ELECTRA checkpoints, made once per test session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`make_checkpoint(task, seed=0, labels=None, problem_type=None, **shape) -> Path` (cached per arguments).

    Returns a Hugging Face checkpoint directory (config, safetensors weights, tokenizer files)
    for task in discriminate | classify | qa | tag | generator.
    """
    from export.synthetic import make_checkpoint as build

    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[str, Path] = {}

    def make(task: str, **kwargs: Any) -> Path:
        key = json.dumps([task, kwargs], sort_keys=True)
        if key not in cache:
            cache[key] = build(root / f"ck{len(cache)}-{task}", task, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def export_model(tmp_path_factory: pytest.TempPathFactory, make_checkpoint: Callable[..., Path]) -> Callable[..., Path]:
    """`export_model(task, precisions=("fp32",), max_seq_len=None, **checkpoint_kwargs) -> model dir` (cached).

    Exports a small checkpoint through the real exporter into a session repository and returns
    `<repository>/<name>`; the repository is `path.parent`.
    """
    from export.exporter import export_checkpoint

    repository = tmp_path_factory.mktemp("repository")
    cache: dict[str, Path] = {}

    def export(
        task: str, precisions: tuple[str, ...] = ("fp32",), max_seq_len: int | None = None, **kwargs: Any
    ) -> Path:
        key = json.dumps([task, list(precisions), max_seq_len, kwargs], sort_keys=True)
        if key not in cache:
            name = f"{task}-{len(cache)}"
            checkpoint = make_checkpoint(task, **kwargs)
            export_checkpoint(
                str(checkpoint), repository, name=name, precisions=precisions, max_seq_len=max_seq_len, quiet=True
            )
            cache[key] = repository / name
        return cache[key]

    return export


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo models, written once per session by `electra-export --demo`."""
    from export.demo import write_demo_repository

    repository = tmp_path_factory.mktemp("demo-repository")
    write_demo_repository(repository, quiet=True)
    return repository


@pytest.fixture(scope="session", autouse=True)
def _torch_single_thread() -> None:
    """Tiny reference models run ~30x faster on one thread than fighting the server for two cores."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
