"""Prompt-based NER: every word span of a sentence is typed by a prompt, then the confident,
non-overlapping ones become BIO tags.

    tagger = SpanTagger("smollm2-135m", None, {"PER": "person", "LOC": "place", "ORG": "company"},
                        methods=["lora"])
    tagger.fit(train)                      # tagged examples: gold entities + sampled non-entities
    tagger.predict(["Peter flew to Paris"])  # [['B-PER', 'O', 'O', 'B-LOC']]
    tagger.evaluate(test).report()         # entity-level precision, recall, F1 (seqeval)

Each candidate span fills the template as an entity-typing example (``sentence``, ``entity``
and ``span`` meta fields, as ``spans.entity_typing_examples`` builds them), and a
``PromptClassifier`` scores the entity types plus a "none" class (label word ``none_word``).
The decoding (which spans, which overlaps win, which tags) is pure functions of a score matrix:
``candidate_spans``, ``pick_entities``, ``resolve_overlaps``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .classifier import Classifier, PromptClassifier
from .data import Example
from .delta import MethodSpec
from .model import PromptModel
from .plm import PLM, Family
from .spans import Span, bio_entities, bio_tags, join_words
from .tagging import TaggingEvaluation, as_sentences, sentence_of
from .template import Template
from .trainer import TrainConfig

logger = logging.getLogger(__name__)
NONE = "none"  # the class of spans that are no entity
DEFAULT_TEMPLATE = '{"meta": "sentence"} In this sentence, {"meta": "entity"} is a {"mask"}'


def candidate_spans(num_words: int, max_span_words: int) -> list[Span]:
    """Every word span ``[start, end)`` of at most ``max_span_words`` words, by start, then length."""
    if max_span_words < 1:
        raise ValueError(f"max_span_words must be at least 1, got {max_span_words}")
    return [Span(start, end) for start in range(num_words)
            for end in range(start + 1, min(num_words, start + max_span_words) + 1)]


def resolve_overlaps(scored: Sequence[tuple[Span, float]]) -> list[Span]:
    """Greedy: the highest-scoring span first (ties: the earlier, then the shorter), skipping
    every span that overlaps one already kept; returned in sentence order."""
    kept: list[Span] = []
    for span, _ in sorted(scored, key=lambda item: (-item[1], item[0].start, item[0].end)):
        if not any(span.overlaps(other) for other in kept):
            kept.append(span)
    return sorted(kept, key=lambda span: span.start)


def pick_entities(
    spans: Sequence[Span],
    probabilities: np.ndarray,
    classes: Sequence[str],
    threshold: float = 0.5,
    none_class: str = NONE,
) -> list[Span]:
    """Entities from per-span class probabilities (rows: ``spans``, columns: ``classes``): a
    span whose best entity type has probability >= ``threshold`` and more than ``none_class``
    is a candidate of that type, scored by that probability; overlaps are resolved greedily."""
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape != (len(spans), len(classes)):
        raise ValueError(f"expected a ({len(spans)}, {len(classes)}) matrix of span probabilities, "
                         f"got {probabilities.shape}")
    classes = list(classes)
    if none_class not in classes:
        raise ValueError(f"the classes {classes} have no {none_class!r} class")
    none = classes.index(none_class)
    types = [i for i in range(len(classes)) if i != none]
    if not spans:
        return []
    rows = np.arange(len(spans))
    best = np.asarray(types)[probabilities[:, types].argmax(1)]
    scores = probabilities[rows, best]
    keep = (scores >= threshold) & (scores > probabilities[rows, none])
    return resolve_overlaps([(Span(spans[i].start, spans[i].end, classes[best[i]]), float(scores[i]))
                             for i in np.flatnonzero(keep)])


def span_example(text: str, word_spans: Sequence[Span], span: Span, label: str | None = None) -> Example:
    """The entity-typing example of a word span of ``text`` (as ``entity_typing_examples`` makes
    them): the sentence, the mention, and its character span."""
    start, end = word_spans[span.start].start, word_spans[span.end - 1].end
    mention = text[start:end]
    return Example(text, label=label, meta={"sentence": text, "entity": mention,
                                            "span": {"start": start, "end": end, "text": mention}})


class SpanTagger(Classifier):
    """NER by prompting: each word span of up to ``max_span_words`` words is typed by a
    ``PromptClassifier`` over the entity types and a "none" class.

    ``template``: one mask, reading the ``sentence`` and ``entity`` meta fields (default
    ``DEFAULT_TEMPLATE``; the mask ends it, as a causal LM needs). ``label_words``:
    ``{type: word or [words]}``; ``none_word``: the label word(s) of spans that are no
    entity. ``predict`` keeps spans whose best type has probability >= ``threshold`` and beats
    "none", resolves overlaps greedily by that probability and writes BIO tags. ``fit`` trains
    on every gold entity plus ``negatives_per_sentence`` sampled non-entity spans per sentence
    (seeded by ``seed``). ``methods``, ``seed``, ``batch_size`` and the rest as in
    ``PromptClassifier``.
    """

    kind = "span_ner"
    model: PromptModel

    def __init__(
        self,
        plm: PLM | str,
        template: Template | str | None = None,
        label_words: Mapping[str, Any] | None = None,
        *,
        none_word: str | Sequence[str] = "none",
        max_span_words: int = 4,
        threshold: float = 0.5,
        negatives_per_sentence: int = 4,
        family: Family | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, progress)
        if not isinstance(label_words, Mapping) or not label_words:
            raise ValueError('give the entity types\' label words, e.g. {"PER": "person", "LOC": "place"}')
        if NONE in label_words:
            raise ValueError(f"{NONE!r} is the class of spans that are no entity; name the entity type otherwise")
        if max_span_words < 1:
            raise ValueError(f"max_span_words must be at least 1, got {max_span_words}")
        if negatives_per_sentence < 0:
            raise ValueError(f"negatives_per_sentence cannot be negative, got {negatives_per_sentence}")
        self.threshold = threshold  # checked by its setter
        self.types = tuple(label_words)
        self.none_word = none_word if isinstance(none_word, str) else list(none_word)
        self.max_span_words = max_span_words
        self.negatives_per_sentence = negatives_per_sentence
        self.max_length = max_length
        self.seed = seed
        words = {kind: label_words[kind] for kind in self.types} | {NONE: self.none_word}
        self.classifier = PromptClassifier(
            plm, template if template is not None else DEFAULT_TEMPLATE, words, family=family,
            batch_size=batch_size, max_length=max_length, device=device, progress=progress, methods=methods,
            seed=seed,
        )
        self.model = self.classifier.model

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {value}")
        self._threshold = float(value)

    @property
    def template(self) -> Template:
        return self.classifier.template

    # -- prediction
    def predict_log_proba(self, examples: Iterable[Any]) -> list[np.ndarray]:  # type: ignore[override]
        """Per sentence, a (candidate spans, classes) array of log-probabilities, rows in
        ``candidate_spans(words, max_span_words)`` order, columns in ``classes`` order."""
        return [scores for _, scores in self._span_scores(as_sentences(examples))]

    def predict_proba(self, examples: Iterable[Any]) -> list[np.ndarray]:  # type: ignore[override]
        return [np.exp(scores) for scores in self.predict_log_proba(examples)]

    def predict_entities(self, examples: Iterable[Any]) -> list[list[Span]]:
        """Per sentence, the entities found, as word spans labelled with their type."""
        return self._entities(as_sentences(examples))

    def predict(self, examples: Iterable[Any]) -> list[list[str]]:  # type: ignore[override]
        """One BIO tag per word of each sentence (tagged examples, dicts with "tokens", or
        strings split on whitespace)."""
        sentences = as_sentences(examples)
        found = self._entities(sentences)
        return [bio_tags(len(self._words(sentence, n)), entities)
                for n, (sentence, entities) in enumerate(zip(sentences, found, strict=True))]

    def evaluate(self, examples: Iterable[Any]) -> TaggingEvaluation:  # type: ignore[override]
        """Tag sentences with gold tags and compare, entity by entity (seqeval)."""
        sentences = as_sentences(examples)
        untagged = [n for n, e in enumerate(sentences) if e.meta.get("tags") is None]
        if untagged:
            raise ValueError(f"evaluation needs gold tags; examples {untagged[:5]} have none")
        return TaggingEvaluation([list(e.meta["tags"]) for e in sentences], self.predict(sentences))

    def _words(self, example: Example, n: int) -> list[str]:
        return sentence_of(example, f"sentence {n}")[0]

    def _entities(self, sentences: list[Example]) -> list[list[Span]]:
        return [pick_entities(spans, np.exp(scores), self.classes, self.threshold)
                for spans, scores in self._span_scores(sentences)]

    def _span_scores(self, sentences: list[Example]) -> list[tuple[list[Span], np.ndarray]]:
        """Every sentence's candidate spans and their class log-probabilities, all spans of all
        sentences scored in one pass (batched, with a progress bar)."""
        candidates, inputs = [], []
        for n, sentence in enumerate(sentences):
            text, word_spans = join_words(self._words(sentence, n))
            spans = candidate_spans(len(word_spans), self.max_span_words)
            candidates.append(spans)
            inputs.extend(span_example(text, word_spans, span) for span in spans)
        scores = self.classifier.predict_log_proba(inputs) if inputs else np.empty((0, len(self.classes)))
        out, start = [], 0
        for spans in candidates:
            out.append((spans, scores[start : start + len(spans)]))
            start += len(spans)
        return out

    # -- training
    def span_examples(self, sentences: Iterable[Any], seed: int | None = None) -> list[Example]:
        """The entity-typing training examples of tagged sentences: every gold entity (label:
        its type) and up to ``negatives_per_sentence`` other candidate spans (label "none"),
        drawn with ``seed`` (default: the tagger's)."""
        rng = random.Random(self.seed if seed is None else seed)
        out, too_long = [], 0
        for n, sentence in enumerate(as_sentences(sentences)):
            words, tags = sentence_of(sentence, f"sentence {n}")
            if tags is None:
                raise ValueError(f"sentence {n} has no gold tags; training needs them")
            text, word_spans = join_words(words)
            gold = bio_entities(tags, f"sentence {n}")
            unknown = sorted({e.label for e in gold} - set(self.types))  # type: ignore[arg-type]
            if unknown:
                raise ValueError(f"sentence {n} has entity types {unknown} the tagger has no label words for "
                                 f"(its types: {list(self.types)})")
            too_long += sum(e.end - e.start > self.max_span_words for e in gold)
            entities = {(e.start, e.end) for e in gold}
            pool = [s for s in candidate_spans(len(words), self.max_span_words) if (s.start, s.end) not in entities]
            negatives = rng.sample(pool, min(self.negatives_per_sentence, len(pool)))
            out.extend(span_example(text, word_spans, e, e.label) for e in gold)
            out.extend(span_example(text, word_spans, s, NONE) for s in sorted(negatives, key=lambda s: (s.start, s.end)))
        if too_long:
            logger.warning("%d gold entities are longer than max_span_words=%d words; prediction cannot find them",
                           too_long, self.max_span_words)
        return out

    def fit(  # type: ignore[override]
        self,
        train: Iterable[Any],
        dev: Iterable[Any] | None = None,
        config: TrainConfig | None = None,
        **overrides: Any,
    ) -> SpanTagger:
        """Train the span classifier on tagged sentences (``dev``: tagged sentences, turned into
        span examples the same way, with their own draw of negatives). ``overrides``: TrainConfig
        fields; the dev metric is the span classifier's ("accuracy" or "macro_f1")."""
        train_spans = self.span_examples(train)
        if not train_spans:
            raise ValueError("the training sentences give no span examples (no entities and no negatives)")
        dev_spans = self.span_examples(dev, self.seed + 1) if dev is not None else None
        self.classifier.fit(train_spans, dev_spans, config, **overrides)
        self.result = self.classifier.result
        return self

    # -- saving
    def describe(self) -> dict[str, Any]:
        verbalizer = self.model.verbalizer
        return {
            **super().describe(),
            "template": self.model.source_template.text,
            "label_words": {kind: list(verbalizer.label_words[kind]) for kind in self.types},
            "none_word": self.none_word,
            "max_span_words": self.max_span_words,
            "threshold": self.threshold,
            "negatives_per_sentence": self.negatives_per_sentence,
            "max_length": self.max_length,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> SpanTagger:
        return cls(plm, description["template"], description["label_words"], none_word=description["none_word"],
                   max_span_words=description["max_span_words"], threshold=description["threshold"],
                   negatives_per_sentence=description["negatives_per_sentence"],
                   batch_size=description["batch_size"], max_length=description["max_length"],
                   seed=description["seed"], methods=methods)
