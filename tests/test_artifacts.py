"""Saving and loading classifiers: only trained weights, a self-description, the base-model
fingerprint check, and atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from deltaprompt import artifacts
from deltaprompt.classifier import HeadClassifier, PromptClassifier, load
from deltaprompt.data import Example

from .conftest import tiny_plm

TRAIN = [Example("the movie was great", label="pos"), Example("a terrible film", label="neg"),
         Example("wonderful acting", label="pos"), Example("boring dull plot", label="neg")]
WORDS = {"neg": "terrible", "pos": "great"}


def test_soft_prompt_classifier_saves_only_the_soft_tokens(gpt2_tokenizer, tmp_path):
    clf = PromptClassifier(tiny_plm("gpt2", gpt2_tokenizer), '{"soft": "Review:"} {text} {"soft": None} it was {mask}',
                           WORDS, methods=[], progress=False)
    clf.fit(TRAIN, epochs=2, batch_size=2, soft_lr=0.1, progress=False)
    folder = clf.save(tmp_path / "model")
    tensors = load_file(str(folder / artifacts.WEIGHTS))
    assert list(tensors) == ["soft_prompt.weight"]
    assert tensors["soft_prompt.weight"].shape[0] == clf.model.prompt_tokenizer.num_soft_tokens > 1
    description = json.loads((folder / artifacts.DESCRIPTION).read_text())
    assert description["kind"] == "prompt" and description["methods"] == []
    assert description["verbalizer"]["label_words"] == {"neg": ["terrible"], "pos": ["great"]}
    assert description["trained"]["steps"] == 4

    again = load(folder, plm=tiny_plm("gpt2", gpt2_tokenizer))
    np.testing.assert_array_equal(again.predict_proba(TRAIN), clf.predict_proba(TRAIN))
    assert torch.equal(again.model.soft_prompt.weight, clf.model.soft_prompt.weight)


def test_finetuned_classifier_round_trip(bert_tokenizer, tmp_path):
    clf = PromptClassifier(tiny_plm("bert", bert_tokenizer), "{text} it was {mask}.", WORDS, progress=False)
    clf.fit(TRAIN, epochs=2, batch_size=2, lr=1e-3, progress=False)  # no methods: full fine-tuning
    clf.save(tmp_path / "model")
    again = load(tmp_path / "model", plm=tiny_plm("bert", bert_tokenizer))
    np.testing.assert_allclose(again.predict_proba(TRAIN), clf.predict_proba(TRAIN), atol=1e-6)
    assert again.model.methods[0].name == "finetune"


def test_head_classifier_round_trip(gpt2_tokenizer, tmp_path):
    clf = HeadClassifier(tiny_plm("gpt2", gpt2_tokenizer), ["neg", "pos"], methods=[], progress=False)
    clf.fit(TRAIN, epochs=2, batch_size=2, head_lr=1e-2, progress=False)
    clf.save(tmp_path / "model")
    tensors = load_file(str(tmp_path / "model" / artifacts.WEIGHTS))
    assert sorted(tensors) == ["head.1.bias", "head.1.weight"]
    again = load(tmp_path / "model", plm=tiny_plm("gpt2", gpt2_tokenizer))
    assert isinstance(again, HeadClassifier)
    np.testing.assert_array_equal(again.predict_proba(TRAIN), clf.predict_proba(TRAIN))


def test_other_base_weights_are_refused(gpt2_tokenizer, tmp_path):
    clf = PromptClassifier(tiny_plm("gpt2", gpt2_tokenizer), '{"soft"} {text} it was {mask}', WORDS, methods=[])
    clf.save(tmp_path / "model")
    other = tiny_plm("gpt2", gpt2_tokenizer)
    with torch.no_grad():
        next(other.model.parameters())[0, 0] += 0.5
    with pytest.raises(artifacts.ArtifactError, match="fingerprint"):
        load(tmp_path / "model", plm=other)


def test_fingerprint_ignores_precision_but_sees_any_sampled_change(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    original = artifacts.fingerprint(plm.model)
    assert artifacts.fingerprint(plm.model.to(torch.bfloat16)) == original
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    with torch.no_grad():
        plm.model.lm_head.weight[0, 0] += 1.0
    assert artifacts.fingerprint(plm.model) != original


def test_saving_replaces_atomically_and_never_clobbers_other_folders(gpt2_tokenizer, tmp_path):
    clf = PromptClassifier(tiny_plm("gpt2", gpt2_tokenizer), '{"soft"} {text} it was {mask}', WORDS, methods=[])
    clf.save(tmp_path / "model")
    with torch.no_grad():
        clf.model.soft_prompt.weight.add_(1.0)
    clf.save(tmp_path / "model")  # a second save replaces the first
    saved = load_file(str(tmp_path / "model" / artifacts.WEIGHTS))["soft_prompt.weight"]
    assert torch.equal(saved, clf.model.soft_prompt.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="not a saved classifier"):
        clf.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_loading_a_folder_that_is_not_a_classifier(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="no deltaprompt.json"):
        load(tmp_path)

