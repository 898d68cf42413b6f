"""Tokenizers for the serving path: the `tokenizers` library only (no transformers).

A fast tokenizer must not be shared across threads while one of them changes its
truncation or padding settings ("Already borrowed" under load). Each worker thread gets its
own copy, made lazily from the same JSON, so a task may set truncation on it freely.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tokenizers import Tokenizer

from server.core.tasks.token_budget import splitter


class TokenizerPool:
    def __init__(self, tokenizer_json: str) -> None:
        self._json = tokenizer_json
        self._local = threading.local()
        prototype = Tokenizer.from_str(tokenizer_json)
        self.cls_token_id = prototype.token_to_id("[CLS]")
        self.sep_token_id = prototype.token_to_id("[SEP]")
        self.pad_token_id = prototype.token_to_id("[PAD]") or 0
        # Builds the split-point table (~0.2 s, once a process) at load, not on a first long request.
        splitter(prototype)

    @classmethod
    def from_file(cls, path: Path) -> TokenizerPool:
        return cls(Path(path).read_text(encoding="utf-8"))

    def get(self) -> Tokenizer:
        """This thread's own tokenizer, with no truncation and no padding unless the caller set some."""
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = Tokenizer.from_str(self._json)
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._local.tokenizer = tokenizer
        return tokenizer
