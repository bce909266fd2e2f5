"""Mask states and the soft (WARP) verbalizer: what the LM head reads, class vectors started from
label words, training as the head, saving and loading."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deltaprompt import Example, PromptClassifier, PromptModel, Verbalizer, load
from deltaprompt.verbalizer import SoftVerbalizer, make_verbalizer

from .conftest import TEMPLATE, TRAIN, WORDS, labelled_batch, responsive, tiny_plm

MULTI = {"negative": ["terrible", "dull", "boring"], "positive": ["great", "wonderful"]}


def _first_ids(model: PromptModel) -> torch.Tensor:
    return torch.tensor([ids[0] for ids in model.label_words.token_ids])


def test_mask_states_are_what_the_lm_head_reads(any_tiny_plm):
    """Projected onto the label words' rows, the states give the plain forward pass's logits:
    the right position, after the head transform (BERT, RoBERTa), at the decoder's answer (T5)."""
    plm = responsive(any_tiny_plm)
    model = PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS))
    batch, _ = labelled_batch(model)
    with torch.no_grad():
        states = model.mask_states(batch)
        plain = model.word_scores(batch, efficient=False)  # the model's own full logits, read at the mask
    projection = plm.model.get_output_embeddings()
    assert states.shape == (len(TRAIN), projection.weight.size(1))
    rows = _first_ids(model)
    bias = projection.bias[rows] if getattr(projection, "bias", None) is not None else None
    torch.testing.assert_close(F.linear(states, projection.weight[rows], bias), plain, atol=1e-4, rtol=1e-4)


def test_untrained_soft_verbalizer_predicts_as_the_manual_one(any_tiny_plm):
    plm = responsive(any_tiny_plm)
    manual = PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS))
    soft = PromptModel(plm, TEMPLATE[plm.family], SoftVerbalizer(WORDS))
    batch, _ = labelled_batch(manual)
    with torch.no_grad():
        expected, got = manual(batch), soft(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[:, 0], got[:1, 0].expand(len(TRAIN)))  # the scores depend on the input


def test_class_vectors_start_at_the_mean_label_word_rows(roberta_tokenizer):
    plm = tiny_plm("roberta", roberta_tokenizer)
    model = PromptModel(plm, TEMPLATE["masked"], SoftVerbalizer(MULTI))
    projection = plm.model.get_output_embeddings()
    ids = {c: [model.label_words.token_ids[i][0] for i, k in enumerate(model.label_words.word_class.tolist()) if k == n]
           for n, c in enumerate(model.classes)}
    for n, cls in enumerate(model.classes):
        torch.testing.assert_close(model.head.weight[n], projection.weight[ids[cls]].mean(0))
        torch.testing.assert_close(model.head.bias[n], projection.bias[ids[cls]].mean())
    no_bias = PromptModel(plm, TEMPLATE["masked"], SoftVerbalizer(MULTI, bias=False))
    assert no_bias.head.bias is None


def test_causal_lm_without_head_bias_starts_at_zero_bias(gpt2_tokenizer):
    model = PromptModel(tiny_plm("gpt2", gpt2_tokenizer), TEMPLATE["causal"], SoftVerbalizer(WORDS))
    assert torch.equal(model.head.bias.detach(), torch.zeros(2))


def test_soft_parameters_train_as_the_head(gpt2_tokenizer):
    model = PromptModel(tiny_plm("gpt2", gpt2_tokenizer), TEMPLATE["causal"], SoftVerbalizer(WORDS), methods=[])
    trainable = model.trainable_parameters()
    assert set(trainable) == {"head.weight", "head.bias"}
    assert {model.role_of(n, p)[0] for n, p in trainable.items()} == {"head"}


def test_classifier_trains_the_soft_verbalizer_with_lora_saves_and_loads(gpt2_tokenizer, tmp_path):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    clf = PromptClassifier(plm, TEMPLATE["causal"], WORDS, verbalizer="soft", methods=["lora"], progress=False)
    labels = torch.tensor([clf.classes.index(e.label) for e in TRAIN])
    before = {n: p.detach().clone() for n, p in clf.model.named_parameters()}
    loss_before = F.nll_loss(torch.tensor(clf.predict_log_proba(TRAIN)), labels)
    clf.fit(TRAIN, epochs=8, batch_size=8, head_lr=3e-2, delta_lr=3e-2, warmup_ratio=0.0, progress=False,
            tensorboard=False)
    loss_after = F.nll_loss(torch.tensor(clf.predict_log_proba(TRAIN)), labels)
    assert loss_after < loss_before - 0.05
    moved = {n for n, p in clf.model.named_parameters() if not torch.equal(p, before[n])}
    assert {"head.weight", "head.bias"} <= moved
    assert any("lora_" in n for n in moved)
    assert all(n.startswith("head.") or "lora_" in n for n in moved), sorted(moved)

    description = clf.describe()["verbalizer"]
    assert description == {"type": "soft", "label_words": {"negative": ["terrible"], "positive": ["great"]},
                           "bias": True}
    clf.save(tmp_path / "soft")
    again = load(tmp_path / "soft", plm=responsive(tiny_plm("gpt2", gpt2_tokenizer)))  # LoRA changed plm in place
    assert isinstance(again.model.verbalizer, SoftVerbalizer)
    np.testing.assert_array_equal(again.predict_proba(TRAIN), clf.predict_proba(TRAIN))


def test_zero_shot_soft_classifier_round_trip(gpt2_tokenizer, tmp_path):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    clf = PromptClassifier(plm, TEMPLATE["causal"], SoftVerbalizer(WORDS, bias=False))
    with torch.no_grad():
        clf.model.head.weight.mul_(1.5)  # not what a rebuilt one starts from
    clf.save(tmp_path / "zero")
    again = load(tmp_path / "zero", plm=plm)
    assert again.model.verbalizer.bias is False
    np.testing.assert_array_equal(again.predict_proba(TRAIN), clf.predict_proba(TRAIN))


def test_verbalizer_by_name_or_object_is_the_same(gpt2_tokenizer):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    by_name = PromptClassifier(plm, TEMPLATE["causal"], WORDS, verbalizer={"type": "soft", "bias": False})
    by_object = PromptClassifier(plm, TEMPLATE["causal"], SoftVerbalizer(WORDS, bias=False))
    np.testing.assert_array_equal(by_name.predict_proba(TRAIN), by_object.predict_proba(TRAIN))
    texts = [Example("a wonderful film").text]
    manual = PromptClassifier(plm, TEMPLATE["causal"], WORDS, verbalizer="manual")
    assert manual.model.head is None and manual.predict(texts) == by_name.predict(texts)


def test_bad_verbalizer_choices_say_what_to_do(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    with pytest.raises(ValueError, match="did you mean 'soft'"):
        PromptClassifier(plm, TEMPLATE["causal"], WORDS, verbalizer="sotf")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tau'\] for the soft verbalizer"):
        PromptClassifier(plm, TEMPLATE["causal"], WORDS, verbalizer={"type": "soft", "tau": 0.1})
    with pytest.raises(ValueError, match="has no aggregation option"):
        make_verbalizer("soft", WORDS, aggregation="max")
    with pytest.raises(ValueError, match="give the verbalizer once"):
        PromptClassifier(plm, TEMPLATE["causal"], SoftVerbalizer(WORDS), verbalizer="soft")
    with pytest.raises(ValueError, match='needs a "type" key'):
        make_verbalizer({"tau": 0.1}, WORDS)


def test_soft_verbalizer_warns_about_split_label_words(roberta_tokenizer):
    plm = tiny_plm("roberta", roberta_tokenizer)
    with pytest.warns(UserWarning, match=r"starts each class vector from the first token.*"):
        PromptModel(plm, TEMPLATE["masked"], SoftVerbalizer({"negative": "terrible", "positive": "splendid"}))
