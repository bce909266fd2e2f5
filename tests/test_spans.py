"""Entity spans, BIO tags and tagged examples: the data side of NER and relation tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deltaprompt import Example
from deltaprompt.data import as_examples, load_task
from deltaprompt.metrics import Evaluation
from deltaprompt.spans import (
    Span,
    SpanError,
    bio_entities,
    bio_tags,
    entity_mentions,
    entity_pair,
    entity_typing_examples,
    join_words,
    span_of,
    tagged_example,
    tokens_in,
)

TEXT = "The child was carefully wrapped and bound into the cradle."


def relation(head: dict, tail: dict) -> Example:
    return Example(TEXT, label="Content-Container(e1,e2)", meta={"head": head, "tail": tail})


def test_entity_pair_reads_checked_spans_and_templates_see_their_text():
    example = relation({"start": 4, "end": 9, "text": "child"}, {"start": 51, "end": 57, "text": "cradle"})
    head, tail = entity_pair(example, "example 3")
    assert (head.start, head.end, tail.start, tail.end) == (4, 9, 51, 57)
    assert example.field("head") == "child" and example.field("tail") == "cradle"


@pytest.mark.parametrize(("head", "message"), [
    ({"start": 50, "end": 70}, "out of range for a text of 58 characters"),
    ({"start": -1, "end": 3}, "out of range"),
    ({"start": 9, "end": 9}, "is empty"),
    ({"start": 9, "end": 4}, "is empty"),
    ({"start": 48, "end": 55}, "overlap"),
    ({"start": 4, "end": 9, "text": "chi1d"}, "not the stated 'chi1d'"),
    ({"start": "4", "end": 9}, "must be integers"),
    ({"end": 9}, "must be a mapping with 'start' and 'end'"),
])
def test_bad_spans_name_the_example(head, message):
    example = relation(head, {"start": 51, "end": 57})
    with pytest.raises(SpanError, match=message) as error:
        entity_pair(example, "train example 12")
    assert str(error.value).startswith("train example 12:")


def test_missing_entity_is_an_error():
    with pytest.raises(SpanError, match="meta\\['tail'\\]"):
        span_of(Example(TEXT), "tail", "example 0")


def test_tokens_in_skips_zero_width_tokens_and_keeps_leading_space_tokens():
    # "the moviex was": GPT-2-like offsets with the space inside the next token, and a special.
    offsets = [(0, 0), (0, 3), (3, 9), (9, 10), (10, 14), (0, 0)]
    assert tokens_in(offsets, Span(4, 10)) == [2, 3]
    assert tokens_in(offsets, Span(0, 3)) == [1]
    assert tokens_in(offsets, Span(11, 14)) == [4]


def test_bio_round_trip_and_lenient_reading():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "I-MISC"]
    entities = bio_entities(tags)
    assert [(e.start, e.end, e.label) for e in entities] == [
        (0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 7, "ORG"), (8, 9, "MISC")]
    assert bio_tags(len(tags), entities) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "I-ORG", "O", "B-MISC"]
    with pytest.raises(ValueError, match="tag 1 is 'X-PER'"):
        bio_entities(["O", "X-PER"])


def test_join_words_gives_each_word_its_characters():
    text, spans = join_words(["EU", "rejects", "German"])
    assert text == "EU rejects German"
    assert [text[s.start : s.end] for s in spans] == ["EU", "rejects", "German"]


def test_tagged_examples_and_entity_typing():
    example = tagged_example(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"])
    assert example.text == "EU rejects German call" and example.label is None
    mentions = entity_mentions(example)
    assert [(example.text[m.start : m.end], m.label) for m in mentions] == [("EU", "ORG"), ("German", "MISC")]
    typing = entity_typing_examples([example])
    assert [(e.label, e.field("entity"), e.field("sentence")) for e in typing] == [
        ("ORG", "EU", example.text), ("MISC", "German", example.text)]
    assert typing[1].meta["span"] == {"start": 11, "end": 17, "text": "German"}
    with pytest.raises(ValueError, match="2 words but 1 tags"):
        tagged_example(["a", "b"], ["O"])
    with pytest.raises(ValueError, match="no spaces"):
        tagged_example(["a b"])


def test_conll_records_load_as_tagged_examples(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(["O", "B-PER", "I-PER"]))
    rows = [{"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "test.jsonl").write_text(json.dumps({"tokens": ["Paris"], "tags": ["B-LOC"]}))
    task = load_task(folder)
    [example] = task.load("train")
    assert example.meta == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}
    assert as_examples(rows)[0] == example
    with pytest.raises(ValueError, match="tag 'B-LOC' is not in labels.json"):
        task.load("test")


def test_macro_f1_can_leave_out_other():
    classes = ("Cause", "Effect", "Other")
    gold = ["Cause", "Cause", "Effect", "Other", "Other"]
    predicted = ["Cause", "Other", "Effect", "Cause", "Other"]
    probabilities = np.full((5, 3), 1 / 3)
    everything = Evaluation(classes, gold, predicted, probabilities)
    without_other = Evaluation(classes, gold, predicted, probabilities, ignore=("Other",))
    # Cause: tp 1, fp 1, fn 1 -> F1 0.5; Effect: 1.0; Other: tp 1, fp 1, fn 1 -> 0.5
    assert everything.macro_f1 == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert without_other.macro_f1 == pytest.approx((0.5 + 1.0) / 2)
    assert "without Other" in without_other.report()
    with pytest.raises(ValueError, match="not among the classes"):
        Evaluation(classes, gold, predicted, probabilities, ignore=("None",))
