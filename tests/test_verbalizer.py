"""Verbalizer parsing, binding to a tokenizer, and aggregation of word scores into classes."""

import json
import math

import pytest
import torch

from deltaprompt import Verbalizer
from deltaprompt.verbalizer import parse_label_words

EXPECTED = {"negative": ("terrible", "bad"), "positive": ("great",)}


def test_every_accepted_form_gives_the_same_words(tmp_path):
    classes = ["negative", "positive"]
    assert parse_label_words({"negative": ["terrible", "bad"], "positive": "great"}) == EXPECTED
    assert parse_label_words([["terrible", "bad"], "great"], classes) == EXPECTED
    assert parse_label_words("negative: terrible, bad; positive: great") == EXPECTED
    assert parse_label_words("negative: terrible, bad\npositive: great\n") == EXPECTED
    assert parse_label_words("terrible, bad; great", classes) == EXPECTED
    (tmp_path / "words.txt").write_text("terrible, bad\ngreat\n")  # OpenPrompt's one line per class
    assert parse_label_words(str(tmp_path / "words.txt"), classes) == EXPECTED
    (tmp_path / "words.json").write_text(json.dumps({"negative": ["terrible", "bad"], "positive": ["great"]}))
    assert parse_label_words(tmp_path / "words.json") == EXPECTED
    (tmp_path / "words.yaml").write_text("negative: [terrible, bad]\npositive: great\n")
    assert parse_label_words(str(tmp_path / "words.yaml")) == EXPECTED


def test_bad_label_word_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match="need the class names"):
        parse_label_words(["a", "b"])
    with pytest.raises(ValueError, match="2 label-word entries for 3 classes"):
        parse_label_words(["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="appears twice"):
        parse_label_words("a: x; a: y")
    with pytest.raises(ValueError, match="non-empty strings"):
        parse_label_words({"a": ["x", ""]})
    with pytest.raises(ValueError, match=r"no label words for \['neutral'\]"):
        Verbalizer("negative: bad; positive: good", classes=["negative", "positive", "neutral"])
    with pytest.raises(ValueError, match=r"unknown classes \['postive'\]"):
        Verbalizer("negative: bad; postive: good", classes=["negative", "positive"])
    with pytest.raises(ValueError, match="aggregation must be one of"):
        Verbalizer("a: x", aggregation="median")


def test_classes_follow_the_task_order():
    verbalizer = Verbalizer("positive: good; negative: bad", classes=["negative", "positive"])
    assert verbalizer.classes == ("negative", "positive")


def test_bind_puts_the_masks_space_in_front_of_each_word(llama_tokenizer):
    bound = Verbalizer({"n": ["negative", " negative"], "p": "positive"}).bind(llama_tokenizer, " ", "causal")
    expected = tuple(llama_tokenizer(" negative", add_special_tokens=False)["input_ids"])
    assert bound.token_ids[0] == expected
    assert bound.token_ids[1] == expected  # an explicit leading space is not doubled
    assert bound.words[2] == " positive"
    no_space = Verbalizer({"n": "negative", "p": "positive"}).bind(llama_tokenizer, "", "causal")
    assert no_space.token_ids[0] == tuple(llama_tokenizer("negative", add_special_tokens=False)["input_ids"])
    assert bound.word_class.tolist() == [0, 0, 1]


def test_bind_rejects_unknown_and_ambiguous_words(bert_tokenizer):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Verbalizer({"a": "☃", "b": "good"}).bind(bert_tokenizer)
    with pytest.raises(ValueError, match="could not be told apart"):
        Verbalizer({"a": "good", "b": "GOOD"}).bind(bert_tokenizer)  # uncased: same token
    # Same first sub-token: ambiguous only when the masked LM reads first tokens.
    words = {"a": "unwatchable", "b": "unwise"}
    first_a = bert_tokenizer(" unwatchable", add_special_tokens=False)["input_ids"][0]
    assert first_a == bert_tokenizer(" unwise", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ValueError, match="could not be told apart"):
        Verbalizer(words).bind(bert_tokenizer, " ", "masked")
    Verbalizer(words, multi_token="masks").bind(bert_tokenizer, " ", "masked")
    Verbalizer(words).bind(bert_tokenizer, " ", "causal")


def test_bind_warns_when_first_token_scoring_blurs_a_word(bert_tokenizer):
    with pytest.warns(UserWarning, match=r"split into several tokens: \['unwatchable'\]"):
        Verbalizer({"a": "unwatchable", "b": "good"}).bind(bert_tokenizer)


@pytest.mark.parametrize("rule", ["mean", "max", "logsumexp"])
def test_aggregation_over_a_class_words_by_hand(bert_tokenizer, rule):
    verbalizer = Verbalizer({"n": ["bad", "awful"], "p": ["good"]}, aggregation=rule)
    bound = verbalizer.bind(bert_tokenizer)
    word_log_probs = torch.log(torch.tensor([[0.1, 0.3, 0.2], [0.05, 0.05, 0.6]]))
    probs = word_log_probs.exp()
    if rule == "mean":
        negative = (probs[:, 0] + probs[:, 1]) / 2
    elif rule == "max":
        negative = torch.maximum(probs[:, 0], probs[:, 1])
    else:
        negative = probs[:, 0] + probs[:, 1]
    positive = probs[:, 2]
    expected = torch.stack([negative, positive], 1)
    expected = expected / expected.sum(1, keepdim=True)
    result = verbalizer.aggregate(word_log_probs, bound).exp()
    torch.testing.assert_close(result, expected)
    assert math.isclose(float(result.sum(1)[0]), 1.0, rel_tol=1e-6)
