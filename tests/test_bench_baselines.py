"""The baselines of the benchmark suite: a PEFT-only LoRA classifier and SetFit, on tiny models.

The toy task is decided by one word ("great" or "terrible", both single tokens of the test
tokenizers); the test sentences use subjects the training set never shows.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from deltaprompt import Example
from deltaprompt.bench.baselines import BaselineUnavailable, make_baseline

from .conftest import has_package, tiny_plm

CLASSES = ("negative", "positive")
WORD = {"positive": "great", "negative": "terrible"}
TRAIN = [Example(f"{subject} was {WORD[label]}", label=label)
         for subject in ("the movie", "the plot", "the acting", "a film", "the story", "the music")
         for label in CLASSES]
TEST = [Example(f"{subject} was {WORD[label]}", label=label) for subject in ("the cast", "this review")
        for label in CLASSES]
GOLD = np.array([CLASSES.index(e.label) for e in TEST])
PAIRS = [Example("a wonderful film", text_b=f"it was {WORD[label]}", label=label) for label in CLASSES] * 3
FAST = {"lr": 1e-2}  # tiny random models need a larger step than real ones to learn in a few epochs
BUDGET = {"epochs": 10, "batch_size": 4}


def lora(plm_name: str, seed: int = 0, **options):
    return make_baseline("peft_lora", {**FAST, **options}, classes=CLASSES, plm_name=plm_name, seed=seed,
                         device="cpu", progress=False)


def assert_probabilities(probabilities: np.ndarray, rows: int) -> None:
    assert probabilities.shape == (rows, len(CLASSES))
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


# ----------------------------------------------------------------------------- peft_lora

def test_peft_lora_learns_the_toy_task_on_gpt2(model_dir):
    baseline = lora(model_dir).fit(TRAIN, None, BUDGET)
    history = baseline.history
    assert len(history) == 10 * 3  # 12 examples in batches of 4, ten epochs
    assert np.mean(history[:3]) > 0.5 and np.mean(history[-3:]) < 0.1
    probabilities = baseline.predict_proba(TEST)
    assert_probabilities(probabilities, len(TEST))
    assert (probabilities.argmax(axis=1) == GOLD).all()


def test_peft_lora_trains_only_lora_and_the_head(model_dir):
    baseline = lora(model_dir)
    before = {n: p.detach().clone() for n, p in baseline.model.named_parameters()}
    baseline.fit(TRAIN, None, {"epochs": 1, "batch_size": 4})
    moved = {n for n, p in baseline.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n or ".modules_to_save." in n for n in moved), moved
    trainable, total = baseline.parameter_count()
    # Two GPT-2 layers of width 32: c_attn (32 -> 96) gets A (8 x 32) and B (96 x 8); the score
    # head (32 -> 2 classes, no bias) is trained whole.
    assert trainable == 2 * (8 * 32 + 96 * 8) + 2 * 32
    assert trainable == sum(p.numel() for p in baseline.model.parameters() if p.requires_grad)
    assert trainable == baseline.model.get_nb_trainable_parameters()[0]
    # The total is the base model with its new head, plus LoRA: PEFT's own total also counts
    # the untouched original of the head it trains a copy of.
    base = sum(p.numel() for n, p in baseline.model.named_parameters() if ".lora_" not in n and "score." not in n)
    assert total == base + trainable == baseline.model.get_nb_trainable_parameters()[1] - 2 * 32
    assert trainable < 0.1 * total


def test_peft_lora_is_seeded(model_dir):
    first = lora(model_dir, seed=3).fit(TRAIN, None, {"epochs": 2, "batch_size": 4})
    again = lora(model_dir, seed=3).fit(TRAIN, None, {"epochs": 2, "batch_size": 4})
    other = lora(model_dir, seed=4).fit(TRAIN, None, {"epochs": 2, "batch_size": 4})
    assert first.history == again.history
    np.testing.assert_array_equal(first.predict_proba(TEST), again.predict_proba(TEST))
    assert first.history != other.history


def test_peft_lora_budget_and_options(model_dir):
    assert len(lora(model_dir).fit(TRAIN, None, {"epochs": 5, "batch_size": 4, "max_steps": 7}).history) == 7
    # The method's own options win over the suite's budget.
    assert len(lora(model_dir, epochs=1, batch_size=6).fit(TRAIN, None, BUDGET).history) == 2


def test_peft_lora_keeps_the_best_epoch_on_dev(model_dir):
    # A dev set labelled against the task: no epoch scores better on it than the first one,
    # so the first epoch's weights are kept, not the last's, which fit the training set better.
    flipped = [Example(e.text, label=CLASSES[1 - CLASSES.index(e.label)]) for e in TEST]
    selected = lora(model_dir).fit(TRAIN, flipped, BUDGET)
    last = lora(model_dir, select_on_dev=False).fit(TRAIN, flipped, BUDGET)
    assert selected.history == last.history  # the same training; only the kept weights differ
    gold = np.array([CLASSES.index(e.label) for e in TRAIN])
    fit_selected = selected.predict_proba(TRAIN)[np.arange(len(TRAIN)), gold].mean()
    fit_last = last.predict_proba(TRAIN)[np.arange(len(TRAIN)), gold].mean()
    assert fit_last > 0.95 and fit_selected < fit_last - 0.2


def test_peft_lora_pairs_keep_the_two_texts_apart(model_dir, bert_tokenizer, tmp_path):
    # GPT-2's pair encoding just concatenates; the second text starts on a new line.
    gpt2 = lora(model_dir)
    ids = gpt2.encode([Example("a wonderful film", text_b="it was great")])[0]["input_ids"]
    assert gpt2.tokenizer.decode(ids) == "a wonderful film\nit was great"
    # BERT's has its separator: [CLS] a [SEP] b [SEP].
    tiny_plm("bert", bert_tokenizer).model.save_pretrained(tmp_path)
    bert_tokenizer.save_pretrained(tmp_path)
    bert = lora(str(tmp_path))
    ids = bert.encode([Example("a wonderful film", text_b="it was great")])[0]["input_ids"]
    assert bert.tokenizer.decode(ids) == "[CLS] a wonderful film [SEP] it was great [SEP]"
    bert.fit(PAIRS, None, {"epochs": 1, "batch_size": 4})
    assert_probabilities(bert.predict_proba(PAIRS), len(PAIRS))
    with pytest.raises(ValueError, match="every example has a text_b or none"):
        bert.predict_proba([PAIRS[0], TEST[0]])


def test_baseline_errors_say_what_to_do(model_dir):
    with pytest.raises(ValueError, match="unknown option.*rank.*known options: model, r,"):
        lora(model_dir, rank=8)
    with pytest.raises(ValueError, match="option r must be an integer, got '8'"):
        lora(model_dir, r="8")
    with pytest.raises(ValueError, match="option target_modules must be a list of a string or null"):
        lora(model_dir, target_modules="c_attn")
    with pytest.raises(ValueError, match="unknown baseline kind 'nope'"):
        make_baseline("nope", {}, classes=CLASSES, plm_name=model_dir, seed=0)
    with pytest.raises(ValueError, match="label 'neutral'"):
        lora(model_dir).fit([Example("so so", label="neutral")], None, BUDGET)
    baseline = lora(model_dir).fit(TRAIN, None, {"epochs": 1})
    with pytest.raises(RuntimeError, match="make a new one"):
        baseline.fit(TRAIN, None, {"epochs": 1})


# ----------------------------------------------------------------------------- setfit

@pytest.fixture(scope="module")
def sentence_encoder(tmp_path_factory, bert_tokenizer) -> str:
    """A 2-layer BERT with mean pooling and normalisation, saved as a sentence-transformers folder."""
    if not has_package("setfit"):
        pytest.skip("setfit is not installed: pip install 'deltaprompt[bench]'")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("sentence-encoder")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder / "bert")
    bert_tokenizer.save_pretrained(folder / "bert")
    body = Transformer(str(folder / "bert"), max_seq_length=64)
    SentenceTransformer(modules=[body, Pooling(32, "mean"), Normalize()], device="cpu").save(str(folder / "st"))
    return str(folder / "st")


def setfit(model: str, seed: int = 0):
    return make_baseline("setfit", {"model": model}, classes=CLASSES, plm_name="unused", seed=seed,
                         device="cpu", progress=False)


def test_setfit_trains_the_body_and_separates_the_toy_task(sentence_encoder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    baseline = setfit(sentence_encoder)
    body = baseline.model.model_body
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    assert baseline.parameter_count()[0] == sum(before[n].numel() for n in before) + 32 + 1
    baseline.fit(TRAIN, TEST, {"epochs": 99})
    moved = [n for n, p in body.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > len(before) // 2  # the contrastive phase fine-tunes the whole encoder
    probabilities = baseline.predict_proba(TEST)
    assert_probabilities(probabilities, len(TEST))
    assert (probabilities.argmax(axis=1) == GOLD).all()
    trainable, total = baseline.parameter_count()
    assert trainable == total == sum(p.numel() for p in body.parameters()) + 32 + 1  # LR head: 32 weights + bias
    assert list(tmp_path.iterdir()) == []  # no checkpoints or logs where the run started


def test_setfit_is_seeded(sentence_encoder):
    first = setfit(sentence_encoder, seed=5).fit(TRAIN, None, {}).predict_proba(TEST)
    again = setfit(sentence_encoder, seed=5).fit(TRAIN, None, {}).predict_proba(TEST)
    other = setfit(sentence_encoder, seed=6).fit(TRAIN, None, {}).predict_proba(TEST)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_setfit_pairs_read_as_bert_pair_encoding(sentence_encoder, bert_tokenizer):
    baseline = setfit(sentence_encoder)
    text = baseline.text(Example("a wonderful film", text_b="it was great"))
    assert bert_tokenizer(text)["input_ids"] == bert_tokenizer("a wonderful film", "it was great")["input_ids"]
    baseline.fit(PAIRS, None, {})
    assert_probabilities(baseline.predict_proba(PAIRS), len(PAIRS))


def test_setfit_unavailable_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "setfit", None)  # import setfit now fails
    with pytest.raises(BaselineUnavailable, match=r"setfit is not installed: pip install 'deltaprompt\[bench\]'"):
        make_baseline("setfit", {}, classes=CLASSES, plm_name="unused", seed=0)
