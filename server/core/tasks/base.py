"""What every task module provides. Pure: numpy and `tokenizers` only.

A request reaches a task as typed items (each protocol has a small converter: JSON for REST,
protobuf for typed gRPC, tensors for KServe v2) and the parameters it set, checked against the
task's `parameters` table. The service then calls, for one request:

    params = task.resolve(given, manifest)                                  # defaults, cross-checks
    encoded = task.encode(pool.get(), items, params, manifest, max_rows)    # text -> rows
    ... every row of every item goes through the batcher and the runtime ...
    results = [task.decode(e, outputs_of(e), params, manifest) for e in encoded]

Results are list-shaped (every answer of a QA item, every label of a classification);
`pipeline_json` gives the Hugging Face pipelines' JSON for one item, which REST and the KServe
v2 RESULT tensor answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenizers import Tokenizer

from server.core.manifest import Manifest
from server.core.rows import Row, RowOutputs
from server.core.tasks.params import ParamTable


@dataclass(slots=True)
class Encoded:
    """One input item after tokenization: one or more rows (stride windows) and what decode needs."""

    rows: list[Row]
    state: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class TaskHandler(ABC):
    task: ClassVar[str]
    parameters: ClassVar[ParamTable]

    @abstractmethod
    def items_from_json(self, inputs: Any) -> tuple[list[Any], bool]:
        """A JSON `inputs` -> (typed items, whether it was a list). Raises errors.invalid (422).
        `[]` is invalid; `""` is a valid text."""

    @abstractmethod
    def resolve(self, given: Mapping[str, Any], manifest: Manifest) -> Any:
        """The parameters a request set (checked by `parameters`) -> the task's typed params, with
        every default filled in. Raises errors.bad_request (400) for combinations that cannot work."""

    @abstractmethod
    def encode(
        self, tokenizer: Tokenizer, items: list[Any], params: Any, manifest: Manifest, max_rows: int | None = None
    ) -> list[Encoded]:
        """Tokenize items (in a worker thread; the tokenizer is this thread's own and may be
        configured). Refuses (413) a request that would need more than `max_rows` rows before
        building them."""

    @abstractmethod
    def decode(self, encoded: Encoded, outputs: list[RowOutputs], params: Any, manifest: Manifest) -> Any:
        """Turn one item's row outputs (same order as encoded.rows) into its list-shaped result."""

    def pipeline_json(self, value: Any) -> Any:
        """One item's result as the Hugging Face pipeline returns it (JSON-able)."""
        return value

    # -- conveniences over the above -------------------------------------------------------

    def parse(self, inputs: Any, parameters: Any, manifest: Manifest) -> tuple[list[Any], Any, bool]:
        """A REST request's `inputs` and `parameters` -> (items, params, is_list)."""
        items, is_list = self.items_from_json(inputs)
        return items, self.resolve(self.parameters.from_json(parameters), manifest), is_list

    def default_params(self, manifest: Manifest) -> Any:
        """Parameters for protocols that carry none (KServe v2 tensors)."""
        return self.resolve({}, manifest)
