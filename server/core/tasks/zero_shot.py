"""Zero-shot classification over an NLI classifier, with the semantics of transformers'
`zero-shot-classification` pipeline (4.57).

It serves models whose task is `classify` and whose labels name an entailment class (the first
label starting with "entail", any case, as the pipeline looks for it). Each text is paired with
one hypothesis per candidate label (`hypothesis_template` with the label in place of `{}`); each
pair is one model row. Long texts are cut to fit beside the hypothesis (`only_first`). Scores:
with `multi_label` (or a single label) each label independently, the softmax of its pair's
[contradiction, entailment] logits (contradiction is class 0, or the last class when entailment
is 0); otherwise the softmax over the labels of each pair's entailment logit. The answer is
`{"sequence", "labels", "scores"}`, best first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from server.core.errors import bad_request, invalid
from server.core.manifest import Manifest
from server.core.rows import RowOutputs
from server.core.tasks.base import Encoded, TaskHandler
from server.core.tasks.common import check_rows, row_of, text_inputs
from server.core.tasks.params import Bool, Labels, ParamTable, Text
from server.core.tasks.token_budget import prefix_for

DEFAULT_TEMPLATE = "This example is {}."
MAX_LABELS = 256
PARAMETERS = ParamTable(
    Labels(
        "candidate_labels",
        "the labels to choose from: a list, or one string of comma-separated labels (required)",
        max_items=MAX_LABELS,
        comma_separated=True,
    ),
    Text(
        "hypothesis_template",
        f"the hypothesis for each label, with {{}} where it goes (default {DEFAULT_TEMPLATE!r})",
    ),
    Bool("multi_label", "score each label on its own instead of one softmax over the labels (default false)"),
)


@dataclass(frozen=True, slots=True)
class ZeroShotParams:
    labels: tuple[str, ...]
    hypotheses: tuple[str, ...]
    multi_label: bool
    entailment: int  # the entailment class's index in the head


def entailment_index(labels: list[str]) -> int | None:
    """The pipeline's rule: the first label that starts with "entail", any case."""
    return next((i for i, label in enumerate(labels) if label.lower().startswith("entail")), None)


def resolve_params(given: Mapping[str, Any], manifest: Manifest) -> ZeroShotParams:
    labels = given.get("candidate_labels")
    if not labels:
        raise bad_request("parameter candidate_labels is required: at least one label")
    template = given.get("hypothesis_template") or DEFAULT_TEMPLATE
    if template.format(labels[0]) == template:
        raise bad_request(f"parameter hypothesis_template ({template!r}) has no {{}} where the label should go")
    entailment = entailment_index(list(manifest.labels))
    if manifest.task != "classify" or entailment is None:
        raise bad_request(
            f"model '{manifest.name}' cannot classify zero-shot: it needs an NLI classifier with an "
            f"entailment label, and its labels are {list(manifest.labels)}"
        )
    try:
        hypotheses = tuple(template.format(label) for label in labels)
    except (IndexError, KeyError, ValueError) as exc:
        raise bad_request(f"parameter hypothesis_template ({template!r}) cannot be formatted: {exc}") from exc
    return ZeroShotParams(tuple(labels), hypotheses, bool(given.get("multi_label") or False), entailment)


class ZeroShotTask(TaskHandler):
    task: ClassVar[str] = "zero-shot"
    parameters: ClassVar[ParamTable] = PARAMETERS

    def items_from_json(self, inputs: Any) -> tuple[list[str], bool]:
        return text_inputs(inputs)

    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> ZeroShotParams:
        return resolve_params(given, manifest)

    def encode(
        self,
        tokenizer: Tokenizer,
        items: list[str],
        params: ZeroShotParams,
        manifest: Manifest,
        max_rows: int | None = None,
    ) -> list[Encoded]:
        check_rows(len(items) * len(params.labels), max_rows)
        tokenizer.no_padding()
        max_seq_len = manifest.max_seq_len
        # Only what `only_first` truncation keeps of a text is tokenized.
        tokenizer.enable_truncation(max_length=max_seq_len, strategy="only_first")
        encoded = []
        for text in items:
            kept = prefix_for(tokenizer, text, max_seq_len)
            pairs = [(kept, hypothesis) for hypothesis in params.hypotheses]
            try:
                encodings = tokenizer.encode_batch(pairs)
            except Exception as exc:  # the hypothesis alone does not fit: only_first cannot help
                raise invalid(
                    f"a hypothesis is too long for the model's {max_seq_len} tokens beside any text: {exc}"
                ) from exc
            encoded.append(Encoded(rows=[row_of(e) for e in encodings], state=text))
        return encoded

    def decode(
        self, encoded: Encoded, outputs: list[RowOutputs], params: ZeroShotParams, manifest: Manifest
    ) -> dict[str, Any]:
        logits = np.stack([np.asarray(o["logits"], dtype=np.float64).reshape(-1) for o in outputs])
        entailment = params.entailment
        if params.multi_label or len(params.labels) == 1:
            contradiction = -1 if entailment == 0 else 0
            pair = logits[:, [contradiction, entailment]]
            exps = np.exp(pair - pair.max(axis=1, keepdims=True))
            scores = exps[:, 1] / exps.sum(axis=1)
        else:
            entail = logits[:, entailment]
            exps = np.exp(entail - entail.max())
            scores = exps / exps.sum()
        # The pipeline's order: numpy's argsort, reversed (ties as it leaves them).
        order = list(reversed(scores.argsort()))
        return {
            "sequence": encoded.state,
            "labels": [params.labels[i] for i in order],
            "scores": [float(scores[i]) for i in order],
        }
