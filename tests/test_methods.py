"""Every delta method through the same front door, on every PLM family: training changes only
what the method trains, and save -> load gives the same predictions. Method-specific
behaviour is tested in test_delta_<method>.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaprompt.classifier import HeadClassifier, PromptClassifier, load
from deltaprompt.data import Example
from deltaprompt.delta import METHOD_NAMES

from .conftest import TOKENIZER_OF, tiny_plm

TRAIN = [Example("the movie was great", label="pos"), Example("a terrible film", label="neg"),
         Example("wonderful acting", label="pos"), Example("boring dull plot", label="neg")]
WORDS = {"neg": "terrible", "pos": "great"}
KINDS = ["bert", "gpt2", "llama", "t5"]
# Small counts so the tiny models stay tiny; everything else at its defaults.
OPTIONS = {"prompt_tuning": {"num_tokens": 3}, "p_tuning": {"num_tokens": 3}, "prefix": {"num_virtual_tokens": 3},
           "intrinsic": {"dimension": 16}}
RATES = {"lr": 1e-2, "soft_lr": 1e-1, "delta_lr": 1e-2, "head_lr": 1e-2}


def method(name: str) -> dict:
    return {"method": name, **OPTIONS.get(name, {})}


def snapshot(clf) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in clf.model.named_parameters()}


def train_two_steps(clf) -> None:
    clf.fit(TRAIN, epochs=1, batch_size=2, progress=False, warmup_ratio=0.0, **RATES)


def check_training_and_round_trip(clf, rebuild_plm, tmp_path) -> None:
    before = snapshot(clf)
    trainable = set(clf.model.trainable_parameters())
    assert trainable, "the method trains nothing"
    train_two_steps(clf)
    after = snapshot(clf)
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert changed, "no trainable parameter changed"
    roles = {clf.model.role_of(n, p)[0] for n, p in clf.model.trainable_parameters().items()}
    names = [m.name for m in clf.model.methods]
    assert ("plm" in roles) == ("finetune" in names)
    expected = clf.predict_proba(TRAIN)
    clf.save(tmp_path / "model")
    again = load(tmp_path / "model", plm=rebuild_plm())
    np.testing.assert_allclose(again.predict_proba(TRAIN), expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_prompt_classifier_with_each_method(request, tmp_path, name, kind):
    tokenizer = request.getfixturevalue(TOKENIZER_OF[kind])
    clf = PromptClassifier(tiny_plm(kind, tokenizer), "{text} it was {mask}", WORDS, methods=[method(name)],
                           progress=False)
    check_training_and_round_trip(clf, lambda: tiny_plm(kind, tokenizer), tmp_path)


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("name", ["finetune", "lora", "prefix", "adapter", "bitfit"])
def test_head_classifier_with_each_method(request, tmp_path, name, kind):
    tokenizer = request.getfixturevalue(TOKENIZER_OF[kind])
    clf = HeadClassifier(tiny_plm(kind, tokenizer), ["neg", "pos"], methods=[method(name)], progress=False)
    check_training_and_round_trip(clf, lambda: tiny_plm(kind, tokenizer), tmp_path)


@pytest.mark.parametrize(
    ("template", "methods"),
    [
        ('{text} {"soft": "so it was"} {mask}', ["lora"]),  # soft template + LoRA
        ("{text} it was {mask}", ["bitfit", method("prompt_tuning")]),
        ("{text} it was {mask}", [method("prefix"), method("p_tuning")]),
        ("{text} it was {mask}", ["adapter", "lora"]),
        ("{text} it was {mask}", [{"method": "prefix", "num_virtual_tokens": 3, "prefix_projection": True,
                                   "encoder_hidden_size": 8}]),  # folded on save
        ('{"soft"} {text} it was {mask}', ["finetune"]),  # mixed template, all weights
    ],
)
def test_combinations_train_and_round_trip(gpt2_tokenizer, tmp_path, template, methods):
    clf = PromptClassifier(tiny_plm("gpt2", gpt2_tokenizer), template, WORDS, methods=methods, progress=False)
    assert len(clf.model.methods) == len(methods)
    check_training_and_round_trip(clf, lambda: tiny_plm("gpt2", gpt2_tokenizer), tmp_path)
