"""PromptClassifier: predictions independent of batching, calibration, evaluation, fit options."""

import numpy as np
import pytest
import torch

from deltaprompt import Example, PromptClassifier, Verbalizer
from deltaprompt.metrics import confusion_matrix, macro_f1

from .conftest import tiny_plm

TEXTS = ["the movie was great", "a dull plot", "wonderful acting and a great film", "boring", "the acting was terrible"]


@pytest.fixture
def gpt2_classifier(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    return lambda **kw: PromptClassifier(plm, "{text} It was {mask}", "negative: terrible; positive: great", **kw)


def test_predictions_do_not_depend_on_batch_size_or_order(gpt2_classifier):
    one = gpt2_classifier(batch_size=1).predict_proba(TEXTS)
    many = gpt2_classifier(batch_size=3).predict_proba(TEXTS)
    np.testing.assert_allclose(one, many, atol=1e-5)
    reversed_rows = gpt2_classifier(batch_size=2).predict_proba(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(one, reversed_rows, atol=1e-5)
    np.testing.assert_allclose(one.sum(1), 1.0, atol=1e-6)


def test_predict_returns_class_names_matching_the_probabilities(gpt2_classifier):
    classifier = gpt2_classifier()
    probabilities = classifier.predict_proba(TEXTS)
    assert classifier.predict(TEXTS) == [classifier.classes[i] for i in probabilities.argmax(1)]
    assert classifier.classes == ("negative", "positive")
    assert classifier.predict([]) == []


def test_evaluate_matches_metrics_by_hand(gpt2_classifier):
    classifier = gpt2_classifier()
    gold = ["positive", "negative", "positive", "negative", "negative"]
    evaluation = classifier.evaluate([Example(t, label=g) for t, g in zip(TEXTS, gold, strict=True)])
    predicted = classifier.predict(TEXTS)
    assert evaluation.predictions == predicted
    assert evaluation.accuracy == sum(p == g for p, g in zip(predicted, gold, strict=True)) / 5
    assert evaluation.macro_f1 == macro_f1(confusion_matrix(gold, predicted, classifier.classes))
    assert "accuracy" in evaluation.report() and "confusion" in evaluation.report()
    with pytest.raises(ValueError, match="evaluation needs labels"):
        classifier.evaluate(TEXTS)


def test_contextual_calibration_divides_out_the_content_free_prior(gpt2_classifier):
    plain = gpt2_classifier()
    calibrated = gpt2_classifier(calibrate=["N/A", ""])
    # By hand: mean class probability over the content-free inputs...
    prior = plain.predict_proba(["N/A", ""]).mean(0)
    torch.testing.assert_close(calibrated.calibration.exp(), torch.tensor(prior, dtype=torch.float32))
    # ...divided out of every prediction, then renormalised.
    expected = plain.predict_proba(TEXTS) / prior
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(calibrated.predict_proba(TEXTS), expected, atol=1e-5)
    # A content-free input itself comes out (nearly) uniform after calibration when it is the only one.
    single = gpt2_classifier(calibrate=["N/A"])
    np.testing.assert_allclose(single.predict_proba(["N/A"]), [[0.5, 0.5]], atol=1e-5)


def test_verbalizer_must_cover_the_task_classes(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    with pytest.raises(ValueError, match="no label words for"):
        PromptClassifier(plm, "{text} {mask}", {"positive": "great"}, classes=["negative", "positive"])
    with pytest.raises(ValueError, match="exactly one"):
        PromptClassifier(plm, "{text}", Verbalizer({"a": "great", "b": "terrible"}))


def test_fit_options_are_checked_by_name(gpt2_tokenizer):
    clf = PromptClassifier(tiny_plm("gpt2", gpt2_tokenizer), '{"soft"} {text} it was {mask}',
                           {"neg": "terrible", "pos": "great"}, methods=[])
    with pytest.raises(ValueError, match="unknown key 'epoch'; did you mean 'epochs'"):
        clf.fit([Example("great", label="pos")], epoch=2)
    with pytest.raises(ValueError, match="batch_size: expected int"):
        clf.fit([Example("great", label="pos")], batch_size="8")


def test_predicting_leaves_the_shared_plm_in_eval_mode(gpt2_tokenizer):
    """A classifier built on a loaded PLM must not switch its dropout on by predicting."""
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    plm.model.eval()
    classifier = PromptClassifier(plm, "{text} It was {mask}", "negative: terrible; positive: great")
    classifier.predict_proba(["a fine film"])
    assert not any(m.training for m in plm.model.modules())
