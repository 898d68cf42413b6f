"""Rerank: a cross-encoder's relevance score for each (query, document) pair, as the
sentence-transformers `CrossEncoder.predict` computes it.

One item is one pair; the rerank routes send a query's documents as items and sort what comes
back. A pair is tokenized as a sentence pair (query first). The score follows the manifest: one
logit, `score_activation` of it (sigmoid or identity; the raw score is the logit); two logits, the
softmax probability of `relevant_label` (the raw score is its logit minus the other's, whose
sigmoid that probability is).

A document that does not fit beside the query is split into stride windows, each paired with the
whole query and scored, and the window scores aggregated (`max`, BERT-MaxP, by default; `first`
or `mean`): never an error for a document within the window budget. With `truncate` the pair is
cut instead, as text-embeddings-inference does: longest first, from the end `truncation_direction`
names. `max_tokens_per_doc` cuts a document to its first tokens before either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from server.core.errors import ServeError, bad_request, invalid
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import check_rows, min_advance, row_of
from server.core.tasks.pair_windows import check_pair_windows
from server.core.tasks.params import Choice, Int, ParamTable, type_name
from server.core.tasks.token_budget import Count, prefix_for, suffix_for

AGGREGATIONS = ("max", "first", "mean")
DIRECTIONS = ("right", "left")
MAX_LENGTH_PARAMETER = 1_000_000
DEFAULT_MAX_STRIDE = 128
PARAMETERS = ParamTable(
    Choice(
        "truncate",
        "what to do with a pair that does not fit the model: 'windows' (default) splits the document "
        "into stride windows and aggregates their scores; 'cut' truncates the pair (longest first)",
        choices=("windows", "cut"),
    ),
    Choice("truncation_direction", "with truncate='cut': the end that is cut (default right)", choices=DIRECTIONS),
    Choice(
        "aggregation",
        "how the scores of a document's windows combine: max (default), first or mean",
        choices=AGGREGATIONS,
    ),
    Int(
        "stride",
        "document tokens shared by consecutive windows (default min(max_seq_len // 2, 128))",
        minimum=0,
        maximum=MAX_LENGTH_PARAMETER,
    ),
    Int(
        "max_tokens_per_doc",
        "cut each document to its first N tokens before anything else (default: no cut)",
        minimum=1,
        maximum=MAX_LENGTH_PARAMETER,
    ),
)

# Cohere's limit, which the rerank routes share; the window budget applies within it.
MAX_DOCUMENTS = 1000

# One item: (query, document).
Item = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RerankParams:
    cut: bool  # truncate the pair instead of windowing the document
    truncation_direction: str
    aggregation: str
    stride: int
    max_tokens_per_doc: int | None


@dataclass(frozen=True, slots=True)
class Scoring:
    """How a head's logits become (raw, score): see the module's docstring."""

    relevant: int | None  # two logits: the relevant one's index; None: one logit
    activation: str  # sigmoid | identity (softmax over two logits is the sigmoid of their difference)

    @classmethod
    def of(cls, manifest: Manifest) -> Scoring:
        if len(manifest.labels) <= 1:
            activation = manifest.score_activation or "sigmoid"
            return cls(None, "identity" if activation == "identity" else "sigmoid")
        labels = list(manifest.labels)
        relevant = labels.index(manifest.relevant_label) if manifest.relevant_label in labels else len(labels) - 1
        return cls(relevant, "sigmoid")

    def raw(self, logits: np.ndarray) -> float:
        if self.relevant is None:
            return float(logits[0])
        others = np.delete(logits, self.relevant)
        # Softmax probability of the relevant label = sigmoid(its logit - logsumexp of the others).
        top = float(np.max(others))
        return float(logits[self.relevant]) - (top + float(np.log(np.sum(np.exp(others - top)))))

    def score(self, raw: float) -> float:
        if self.activation == "identity":
            return raw
        return float(1.0 / (1.0 + np.exp(-raw))) if raw >= 0 else float(np.exp(raw) / (1.0 + np.exp(raw)))


def pair(query: Any, document: Any, where: str) -> Item:
    """One (query, document) pair, from any protocol's fields."""
    if not isinstance(query, str):
        raise invalid(f"query must be a string, got {type_name(query)}")
    if not query.strip():
        raise invalid("query must not be empty")
    if not isinstance(document, str):
        raise invalid(f"{where} must be a string, got {type_name(document)}")
    return query, document


def resolve_params(given: Mapping[str, Any], manifest: Manifest) -> RerankParams:
    stride = given.get("stride")
    return RerankParams(
        cut=given.get("truncate") == "cut",
        truncation_direction=given.get("truncation_direction") or "right",
        aggregation=given.get("aggregation") or "max",
        stride=min(manifest.max_seq_len // 2, DEFAULT_MAX_STRIDE) if stride is None else stride,
        max_tokens_per_doc=given.get("max_tokens_per_doc"),
    )


class RerankTask(TaskHandler):
    task: ClassVar[str] = "rerank"
    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[Item], bool]:
        """`{"query": "...", "documents": ["...", ...]}` (the generic task route and KServe's RESULT)."""
        if not isinstance(inputs, dict) or "query" not in inputs or "documents" not in inputs:
            raise invalid("inputs must be an object {query, documents}")
        documents = inputs["documents"]
        if not isinstance(documents, list) or not documents:
            raise invalid("inputs.documents must be a non-empty list of strings")
        return [pair(inputs["query"], d, f"inputs.documents[{i}]") for i, d in enumerate(documents)], True

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> RerankParams:
        return resolve_params(given, manifest)

    def encode(
        self,
        tokenizer: Tokenizer,
        items: list[Item],
        params: RerankParams,
        manifest: Manifest,
        max_rows: int | None = None,
    ) -> list[Encoded]:
        check_rows(len(items), max_rows)
        tokenizer.no_padding()
        max_seq_len = manifest.max_seq_len
        if params.max_tokens_per_doc is not None:
            items = [(query, _first_tokens(tokenizer, doc, params.max_tokens_per_doc)) for query, doc in items]
        if params.cut:
            return self._encode_cut(tokenizer, items, params, max_seq_len)
        single_specials = tokenizer.num_special_tokens_to_add(False)
        if params.stride > max_seq_len - single_specials:
            # The tokenizer's own rule (it fails on it too).
            raise bad_request(
                f"parameter stride ({params.stride}) must be at most the model's max_seq_len minus "
                f"{single_specials} special tokens ({max_seq_len - single_specials})"
            )
        check_pair_windows(
            tokenizer,
            items,
            max_seq_len,
            params.stride,
            max_rows,
            lambda i, query, room, step, specials: _no_room(items, i, query, room, step, params, max_seq_len),
        )
        tokenizer.enable_truncation(
            max_length=max_seq_len, stride=params.stride, strategy="only_second", direction="right"
        )
        encoded = [Encoded(rows=[row_of(w) for w in (e, *e.overflowing)]) for e in tokenizer.encode_batch(items)]
        # The count may have skipped one-word runs (a lower bound): the windows built are the truth.
        check_rows(sum(len(e.rows) for e in encoded), max_rows)
        return encoded

    def _encode_cut(
        self, tokenizer: Tokenizer, items: list[Item], params: RerankParams, max_seq_len: int
    ) -> list[Encoded]:
        keep = prefix_for if params.truncation_direction == "right" else suffix_for
        # Only what truncation keeps is tokenized: at most max_seq_len tokens of either text.
        kept = [(keep(tokenizer, q, max_seq_len), keep(tokenizer, d, max_seq_len)) for q, d in items]
        tokenizer.enable_truncation(
            max_length=max_seq_len, strategy="longest_first", direction=params.truncation_direction
        )
        return [Encoded(rows=[row_of(e)]) for e in tokenizer.encode_batch(kept)]

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: RerankParams, manifest: Manifest
    ) -> list[dict[str, Any]]:
        scoring = Scoring.of(manifest)
        raws = [scoring.raw(np.asarray(o["logits"], dtype=np.float64).reshape(-1)) for o in outputs]
        scores = [scoring.score(r) for r in raws]
        if params.aggregation == "first":
            raw, score = raws[0], scores[0]
        elif params.aggregation == "mean":
            raw, score = float(np.mean(raws)), float(np.mean(scores))
        else:
            best = int(np.argmax(raws))  # the activations are monotonic: the best raw is the best score
            raw, score = raws[best], scores[best]
        tokens = sum(len(row) for row in encoded.rows)
        return [{"score": score, "raw_score": raw, "windows": len(outputs), "tokens": tokens}]

    def pipeline_json(self, value: list[dict[str, Any]]) -> Any:
        return value[0]


def _first_tokens(tokenizer: Tokenizer, text: str, tokens: int) -> str:
    """The text up to the end of its `tokens`-th token (the whole text when it has fewer)."""
    prefix = prefix_for(tokenizer, text, tokens)
    tokenizer.no_truncation()
    encoding = tokenizer.encode(prefix, add_special_tokens=False)
    if len(encoding) <= tokens:
        return prefix
    return prefix[: encoding.offsets[tokens - 1][1]]


def _no_room(
    items: list[Item], i: int, query: Count, room: int, step: int, params: RerankParams, max_seq_len: int
) -> ServeError:
    length = f"{query.tokens}" if query.end == len(items[i][0]) else f"over {query.tokens}"
    return invalid(
        f"the query is {length} tokens long, which leaves {max(room, 0)} tokens for a document in the "
        f"model's window of {max_seq_len}; with stride={params.stride} the windows of "
        f"documents[{i}] would advance by {max(step, 0)} tokens, fewer than the {min_advance(max(room, 1))} "
        "required; shorten the query, lower stride, or set truncate to 'cut'"
    )


def ranked(values: list[list[dict[str, Any]]], top_n: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(document index, its result) best first, at most `top_n` (None, or more than there are:
    every document). Equal scores keep the documents' order."""
    order = sorted(range(len(values)), key=lambda i: values[i][0]["score"], reverse=True)
    return [(i, values[i][0]) for i in order[:top_n]]
