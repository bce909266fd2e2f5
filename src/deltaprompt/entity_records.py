"""Tagged sentences as a generation task: the sentence in, a JSON record of its entities out.

    entity_record_examples([tagged_example(["Ada", "Lovelace", "in", "Paris"],
                                           ["B-PER", "I-PER", "O", "B-LOC"])])
    # [Example('Ada Lovelace in Paris', meta={'target': '{"persons": ["Ada Lovelace"],
    #   "organizations": [], "locations": ["Paris"], "misc": []}'})]

Every record has one list per entity type, empty ones included, so all records follow one JSON
Schema (``entity_record_schema``) and a post-processing ``json`` step can check them. CoNLL's
types get readable field names (PER -> persons, ORG -> organizations, LOC -> locations, MISC ->
misc), in that order; any other type is its name in lower case, after them in sorted order.
Within a field, entities keep their order in the sentence, each written once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .data import Example
from .spans import entity_mentions

FIELD_NAMES = {"PER": "persons", "ORG": "organizations", "LOC": "locations", "MISC": "misc"}


def record_types(tags_or_types: Iterable[str]) -> list[str]:
    """The entity types of a tag set (``B-PER``, ``I-PER``, ``O``...) or of a list of types, in
    record order: CoNLL's four first, then the others sorted."""
    types = {t[2:] if t[:2] in ("B-", "I-") else t for t in tags_or_types if t != "O"}
    return [t for t in FIELD_NAMES if t in types] + sorted(types - set(FIELD_NAMES))


def field_name(entity_type: str) -> str:
    return FIELD_NAMES.get(entity_type, entity_type.lower())


def entity_record(example: Example, types: Sequence[str], where: str = "example") -> dict[str, list[str]]:
    """``{field: [entity text, ...]}`` for a tagged sentence with its tags."""
    record: dict[str, list[str]] = {field_name(t): [] for t in types}
    for mention in entity_mentions(example, where):
        key = field_name(str(mention.label))
        if key not in record:
            raise ValueError(f"{where}: entity type {mention.label!r} is not among the record's types {list(types)}")
        text = example.text[mention.start : mention.end]
        if text not in record[key]:
            record[key].append(text)
    return record


def entity_record_schema(types: Sequence[str]) -> dict[str, Any]:
    """The JSON Schema every record of these types follows: each field a list of strings, all
    fields present, no others."""
    fields = [field_name(t) for t in types]
    return {
        "type": "object",
        "properties": {f: {"type": "array", "items": {"type": "string"}} for f in fields},
        "required": fields,
        "additionalProperties": False,
    }


def entity_record_examples(tagged: Sequence[Example], types: Sequence[str] | None = None) -> list[Example]:
    """One generation example per tagged sentence: its text, and as ``meta["target"]`` its
    record as JSON text. ``types``: the record's entity types (default: those in the tags)."""
    if types is None:
        types = record_types(t for e in tagged for t in e.meta.get("tags", ()))
    out = []
    for n, example in enumerate(tagged):
        if "tokens" not in example.meta:
            raise ValueError(f"example {n}: not a tagged sentence (words and BIO tags)")
        if "tags" not in example.meta:  # a sentence to generate for, with no record to learn
            out.append(Example(example.text))
            continue
        record = entity_record(example, types, f"example {n}")
        out.append(Example(example.text, meta={"target": json.dumps(record, ensure_ascii=False)}))
    return out


__all__ = ["FIELD_NAMES", "entity_record", "entity_record_examples", "entity_record_schema", "field_name",
           "record_types"]
