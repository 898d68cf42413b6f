"""ELECTRA replaced-token detection: for every token, the discriminator's probability that it
was replaced, plus the same at word level.

Long texts are windowed (overlapping by `max_seq_len // 4` tokens) and never cut. Each token is
scored by exactly one window, the one where it has the most context on both sides, so a token's
score depends on where windows fall as little as possible.
"""

from __future__ import annotations

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
    max_context_owners,
    row_of,
    sigmoid,
    text_inputs,
    text_positions,
    window_starts,
)
from server.core.tasks.params import Float, ParamTable, pick

PARAMETERS = ParamTable(
    Float("threshold", "a token is 'replaced' when its score is above this (default 0.5)", minimum=0.0, maximum=1.0),
)


@dataclass(frozen=True, slots=True)
class DiscriminateParams:
    threshold: float


@dataclass(frozen=True, slots=True)
class Token:
    window: int  # the window whose logits score this token
    position: int  # its index in that window's row
    token: str
    start: int
    end: int
    word: int | None


@dataclass(frozen=True, slots=True)
class DiscriminateState:
    text: str
    tokens: list[Token]


class DiscriminateTask(TaskHandler):
    task: ClassVar[str] = "discriminate"

    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[str], bool]:
        return text_inputs(inputs)

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> DiscriminateParams:
        return DiscriminateParams(threshold=pick(given, "threshold", 0.5))

    def encode(
        self,
        tokenizer: Tokenizer,
        items: list[str],
        params: DiscriminateParams,
        manifest: Manifest,
        max_rows: int | None = None,
    ) -> list[Encoded]:
        stride = manifest.max_seq_len // 4
        step = content_length(tokenizer, manifest.max_seq_len) - stride
        encoded = []
        for text, windows in zip(
            items, encode_windows(tokenizer, items, manifest.max_seq_len, stride, max_rows), strict=True
        ):
            positions = [text_positions(w) for w in windows]
            owner, local = max_context_owners([len(p) for p in positions], window_starts(len(windows), step))
            # Encoding getters build a fresh list on every access: read each window once.
            fields = [(w.tokens, w.offsets, w.word_ids) for w in windows]
            tokens = []
            for k, pos in zip(owner.tolist(), local.tolist(), strict=True):
                idx = positions[k][pos]
                names, offsets, word_ids = fields[k]
                start, end = offsets[idx]
                tokens.append(Token(k, idx, names[idx], start, end, word_ids[idx]))
            encoded.append(Encoded(rows=[row_of(w) for w in windows], state=DiscriminateState(text, tokens)))
        return encoded

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: DiscriminateParams, manifest: Manifest
    ) -> dict[str, Any]:
        state: DiscriminateState = encoded.state
        probabilities = [sigmoid(np.asarray(out["logits"]).reshape(-1)) for out in outputs]
        scores = [float(probabilities[t.window][t.position]) for t in state.tokens]
        # "Replaced" only above the threshold: at the default, a logit of exactly 0 is not flagged,
        # as in ELECTRA's own round((sign(logit) + 1) / 2).
        tokens = [
            _entry(t.token, t.start, t.end, s, params.threshold) for t, s in zip(state.tokens, scores, strict=True)
        ]
        replaced = sum(1 for t in tokens if t["replaced"])
        return {
            "tokens": tokens,
            "words": _words(state, scores, params.threshold),
            "replaced_rate": replaced / len(tokens) if tokens else 0.0,
        }


def _entry(token: str, start: int, end: int, score: float, threshold: float) -> dict[str, Any]:
    return {"token": token, "start": start, "end": end, "score": score, "replaced": score > threshold}


def _words(state: DiscriminateState, scores: list[float], threshold: float) -> list[dict[str, Any]]:
    """Consecutive tokens of one pre-tokenizer word form a word; it is as suspicious as its most
    suspicious token (one replaced wordpiece means the word was replaced)."""
    words: list[dict[str, Any]] = []
    group: list[int] = []

    def flush() -> None:
        if group:
            start = min(state.tokens[i].start for i in group)
            end = max(state.tokens[i].end for i in group)
            score = max(scores[i] for i in group)
            words.append(_entry(state.text[start:end], start, end, score, threshold))

    for i, token in enumerate(state.tokens):
        if group and (token.word is None or token.word != state.tokens[group[-1]].word):
            flush()
            group = []
        group.append(i)
    flush()
    return words
