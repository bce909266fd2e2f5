"""Token classification: sub-word alignment of word tags, padding-free predictions, truncation,
training through the trainer's hooks, entity-level metrics, saving and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deltaprompt import artifacts
from deltaprompt.classifier import load
from deltaprompt.spans import tagged_example
from deltaprompt.tagging import IGNORE, Tagger, TaggingEvaluation, TokenModel

from .conftest import plm_of, responsive, tiny_plm


def sentence(text: str, tags: list[str] | None = None):
    """A tagged example of the words of ``text``."""
    return tagged_example(text.split(), tags)


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# WordPiece splits "Merkel" into mer ##kel and "Zuckerberg" into zu ##cker ##berg.
MERKEL = sentence("Angela Merkel visited Zuckerberg", ["B-PER", "I-PER", "O", "B-PER"])
# Sentences of the tiny tokenizers' corpus words, with made-up tags.
TRAIN = [
    sentence("the movie was great", ["O", "B-PER", "O", "B-LOC"]),
    sentence("a terrible boring film", ["O", "B-LOC", "I-LOC", "O"]),
    sentence("the acting was wonderful", ["O", "B-PER", "O", "B-LOC"]),
    sentence("a dull plot", ["O", "B-LOC", "O"]),
    sentence("great news", ["B-PER", "I-PER"]),
    sentence("the film was terrible", ["O", "B-PER", "O", "B-LOC"]),
]


def tag_id(tag: str) -> int:
    return TAGS.index(tag)


# ----------------------------------------------------------------------------- alignment

@pytest.mark.parametrize("alignment", ["first", "all"])
def test_word_tags_are_aligned_to_word_pieces(request, alignment):
    model = TokenModel(plm_of(request, "bert"), TAGS, alignment=alignment)
    (feature,) = model.encode([MERKEL])
    tokens = model.plm.tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens == ["[CLS]", "angela", "mer", "##kel", "visited", "zu", "##cker", "##berg", "[SEP]"]
    assert feature.word_index == [-1, 0, 1, 1, 2, 3, 3, 3, -1]
    assert feature.first_tokens == [1, 2, 4, 5]
    b, i, o = tag_id("B-PER"), tag_id("I-PER"), tag_id("O")
    if alignment == "first":  # only a word's first piece is trained
        expected = [IGNORE, b, i, IGNORE, o, b, IGNORE, IGNORE, IGNORE]
    else:  # every piece; those after a B- piece continue the entity as I-
        expected = [IGNORE, b, i, i, o, b, i, i, IGNORE]
    assert feature.labels == expected
    assert model.targets([MERKEL], [feature], "training") == [expected]


def test_a_bare_space_piece_belongs_to_no_word(request):
    """GPT-2 writes the space before an unknown word as its own piece: the word starts after it."""
    model = TokenModel(plm_of(request, "gpt2"), TAGS, alignment="all")
    (feature,) = model.encode([tagged_example(["the", "zebra"], ["O", "B-LOC"])])
    tokens = model.plm.tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens == ["the", "Ġ", "z", "e", "b", "ra"]
    assert feature.word_index == [0, -1, 1, 1, 1, 1]
    assert feature.first_tokens == [0, 2]
    assert feature.labels == [tag_id("O"), IGNORE, tag_id("B-LOC")] + [tag_id("I-LOC")] * 3


def test_causal_models_pad_words_and_targets_on_the_left(request):
    model = TokenModel(plm_of(request, "gpt2"), TAGS)
    short, long = model.encode([TRAIN[4], TRAIN[0]])
    batch = model.collate([short, long])
    targets = model.collate_targets([short.labels, long.labels])
    gap = len(long.input_ids) - len(short.input_ids)
    assert gap > 0
    assert batch["attention_mask"][0].tolist() == [0] * gap + [1] * len(short.input_ids)
    assert batch["input_ids"][0, gap:].tolist() == short.input_ids
    assert batch["position_ids"][0, gap:].tolist() == list(range(len(short.input_ids)))
    assert targets[0].tolist() == [IGNORE] * gap + short.labels
    assert targets[1].tolist() == long.labels


# ----------------------------------------------------------------------------- predictions

@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_word_predictions_do_not_depend_on_batch_mates(request, kind):
    plm = responsive(plm_of(request, kind))
    model = TokenModel(plm, TAGS, seed=3).eval()
    short = sentence("the movie was great")
    long = sentence("a terrible boring film with a dull plot and wonderful acting")
    features = model.encode([short, long])
    assert len(features[0].input_ids) < len(features[1].input_ids)  # the short one is padded
    alone = model.word_log_probs(features[:1], batch_size=1)[0]
    together = model.word_log_probs(features, batch_size=2)[0]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    # ... and they are the head's reading of the unpadded sentence at each word's first piece.
    ids = torch.tensor([features[0].input_ids])
    with torch.no_grad():
        hidden = model.trunk()(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        by_hand = torch.log_softmax(model.head(hidden[features[0].first_tokens]), -1)
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=1e-4)
    assert alone.shape == (4, len(TAGS)) and not torch.allclose(alone[0], alone[1])


def test_words_beyond_max_length_are_tagged_outside(request):
    tagger = Tagger(plm_of(request, "bert"), TAGS, max_length=6, alignment="all", progress=False)
    with torch.no_grad():  # every word the model sees is a person
        tagger.model.head[1].weight.zero_()
        tagger.model.head[1].bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0]))
    text = "Angela Merkel visited Zuckerberg in the capital of Germany"
    (feature,) = tagger.model.encode([sentence(text, ["O"] * 9)])
    # [CLS] angela mer ##kel visited [SEP]: "Zuckerberg" and later words lost every piece.
    assert len(feature.input_ids) == 6 and len(feature.labels) == 6
    assert feature.first_tokens == [1, 2, 4] + [-1] * 6 and feature.words_cut == 6
    (tags,) = tagger.predict([text])
    assert tags == ["B-PER"] * 3 + ["O"] * 6
    (probabilities,) = tagger.predict_proba([text])
    np.testing.assert_allclose(probabilities[3:, 0], 1.0)


def test_a_word_cut_in_the_middle_keeps_its_first_piece(request):
    model = TokenModel(plm_of(request, "bert"), TAGS, max_length=7, alignment="all")
    (feature,) = model.encode([MERKEL])  # [CLS] angela mer ##kel visited zu [SEP]
    assert feature.first_tokens == [1, 2, 4, 5] and feature.words_cut == 0
    assert feature.labels[-2:] == [tag_id("B-PER"), IGNORE]


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("methods", [["finetune"], ["lora"], ["prefix"]])
def test_training_fits_the_training_tags(request, methods):
    # Not ``responsive``: its large weights let attention blur a sentence's tokens together.
    tagger = Tagger(plm_of(request, "bert"), TAGS, methods=methods, dropout=0.0, progress=False)
    model = tagger.model
    features = model.encode(TRAIN)
    before = model.dev_metrics(features, model.targets(TRAIN, features, "dev"), batch_size=8)
    start = {n: p.detach().clone() for n, p in model.trainable_parameters().items() if not n.startswith("head.")}
    tagger.fit(TRAIN, TRAIN, epochs=15, batch_size=3, lr=1e-3, delta_lr=1e-2, head_lr=3e-2, warmup_ratio=0.0,
               metric="f1", progress=False)
    assert tagger.result.history[-1]["dev_loss"] < 0.25 * before["loss"]
    assert tagger.predict(TRAIN) == [e.meta["tags"] for e in TRAIN]
    assert tagger.evaluate(TRAIN).f1 == 1.0 and tagger.result.best_metric == 1.0
    assert start and any(not torch.equal(p, start[n]) for n, p in model.trainable_parameters().items() if n in start)


def test_dev_metrics_measure_tokens_and_entities(request):
    model = TokenModel(plm_of(request, "bert"), TAGS, alignment="all")
    with torch.no_grad():  # every piece is predicted B-PER
        model.head[1].weight.zero_()
        model.head[1].bias.copy_(torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0]))
    features = model.encode([MERKEL])
    metrics = model.dev_metrics(features, model.targets([MERKEL], features, "dev"), batch_size=4)
    # Trained pieces: angela mer ##kel visited zu ##cker ##berg; right: angela, zu.
    assert metrics["accuracy"] == pytest.approx(2 / 7)
    # Words: B-PER B-PER B-PER B-PER against B-PER I-PER O B-PER: 1 of 4 predicted entities right.
    assert metrics["f1"] == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))
    assert metrics["loss"] == pytest.approx(50 * 5 / 7, rel=1e-3)


# ----------------------------------------------------------------------------- metrics

def test_entity_metrics_match_a_hand_count():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O"], ["O", "B-PER"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O", "O"], ["O", "I-PER"]]
    evaluation = TaggingEvaluation(gold, guess)
    # Gold: PER, LOC, ORG(2 words), PER. Predicted: PER, ORG(1 word), PER (an I- starts one).
    assert evaluation.precision == pytest.approx(2 / 3)
    assert evaluation.recall == pytest.approx(2 / 4)
    assert evaluation.f1 == pytest.approx(4 / 7)
    assert evaluation.accuracy == pytest.approx(7 / 10)
    per_type = evaluation.per_type()
    assert per_type["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert per_type["LOC"]["f1"] == 0.0 and per_type["ORG"]["support"] == 1
    assert evaluation.macro_f1 == pytest.approx(1 / 3)
    assert evaluation.summary() == {"n": 3, "f1": pytest.approx(4 / 7), "precision": pytest.approx(2 / 3),
                                    "recall": 0.5, "accuracy": pytest.approx(0.7)}
    assert "ORG" in evaluation.report() and "0.5714" in evaluation.report()
    with pytest.raises(ValueError, match="sentence 1"):
        TaggingEvaluation(gold, [guess[0], guess[1][:3], guess[2]])


# ----------------------------------------------------------------------------- saving, errors

def test_a_saved_tagger_predicts_the_same_after_loading(request, tmp_path, bert_tokenizer):
    plm = responsive(tiny_plm("bert", bert_tokenizer))
    tagger = Tagger(plm, TAGS, alignment="all", max_length=32, methods=["lora"], seed=1, progress=False)
    tagger.fit(TRAIN, epochs=2, batch_size=3, progress=False)
    folder = tagger.save(tmp_path / "tagger")
    description = json.loads((folder / artifacts.DESCRIPTION).read_text())
    assert description["kind"] == "tagger" and description["tags"] == TAGS
    again = load(folder, plm=responsive(tiny_plm("bert", bert_tokenizer)))
    assert isinstance(again, Tagger) and again.model.alignment == "all" and again.model.max_length == 32
    sentences = [MERKEL, {"tokens": ["a", "dull", "film"]}, "the acting was wonderful"]
    assert again.predict(sentences) == tagger.predict(sentences)
    for mine, theirs in zip(again.predict_log_proba(sentences), tagger.predict_log_proba(sentences), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_unknown_tags_and_untagged_training_data_are_refused(request):
    tagger = Tagger(plm_of(request, "bert"), TAGS, progress=False)
    odd = tagged_example(["Paris", "Hilton"], ["B-PER", "I-MISC"])
    with pytest.raises(ValueError, match=r"example 1: word 1 \('Hilton'\) is tagged 'I-MISC'"):
        tagger.model.encode([MERKEL, odd])
    with pytest.raises(ValueError, match="training example 0 has no tags"):
        tagger.fit(["Angela Merkel visited Paris"], epochs=1, progress=False)
    with pytest.raises(ValueError, match="needs gold tags"):
        tagger.evaluate(["Angela Merkel"])


def test_tag_sets_and_template_methods_are_checked(request):
    plm = plm_of(request, "bert")
    with pytest.raises(ValueError, match="need 'O'"):
        TokenModel(plm, ["B-PER", "I-PER"])
    with pytest.raises(ValueError, match="BIO"):
        TokenModel(plm, ["O", "PER"])
    with pytest.raises(TypeError, match="list of tag names"):
        TokenModel(plm, "O B-PER")
    with pytest.raises(ValueError, match="add it to the tags"):
        TokenModel(plm, ["O", "B-PER"], alignment="all")
    for method in ("prompt_tuning", "p_tuning"):
        with pytest.raises(ValueError, match="no template"):
            TokenModel(plm, TAGS, methods=[method])
    assert Tagger(plm, TAGS).classes == tuple(TAGS)
