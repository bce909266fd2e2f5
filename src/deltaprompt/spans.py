"""Entity spans: character offsets into an example's text, BIO tags over words, and the checks
that turn bad spans into errors naming the example.

Relation data (SemEval) marks two entities as ``meta["head"]`` / ``meta["tail"]``, each a
mapping ``{"start": ..., "end": ..., "text": ...}`` (end exclusive). NER data (CoNLL) comes as
words with BIO tags; ``tagged_example`` joins the words with single spaces, so every word, and
every entity, also has a character span in the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .data import Example


class SpanError(ValueError):
    """An entity span that cannot be used: missing, empty, out of range, or overlapping."""


@dataclass(frozen=True)
class Span:
    """``[start, end)``: character offsets, or word indices where a function says so."""

    start: int
    end: int
    label: str | None = None

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end


def span_of(example: Example, name: str, where: str = "example") -> Span:
    """``example.meta[name]`` as a checked character span of ``example.text``."""
    value = example.meta.get(name)
    if not isinstance(value, Mapping) or "start" not in value or "end" not in value:
        raise SpanError(f"{where}: meta[{name!r}] must be a mapping with 'start' and 'end' character offsets, "
                        f"got {value!r}")
    start, end = value["start"], value["end"]
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        raise SpanError(f"{where}: the {name} span's start and end must be integers, got {start!r}, {end!r}")
    size = len(example.text)
    if start < 0 or end > size:
        raise SpanError(f"{where}: the {name} span [{start}, {end}) is out of range for a text of {size} characters")
    if end <= start:
        raise SpanError(f"{where}: the {name} span [{start}, {end}) is empty")
    stated = value.get("text")
    if stated is not None and example.text[start:end] != stated:
        raise SpanError(f"{where}: the {name} span [{start}, {end}) reads {example.text[start:end]!r}, "
                        f"not the stated {stated!r}")
    return Span(start, end, name)


def entity_pair(example: Example, where: str = "example", names: tuple[str, str] = ("head", "tail")) -> tuple[Span, Span]:
    """The two entities of a relation example, checked, and refused when they overlap."""
    first, second = (span_of(example, name, where) for name in names)
    if first.overlaps(second):
        raise SpanError(f"{where}: the {names[0]} [{first.start}, {first.end}) and {names[1]} "
                        f"[{second.start}, {second.end}) spans overlap")
    return first, second


def tokens_in(offsets: Sequence[tuple[int, int]], span: Span) -> list[int]:
    """Indices of the tokens whose character offsets overlap ``span``. Zero-width tokens (special
    tokens) are skipped; a token with its leading space (GPT-2's " word") still counts."""
    return [i for i, (start, end) in enumerate(offsets) if end > start and start < span.end and end > span.start]


# ----------------------------------------------------------------------------- words and BIO tags

def join_words(tokens: Sequence[str]) -> tuple[str, list[Span]]:
    """The words joined by single spaces, and each word's character span in that text."""
    spans, position = [], 0
    for word in tokens:
        spans.append(Span(position, position + len(word)))
        position += len(word) + 1
    return " ".join(tokens), spans


def bio_entities(tags: Sequence[str], where: str = "tags") -> list[Span]:
    """Entity word spans (label: the type) from BIO tags. An I- tag that does not continue an
    entity of its type starts one, as seqeval's default reading does."""
    entities: list[Span] = []
    start: int | None = None
    kind: str | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not label):
            raise ValueError(f"{where}: tag {i} is {tag!r}; expected 'O', 'B-<type>' or 'I-<type>'")
        continues = prefix == "I" and kind == label and start is not None
        if start is not None and not continues:
            entities.append(Span(start, i, kind))
            start, kind = None, None
        if tag != "O" and not continues:
            start, kind = i, label
    return entities


def bio_tags(num_words: int, entities: Sequence[Span]) -> list[str]:
    """BIO tags for ``num_words`` words with the given (non-overlapping) entity word spans."""
    tags = ["O"] * num_words
    for entity in entities:
        if not 0 <= entity.start < entity.end <= num_words or entity.label is None:
            raise ValueError(f"entity {entity} does not fit {num_words} words or has no type")
        tags[entity.start] = f"B-{entity.label}"
        for i in range(entity.start + 1, entity.end):
            tags[i] = f"I-{entity.label}"
    return tags


def tagged_example(tokens: Sequence[str], tags: Sequence[str] | None = None, where: str = "example") -> Example:
    """A sentence given as words (and, for training, one BIO tag per word)."""
    words = [str(w) for w in tokens]
    if not words:
        raise ValueError(f"{where}: a tagged example needs at least one word")
    if any(not w or any(c.isspace() for c in w) for w in words):
        raise ValueError(f"{where}: words must be non-empty and contain no spaces")
    meta: dict[str, Any] = {"tokens": words}
    if tags is not None:
        tags = [str(t) for t in tags]
        if len(tags) != len(words):
            raise ValueError(f"{where}: {len(words)} words but {len(tags)} tags")
        bio_entities(tags, where)  # refuses malformed tags now, not mid-training
        meta["tags"] = tags
    return Example(" ".join(words), meta=meta)


def entity_mentions(example: Example, where: str = "example") -> list[Span]:
    """The gold entities of a tagged example as character spans of its text (label: the type)."""
    words = example.meta.get("tokens")
    tags = example.meta.get("tags")
    if words is None or tags is None:
        raise ValueError(f"{where}: not a tagged example with tags (meta 'tokens' and 'tags')")
    _, word_spans = join_words(words)
    return [Span(word_spans[e.start].start, word_spans[e.end - 1].end, e.label) for e in bio_entities(tags, where)]


def entity_typing_examples(tagged: Sequence[Example]) -> list[Example]:
    """One entity-typing example per gold entity: the sentence, the mention, its type as label."""
    out = []
    for n, example in enumerate(tagged):
        for mention in entity_mentions(example, f"example {n}"):
            text = example.text[mention.start : mention.end]
            out.append(Example(example.text, label=mention.label, meta={
                "sentence": example.text, "entity": text,
                "span": {"start": mention.start, "end": mention.end, "text": text},
            }))
    return out
