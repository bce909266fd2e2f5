"""PTR sub-prompts: class scores are sums of per-sub-prompt log-probabilities, delta methods
are shared by all sub-prompts, and the classifier trains, saves and loads like the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaprompt import Example, PromptModel, Verbalizer
from deltaprompt.classifier import load
from deltaprompt.subprompts import SubPromptClassifier, SubPromptModel

from .conftest import plm_of, responsive, tiny_plm, train_steps

# Sub-prompt 0 types the head, sub-prompt 1 the tail; "odd" belongs to no rule but still takes
# its share of sub-prompt 0's distribution.
SUBPROMPTS = {
    "masked": [
        {"template": '{text} {"meta": "head"} was {mask}.', "label_words": {"good": "great", "bad": "terrible",
                                                                           "odd": "news"}},
        {"template": '{text} {"meta": "tail"} was {mask}.', "label_words": {"good": "great", "bad": "terrible"}},
    ],
    "causal": [
        {"template": '{text} {"meta": "head"} was {mask}', "label_words": {"good": "great", "bad": "terrible",
                                                                          "odd": "news"}},
        {"template": '{text} {"meta": "tail"} was {mask}', "label_words": {"good": "great", "bad": "terrible"}},
    ],
}
RULES = {"both_good": ["good", "good"], "mixed": ["good", "bad"], "both_bad": ["bad", "bad"]}


def pair(text: str, head: str, tail: str, label: str | None = None) -> Example:
    """A relation example with its two entities as character spans."""
    spans = {}
    for name, mention in (("head", head), ("tail", tail)):
        start = text.index(mention)
        spans[name] = {"start": start, "end": start + len(mention), "text": mention}
    return Example(text, label=label, meta=spans)


TRAIN = [
    pair("the movie and the acting", "movie", "acting", "both_good"),
    pair("the plot and the film", "plot", "film", "both_bad"),
    pair("the movie and the plot", "movie", "plot", "mixed"),
    pair("the acting and the film", "acting", "film", "mixed"),
]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_class_scores_are_the_sum_of_normalised_sub_prompt_scores(request, kind):
    plm = plm_of(request, kind)
    subprompts = SUBPROMPTS[plm.family]
    model = SubPromptModel(plm, subprompts, RULES)
    assert model.classes == tuple(RULES)
    assert model.sub_labels == [("good", "bad", "odd"), ("good", "bad")]
    with torch.no_grad():
        scores = model(model.collate(model.encode(TRAIN)))
        by_hand = torch.zeros(len(TRAIN), len(RULES))
        for k, spec in enumerate(subprompts):
            alone = PromptModel(plm, spec["template"], Verbalizer(spec["label_words"]))
            sub = torch.log_softmax(alone(alone.collate(alone.encode(TRAIN))), -1)  # over all its sub-labels
            for c, labels in enumerate(RULES.values()):
                by_hand[:, c] += sub[:, alone.classes.index(labels[k])]
    torch.testing.assert_close(scores, torch.log_softmax(by_hand, -1), atol=1e-5, rtol=1e-5)
    # both_good and mixed share sub-prompt 0's sub-label; sub-prompt 1 still tells them apart.
    assert not torch.allclose(scores[:, 0], scores[:, 1])


def test_delta_methods_are_applied_once_and_reach_every_sub_prompt(gpt2_tokenizer):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    model = SubPromptModel(plm, SUBPROMPTS["causal"], RULES, methods=[{"method": "prefix", "num_virtual_tokens": 2}])
    assert [m.name for m in model.methods] == ["prefix"]
    assert all(prompt.methods == [] for prompt in model.prompts)
    assert all(prompt.input_transforms is model.input_transforms for prompt in model.prompts)
    assert len(model.input_transforms) == 1
    batch = model.collate(model.encode(TRAIN))
    sub_scores = model.sub_log_probs(batch)
    for k, scores in enumerate(sub_scores):  # each sub-prompt reads the prefix: its gradient reaches it
        model.zero_grad()
        scores[:, 0].sum().backward(retain_graph=k + 1 < len(sub_scores))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prefix.parameters()), k
    assert all(p.prompt_tokenizer.max_length == plm.max_length() - 2 for p in model.prompts)


def test_soft_tokens_of_each_sub_prompt_train_as_soft_tokens(gpt2_tokenizer):
    subprompts = [dict(s) for s in SUBPROMPTS["causal"]]
    subprompts[1]["template"] = '{"soft": None} ' + subprompts[1]["template"]
    model = SubPromptModel(responsive(tiny_plm("gpt2", gpt2_tokenizer)), subprompts, RULES, methods=["lora"])
    roles = {name: model.role_of(name, p)[0] for name, p in model.trainable_parameters().items()}
    assert roles.pop("prompts.1.soft_prompt.weight") == "soft"
    assert roles and set(roles.values()) == {"delta"} and all("lora_" in name for name in roles)


def test_lora_training_fits_a_few_examples(gpt2_tokenizer):
    model = SubPromptModel(responsive(tiny_plm("gpt2", gpt2_tokenizer)), SUBPROMPTS["causal"], RULES,
                           methods=["lora"])
    losses = train_steps(model, TRAIN, 30, 1e-2)
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        predicted = model(model.collate(model.encode(TRAIN))).argmax(1)
    assert [model.classes[i] for i in predicted] == [e.label for e in TRAIN]


def steady(plm):
    """The tiny PLM without dropout, which at the responsive scale drowns a few-step fit in noise."""
    for module in plm.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return plm


def test_classifier_fit_save_load_round_trip(gpt2_tokenizer, tmp_path):
    subprompts = [dict(s) for s in SUBPROMPTS["causal"]]
    subprompts[0]["template"] = '{"soft": "Entity:"} ' + subprompts[0]["template"]
    clf = SubPromptClassifier(steady(responsive(tiny_plm("gpt2", gpt2_tokenizer))), subprompts, RULES,
                              methods=[{"method": "lora", "lr": 1e-2, "dropout": 0.0}], progress=False, seed=3)
    clf.fit(TRAIN, epochs=30, batch_size=4, soft_lr=1e-2, warmup_ratio=0.0, schedule="constant",
            progress=False)
    assert clf.predict(TRAIN) == [e.label for e in TRAIN]
    assert clf.evaluate(TRAIN).accuracy == 1.0
    folder = clf.save(tmp_path / "model")
    again = load(folder, plm=responsive(tiny_plm("gpt2", gpt2_tokenizer)))
    assert isinstance(again, SubPromptClassifier)
    assert again.rules == {name: tuple(labels) for name, labels in RULES.items()}
    assert [m.name for m in again.model.methods] == ["lora"]
    np.testing.assert_allclose(again.predict_proba(TRAIN), clf.predict_proba(TRAIN), atol=1e-6)


def test_refusals(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    subprompts = SUBPROMPTS["causal"]
    with pytest.raises(ValueError, match="sub-prompt 1 has no sub-label 'great'"):
        SubPromptClassifier(plm, subprompts, {**RULES, "typo": ["good", "great"]})
    with pytest.raises(ValueError, match="give exactly one per sub-prompt"):
        SubPromptClassifier(plm, subprompts, {**RULES, "short": ["good"]})
    with pytest.raises(ValueError, match="same sub-labels"):
        SubPromptClassifier(plm, subprompts, {**RULES, "again": ["good", "good"]})
    with pytest.raises(ValueError, match="at least two classes"):
        SubPromptClassifier(plm, subprompts, {"only": ["good", "good"]})
    with pytest.raises(ValueError, match="exactly one"):
        SubPromptClassifier(plm, [{"template": "{text} no mask", "label_words": {"a": "great", "b": "dull"}}],
                            {"a": ["a"], "b": ["b"]})
    with pytest.raises(ValueError, match="unknown keys"):
        SubPromptClassifier(plm, [{**subprompts[0], "verbalizer": "soft"}, subprompts[1]], RULES)
    with pytest.raises(ValueError, match="prompt_tuning"):
        SubPromptClassifier(plm, subprompts, RULES, methods=["prompt_tuning"])
