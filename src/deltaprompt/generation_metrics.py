"""Metrics for generated text: exact match, token F1, BLEU and ROUGE.

    generation_scores(["the cat sat"], ["The cat sat."])
    # {'n': 1, 'exact_match': 1.0, 'token_f1': 1.0, 'bleu': ..., 'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0}

Exact match and token F1 follow the SQuAD evaluation script: both texts are lower-cased, and
punctuation, the articles a/an/the and extra whitespace removed before comparing; each is the
mean over examples, between 0 and 1. BLEU is corpus BLEU from ``sacrebleu`` (its default 13a
tokenisation), between 0 and 100 as sacrebleu and papers report it. ROUGE-1/2/L are the
F-measures of ``rouge-score``, averaged over examples, between 0 and 1; its tokenizer keeps
only ASCII letters and digits, so this module gives it one that keeps every Unicode letter (the
same tokens for English text).

A reference may be one text or a list of texts (several correct answers): exact match, token
F1 and ROUGE take the best reference for each example, BLEU uses all of them. Predictions that
a post-processing step turned into a dict or list (``json``) are compared as JSON text with sorted
keys (``json.dumps(value, sort_keys=True)``). Empty lists score 0.0. An empty prediction and an
empty reference agree for exact match and token F1 (SQuAD's rule) but score 0 for BLEU and ROUGE.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

Reference = str | Sequence[str]
METRICS = ("exact_match", "token_f1", "bleu", "rouge")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _references(references: Sequence[Reference]) -> list[list[str]]:
    """Each reference as a non-empty list of texts."""
    result = []
    for i, ref in enumerate(references):
        texts = [ref] if isinstance(ref, str) or not isinstance(ref, Sequence) else list(ref)
        if not texts:
            raise ValueError(f"reference {i} is an empty list; give at least one reference text")
        result.append([_as_text(t) for t in texts])
    return result


def _pairs(predictions: Sequence[Any], references: Sequence[Reference]) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references are lists of texts, one per example (got a single string)")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; "
                         "give one reference (or list of references) per prediction")
    return [_as_text(p) for p in predictions], _references(references)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _best(score: Callable[[str, str], float], predictions: list[str], references: list[list[str]]) -> float:
    if not predictions:
        return 0.0
    return sum(max(score(p, r) for r in refs) for p, refs in zip(predictions, references, strict=True)) / len(
        predictions)


def exact_match(predictions: Sequence[Any], references: Sequence[Reference], normalize: bool = True) -> float:
    """Fraction of predictions equal to (one of) their references, after SQuAD normalisation
    unless ``normalize=False`` (then only surrounding whitespace is ignored)."""
    preds, refs = _pairs(predictions, references)
    prepare = normalize_answer if normalize else str.strip
    return _best(lambda p, r: float(prepare(p) == prepare(r)), preds, refs)


def _f1(prediction: str, reference: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:  # SQuAD: two empty answers agree, one empty answer scores 0
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[Any], references: Sequence[Reference]) -> float:
    """Mean over examples of the F1 of the shared tokens (a bag: repeats count once per match)
    of prediction and reference, after SQuAD normalisation; the best reference counts."""
    preds, refs = _pairs(predictions, references)
    return _best(_f1, preds, refs)


def bleu(predictions: Sequence[Any], references: Sequence[Reference], tokenize: str = "13a",
         lowercase: bool = False) -> float:
    """Corpus BLEU (0-100) by sacrebleu: n-gram precisions pooled over the whole corpus, not
    averaged per sentence. ``tokenize`` is sacrebleu's ("13a", "intl", "zh", "char", ...)."""
    import sacrebleu

    preds, refs = _pairs(predictions, references)
    if not preds:
        return 0.0
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]  # None: fewer refs here
    return float(sacrebleu.corpus_bleu(preds, streams, tokenize=tokenize, lowercase=lowercase).score)


class _UnicodeTokenizer:
    """rouge-score's tokenisation (lower case, runs of letters and digits, Porter stems of words
    longer than three letters when asked) for every script, not ASCII only."""

    def __init__(self, use_stemmer: bool):
        if use_stemmer:
            from nltk.stem import porter

            self._stemmer = porter.PorterStemmer("ORIGINAL_ALGORITHM")
        else:
            self._stemmer = None

    def tokenize(self, text: str) -> list[str]:
        tokens = re.findall(r"[^\W_]+", text.lower())
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
        return tokens


def rouge(predictions: Sequence[Any], references: Sequence[Reference], use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1) by rouge-score; with several
    references, the best one for each example."""
    from rouge_score import rouge_scorer

    preds, refs = _pairs(predictions, references)
    types = ("rouge1", "rouge2", "rougeL")
    if not preds:
        return dict.fromkeys(types, 0.0)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=_UnicodeTokenizer(use_stemmer))
    totals = dict.fromkeys(types, 0.0)
    for prediction, targets in zip(preds, refs, strict=True):
        scores = scorer.score_multi(targets, prediction)
        for kind in types:
            totals[kind] += scores[kind].fmeasure
    return {kind: total / len(preds) for kind, total in totals.items()}


def generation_scores(predictions: Sequence[Any], references: Sequence[Reference],
                      metrics: Sequence[str] = METRICS) -> dict[str, float | int]:
    """The chosen metrics in one flat dict: ``n``, ``exact_match``, ``token_f1``, ``bleu``,
    ``rouge1``, ``rouge2``, ``rougeL``."""
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown generation metric(s) {unknown}; choose from {', '.join(METRICS)}")
    preds, refs = _pairs(predictions, references)
    scores: dict[str, float | int] = {"n": len(preds)}
    for metric in metrics:
        if metric == "exact_match":
            scores["exact_match"] = exact_match(preds, refs)
        elif metric == "token_f1":
            scores["token_f1"] = token_f1(preds, refs)
        elif metric == "bleu":
            scores["bleu"] = bleu(preds, refs)
        else:
            scores.update(rouge(preds, refs))
    return scores
