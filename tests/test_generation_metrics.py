"""Generation metrics against hand-computed values and the libraries called directly."""

from __future__ import annotations

import math

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from deltaprompt.generation_metrics import (
    bleu,
    exact_match,
    generation_scores,
    normalize_answer,
    rouge,
    token_f1,
)


def test_normalize_answer_is_squads():
    assert normalize_answer("  The  Cat's  hat, a BIG one!  ") == "cats hat big one"


def test_exact_match_counts_with_and_without_normalisation():
    predictions = ["The cat.", "a dog", "bird", "cow"]
    references = ["the cat", "dog", "bird", "fish"]
    assert exact_match(predictions, references) == pytest.approx(3 / 4)
    assert exact_match(predictions, references, normalize=False) == pytest.approx(1 / 4)
    assert exact_match([" bird\n"], ["bird"], normalize=False) == 1.0


def test_exact_match_takes_the_best_of_several_references():
    assert exact_match(["Paris", "Rome"], [["paris, france", "Paris"], ["Milan"]]) == pytest.approx(1 / 2)


def test_token_f1_of_partial_overlaps_by_hand():
    # "cat sat on mat" vs "cat lay on mat": 3 shared of 4 and 4 -> P = R = 3/4, F1 = 3/4
    assert token_f1(["the cat sat on the mat"], ["a cat lay on a mat"]) == pytest.approx(0.75)
    # bag overlap: "cat" three times against once -> 1 shared; P = 1/3, R = 1/2, F1 = 2/5
    assert token_f1(["cat cat cat"], ["cat dog"]) == pytest.approx(0.4)
    # mean over examples
    assert token_f1(["the cat sat on the mat", "cat cat cat"], ["a cat lay on a mat", "cat dog"]) == \
        pytest.approx((0.75 + 0.4) / 2)
    # best reference: 2 of 3 predicted and 2 of 4 gold -> F1 = 4/7
    assert token_f1(["the cat sat down"], [["a dog", "cat sat on mat"]]) == pytest.approx(4 / 7)


def test_token_f1_and_exact_match_of_empty_answers_follow_squad():
    assert token_f1([""], [""]) == 1.0
    assert token_f1([""], ["cat"]) == 0.0
    assert token_f1(["the"], ["a"]) == 1.0        # both are only articles: both empty
    assert exact_match([""], ["cat"]) == 0.0
    assert token_f1(["cat"], ["dog"]) == 0.0


def test_bleu_identical_disjoint_and_a_hand_computed_value():
    assert bleu(["the cat is on the mat", "a b c d e"], ["the cat is on the mat", "a b c d e"]) == \
        pytest.approx(100.0)
    assert bleu(["a b c d e"], ["v w x y z"]) == 0.0
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty)
    expected = 100 * math.exp(sum(map(math.log, (5 / 6, 3 / 5, 2 / 4, 1 / 3))) / 4)
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected)


def test_bleu_is_corpus_bleu_of_sacrebleu():
    hypotheses = ["the cat sat on the mat today", "a dog ran fast in the park", "hello there"]
    references = ["the cat sat on a mat", "the dog ran quickly in the park", "hello there friend"]
    assert bleu(hypotheses, references) == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def test_bleu_several_references():
    assert bleu(["a b c d e"], [["v w x y z", "a b c d e"]]) == pytest.approx(100.0)
    # a variable number of references per example
    hypotheses, references = ["a b c d e", "f g h i j"], [["a b c d e", "q r s t u"], "f g h i x"]
    direct = sacrebleu.corpus_bleu(hypotheses, [["a b c d e", "f g h i x"], ["q r s t u", None]]).score
    assert bleu(hypotheses, references) == pytest.approx(direct)


def test_rouge_by_hand():
    # unigrams: 5 of 6 shared (the x2, cat, on, mat); bigrams: 3 of 5; LCS "the cat on the mat": 5
    scores = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    both = rouge(["the cat sat on the mat", "identical text"], ["the cat was on the mat", "identical text"])
    assert both["rouge1"] == pytest.approx((5 / 6 + 1) / 2)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score_on_english(use_stemmer):
    prediction, reference = "The runners were running quickly, then stopped.", "A runner runs quick and stops"
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer).score(
        reference, prediction)
    ours = rouge([prediction], [reference], use_stemmer=use_stemmer)
    assert ours == pytest.approx({k: v.fmeasure for k, v in direct.items()})


def test_rouge_keeps_non_ascii_words():
    # rouge-score's own tokenizer drops every Greek letter and would score 0
    assert rouge(["\u03ba\u03b1\u03bb\u03ae \u03bc\u03ad\u03c1\u03b1"],
                 ["\u03ba\u03b1\u03bb\u03ae \u03bd\u03cd\u03c7\u03c4\u03b1"])["rouge1"] == pytest.approx(0.5)


@pytest.mark.parametrize("metric", [exact_match, token_f1, bleu, rouge, generation_scores])
def test_mismatched_lengths_and_single_strings_are_refused(metric):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of texts"):
        metric("a", "a")


def test_empty_inputs_score_zero():
    assert exact_match([], []) == 0.0
    assert token_f1([], []) == 0.0
    assert bleu([], []) == 0.0
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert generation_scores([], []) == {"n": 0, "exact_match": 0.0, "token_f1": 0.0, "bleu": 0.0,
                                         "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match(["a"], [[]])


def test_generation_scores_collects_the_chosen_metrics():
    predictions, references = ["the cat sat on the mat", "Paris"], ["the cat was on the mat", "paris."]
    scores = generation_scores(predictions, references)
    assert set(scores) == {"n", "exact_match", "token_f1", "bleu", "rouge1", "rouge2", "rougeL"}
    assert scores["n"] == 2
    assert scores["exact_match"] == pytest.approx(1 / 2)
    assert scores["token_f1"] == pytest.approx((0.75 + 1) / 2)   # "cat sat on mat" vs "cat was on mat"
    assert scores["bleu"] == pytest.approx(bleu(predictions, references))
    assert scores["rouge1"] == pytest.approx((5 / 6 + 1) / 2)
    assert generation_scores(predictions, references, metrics=["exact_match"]) == {"n": 2, "exact_match": 0.5}
    with pytest.raises(ValueError, match="choose from exact_match, token_f1, bleu, rouge"):
        generation_scores(predictions, references, metrics=["meteor"])


def test_parsed_json_predictions_compare_as_json_text():
    assert exact_match([{"b": 1, "a": 2}], ['{"a": 2, "b": 1}'], normalize=False) == 1.0
