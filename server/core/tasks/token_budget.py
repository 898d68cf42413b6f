"""Counting a text's tokens with work bounded by a budget, not by the text.

A request whose text needs more windows than it may have must be refused after work in
proportion to the budget: tokenizing a 6 MB text whole costs ~500 bytes a token (1.7 GB for
"a a a ...") and seconds of a tokenizer thread, only to answer 413. So long texts are tokenized
in pieces, and counting stops once the count has passed the limit.

Pieces are cut only where the tokenizer itself always splits, so the pieces' tokens are exactly
the text's: with ELECTRA's (BERT's) tokenizer, before whitespace, ASCII or Unicode punctuation and
CJK characters (the normalizer pads CJK characters with spaces, the pre-tokenizer splits at
whitespace and isolates punctuation, and WordPiece encodes each word alone). A run with no such
place for longer than a piece is one word; WordPiece makes any word of over
`max_input_chars_per_word` characters one [UNK], so the run is skipped and counted as no token
(the count stays a lower bound, and callers check the windows they build against the limit
again). A tokenizer of any other kind is counted whole, as before.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

# Characters a piece holds at most before it is cut at the next split point, and pieces of one
# tokenizer call (one contiguous slice of them): at most ~64k characters' tokens (~30 MB at worst).
PIECE_CHARS = 8192
PIECES_PER_CALL = 8

# BERT's CJK ranges (the normalizer's `handle_chinese_chars`).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# Whitespace the normalizer keeps (controls other than \t \n \r are removed before it maps
# whitespace to spaces, so they are not split points).
_WHITESPACE = " \t\n\r"


@functools.cache
def _classes() -> tuple[str, str]:
    """(punctuation, other whitespace) as regex class bodies: punctuation is every character the
    pre-tokenizer isolates (ASCII and Unicode P*), other whitespace the Zs, Zl and Zp characters
    the normalizer maps to spaces."""
    punctuation: list[str] = []
    spaces: list[str] = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if category.startswith("P") or (code < 128 and _ascii_punctuation(char)):
            punctuation.append(char)
        elif category in ("Zs", "Zl", "Zp"):
            spaces.append(char)
    return _class_body(punctuation), _class_body(spaces)


def _class_body(chars: list[str]) -> str:
    """Characters as a compact regex class body (runs of consecutive code points as ranges)."""
    parts, codes = [], sorted(ord(c) for c in chars)
    start = prev = codes[0]
    for code in [*codes[1:], -1]:
        if code == prev + 1:
            prev = code
            continue
        parts.append(re.escape(chr(start)) if start == prev else f"{re.escape(chr(start))}-{re.escape(chr(prev))}")
        start = prev = code
    return "".join(parts)


@functools.cache
def _split_pattern(cjk: bool) -> re.Pattern[str]:
    """One character class of every place a BERT pre-tokenizer always splits."""
    punctuation, spaces = _classes()
    cjk_ranges = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in _CJK_RANGES) if cjk else ""
    return re.compile(f"[{re.escape(_WHITESPACE)}{spaces}{punctuation}{cjk_ranges}]")


def _ascii_punctuation(char: str) -> bool:
    # Rust's char::is_ascii_punctuation, which BERT's pre-tokenizer uses beside Unicode's P*.
    return char.isascii() and char.isprintable() and not char.isalnum() and not char.isspace()


def splitter(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """The split points of this tokenizer, or None when pieces would not count exactly."""
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    if type(pre_tokenizer).__name__ != "BertPreTokenizer" or type(tokenizer.model).__name__ != "WordPiece":
        return None
    if normalizer is not None and type(normalizer).__name__ != "BertNormalizer":
        return None
    return _split_pattern(_handles_cjk(tokenizer))


def _handles_cjk(tokenizer: Tokenizer) -> bool:
    return tokenizer.normalizer is not None and bool(getattr(tokenizer.normalizer, "handle_chinese_chars", False))


def pieces(text: str, split: re.Pattern[str], piece_chars: int = PIECE_CHARS) -> Iterator[tuple[int, int, bool]]:
    """(start, end, counted) spans covering `text` in order, each cut before a split point. A
    span past `piece_chars` with no split point inside is one word: counted is False for it."""
    last_split = _last_split(split)
    start, size = 0, len(text)
    while start < size:
        if size - start <= piece_chars:
            yield start, size, True
            return
        found = last_split.match(text, start + 1, start + piece_chars)
        if found is not None:
            end = found.end() - 1
            yield start, end, True
        else:
            after = split.search(text, start + piece_chars)
            end = after.start() if after is not None else size
            yield start, end, False
        start = end


@functools.cache
def _last_split(split: re.Pattern[str]) -> re.Pattern[str]:
    # Greedy: matches up to the last split point before the end of the searched range.
    return re.compile(f"(?s:.*){split.pattern}")


@dataclass(frozen=True, slots=True)
class Count:
    tokens: int  # tokens of text[:end] (a skipped one-word run counts as none)
    end: int  # characters counted: len(text) when the whole text was
    exact: bool  # no run was skipped: `tokens` is the exact count of text[:end]

    def passed(self, limit: int) -> bool:
        return self.tokens > limit


def count_tokens(tokenizer: Tokenizer, text: str, limit: int, piece_chars: int | None = None) -> Count:
    """The text's tokens (no special tokens), counted until more than `limit` are seen.

    Exact when the whole text was counted with no run skipped; otherwise a lower bound. The work
    is bounded by `limit` plus one call's pieces, whatever the text's length: pieces are a few
    characters a token of the limit long, up to PIECE_CHARS."""
    split = splitter(tokenizer)
    tokenizer.no_truncation()
    if split is None:
        return Count(one_length(tokenizer, text), len(text), True)
    if piece_chars is None:
        piece_chars = min(PIECE_CHARS, max(256, 4 * (limit + 1)))
    total, exact = 0, True
    group_start = group_end = 0  # the counted pieces not tokenized yet: text[group_start:group_end]
    for _, stop, counted in pieces(text, split, piece_chars):
        if not counted:  # a one-word run: what came before it is tokenized, the run skipped
            exact = False
            total += one_length(tokenizer, text[group_start:group_end])
            group_start = stop
        group_end = stop
        if group_end - group_start >= PIECES_PER_CALL * piece_chars:
            total += one_length(tokenizer, text[group_start:group_end])
            group_start = group_end
            if total > limit:
                return Count(total, group_end, exact)
    total += one_length(tokenizer, text[group_start:group_end])
    return Count(total, len(text), exact)


def one_length(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of one text (no special tokens), tokenized on one core without the GIL.

    `encode` holds the GIL for the whole text (a 670 ms stall of the event loop for 800 kB), and a
    batch of several pieces spreads over every core (a short request's p99 went from 12 to 60-115
    ms while refusals were counted): one text in a batch call is neither."""
    if not text:
        return 0
    return len(tokenizer.encode_batch_fast([text], add_special_tokens=False)[0])


def count_each(tokenizer: Tokenizer, texts: list[str], limit: int) -> list[Count]:
    """count_tokens for every text: those that cannot pass `limit` (by their UTF-8 length) in one
    tokenizer call, the others one by one, each only up to the limit."""
    counts: list[Count | None] = [None] * len(texts)
    short = [i for i, text in enumerate(texts) if len(text.encode("utf-8", "surrogatepass")) <= limit]
    tokenizer.no_truncation()
    for i, tokens in zip(short, _lengths(tokenizer, [texts[i] for i in short]), strict=True):
        counts[i] = Count(tokens, len(texts[i]), True)
    return [c if c is not None else count_tokens(tokenizer, texts[i], limit) for i, c in enumerate(counts)]


def prefix_for(tokenizer: Tokenizer, text: str, tokens: int, piece_chars: int | None = None) -> str:
    """A prefix of `text` whose tokens are the text's first tokens, at least `tokens` of them (or
    the whole text): what truncation keeps, without tokenizing what it would throw away."""
    if len(text) <= (piece_chars or PIECE_CHARS):
        return text
    counted = count_tokens(tokenizer, text, tokens, piece_chars)
    return text if counted.end >= len(text) else text[: counted.end]


def suffix_for(tokenizer: Tokenizer, text: str, tokens: int, piece_chars: int | None = None) -> str:
    """A suffix of `text` whose tokens are the text's last tokens, at least `tokens` of them (or the
    whole text): what truncation from the left keeps. Tails twice as long each time are cut at a
    split point and tokenized until one holds enough tokens, so the work is a few times what is
    kept, not the text's length."""
    limit = piece_chars or PIECE_CHARS
    split = splitter(tokenizer)
    if len(text) <= limit or split is None:
        return text
    tokenizer.no_truncation()
    size = max(256, 4 * (tokens + 1))
    while size < len(text):
        found = split.search(text, len(text) - size)
        tail = text[found.start() :] if found is not None else ""
        if one_length(tokenizer, tail) >= tokens:
            return tail
        size *= 2
    return text


def _lengths(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    # The fast variant leaves out offsets, which counting does not need.
    encodings: list[Encoding] = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return [len(e) for e in encodings]
