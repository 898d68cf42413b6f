"""Token classification (NER) with the semantics of the `token-classification` pipeline.

Long texts are windowed as the pipeline does with `stride` (overflowing tokens), each window is
aggregated on its own and overlapping entities of neighbouring windows are merged with the
pipeline's rule. Strategy `none` (which the pipeline refuses to window) gives every token once,
scored by the window where it has the most context, with `index` its position in the whole text's
encoding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import (
    content_length,
    encode_windows,
    label_names,
    max_context_owners,
    row_of,
    softmax,
    text_inputs,
    text_positions,
    window_starts,
)
from server.core.tasks.params import Choice, Int, Labels, ParamTable, pick

STRATEGIES = ("none", "simple", "first", "average", "max")
PARAMETERS = ParamTable(
    Choice("aggregation_strategy", "how tokens are grouped into entities (default simple)", choices=STRATEGIES),
    Labels("ignore_labels", 'labels left out of the result (default ["O"])'),
    Int(
        "stride",
        "tokens shared by consecutive windows of a long text (default: a quarter of the model's length)",
        minimum=0,
        maximum=4096,
    ),
)


@dataclass(frozen=True, slots=True)
class TagParams:
    """Resolved parameters (defaults: `TagTask.resolve`)."""

    aggregation_strategy: str
    ignore_labels: tuple[str, ...]
    stride: int


@dataclass(frozen=True, slots=True)
class Window:
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    positions: list[int]  # indices of the text tokens (not [CLS]/[SEP])


class _Vocab:
    """What the pipeline asks of its tokenizer. It keeps the decoder, not the tokenizer: decode may
    run in another thread while the owning worker reconfigures its tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        model = tokenizer.model
        # WordPiece/BPE models know their subword marker: the pipeline then trusts token lengths.
        self.word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        unk = getattr(model, "unk_token", None)
        self.unk_id = tokenizer.token_to_id(unk) if unk else None
        self.decoder = tokenizer.decoder

    def to_string(self, tokens: list[str]) -> str:
        return self.decoder.decode(tokens) if self.decoder is not None else " ".join(tokens)


@dataclass(frozen=True, slots=True)
class TagState:
    text: str
    windows: list[Window]
    step: int  # text tokens between the starts of consecutive windows
    vocab: _Vocab


class TagTask(TaskHandler):
    task: ClassVar[str] = "tag"

    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[str], bool]:
        return text_inputs(inputs)

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> TagParams:
        return TagParams(
            aggregation_strategy=pick(given, "aggregation_strategy", "simple"),
            ignore_labels=pick(given, "ignore_labels", ("O",)),
            # A text that fits gives one window whatever the stride: it only matters past the end.
            stride=pick(given, "stride", manifest.max_seq_len // 4),
        )

    def encode(
        self, tokenizer: Tokenizer, items: list[str], params: TagParams, manifest: Manifest, max_rows: int | None = None
    ) -> list[Encoded]:
        stride = params.stride
        step = content_length(tokenizer, manifest.max_seq_len) - stride
        vocab = _Vocab(tokenizer)
        encoded = []
        all_windows = encode_windows(tokenizer, items, manifest.max_seq_len, stride, max_rows)
        for text, windows in zip(items, all_windows, strict=True):
            state = TagState(
                text=text,
                windows=[Window(w.ids, w.tokens, w.offsets, text_positions(w)) for w in windows],
                step=step,
                vocab=vocab,
            )
            encoded.append(Encoded(rows=[row_of(w) for w in windows], state=state))
        return encoded

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: TagParams, manifest: Manifest
    ) -> list[dict[str, Any]]:
        state: TagState = encoded.state
        scores = [softmax(np.asarray(out["logits"], dtype=np.float64)) for out in outputs]
        labels = label_names(manifest.labels, scores[0].shape[-1]) if scores else []
        pipeline = _Pipeline(state.text, state.vocab, labels, params.aggregation_strategy)

        if params.aggregation_strategy == "none" and len(state.windows) > 1:
            owned = pipeline.owned_tokens(state, scores)
            return [e for e in owned if e["entity"] not in params.ignore_labels]

        entities: list[dict[str, Any]] = []
        for window, window_scores in zip(state.windows, scores, strict=True):
            grouped = pipeline.aggregate(pipeline.gather(window, window_scores))
            entities.extend(
                e
                for e in grouped
                if e.get("entity") not in params.ignore_labels and e.get("entity_group") not in params.ignore_labels
            )
        if len(state.windows) > 1:
            entities = aggregate_overlapping_entities(entities)
        return [_public(e) for e in entities]


def _public(entity: dict[str, Any]) -> dict[str, Any]:
    """JSON-able: Python floats and ints, no numpy scalars."""
    out = dict(entity)
    out["score"] = float(out["score"])
    for key in ("index", "start", "end"):
        if key in out and out[key] is not None:
            out[key] = int(out[key])
    return out


class _Pipeline:
    """TokenClassificationPipeline's postprocess steps for one text, kept step for step."""

    def __init__(self, text: str, vocab: _Vocab, labels: list[str], strategy: str) -> None:
        self.text = text
        self.vocab = vocab
        self.labels = labels
        self.strategy = strategy

    def gather(self, window: Window, scores: np.ndarray) -> list[dict[str, Any]]:
        return [self._pre_entity(window, idx, scores[idx]) for idx in window.positions]

    def _pre_entity(self, window: Window, idx: int, token_scores: np.ndarray) -> dict[str, Any]:
        token_id = window.ids[idx]
        word = window.tokens[idx]
        start, end = window.offsets[idx]
        word_ref = self.text[start:end]
        if self.vocab.word_aware:
            is_subword = len(word) != len(word_ref)
        else:
            # The pipeline's fallback heuristic for tokenizers with no subword marker.
            is_subword = start > 0 and " " not in self.text[start - 1 : start + 1]
        if token_id == self.vocab.unk_id:
            word = word_ref
            is_subword = False
        return {
            "word": word,
            "scores": token_scores,
            "start": start,
            "end": end,
            "index": idx,
            "is_subword": is_subword,
        }

    def aggregate(self, pre_entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.strategy in ("none", "simple"):
            entities = [self._token_entity(pre) for pre in pre_entities]
        else:
            entities = self._aggregate_words(pre_entities)
        if self.strategy == "none":
            return entities
        return self._group_entities(entities)

    def owned_tokens(self, state: TagState, scores: list[np.ndarray]) -> list[dict[str, Any]]:
        """Strategy none over several windows: each token once, from the window where it has the most
        context; `index` as in an unwindowed encoding ([CLS] at 0)."""
        windows = state.windows
        starts = window_starts(len(windows), state.step)
        owner, local = max_context_owners([len(w.positions) for w in windows], starts)
        leading = windows[0].positions[0]  # special tokens before the text, as in one long encoding
        entities = []
        for token, (k, pos) in enumerate(zip(owner.tolist(), local.tolist(), strict=True)):
            idx = windows[k].positions[pos]
            pre = self._pre_entity(windows[k], idx, scores[k][idx])
            pre["index"] = leading + token
            entities.append(_public(self._token_entity(pre)))
        return entities

    def _token_entity(self, pre: dict[str, Any]) -> dict[str, Any]:
        entity_idx = int(pre["scores"].argmax())
        return {
            "entity": self.labels[entity_idx],
            "score": pre["scores"][entity_idx],
            "index": pre["index"],
            "word": pre["word"],
            "start": pre["start"],
            "end": pre["end"],
        }

    def _aggregate_word(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        word = self.vocab.to_string([e["word"] for e in entities])
        if self.strategy == "first":
            scores = entities[0]["scores"]
            idx = int(scores.argmax())
            score = scores[idx]
        elif self.strategy == "max":
            scores = max(entities, key=lambda e: e["scores"].max())["scores"]
            idx = int(scores.argmax())
            score = scores[idx]
        else:  # average
            average = _nanmean([e["scores"] for e in entities])
            idx = int(average.argmax())
            score = average[idx]
        return {
            "entity": self.labels[idx],
            "score": score,
            "word": word,
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _aggregate_words(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        word_entities = []
        group: list[dict[str, Any]] = []
        for entity in entities:
            if group and not entity["is_subword"]:
                word_entities.append(self._aggregate_word(group))
                group = []
            group.append(entity)
        if group:
            word_entities.append(self._aggregate_word(group))
        return word_entities

    def _group_sub_entities(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": _nanmean_floats([float(e["score"]) for e in entities]),
            "word": self.vocab.to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        groups = []
        pending: list[dict[str, Any]] = []
        for entity in entities:
            if pending:
                bi, tag = get_tag(entity["entity"])
                _, last_tag = get_tag(pending[-1]["entity"])
                # Adjacent tokens of one entity merge; a B- always opens a new one.
                if not (tag == last_tag and bi != "B"):
                    groups.append(self._group_sub_entities(pending))
                    pending = []
            pending.append(entity)
        if pending:
            groups.append(self._group_sub_entities(pending))
        return groups


def _nanmean(values: list[Any]) -> Any:
    """np.nanmean over the first axis, without its overhead in the common cases (it dominated the
    decoding of long texts: one call per word and per entity)."""
    if len(values) == 1:
        only = values[0]
        return only if not np.isnan(only).any() else np.nanmean(np.stack(values), axis=0)
    stacked = np.stack(values)
    return stacked.mean(axis=0) if not np.isnan(stacked).any() else np.nanmean(stacked, axis=0)


def _nanmean_floats(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def get_tag(entity_name: str) -> tuple[str, str]:
    if entity_name.startswith("B-"):
        return "B", entity_name[2:]
    if entity_name.startswith("I-"):
        return "I", entity_name[2:]
    # Not in B-/I- form: continuation by default, as the pipeline does.
    return "I", entity_name


def aggregate_overlapping_entities(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's merge of the entities that neighbouring windows both found: of overlapping
    ones keep the longest, then the highest scored."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
