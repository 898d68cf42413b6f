"""Readers for the three file layouts: tables (CSV / TSV / JSON lines), the official SQuAD JSON and
CoNLL token columns. Each returns plain Python records and raises DataError with the file (and line)
for anything it cannot use, so a bad file fails before any model is loaded."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import DataError, where

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True, slots=True)
class Record:
    """One row of a table with the line it came from (for messages)."""

    line: int
    values: dict[str, Any]


def _text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from exc
    if not text.strip():
        raise DataError(f"{path}: empty file, no examples")
    return text


def table_format(path: Path) -> str:
    fmt = TABLE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown table format '{Path(path).suffix}': use .csv, .tsv or .jsonl (JSON lines)")
    return fmt


def read_table(path: Path, required: list[str]) -> list[Record]:
    """Rows of a CSV (header line), TSV (header line, no quoting, as GLUE ships them) or JSON-lines file,
    each with every column in `required`."""
    path = Path(path)
    text = _text(path)
    fmt = table_format(path)
    if fmt == "jsonl":
        records, columns = _json_lines(path, text)
    else:
        records, columns = _delimited(path, text, fmt)
    if not records:
        raise DataError(f"{path}: no examples (only a header line)")
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(columns) or 'none'}); "
            "name the right ones with --text-column / --text-pair-column / --label-column"
        )
    for record in records:
        absent = [c for c in required if record.values.get(c) is None]
        if absent:
            raise DataError(f"{where(path, record.line)}: no value for column {absent[0]!r}")
    return records


def _json_lines(path: Path, text: str) -> tuple[list[Record], list[str]]:
    records: list[Record] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where(path, number)}: not a JSON object ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise DataError(f"{where(path, number)}: each line must be a JSON object, got {type(value).__name__}")
        columns.update(dict.fromkeys(value))
        records.append(Record(number, value))
    return records, list(columns)


def _delimited(path: Path, text: str, fmt: str) -> tuple[list[Record], list[str]]:
    if fmt == "csv":
        reader = csv.reader(text.splitlines(), strict=True)
    else:
        reader = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{where(path, reader.line_num)}: malformed {fmt.upper()} ({exc})") from exc
    header = [name.strip() for name in rows[0]]
    records = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{where(path, number)}: {len(row)} fields, but the header has {len(header)}")
        records.append(Record(number, dict(zip(header, row, strict=True))))
    return records, header


# ------------------------------------------------------------------ SQuAD


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    start: int  # character offset in the context


@dataclass(slots=True)
class QaExample:
    id: str
    question: str
    context: str
    answers: list[Answer] = field(default_factory=list)  # empty: unanswerable (SQuAD 2.0)

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def read_squad(path: Path) -> tuple[list[QaExample], str]:
    """Questions of an official SQuAD 1.1 / 2.0 file (`{"version", "data": [{"paragraphs": [...]}]}`)
    and its version. Every answer must be found in its context."""
    path = Path(path)
    try:
        document = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{where(path, exc.lineno)}: not JSON ({exc.msg})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f'{path}: not the SQuAD layout: expected {{"version": ..., "data": [...]}} at the top')
    examples: list[QaExample] = []
    seen: set[str] = set()
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            context = paragraph.get("context")
            if not isinstance(context, str) or not context:
                raise DataError(f"{path}: a paragraph has no context text")
            for qa in paragraph.get("qas", []):
                examples.append(_question(path, qa, context, len(examples)))
                if examples[-1].id in seen:
                    raise DataError(f"{path}: question id {examples[-1].id!r} appears twice")
                seen.add(examples[-1].id)
    if not examples:
        raise DataError(f"{path}: no questions (data[].paragraphs[].qas is empty)")
    return examples, str(document.get("version", ""))


def _question(path: Path, qa: Any, context: str, index: int) -> QaExample:
    if not isinstance(qa, dict):
        raise DataError(f"{path}: question #{index + 1} is not an object")
    qid = str(qa.get("id", f"q{index}"))
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{path}: question {qid!r} has no question text")
    answers = []
    impossible = bool(qa.get("is_impossible", False))
    for answer in [] if impossible else qa.get("answers", []):
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not text:
            raise DataError(f"{path}: question {qid!r} has an answer without text")
        start = answer.get("answer_start")
        if start is None:
            start = context.find(text)
        if not isinstance(start, int) or start < 0 or context[start : start + len(text)] != text:
            raise DataError(
                f"{path}: question {qid!r}: answer {text!r} is not in its context"
                + (f" at offset {start}" if isinstance(start, int) and start >= 0 else "")
            )
        answers.append(Answer(text, start))
    if not impossible and not answers and "answers" not in qa:
        raise DataError(f"{path}: question {qid!r} has no answers and is not marked is_impossible")
    return QaExample(qid, question, context, answers)


# ------------------------------------------------------------------ CoNLL


@dataclass(slots=True)
class TaggedSentence:
    line: int  # the line of its first token
    tokens: list[str]
    tags: list[str]


def read_conll(path: Path) -> list[TaggedSentence]:
    """Sentences of a CoNLL-style file: one token a line, its tag in the last column (CoNLL-2003:
    `word POS chunk NER`), blank lines between sentences, `-DOCSTART-` lines ignored."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def close() -> None:
        if tokens:
            sentences.append(TaggedSentence(first, list(tokens), list(tags)))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2:
            raise DataError(f"{where(path, number)}: expected a token and its tag, got {line.strip()!r}")
        if not tokens:
            first = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    close()
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences
