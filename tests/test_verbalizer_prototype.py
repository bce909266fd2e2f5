"""ProtoVerb: cosine scores to learned prototypes, their start from examples, training that separates
classes, the ensemble with label words, saving and loading."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deltaprompt import Example, PromptClassifier, PromptModel, Verbalizer, load
from deltaprompt.verbalizer import PrototypeVerbalizer

from .conftest import (
    TEMPLATE,
    TRAIN,
    WORDS,
    labelled_batch,
    plm_of,
    responsive,
    tiny_plm,
    train_steps,
)

CLASSES = ["negative", "positive"]
# Two classes far apart: each text is made of its own class's words only.
SEPARATED = [Example(t, label="positive") for t in
             ("great wonderful great", "wonderful great", "great acting great", "wonderful wonderful")] + \
            [Example(t, label="negative") for t in
             ("terrible boring dull", "dull dull terrible", "boring terrible", "terrible dull boring")]


def _states(model: PromptModel, examples=TRAIN) -> torch.Tensor:
    batch, _ = labelled_batch(model, examples)
    with torch.no_grad():
        return model.mask_states(batch)


def test_scores_are_cosines_to_the_prototypes_over_tau(gpt2_tokenizer):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    model = PromptModel(plm, TEMPLATE["causal"], PrototypeVerbalizer(classes=CLASSES, dim=16, tau=0.5))
    head = model.head
    assert head.projection.weight.shape == (16, plm.model.get_output_embeddings().weight.size(1))
    batch, _ = labelled_batch(model)
    with torch.no_grad():
        projected = _states(model) @ head.projection.weight.T
        cosine = F.cosine_similarity(projected[:, None, :], head.prototypes[None], dim=-1)
        torch.testing.assert_close(model(batch), torch.log_softmax(cosine / 0.5, -1))


def test_init_from_starts_each_prototype_at_its_class_mean(roberta_tokenizer):
    plm = responsive(tiny_plm("roberta", roberta_tokenizer))
    model = PromptModel(plm, TEMPLATE["masked"], PrototypeVerbalizer(classes=CLASSES, dim=8, init_from=TRAIN))
    with torch.no_grad():
        projected = F.normalize(model.head.project(_states(model)), dim=-1)
    labels = torch.tensor([CLASSES.index(e.label) for e in TRAIN])
    for k in range(2):
        torch.testing.assert_close(model.head.prototypes[k].detach(), projected[labels == k].mean(0))
    # Without examples: random, from the model's seed alone.
    same = PromptModel(plm, TEMPLATE["masked"], PrototypeVerbalizer(classes=CLASSES, dim=8), seed=3)
    again = PromptModel(plm, TEMPLATE["masked"], PrototypeVerbalizer(classes=CLASSES, dim=8), seed=3)
    other = PromptModel(plm, TEMPLATE["masked"], PrototypeVerbalizer(classes=CLASSES, dim=8), seed=4)
    assert torch.equal(same.head.prototypes, again.head.prototypes)
    assert not torch.equal(same.head.prototypes, other.head.prototypes)


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "t5"])
def test_trained_prototypes_separate_two_classes(request, kind):
    plm = responsive(plm_of(request, kind))
    model = PromptModel(plm, TEMPLATE[plm.family], PrototypeVerbalizer(classes=CLASSES, dim=16), methods=[])
    assert set(model.trainable_parameters()) == {"head.projection.weight", "head.prototypes"}
    losses = train_steps(model, SEPARATED, steps=40, lr=3e-2)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    batch, labels = labelled_batch(model, SEPARATED)
    with torch.no_grad():
        assert torch.equal(model(batch).argmax(1), labels)
        projected = F.normalize(model.head.project(model.mask_states(batch)), dim=-1)
        cosine = projected @ F.normalize(model.head.prototypes, dim=-1).T
    own = cosine[torch.arange(len(SEPARATED)), labels]
    other = cosine[torch.arange(len(SEPARATED)), 1 - labels]
    assert (own > other).all()


def test_ensemble_multiplies_in_the_manual_class_distribution(gpt2_tokenizer):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    # One-token words (scored from the same states) and a word of several tokens (a second pass).
    for words in (WORDS, {"negative": "terrible", "positive": ["great", "splendid"]}):
        manual = PromptModel(plm, TEMPLATE["causal"], Verbalizer(words))
        alone = PromptModel(plm, TEMPLATE["causal"], PrototypeVerbalizer(classes=CLASSES, dim=8))
        both = PromptModel(plm, TEMPLATE["causal"], PrototypeVerbalizer(words, dim=8, ensemble=True))
        assert both.head.uses_label_words and torch.equal(both.head.prototypes, alone.head.prototypes)
        batch, _ = labelled_batch(manual)
        with torch.no_grad():
            expected = torch.log_softmax(alone(batch) + manual(batch), -1)
            torch.testing.assert_close(both(batch), expected, atol=1e-5, rtol=1e-5)


def test_bad_prototype_settings_say_what_to_do():
    with pytest.raises(ValueError, match="give label_words"):
        PrototypeVerbalizer(classes=CLASSES, ensemble=True)
    with pytest.raises(ValueError, match="at least two distinct classes"):
        PrototypeVerbalizer(classes=["only"])
    with pytest.raises(ValueError, match="reads one mask"):
        PrototypeVerbalizer(WORDS, multi_token="masks")
    with pytest.raises(ValueError, match="tau must be positive"):
        PrototypeVerbalizer(classes=CLASSES, tau=0)


def test_init_from_refuses_unknown_labels(gpt2_tokenizer):
    verbalizer = PrototypeVerbalizer(classes=CLASSES, init_from=[Example("so so", label="neutral")])
    with pytest.raises(ValueError, match=r"labels \['neutral'\] that are not classes"):
        PromptModel(tiny_plm("gpt2", gpt2_tokenizer), TEMPLATE["causal"], verbalizer)


def test_prototype_classifier_fits_saves_and_loads(gpt2_tokenizer, tmp_path):
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    clf = PromptClassifier(plm, TEMPLATE["causal"], None, classes=CLASSES,
                           verbalizer={"type": "prototype", "dim": 16, "tau": 0.2}, methods=[], progress=False)
    frozen = {n: p.detach().clone() for n, p in clf.model.named_parameters() if not n.startswith("head.")}
    labels = torch.tensor([CLASSES.index(e.label) for e in TRAIN])
    loss_before = F.nll_loss(torch.tensor(clf.predict_log_proba(TRAIN)), labels)
    clf.fit(TRAIN, epochs=10, batch_size=8, head_lr=3e-2, warmup_ratio=0.0, progress=False, tensorboard=False)
    loss_after = F.nll_loss(torch.tensor(clf.predict_log_proba(TRAIN)), labels)
    assert loss_after < loss_before - 0.1
    assert all(torch.equal(p, frozen[n]) for n, p in clf.model.named_parameters() if n in frozen)

    description = clf.describe()["verbalizer"]
    assert description["type"] == "prototype" and description["label_words"] is None
    assert (description["dim"], description["tau"], description["ensemble"]) == (16, 0.2, False)
    clf.save(tmp_path / "proto")
    again = load(tmp_path / "proto", plm=plm)
    assert isinstance(again.model.verbalizer, PrototypeVerbalizer) and again.classes == tuple(CLASSES)
    np.testing.assert_array_equal(again.predict_proba(TRAIN), clf.predict_proba(TRAIN))
