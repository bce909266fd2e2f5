"""Prompt-based NER by span enumeration: candidate spans, decoding from a score matrix (threshold,
"none", greedy overlaps, BIO tags), training examples, and the tagger end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaprompt.classifier import load
from deltaprompt.span_ner import (
    DEFAULT_TEMPLATE,
    NONE,
    SpanTagger,
    candidate_spans,
    pick_entities,
    resolve_overlaps,
)
from deltaprompt.spans import Span, bio_tags, tagged_example
from deltaprompt.tagging import TaggingEvaluation

from .conftest import responsive, tiny_plm

TRAIN = [
    tagged_example(["Peter", "visited", "Paris"], ["B-PER", "O", "B-LOC"]),
    tagged_example(["Anna", "Smith", "likes", "Rome"], ["B-PER", "I-PER", "O", "B-LOC"]),
    tagged_example(["the", "movie", "was", "great"], ["O", "O", "O", "O"]),
    tagged_example(["Paris", "loves", "Anna"], ["B-LOC", "O", "B-PER"]),
]
WORDS = {"PER": "acting", "LOC": "film"}  # words the tiny tokenizer knows; the types are learnt
CLASSES = ("PER", "LOC", NONE)


def steady(plm):
    """The tiny PLM without dropout, which at the responsive scale drowns a few-step fit in noise."""
    for module in plm.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return plm


def tagger_on(tokenizer, **options) -> SpanTagger:
    options = {"none_word": "news", "max_span_words": 2, "progress": False, **options}
    return SpanTagger(steady(responsive(tiny_plm("gpt2", tokenizer))), None, WORDS, **options)


@pytest.mark.parametrize(("words", "cap", "count"), [(5, 2, 9), (3, 4, 6), (4, 1, 4), (1, 3, 1), (0, 3, 0)])
def test_candidate_spans_are_every_span_up_to_the_cap(words, cap, count):
    spans = candidate_spans(words, cap)
    assert len(spans) == count == len(set(spans))
    assert all(0 <= s.start < s.end <= words and s.end - s.start <= cap for s in spans)
    assert spans == sorted(spans, key=lambda s: (s.start, s.end))


def test_candidate_spans_refuse_a_cap_below_one():
    with pytest.raises(ValueError, match="max_span_words"):
        candidate_spans(3, 0)


def hand_made_scores() -> tuple[list[Span], np.ndarray]:
    """Four words, spans of up to two words; columns PER, LOC, none."""
    spans = candidate_spans(4, 2)  # [0,1) [0,2) [1,2) [1,3) [2,3) [2,4) [3,4)
    rows = {
        (0, 1): [0.60, 0.10, 0.30],  # PER, but overlaps [0,2) which scores higher
        (0, 2): [0.90, 0.05, 0.05],  # PER: the best span of the sentence
        (1, 2): [0.10, 0.70, 0.20],  # LOC, overlaps [0,2): dropped
        (1, 3): [0.20, 0.20, 0.60],  # none
        (2, 3): [0.10, 0.55, 0.35],  # LOC at 0.55
        (2, 4): [0.05, 0.80, 0.15],  # LOC at 0.80: wins over [2,3) and [3,4)
        (3, 4): [0.45, 0.10, 0.45],  # a tie with none does not make an entity
    }
    return spans, np.array([rows[(s.start, s.end)] for s in spans])


def test_decoding_keeps_confident_spans_and_resolves_overlaps_greedily():
    spans, scores = hand_made_scores()
    entities = pick_entities(spans, scores, CLASSES, threshold=0.5)
    assert entities == [Span(0, 2, "PER"), Span(2, 4, "LOC")]
    assert bio_tags(4, entities) == ["B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_the_threshold_and_the_none_class_decide_which_spans_count():
    spans, scores = hand_made_scores()
    assert pick_entities(spans, scores, CLASSES, threshold=0.85) == [Span(0, 2, "PER")]
    assert pick_entities(spans, scores, CLASSES, threshold=0.95) == []
    # At threshold 0.4, [3,4) passes the threshold but ties with none, so it still is no entity.
    scores[5] = [0.05, 0.15, 0.80]  # [2,4) becomes none: [2,3) LOC and nothing at [3,4)
    assert pick_entities(spans, scores, CLASSES, threshold=0.4) == [Span(0, 2, "PER"), Span(2, 3, "LOC")]
    with pytest.raises(ValueError, match=r"\(7, 3\)"):
        pick_entities(spans, scores[:, :2], CLASSES)


def test_resolve_overlaps_breaks_ties_by_position_then_length():
    kept = resolve_overlaps([(Span(1, 3, "A"), 0.7), (Span(0, 2, "B"), 0.7), (Span(0, 1, "C"), 0.7)])
    assert kept == [Span(0, 1, "C"), Span(1, 3, "A")]


def test_span_examples_are_the_gold_entities_and_seeded_negatives(gpt2_tokenizer):
    tagger = tagger_on(gpt2_tokenizer, negatives_per_sentence=2)
    examples = tagger.span_examples(TRAIN)
    entities = [e for e in examples if e.label != NONE]
    assert [(e.meta["entity"], e.label) for e in entities] == [
        ("Peter", "PER"), ("Paris", "LOC"), ("Anna Smith", "PER"), ("Rome", "LOC"), ("Paris", "LOC"), ("Anna", "PER")]
    assert sum(e.label == NONE for e in examples) == 2 * len(TRAIN)
    for example in examples:
        span = example.meta["span"]
        assert example.text[span["start"] : span["end"]] == span["text"] == example.meta["entity"]
        assert example.meta["sentence"] == example.text
    gold = {(e.text, e.meta["entity"]) for e in entities}
    assert not any((e.text, e.meta["entity"]) in gold for e in examples if e.label == NONE)
    assert tagger.span_examples(TRAIN) == examples
    assert tagger.span_examples(TRAIN, seed=1) != examples


def test_predict_scores_every_candidate_and_tags_every_word(gpt2_tokenizer):
    tagger = tagger_on(gpt2_tokenizer)
    sentences = [TRAIN[0], "a single", {"tokens": ["one"]}]
    tags = tagger.predict(sentences)
    assert [len(t) for t in tags] == [3, 2, 1]
    assert all(t == "O" or t[2:] in WORDS and t[:2] in ("B-", "I-") for sentence in tags for t in sentence)
    probabilities = tagger.predict_proba(sentences)
    assert [p.shape for p in probabilities] == [(5, 3), (3, 3), (1, 3)]
    for p in probabilities:
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    expected = [bio_tags(len(t), pick_entities(candidate_spans(len(t), 2), p, tagger.classes, tagger.threshold))
                for t, p in zip(tags, probabilities, strict=True)]
    assert tags == expected
    tagger.threshold = 1.0  # nothing is that sure
    assert tagger.predict(sentences) == [["O"] * 3, ["O"] * 2, ["O"]]


def test_fit_learns_the_entities_and_round_trips(gpt2_tokenizer, tmp_path):
    tagger = tagger_on(gpt2_tokenizer, negatives_per_sentence=10,
                       methods=[{"method": "lora", "lr": 1e-2, "dropout": 0.0}])
    assert tagger.classes == CLASSES and tagger.template.text == DEFAULT_TEMPLATE
    tagger.fit(TRAIN, epochs=30, batch_size=8, warmup_ratio=0.0, schedule="constant", progress=False)
    assert tagger.predict(TRAIN) == [list(e.meta["tags"]) for e in TRAIN]
    evaluation = tagger.evaluate(TRAIN)
    assert isinstance(evaluation, TaggingEvaluation) and evaluation.f1 == 1.0

    tagger.threshold = 0.6
    folder = tagger.save(tmp_path / "ner")
    again = load(folder, plm=steady(responsive(tiny_plm("gpt2", gpt2_tokenizer))))
    assert isinstance(again, SpanTagger)
    assert (again.threshold, again.max_span_words, again.none_word, again.types) == (0.6, 2, "news", ("PER", "LOC"))
    for mine, theirs in zip(tagger.predict_proba(TRAIN), again.predict_proba(TRAIN), strict=True):
        np.testing.assert_allclose(theirs, mine, atol=1e-6)
    assert again.predict(TRAIN) == tagger.predict(TRAIN)


def test_refusals(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    with pytest.raises(ValueError, match="label words"):
        SpanTagger(plm)
    with pytest.raises(ValueError, match="no entity"):
        SpanTagger(plm, None, {"none": "news", "PER": "acting"})
    with pytest.raises(ValueError, match="threshold"):
        SpanTagger(plm, None, WORDS, threshold=1.5)
    tagger = SpanTagger(plm, None, WORDS, none_word="news", progress=False)
    with pytest.raises(ValueError, match="no label words"):
        tagger.fit([tagged_example(["Berlin"], ["B-GPE"])])
    with pytest.raises(ValueError, match="gold tags"):
        tagger.evaluate(["no tags here"])
