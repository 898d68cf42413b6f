"""Fixtures the unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.synthetic import save_tokenizer


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's ELECTRA WordPiece tokenizer (the shared vocabulary), written once."""
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(directory)
    return directory / "tokenizer.json"
