"""Accuracy, macro-F1 and the confusion matrix against numbers worked out by hand."""

import numpy as np
import pytest

from deltaprompt.metrics import Evaluation, accuracy, confusion_matrix, macro_f1


def test_confusion_accuracy_and_macro_f1():
    gold = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    counts = confusion_matrix(gold, predicted, ["a", "b", "c"])
    assert counts.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert accuracy(counts) == pytest.approx(4 / 6)
    # F1: a = 2*2/(2+3) = 0.8; b = 2*1/(2+2) = 0.5; c = 2*1/(2+1) = 2/3
    assert macro_f1(counts) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_classes_never_seen_do_not_count_in_macro_f1():
    counts = confusion_matrix(["a", "a"], ["a", "a"], ["a", "b"])
    assert macro_f1(counts) == 1.0


def test_unknown_labels_are_refused():
    with pytest.raises(ValueError, match=r"labels \['z'\] are not among"):
        confusion_matrix(["a"], ["z"], ["a", "b"])


def test_report_shows_the_matrix():
    evaluation = Evaluation(("neg", "pos"), ["neg", "pos", "pos"], ["neg", "neg", "pos"], np.zeros((3, 2)))
    assert evaluation.summary() == {"n": 3, "accuracy": 2 / 3, "macro_f1": (2 / 3 + 2 / 3) / 2}
    lines = evaluation.report().splitlines()
    assert lines[1] == "accuracy  0.6667"
    assert lines[-2].split() == ["neg", "1", "0"]
    assert lines[-1].split() == ["pos", "1", "1"]
