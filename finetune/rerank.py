"""Reranking (cross-encoder) data: (query, passage, relevance) rows -> pair features for a one-logit
head trained with binary cross-entropy on the relevance scaled to [0, 1] (binary labels as they are,
graded ones divided by the top grade), as sentence-transformers trains a CrossEncoder
(`BinaryCrossEntropyLoss`). The checkpoint records sentence-transformers' own mark of a CrossEncoder
with a sigmoid activation (config.json's `sentence_transformers.activation_fn`): `CrossEncoder(dir)`
scores with it, and `electra-export --task auto` exports it as a reranker.

Validation scores the passages of each query and ranks them: MRR@10, nDCG@10 and MAP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from toolchain.metrics import ranking_metrics
from toolchain.ranking import SIGMOID_FN, Judgement, encode_pairs, group_by_query

# The head: one logit, named as a CrossEncoder's is, with sentence-transformers' activation mark.
LABEL_CONFIG: dict[str, Any] = {
    "num_labels": 1,
    "id2label": {0: "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "problem_type": None,
    "sentence_transformers": {"activation_fn": SIGMOID_FN},
}


def features(judgements: list[Judgement], tokenizer: Any, max_length: int, scale: float) -> list[dict[str, Any]]:
    """Each pair encoded as the server encodes it (query first, the passage cut to fit), `labels` the
    BCE target relevance / scale."""
    encoded = encode_pairs(tokenizer.backend_tokenizer, [(j.query, j.passage) for j in judgements], max_length)
    return [
        {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids), "labels": j.relevance / scale}
        for (ids, types), j in zip(encoded, judgements, strict=True)
    ]


def bce_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """The Trainer's `compute_loss_func`: BCE with logits of the one logit against the targets, summed
    over the pairs and divided by the pairs of the whole (gradient-accumulated) step when given."""
    import torch

    logits = outputs["logits"].squeeze(-1).float()
    if num_items_in_batch is None:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    total = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
    return total / num_items_in_batch


def metric_function(judgements: list[Judgement]) -> Callable[[Any], dict[str, float]]:
    """compute_metrics for the Trainer: the validation pairs' logits (in file order) ranked per query."""
    groups = group_by_query(judgements)
    index: dict[str, list[int]] = {}
    for i, j in enumerate(judgements):
        index.setdefault(j.query, []).append(i)

    def compute(prediction: Any) -> dict[str, float]:
        logits = np.asarray(prediction.predictions, dtype=np.float64).reshape(len(judgements), -1)[:, 0]
        return ranking_metrics([([float(logits[i]) for i in index[g.query]], g.relevances) for g in groups])

    return compute
