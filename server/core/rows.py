"""The unit of work that flows from a task's encoder through the batcher to the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Row:
    """One model input sequence, unpadded. The attention mask is implied: ones over `len(self)`."""

    input_ids: np.ndarray  # int64 [L]
    token_type_ids: np.ndarray  # int64 [L]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# What the runtime returns for one row: output name -> array with the padding removed
# (classify: logits [labels]; discriminate: logits [L]; tag: logits [L, labels];
# qa: start_logits [L], end_logits [L]).
RowOutputs = dict[str, np.ndarray]
