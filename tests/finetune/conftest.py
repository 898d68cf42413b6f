"""Fixtures of the fine-tuning tests: a small trainable discriminator to start from, and the
synthetic sets written to files in the layouts electra-finetune reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from finetune import synthetic

# The project's small test shape with ELECTRA's own initializer range and no dropout: the shared
# test checkpoints use a 10x wider range for well-separated random logits, which trains badly.
TRAINABLE = {"initializer_range": 0.02, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="session")
def base_checkpoint(make_checkpoint: Callable[..., Path]) -> Path:
    """A random ELECTRA discriminator (ElectraForPreTraining) of the small shape: the starting point."""
    return make_checkpoint("discriminate", seed=7, **TRAINABLE)


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training and validation files per task: sentiment CSV (with pairs), SQuAD 2.0 JSON, CoNLL."""
    root = tmp_path_factory.mktemp("datasets")
    return {
        "classify-train": synthetic.write_table(root / "train.csv", synthetic.sentiment(480, seed=11)),
        "classify-validation": synthetic.write_table(root / "validation.csv", synthetic.sentiment(120, seed=12)),
        "qa-train": synthetic.write_json(root / "train.json", synthetic.squad(800, seed=13)),
        "qa-validation": synthetic.write_json(root / "validation.json", synthetic.squad(120, seed=14)),
        "tag-train": synthetic.write_conll(root / "train.conll", synthetic.tagged(400, seed=15)),
        "tag-validation": synthetic.write_conll(root / "validation.conll", synthetic.tagged(100, seed=16)),
    }
