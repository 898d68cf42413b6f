"""Run a task's encoded rows through the PyTorch model: the oracle side of parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.core.manifest import OUTPUT_NAMES
from server.core.rows import Row, RowOutputs


def load_torch_model(checkpoint: Path):
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint))
    return getattr(transformers, config.architectures[0]).from_pretrained(str(checkpoint)).eval()


def run_rows(model, task: str, rows: list[Row]) -> list[RowOutputs]:
    """Each row alone (no padding), so the reference is independent of any batching."""
    import torch

    results: list[RowOutputs] = []
    with torch.no_grad():
        for row in rows:
            ids = torch.from_numpy(np.asarray(row.input_ids, dtype=np.int64))[None, :]
            types = torch.from_numpy(np.asarray(row.token_type_ids, dtype=np.int64))[None, :]
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=types)
            results.append({name: getattr(out, name)[0].float().numpy() for name in OUTPUT_NAMES[task]})
    return results
