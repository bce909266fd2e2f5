"""KPT: true word log-probabilities, expansion by embedding neighbours, refinement by prior and
relevance, calibration by the prior, and the refined verbalizer saved and loaded."""

import numpy as np
import pytest
import torch

from deltaprompt import Example, PromptClassifier, PromptModel, Verbalizer, load
from deltaprompt.verbalizer import KnowledgeableVerbalizer, embedding_neighbours
from deltaprompt.verbalizer.knowledgeable import collect_word_log_probs

from .conftest import CORPUS, TEMPLATE, TRAIN, WORDS, labelled_batch, plm_of, responsive, tiny_plm

UNLABELLED = [e.text for e in TRAIN] + list(dict.fromkeys(CORPUS))


def _token(tokenizer, word: str) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, word
    return ids[0]


def _plant(plm, word: str, like: str | None = None, bias: float | None = None) -> None:
    """Give ``word`` the LM-head row (and bias) of ``like``, and/or a bias of its own."""
    projection = plm.model.get_output_embeddings()
    target = _token(plm.tokenizer, word)
    with torch.no_grad():
        if like is not None:
            source = _token(plm.tokenizer, like)
            projection.weight[target] = projection.weight[source]
            projection.bias[target] = projection.bias[source]
        if bias is not None:
            projection.bias[target] = bias


def _plain_log_probs(model: PromptModel, batch) -> torch.Tensor:
    """Full-vocabulary log-probabilities at the prediction position from an ordinary forward pass."""
    lm = model.model
    position = batch["predict_positions"][:, 0]
    if model.family == "seq2seq":
        start = torch.tensor([[lm.config.decoder_start_token_id, model.prompt_tokenizer.mask_id]])
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=start.expand(len(position), 2)).logits[:, 1]
    else:
        extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}  # left padding
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
        logits = logits[torch.arange(len(position)), position]
    return torch.log_softmax(logits, -1)


def test_word_log_probs_are_full_vocabulary_log_probs(any_tiny_plm):
    plm = responsive(any_tiny_plm)
    model = PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS))
    batch, _ = labelled_batch(model)
    rows = torch.tensor([ids[0] for ids in model.label_words.token_ids])
    with torch.no_grad():
        expected = _plain_log_probs(model, batch)[:, rows]
        torch.testing.assert_close(model.word_log_probs(batch), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_word_log_probs_with_words_of_several_tokens(request, kind):
    """Whole words are scored by continuation then, already normalised: the one-token word still
    reads its full-vocabulary log-probability."""
    plm = responsive(plm_of(request, kind))
    model = PromptModel(plm, TEMPLATE[plm.family], Verbalizer({"negative": "terrible", "positive": "splendid"}))
    assert len(model.label_words.token_ids[1]) > 1
    batch, _ = labelled_batch(model)
    with torch.no_grad():
        expected = _plain_log_probs(model, batch)[:, model.label_words.token_ids[0][0]]
        torch.testing.assert_close(model.word_log_probs(batch)[:, 0], expected, atol=1e-4, rtol=1e-4)


@pytest.fixture
def roberta(roberta_tokenizer):
    return responsive(tiny_plm("roberta", roberta_tokenizer))


def test_refinement_keeps_planted_related_words_and_drops_the_rest(roberta):
    for anchor in WORDS.values():  # the class's own words are commonly predicted at the mask
        _plant(roberta, anchor, bias=5.0)
    _plant(roberta, "wonderful", like="great")  # predicted exactly when "great" is: relevant to positive
    _plant(roberta, "dull", like="terrible")  # relevant to negative
    _plant(roberta, "plot", like="great")  # listed for negative, but behaves like positive's word
    _plant(roberta, "boring", like="terrible", bias=-60.0)  # the right class, but (almost) never predicted
    verbalizer = KnowledgeableVerbalizer(WORDS, related={"negative": ["dull", "plot", "boring"],
                                                         "positive": ["wonderful"]})
    model = PromptModel(roberta, TEMPLATE["masked"], verbalizer)
    assert verbalizer.label_words == {"negative": ("terrible", "dull", "plot", "boring"),
                                      "positive": ("great", "wonderful")}
    verbalizer.fit_prior(model, UNLABELLED)
    assert verbalizer.label_words == {"negative": ("terrible", "dull"), "positive": ("great", "wonderful")}
    assert [w.strip() for w in model.label_words.words] == ["terrible", "dull", "great", "wonderful"]  # re-bound
    decision = {d.word: d for d in verbalizer.decisions}
    assert decision["boring"].reason.startswith("prior") and decision["boring"].prior < 1e-12
    assert decision["plot"].reason.startswith("relevance") and decision["plot"].relevance < 1
    # A copy of a class's own word has relevance 1 / cos(the two classes' vectors); a copy of the
    # other class's word the inverse.
    assert decision["wonderful"].relevance == pytest.approx(1 / decision["plot"].relevance, rel=1e-6)
    assert decision["wonderful"].prior == pytest.approx(decision["great"].prior, rel=1e-5)
    report = verbalizer.report()
    assert "- boring" in report and "dropped: prior" in report and "+ wonderful" in report
    assert "2 of 4 kept" in report and "4 of 6 candidate words kept" in report


def test_calibration_divides_each_word_by_its_prior(roberta):
    with torch.no_grad():  # a constant push towards "great", whatever the input
        roberta.model.get_output_embeddings().bias[_token(roberta.tokenizer, "great")] += 10.0
    texts = UNLABELLED
    manual = PromptClassifier(roberta, TEMPLATE["masked"], WORDS)
    plain = manual.predict_proba(texts)
    verbalizer = KnowledgeableVerbalizer(WORDS)
    clf = PromptClassifier(roberta, TEMPLATE["masked"], verbalizer)
    np.testing.assert_allclose(clf.predict_proba(texts), plain, atol=1e-6)  # unrefined: the manual verbalizer
    verbalizer.fit_prior(clf, texts)
    calibrated = clf.predict_proba(texts)
    # The push makes "great" the likelier word whatever the input (its prior the larger), so dividing by
    # the priors multiplies every example's odds of "positive" by prior(terrible) / prior(great) < 1.
    assert verbalizer.prior["positive"]["great"] > verbalizer.prior["negative"]["terrible"]
    assert (calibrated[:, 1] < plain[:, 1]).all() and calibrated[:, 1].mean() < plain[:, 1].mean() - 0.15
    assert (calibrated.argmax(1) == 1).sum() < (plain.argmax(1) == 1).sum() == len(texts)
    # By hand: p(word | x) / prior(word), the prior being the mean probability over the texts.
    word_probs = collect_word_log_probs(clf.model, [Example(t) for t in texts]).exp()
    by_hand = word_probs / word_probs.mean(0)
    np.testing.assert_allclose(calibrated, (by_hand / by_hand.sum(1, keepdim=True)).numpy(), atol=1e-5)
    assert verbalizer.prior["positive"]["great"] == pytest.approx(float(word_probs[:, 1].mean()), rel=1e-6)
    uncalibrated = KnowledgeableVerbalizer(WORDS, calibrate=False)
    other = PromptClassifier(roberta, TEMPLATE["masked"], uncalibrated)
    uncalibrated.fit_prior(other, texts)
    np.testing.assert_allclose(other.predict_proba(texts), plain, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_neighbours_are_whole_words_near_the_label_words(request, kind):
    plm = plm_of(request, kind)
    tokenizer = plm.tokenizer
    table = plm.model.get_input_embeddings().weight
    great = _token(tokenizer, "great")
    near = ["wonderful", "acting"] if kind == "roberta" else ["good", "nice"]
    subword = next(i for t, i in sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])
                   if (t.startswith("##") if kind == "bert" else not t.startswith("\u0120")) and t.strip("#").isalpha()
                   and len(t.strip("#")) > 2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rank, token in enumerate([_token(tokenizer, w) for w in near] + [subword]):
            table[token] = table[great] + 0.01 * (rank + 1) * torch.randn(table.size(1), generator=generator)
        table[subword] = table[great]  # nearest of all, but not a word of its own
    found = embedding_neighbours(plm, {"negative": ["terrible"], "positive": ["great"]}, 2, " ")
    assert found["positive"] == tuple(near)
    assert not set(found["negative"]) & set(near)
    verbalizer = KnowledgeableVerbalizer(WORDS, neighbours=2, min_prior=0.0, min_relevance=0.0)
    model = PromptModel(plm, TEMPLATE["masked"], verbalizer)
    verbalizer.fit_prior(model, UNLABELLED[:4])
    assert verbalizer.label_words["positive"] == ("great", *near)
    assert {d.source for d in verbalizer.decisions if d.word in near} == {"neighbour"}


def test_refined_verbalizer_round_trips_with_its_prior(roberta, tmp_path):
    verbalizer = KnowledgeableVerbalizer(WORDS, related="negative: dull, boring, great", neighbours=2)
    clf = PromptClassifier(roberta, TEMPLATE["masked"], verbalizer)
    verbalizer.fit_prior(clf, UNLABELLED)
    description = clf.describe()["verbalizer"]
    assert description["type"] == "knowledgeable" and description["prior"] == verbalizer.prior
    clf.save(tmp_path / "kpt")
    again = load(tmp_path / "kpt", plm=roberta)
    loaded = again.model.verbalizer
    assert isinstance(loaded, KnowledgeableVerbalizer)
    assert loaded.label_words == verbalizer.label_words and loaded.prior == verbalizer.prior
    assert loaded.decisions == verbalizer.decisions and loaded.report() == verbalizer.report()
    assert "a label word of class 'positive'" in loaded.report()
    np.testing.assert_array_equal(again.predict_proba(UNLABELLED), clf.predict_proba(UNLABELLED))
    # Refitting the loaded one starts again from every candidate, neighbours included, without searching again.
    assert loaded.candidates() == verbalizer.candidates()
    loaded.fit_prior(again, UNLABELLED)
    assert loaded.decisions == verbalizer.decisions


def test_conflicting_related_words_are_set_aside():
    verbalizer = KnowledgeableVerbalizer(WORDS, related={"negative": ["fine", "great", "dull"], "positive": ["fine"]})
    assert verbalizer.label_words == {"negative": ("terrible", "dull"), "positive": ("great",)}
    reasons = {(d.cls, d.word): d.reason for d in verbalizer.decisions}
    assert reasons[("negative", "great")] == "a label word of class 'positive'"
    assert reasons[("positive", "fine")].startswith("listed for several classes")
    assert "not refined yet" in verbalizer.report()


def test_bad_knowledgeable_settings_say_what_to_do(roberta):
    with pytest.raises(ValueError, match=r"unknown classes \['neutral'\]"):
        KnowledgeableVerbalizer(WORDS, related={"neutral": ["okay"]})
    with pytest.raises(ValueError, match="reads one mask"):
        KnowledgeableVerbalizer(WORDS, multi_token="masks")
    verbalizer = KnowledgeableVerbalizer(WORDS)
    other = PromptModel(roberta, TEMPLATE["masked"], KnowledgeableVerbalizer(WORDS))
    with pytest.raises(ValueError, match="built with another verbalizer"):
        verbalizer.fit_prior(other, UNLABELLED)
    with pytest.raises(TypeError, match="needs a PromptClassifier or PromptModel"):
        verbalizer.fit_prior(roberta, UNLABELLED)
    model = PromptModel(roberta, TEMPLATE["masked"], verbalizer)
    with pytest.raises(ValueError, match="needs unlabelled examples"):
        verbalizer.fit_prior(model, [])



