"""What every task module provides: parse (validate the request), encode (text -> rows),
decode (row outputs -> the pipeline-shaped result). Pure: numpy and `tokenizers` only.

The service calls, for one request:
    items, params, is_list = task.parse(inputs, parameters, manifest)       # event loop, cheap
    encoded = task.encode(pool.get(), items, params, manifest)              # worker thread
    ... every row of every item goes through the batcher and the runtime ...
    results = [task.decode(e, outputs_of(e), params, manifest) for e in encoded]
    return results if is_list else results[0]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenizers import Tokenizer

from server.core.manifest import Manifest
from server.core.rows import Row, RowOutputs


@dataclass(slots=True)
class Encoded:
    """One input item after tokenization: one or more rows (stride windows) and what decode needs."""

    rows: list[Row]
    state: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class TaskHandler(ABC):
    task: ClassVar[str]

    @abstractmethod
    def parse(self, inputs: Any, parameters: dict[str, Any] | None, manifest: Manifest) -> tuple[list[Any], Any, bool]:
        """Validate a request's `inputs` and `parameters`.

        Returns (items, params, is_list). Raises ServeError (errors.invalid / bad_request) on bad input.
        `[]` is invalid; `""` is a valid text.
        """

    @abstractmethod
    def encode(self, tokenizer: Tokenizer, items: list[Any], params: Any, manifest: Manifest) -> list[Encoded]:
        """Tokenize items (in a worker thread; the tokenizer is this thread's own and may be configured)."""

    @abstractmethod
    def decode(self, encoded: Encoded, outputs: list[RowOutputs], params: Any, manifest: Manifest) -> Any:
        """Turn one item's row outputs (same order as encoded.rows) into its JSON-able result."""

    def default_params(self, manifest: Manifest) -> Any:
        """Parameters used by protocols that carry none (KServe v2 RESULT tensors)."""
        return self.parse([""], None, manifest)[1]
