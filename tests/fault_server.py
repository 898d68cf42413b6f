"""`python -m tests.fault_server [electra-serve flags]`: a real electra-serve whose model runtime
is the fake one of tests/fakes.py, with faults a test turns on and off at run time through the
JSON file named by ELECTRA_TEST_FAULTS (read again whenever it changes):

    {"error": false,      every model run raises
     "marker": "zebra",   a row holding this word's token id ...
     "marker_mode": "error" | "oom" | "none",   ... fails, or runs out of memory in a batch of 2+
     "break_loop": false} the batching loops crash (a bug in the loop itself)

Only for the test suite: the serving code has no fault switches of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from server.core.batching import BatchLimits, selection
from server.core.manifest import Manifest
from server.logs import configure
from server.runner import serve
from server.settings import load_settings
from tests.fakes import FakeRuntime


class Faults:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self.values: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            return self.values
        if stamp != self._stamp:
            try:
                self.values = json.loads(self.path.read_text())
                self._stamp = stamp
            except ValueError:
                pass  # half written: the next read gets it
        return self.values


class FaultyRuntime(FakeRuntime):
    def __init__(self, manifest: Manifest, precision: str, faults: Faults, tokenizer: Tokenizer) -> None:
        super().__init__(manifest, precision)
        self.faults = faults
        self.tokenizer = tokenizer

    def run(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict:
        faults = self.faults.get()
        self.fail = bool(faults.get("error"))
        marker = faults.get("marker")
        self.marker_id = self.tokenizer.token_to_id(marker) if marker else None
        self.marker = faults.get("marker_mode", "error")
        if self.marker == "none":
            self.marker_id = None
        return super().run(input_ids, attention_mask, token_type_ids)


def main() -> int:
    faults = Faults(Path(os.environ["ELECTRA_TEST_FAULTS"]))
    settings = load_settings(sys.argv[1:])
    configure(settings.log_level, settings.log_format)

    def factory(path: Path, manifest: Manifest, device: str, precision: str, options: Any) -> FaultyRuntime:
        tokenizer = Tokenizer.from_file(str(path / manifest.tokenizer))
        return FaultyRuntime(manifest, precision, faults, tokenizer)

    select = selection.select_batch

    def maybe_broken(lengths: Sequence[int], limits: BatchLimits) -> tuple[list[int], bool]:
        if faults.get().get("break_loop"):
            raise RuntimeError("injected bug in the batching loop")
        return select(lengths, limits)

    selection.select_batch = maybe_broken  # every batcher made from now on selects through it
    assert settings.model_repository is not None
    return asyncio.run(serve(settings, settings.model_repository, runtime_factory=factory))


if __name__ == "__main__":
    sys.exit(main())
