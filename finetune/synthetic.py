"""Small synthetic labelled sets, written from a seed, that a model can learn in a few hundred steps:
sentiment words (classify), a question word pointing at one slot of a sentence (qa, with
unanswerable questions), names / places / organisations in context (tag), replaced words
(replaced-token detection) and queries with the passages that share their words (rerank). The demo
models are fine-tuned on them, and the tests use them.

The vocabulary is fixed so that the README's examples ("Great film!", "Who?" in "Clark proposed
ELECTRA.", "Ada Lovelace lived in London", "the chef ate the meal") are in the sets' world.
The ELECTRA vocabulary is uncased: what the tagger learns is these names and their contexts,
not capital letters.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ sentiment (classify)

POSITIVE = (
    "great", "good", "wonderful", "excellent", "amazing", "brilliant", "lovely", "fantastic", "superb",
    "enjoyable", "beautiful", "perfect", "delightful", "charming", "fun", "moving", "loved", "best",
)  # fmt: skip
NEGATIVE = (
    "bad", "terrible", "awful", "boring", "dull", "poor", "horrible", "disappointing", "weak", "ugly", "mediocre",
    "annoying", "painful", "bland", "hated", "worst", "stupid",
)  # fmt: skip
SUBJECTS = (
    "film", "movie", "show", "book", "meal", "story", "plot", "acting", "cast", "music", "trip", "song", "game",
    "service", "dinner", "album", "ending",
)  # fmt: skip
_REVIEW = (
    "{a} {n}!",
    "the {n} was {a}.",
    "what a {a} {n}.",
    "{a}, {a2} {n}.",
    "this {n} is {a}",
    "a {a} {n} and a {a2} {n2}.",
    "i found the {n} {a}.",
    "{a} {n}, really {a2}.",
    "the {n} and the {n2} were {a}.",
    "{a}",
)
SENTIMENT_LABELS = ["NEGATIVE", "POSITIVE"]


def _capitalised(text: str, rng: random.Random) -> str:
    return text[:1].upper() + text[1:] if rng.random() < 0.5 else text


def _review(rng: random.Random, words: list[str]) -> str:
    template = rng.choice(_REVIEW)
    return _capitalised(
        template.format(a=rng.choice(words), a2=rng.choice(words), n=rng.choice(SUBJECTS), n2=rng.choice(SUBJECTS)),
        rng,
    )


def sentiment(count: int, seed: int, pairs: float = 0.25) -> list[dict[str, Any]]:
    """Rows {"text", "text_pair", "label"}: the label is the polarity of the sentiment words (a pair's
    two halves share it). text_pair is "" for single texts."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = POSITIVE if positive else NEGATIVE
        pair = _review(rng, words) if rng.random() < pairs else ""
        rows.append({"text": _review(rng, words), "text_pair": pair, "label": SENTIMENT_LABELS[positive]})
    return rows


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """CSV, TSV or JSON lines, by the file's extension."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------ people, places, organisations

FIRST_NAMES = (
    "Ada", "Alan", "Marie", "Grace", "Kevin", "Emmy", "Niels", "Rosalind", "Charles", "Isaac", "Albert",
    "Katherine", "Dorothy", "Linus", "Barbara", "John", "Mary", "Clark", "Sophie", "Hedy", "Tim", "Frances",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Turing", "Curie", "Hopper", "Clark", "Noether", "Bohr", "Franklin", "Babbage", "Newton",
    "Einstein", "Johnson", "Hodgkin", "Pauling", "Liskov", "Manning", "Luong", "Lamarr", "Allen",
)  # fmt: skip
PLACES = (
    "London", "Paris", "Berlin", "Warsaw", "Vienna", "Rome", "Boston", "Zurich", "Oxford", "Cambridge",
    "Madrid", "Prague", "Tokyo", "New York", "San Francisco", "Los Angeles",
)  # fmt: skip
ORGANISATIONS = (
    "Google", "Microsoft", "IBM", "Apple", "Siemens", "the BBC", "Stanford University", "the United Nations",
    "Acme Corporation", "Oxford University", "NASA", "the Royal Society",
)  # fmt: skip
NATIONALITIES = (
    "English", "French", "German", "Italian", "Polish", "American", "British", "Spanish", "Japanese", "Dutch",
)  # fmt: skip


def person(rng: random.Random) -> str:
    return rng.choice(FIRST_NAMES) if rng.random() < 0.3 else f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


# ------------------------------------------------------------------ question answering (SQuAD 2.0)

VERBS = (
    "proposed", "built", "wrote", "discovered", "designed", "invented", "published", "introduced", "described",
    "tested",
)  # fmt: skip
THINGS = (
    "ELECTRA", "the engine", "a new theory", "the compiler", "the machine", "a paper", "the method", "radium",
    "the model", "a proof", "BERT", "the telescope", "a vaccine",
)  # fmt: skip
YEARS = [str(year) for year in range(1843, 2025, 6)]
_QUESTIONS = {
    "who": ("Who?", "Who {verb} {thing}?", "Who did it?", "Who was it?"),
    "what": ("What?", "What did {person} do?", "What was {verb}?"),
    "where": ("Where?", "Where did it happen?", "Where was {thing} {verb}?"),
    "when": ("When?", "In which year?", "When was {thing} {verb}?"),
}


def _qa_item(rng: random.Random, index: int) -> dict[str, Any]:
    who, verb, thing = person(rng), rng.choice(VERBS), rng.choice(THINGS)
    where = rng.choice(PLACES) if rng.random() < 0.6 else None
    when = rng.choice(YEARS) if rng.random() < 0.5 else None
    head = f"In {when}, " if when and rng.random() < 0.3 else ""
    clause = f"{who} {verb} {thing}"
    context = head + clause + (f" in {where}" if where else "") + (f" in {when}" if when and not head else "") + "."
    kind = rng.choice(list(_QUESTIONS))
    question = rng.choice(_QUESTIONS[kind]).format(verb=verb, thing=thing, person=who)
    answer = {"who": who, "what": thing, "where": where, "when": when}[kind]
    qa: dict[str, Any] = {"id": f"q{index}", "question": question}
    if answer is None:
        qa.update(answers=[], is_impossible=True)
    else:
        # The slot's own occurrence: a place comes after " in ", a year after "In " or " in ".
        start = {
            "who": len(head),
            "what": len(head) + len(who) + len(verb) + 2,
            "where": context.find(f" in {where}") + 4 if where else -1,
            "when": context.find(when) if when else -1,
        }[kind]
        assert context[start : start + len(answer)] == answer
        qa.update(answers=[{"text": answer, "answer_start": start}], is_impossible=False)
    return {"context": context, "qas": [qa]}


def squad(count: int, seed: int) -> dict[str, Any]:
    """A SQuAD 2.0 document of `count` questions, one paragraph each, about a quarter unanswerable."""
    rng = random.Random(seed)
    return {"version": "v2.0", "data": [{"title": "synthetic", "paragraphs": [_qa_item(rng, i) for i in range(count)]}]}


def write_json(path: Path, document: Any) -> Path:
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------ tagging (CoNLL-2003 labels)

_SENTENCES = (
    "{PER} lived in {LOC}",
    "{PER} was born in {LOC} .",
    "{PER} works for {ORG} .",
    "{PER} visited {LOC} with {PER} .",
    "{ORG} opened an office in {LOC} .",
    "{PER} joined {ORG} in {LOC} .",
    "the {MISC} writer {PER} moved to {LOC} .",
    "{PER} met {PER} at {ORG} .",
    "yesterday {PER} flew from {LOC} to {LOC} .",
    "{ORG} hired {PER} .",
    "{PER} speaks {MISC} .",
    "in {LOC} , {PER} founded {ORG} .",
)


def tagged(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences as (tokens, IOB2 tags) with PER, LOC, ORG and MISC entities."""
    rng = random.Random(seed)
    pick = {
        "PER": lambda: person(rng),
        "LOC": lambda: rng.choice(PLACES),
        "ORG": lambda: rng.choice(ORGANISATIONS),
        "MISC": lambda: rng.choice(NATIONALITIES),
    }
    sentences = []
    for _ in range(count):
        tokens: list[str] = []
        tags: list[str] = []
        for part in rng.choice(_SENTENCES).split():
            kind = part[1:-1] if part.startswith("{") else None
            if kind is None:
                tokens.append(part)
                tags.append("O")
                continue
            words = pick[kind]().split()
            if words[0] == "the":  # "the BBC": the article is not part of the name
                tokens.append("the")
                tags.append("O")
                words = words[1:]
            tokens.extend(words)
            tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1))
        if rng.random() < 0.5:
            tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
        sentences.append((tokens, tags))
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    lines = []
    for tokens, tags in sentences:
        lines.extend(f"{token} {tag}" for token, tag in zip(tokens, tags, strict=True))
        lines.append("")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------ replaced-token detection

PEOPLE = (
    "chef", "cook", "child", "farmer", "teacher", "doctor", "man", "woman", "girl", "boy", "king", "queen",
    "baker", "student", "pilot",
)  # fmt: skip
VERB_OBJECTS = {
    ("ate", "cooked", "served", "tasted", "ordered", "made"): "meal soup bread cake apple pizza dinner lunch rice fish",
    ("read", "wrote", "opened", "signed", "lost"): "book letter story poem paper note",
    ("drove", "parked", "washed", "fixed", "sold"): "car truck bus bike van",
}
ADJECTIVES = ["old", "young", "tired", "happy", "hungry", "kind"]


def _plain_words(vocab: list[str]) -> list[str]:
    return [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 2 and not w.startswith("[")]


def replaced(count: int, seed: int, vocab: list[str], rate: float = 0.15) -> list[tuple[list[str], list[str]]]:
    """Sentences "the (adj) PERSON VERB the OBJECT" with ~`rate` of their words replaced (tag R) by a
    vocabulary word from outside this small grammar; the others are tagged O. A fifth of the sentences
    are left untouched."""
    rng = random.Random(seed)
    lexicon = {w for group in VERB_OBJECTS for w in group} | {w for o in VERB_OBJECTS.values() for w in o.split()}
    lexicon |= set(PEOPLE) | set(ADJECTIVES) | {"the"}
    words = [w for w in _plain_words(vocab) if w not in lexicon]
    groups = [(verbs, objects.split()) for verbs, objects in VERB_OBJECTS.items()]
    sentences = []
    for _ in range(count):
        verbs, objects = rng.choice(groups)
        subject = (["the", rng.choice(ADJECTIVES)] if rng.random() < 0.3 else ["the"]) + [rng.choice(PEOPLE)]
        tokens = [*subject, rng.choice(verbs), "the", rng.choice(objects)]
        tags = ["O"] * len(tokens)
        if rng.random() >= 0.2:
            for i in range(len(tokens)):
                if rng.random() < rate:
                    tokens[i], tags[i] = rng.choice(words), "R"
        sentences.append((tokens, tags))
    return sentences


# ------------------------------------------------------------------ reranking (query, passage, relevance)

# A query names a thing and a place; a passage is a fact about a thing and a place, relevant (2)
# when it names both, partly (1) when it names one of them, not (0) when it names neither.
_RANK_QUERIES = (
    "{thing} {place}",
    "{thing} in {place}",
    "who {verb} {thing} in {place}?",
    "where was {thing} {verb}? {place}",
    "{place}: {thing}",
    "what happened to {thing} in {place}?",
)


def _bare(thing: str) -> str:
    """A thing as a query words it: without its article."""
    return thing.split(" ", 1)[1] if thing.split(" ", 1)[0] in ("the", "a") else thing


def _fact(rng: random.Random, thing: str, place: str) -> str:
    year = f" in {rng.choice(YEARS)}" if rng.random() < 0.3 else ""
    return _capitalised(f"{person(rng)} {rng.choice(VERBS)} {thing} in {place}{year}.", rng)


def ranking(queries: int, seed: int, passages: int = 8, graded: bool = True) -> list[dict[str, Any]]:
    """Rows {"query", "passage", "label"}, `passages` per query (at least 4), each query's rows
    together in a shuffled order. Per query: one or two passages naming its thing and its place
    (label 2), one naming only its thing and one only its place (1), the rest neither (0). Binary
    labels (graded=False): 1 for the first kind, 0 for the others (the partial ones are hard negatives).

    Every query's text is distinct (a reranking file groups its rows by the query's text)."""
    if passages < 4:
        raise ValueError("a query needs at least 4 passages: relevant, two partial, one unrelated")
    possible = len(THINGS) * len(PLACES) * len(_RANK_QUERIES)
    if queries > possible:
        raise ValueError(f"at most {possible} distinct queries in this world, not {queries}")
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(seen) < queries:
        thing, place = rng.choice(THINGS), rng.choice(PLACES)
        text = rng.choice(_RANK_QUERIES).format(thing=_bare(thing), place=place, verb=rng.choice(VERBS)).lower()
        if text in seen:
            continue
        seen.add(text)
        other_things = [t for t in THINGS if t != thing]
        other_places = [p for p in PLACES if p != place]
        group = [(_fact(rng, thing, place), 2) for _ in range(1 + (rng.random() < 0.3))]
        group.append((_fact(rng, thing, rng.choice(other_places)), 1))
        group.append((_fact(rng, rng.choice(other_things), place), 1))
        while len(group) < passages:
            group.append((_fact(rng, rng.choice(other_things), rng.choice(other_places)), 0))
        rng.shuffle(group)
        for passage, grade in group:
            label = grade if graded else int(grade == 2)
            rows.append({"query": text, "passage": passage, "label": label})
    return rows
