"""Sequence classification features: the examples of a table (`toolchain.classification` reads them
and their label set) tokenized into the rows the Trainer consumes."""

from __future__ import annotations

from typing import Any

from toolchain.classification import Example, LabelSpace


def features(examples: list[Example], tokenizer: Any, max_length: int, space: LabelSpace) -> list[dict[str, Any]]:
    """Tokenized rows (pairs cut longest-first to max_length) with `labels` as the model's loss expects."""
    # An empty text_pair is no pair, as the server and transformers' pipeline treat it.
    singles = [i for i, e in enumerate(examples) if not e.pair]
    paired = [i for i, e in enumerate(examples) if e.pair]
    encoded: dict[int, dict[str, list[int]]] = {}
    for indices, batch in (
        (singles, [examples[i].text for i in singles]),
        (paired, [(examples[i].text, examples[i].pair) for i in paired]),
    ):
        if indices:
            out = tokenizer(batch, truncation=True, max_length=max_length)
            for j, i in enumerate(indices):
                encoded[i] = {key: out[key][j] for key in ("input_ids", "token_type_ids", "attention_mask")}
    rows = []
    for i, example in enumerate(examples):
        row: dict[str, Any] = dict(encoded[i])
        if space.problem_type == "multi_label_classification":
            row["labels"] = [1.0 if j in example.label else 0.0 for j in range(space.num_labels)]
        else:
            row["labels"] = example.label
        rows.append(row)
    return rows
