"""Deterministic benchmark inputs, generated from a seed and the model's own tokenizer.

Two sets, both with exact token counts (special tokens included), so that the offline ceiling
and every server run see the same sequences:

- the mixed-length text set: English-like sentences of 8-128 tokens, lengths drawn from a
  log-normal around 32 tokens (short reviews and queries dominate, a long tail of paragraphs),
  words drawn with Zipf weights from the frequency-ordered ELECTRA vocabulary, some glued into
  rare words that split into several word pieces, commas and full stops;
- the long-context QA set: a question of 8-20 tokens and a context of 300-1,500 tokens, which
  the server splits into stride windows.

Only `tokenizers` and numpy: the bench imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# The frequency-ordered part of the BERT/ELECTRA uncased vocabulary starts at "the" (id 1996).
_FIRST_WORD_ID = 1996
_WORD_POOL = 12000


@dataclass(frozen=True, slots=True)
class QaPair:
    question: str
    context: str


def vocab_words(vocab_file: Path) -> list[str]:
    """Whole alphabetic words of the vocabulary, most frequent first."""
    lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
    words = [w for w in lines[_FIRST_WORD_ID:] if w.isascii() and w.isalpha() and len(w) > 1]
    return words[:_WORD_POOL]


def default_vocab_file() -> Path:
    from importlib import resources

    return Path(str(resources.files("export") / "data" / "electra-vocab.txt"))


def bert_tokenizer(vocab_file: Path | None = None) -> Tokenizer:
    """The uncased BERT/ELECTRA WordPiece tokenizer built from a vocab file (the demo models' own),
    for generating inputs without a model repository at hand."""
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece.from_file(str(vocab_file or default_vocab_file()), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def target_lengths(n: int, seed: int, low: int = 8, high: int = 128, median: int = 32) -> list[int]:
    """n token counts in [low, high]: log-normal around `median`, the tail clipped to `high`."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=math.log(median), sigma=0.6, size=n)
    return [int(v) for v in np.clip(np.rint(raw), low, high)]


class TextGenerator:
    """Builds texts with an exact token count for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer, words: Sequence[str], seed: int) -> None:
        # A private copy: the tokenizer.json may carry truncation settings, and a context of
        # 1,500 tokens must be counted whole.
        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()
        self._rng = np.random.default_rng(seed)
        self._words = list(words)
        ranks = np.arange(len(self._words), dtype=np.float64)
        weights = 1.0 / (ranks + 10.0)  # Zipf, flattened at the head so "the" is not every other word
        self._cdf = np.cumsum(weights / weights.sum())
        self._single = [w for w in self._words[:3000] if self._count(w) == 1]
        overhead = self._tok.encode("").ids
        self._specials = len(overhead)

    @lru_cache(maxsize=65536)  # noqa: B019  # one generator per run; the cache dies with it
    def _count(self, word: str) -> int:
        return len(self._tok.encode(word, add_special_tokens=False).ids)

    def _word(self) -> str:
        index = min(int(np.searchsorted(self._cdf, self._rng.random())), len(self._words) - 1)
        word = self._words[index]
        if self._rng.random() < 0.04:  # a rare compound: several word pieces
            word += self._words[int(self._rng.integers(2000, len(self._words)))]
        return word

    def text(self, tokens: int) -> str:
        """A text of exactly `tokens` tokens, [CLS] and [SEP] included (at least 3)."""
        budget = max(1, tokens - self._specials)
        out: list[str] = []
        used = 0
        since_stop = 0
        while used < budget:
            room = budget - used
            if since_stop >= 6 and room >= 2 and self._rng.random() < 0.12:
                out[-1] += "." if self._rng.random() < 0.7 else ","
                used += 1
                since_stop = 0
                continue
            word = self._word()
            cost = self._count(word)
            if cost > room:
                word = self._single[int(self._rng.integers(len(self._single)))]
                cost = 1
            if not out or out[-1].endswith("."):
                word = word.capitalize()
            out.append(word)
            used += cost
            since_stop += 1
        text = " ".join(out)
        got = len(self._tok.encode(text).ids)
        if got != tokens and tokens > self._specials:
            raise AssertionError(f"generated {got} tokens instead of {tokens}: {text!r}")
        return text


def mixed_texts(
    tokenizer: Tokenizer, n: int = 2000, seed: int = 1234, low: int = 8, high: int = 128, vocab_file: Path | None = None
) -> list[str]:
    """The mixed-length text set: n texts of low..high tokens, in a fixed shuffled order."""
    gen = TextGenerator(tokenizer, vocab_words(vocab_file or default_vocab_file()), seed)
    return [gen.text(k) for k in target_lengths(n, seed, low, high)]


def fixed_texts(
    tokenizer: Tokenizer, n: int, tokens: int, seed: int = 4321, vocab_file: Path | None = None
) -> list[str]:
    """n texts of exactly `tokens` tokens (the GPU target is stated at 128)."""
    gen = TextGenerator(tokenizer, vocab_words(vocab_file or default_vocab_file()), seed)
    return [gen.text(tokens) for _ in range(n)]


def qa_pairs(
    tokenizer: Tokenizer,
    n: int = 64,
    seed: int = 99,
    context_tokens: tuple[int, int] = (300, 1500),
    vocab_file: Path | None = None,
) -> list[QaPair]:
    """The long-context QA set: questions of 8-20 tokens, contexts log-uniform in `context_tokens`."""
    gen = TextGenerator(tokenizer, vocab_words(vocab_file or default_vocab_file()), seed)
    rng = np.random.default_rng(seed)
    low, high = context_tokens
    pairs = []
    for _ in range(n):
        q_len = int(rng.integers(8, 21))
        c_len = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        question = gen.text(q_len).rstrip(".,") + "?"
        pairs.append(QaPair(question=question, context=gen.text(c_len)))
    return pairs


def token_lengths(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
