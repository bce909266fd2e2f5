"""PET and iPET: the ensemble's soft labels, the weights, iPET's growing training sets, soft-label
training in the trainer, the auxiliary masked-LM loss, saving the final classifier, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deltaprompt import Example, HeadClassifier, PromptClassifier, load
from deltaprompt.cli import main
from deltaprompt.model import PromptModel
from deltaprompt.pet import (
    PET,
    PVP,
    MaskedLMAuxiliary,
    ensemble_soft_labels,
    load_pvps,
    pseudo_label_sample,
)
from deltaprompt.trainer import TrainConfig, Trainer
from deltaprompt.verbalizer import Verbalizer

from .conftest import TRAIN, WORDS, responsive, tiny_plm

OTHER_WORDS = {"negative": "dull", "positive": "wonderful"}
CAUSAL_PVPS = [PVP("{text} It was {mask}", WORDS), PVP("{text} All in all, {mask}", OTHER_WORDS)]
MASKED_PVPS = [PVP("{text} It was {mask}.", WORDS), PVP("All in all, {mask}. {text}", OTHER_WORDS)]
UNLABELLED = [
    "the film was wonderful", "a boring movie", "great plot and great acting", "the acting was dull",
    "a terrible plot", "wonderful and great", "dull and boring", "the movie was terrible", "a great film",
    "boring acting", "the plot was wonderful", "a dull film",
    "great fun", "terrible and dull", "wonderful acting", "the film was boring", "a great movie",
    "the plot was terrible", "wonderful", "boring",
]
QUICK = {"max_steps": 1, "batch_size": 4, "lr": 1e-3, "progress": False}


def base_plm(kind: str, tokenizer):
    """The same tiny, input-sensitive model every call (deterministic weights)."""
    return responsive(tiny_plm(kind, tokenizer))


@pytest.fixture
def fits(monkeypatch):
    """Every Trainer.fit call, as (training examples, targets or None, auxiliary or None)."""
    calls = []
    original = Trainer.fit

    def recording(self, train, dev=None, targets=None):
        calls.append((list(train), None if targets is None else targets.clone(), self.auxiliary))
        return original(self, train, dev, targets=targets)

    monkeypatch.setattr(Trainer, "fit", recording)
    return calls


def state(plm) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in plm.model.state_dict().items()}


# ----------------------------------------------------------------------------- the ensemble

def test_soft_labels_are_the_weighted_average_of_scores_softened_by_the_temperature():
    generator = torch.Generator().manual_seed(0)
    scores = [torch.log_softmax(torch.randn(5, 3, generator=generator) * 3, -1) for _ in range(3)]
    weights = [0.5, 0.25, 1.0]
    got = ensemble_soft_labels(scores, weights, temperature=2.0)
    for n in range(5):  # by hand: sum_i w_i s_i / sum_i w_i, divided by T, softmaxed
        averaged = [sum(w * float(s[n, c]) for w, s in zip(weights, scores, strict=True)) / sum(weights) for c in range(3)]
        exps = [math.exp(a / 2.0) for a in averaged]
        assert got[n].tolist() == pytest.approx([e / sum(exps) for e in exps], abs=1e-6)
    # logits instead of log-probs (a constant per example and model) give the same labels
    shifted = [s + torch.randn(5, 1, generator=generator) * 10 for s in scores]
    torch.testing.assert_close(ensemble_soft_labels(shifted, weights, 2.0), got)
    # a higher temperature is flatter; T = 1 with one model gives back its own distribution
    assert (ensemble_soft_labels(scores, weights, 4.0).max(1).values <= got.max(1).values + 1e-7).all()
    torch.testing.assert_close(ensemble_soft_labels(scores[:1], [3.0], 1.0), scores[0].exp())
    with pytest.raises(ValueError, match="positive sum"):
        ensemble_soft_labels(scores, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="3 models"):
        ensemble_soft_labels(scores, [1.0, 1.0])


def test_pseudo_label_sample_is_class_balanced_and_fills_a_rare_class_from_the_others():
    probabilities = torch.tensor([[0.9, 0.1]] * 6 + [[0.2, 0.8]] * 6)
    indices, labels = pseudo_label_sample(probabilities, 6, torch.Generator().manual_seed(0))
    assert labels.tolist().count(0) == 3 and labels.tolist().count(1) == 3
    assert all(probabilities[i].argmax() == c for i, c in zip(indices.tolist(), labels.tolist(), strict=True))
    assert len(set(indices.tolist())) == 6

    skewed = torch.tensor([[0.9, 0.1]] * 9 + [[0.3, 0.7]])
    with pytest.warns(UserWarning, match="too few examples"):
        indices, labels = pseudo_label_sample(skewed, 6, torch.Generator().manual_seed(0))
    assert len(indices) == 6 and labels.tolist().count(1) == 1 and 9 in indices.tolist()


def test_pseudo_label_sample_prefers_confident_examples():
    probabilities = torch.tensor([[0.99, 0.01], [0.51, 0.49], [0.1, 0.9]])
    generator = torch.Generator().manual_seed(0)
    confident = sum(pseudo_label_sample(probabilities, 2, generator)[0].tolist()[0] == 0 for _ in range(400))
    assert 0.55 < confident / 400 < 0.78  # proportional to confidence: 0.99 / 1.50 = 0.66


# ----------------------------------------------------------------------------- PET

def test_pet_weights_soft_labels_and_distillation_targets(gpt2_tokenizer, fits, tmp_path):
    plm = base_plm("gpt2", gpt2_tokenizer)
    before = state(plm)
    pet = PET(plm, CAUSAL_PVPS, **QUICK)
    classifier = pet.fit(TRAIN, UNLABELLED)

    # weights: each PVP's accuracy on the training set before any training, on the base weights
    expected = []
    for index, pvp in enumerate(CAUSAL_PVPS):
        fresh = PromptClassifier(base_plm("gpt2", gpt2_tokenizer), pvp.template, pvp.label_words, seed=index)
        expected.append(np.mean([p == e.label for p, e in zip(fresh.predict(TRAIN), TRAIN, strict=True)]))
    assert pet.train_accuracies.tolist() == pytest.approx(expected)
    assert pet.weights.tolist() == pytest.approx(expected)

    # soft labels: the trained PVP models' scores on the unlabelled texts, averaged and softened
    scores = [m.predict_log_proba(UNLABELLED).astype(np.float64) for m in pet.models]
    averaged = sum(w * s for w, s in zip(expected, scores, strict=True)) / sum(expected)
    softened = np.exp(averaged / 2.0) / np.exp(averaged / 2.0).sum(1, keepdims=True)
    np.testing.assert_allclose(pet.soft_labels.numpy(), softened, atol=1e-5)

    # training: each PVP model on the labelled set, then the final head on the soft labels
    assert [len(t) for t, _, _ in fits] == [8, 8, len(UNLABELLED)]
    assert fits[0][1] is None and fits[1][1] is None
    distilled, targets, _ = fits[2]
    assert [e.text for e in distilled] == UNLABELLED and all(e.label is None for e in distilled)
    np.testing.assert_allclose(targets.numpy(), softened, atol=1e-5)
    assert isinstance(classifier, HeadClassifier) and classifier.result.steps == 1
    assert pet.history == [{"generation": 0, "train_sizes": [8, 8], "pseudo_labelled": 0}]
    assert all(torch.equal(before[n], t) for n, t in plm.model.state_dict().items())  # the base is untouched

    # the final classifier is an ordinary one: it saves and loads onto the base model
    classifier.save(tmp_path / "pet")
    again = load(tmp_path / "pet", plm=base_plm("gpt2", gpt2_tokenizer))
    np.testing.assert_allclose(again.predict_proba(UNLABELLED), classifier.predict_proba(UNLABELLED), atol=1e-5)


def test_uniform_weights_prompt_final_and_labelled_examples_in_distillation(gpt2_tokenizer, fits):
    pet = PET(base_plm("gpt2", gpt2_tokenizer), CAUSAL_PVPS, weighting="uniform", final="prompt",
              distil_labelled=True, temperature=1.0, keep_models=False, **QUICK)
    classifier = pet.fit(TRAIN, UNLABELLED[:6])
    assert pet.weights.tolist() == [1.0, 1.0] and pet.models == []
    assert isinstance(classifier, PromptClassifier) and classifier.template.text == CAUSAL_PVPS[0].template
    distilled, targets, _ = fits[-1]
    assert len(distilled) == 6 + len(TRAIN) and targets.shape == (14, 2)
    expected = ensemble_soft_labels(pet.unlabelled_log_probs[0], [1.0, 1.0], 1.0)
    torch.testing.assert_close(targets[:6], expected)
    gold = torch.tensor([classifier.classes.index(e.label) for e in TRAIN])
    assert torch.equal(targets[6:], torch.nn.functional.one_hot(gold, 2).float())  # labelled: one-hot


@pytest.mark.filterwarnings("ignore:the ensemble labels too few")  # a random tiny model is lopsided
def test_ipet_multiplies_the_training_set_by_the_factor_and_caps_at_the_pool(gpt2_tokenizer, fits):
    pet = PET(base_plm("gpt2", gpt2_tokenizer), CAUSAL_PVPS, generations=2, factor=2, **QUICK)
    with pytest.warns(UserWarning, match="capped at 28"):  # generation 2 asks for 32 = 8 + 24 > 8 + 20
        pet.fit(TRAIN, UNLABELLED)
    assert [h["train_sizes"] for h in pet.history] == [[8, 8], [16, 16], [28, 28]]
    assert [h["pseudo_labelled"] for h in pet.history] == [0, 8, 20]
    assert [len(t) for t, _, _ in fits] == [8, 8, 16, 16, 28, 28, len(UNLABELLED)]
    assert len(pet.unlabelled_log_probs) == 3

    # generation 1, model i: the labelled set, then examples labelled by the other PVP's model of
    # generation 0 (two PVPs: the one other model), with the ensemble's argmax as their label
    weights = pet.weights
    for index in range(2):
        training, _, _ = fits[2 + index]
        assert training[:8] == TRAIN
        other = 1 - index
        assert pet.history[1]["labelled_by"][index] == [other]
        labels = ensemble_soft_labels(pet.unlabelled_log_probs[0][[other]], weights[[other]], 2.0).argmax(1)
        for example in training[8:]:
            assert example.label == pet.classes[int(labels[UNLABELLED.index(example.text)])]
    # the final classifier learns from the last generation's ensemble
    torch.testing.assert_close(fits[-1][1], ensemble_soft_labels(pet.unlabelled_log_probs[2], weights, 2.0))


def test_pet_refuses_what_cannot_work(gpt2_tokenizer):
    plm = base_plm("gpt2", gpt2_tokenizer)
    with pytest.raises(ValueError, match="at least two PVPs"):
        PET(plm, CAUSAL_PVPS[:1], generations=1)
    with pytest.raises(ValueError, match="masked-LM loss"):
        PET(plm, CAUSAL_PVPS, mlm_weight=1e-4)
    with pytest.raises(ValueError, match=r"PVP 1: .*no label words for \['positive'\]"):
        PET(plm, [CAUSAL_PVPS[0], PVP("{text} {mask}", {"negative": "bad", "neutral": "fine"})])
    with pytest.raises(ValueError, match="not classes"):
        PET(plm, CAUSAL_PVPS).fit([Example("x", label="other")], UNLABELLED)
    with pytest.raises(ValueError, match="unlabelled"):
        PET(plm, CAUSAL_PVPS).fit(TRAIN, [])


# ----------------------------------------------------------------------------- soft labels in the trainer

def gpt2_model(tokenizer) -> PromptModel:
    return PromptModel(tiny_plm("gpt2", tokenizer), "{text} It was {mask}", Verbalizer(WORDS), methods=["finetune"])


def soft_cross_entropy(model: PromptModel, examples, targets: torch.Tensor) -> float:
    log_probs = model.log_proba(model.encode(examples))
    return float(-(targets * log_probs).sum(1).mean())


def test_one_hot_targets_train_as_hard_labels(gpt2_tokenizer):
    config = TrainConfig(max_steps=3, batch_size=4, lr=1e-3, progress=False)
    hard, soft = gpt2_model(gpt2_tokenizer), gpt2_model(gpt2_tokenizer)
    initial = hard.log_proba(hard.encode(TRAIN))
    hard_result = Trainer(hard, config).fit(TRAIN)
    gold = torch.tensor([hard.classes.index(e.label) for e in TRAIN])
    soft_result = Trainer(soft, config).fit(TRAIN, targets=torch.nn.functional.one_hot(gold, 2).float())
    assert soft_result.train_loss == pytest.approx(hard_result.train_loss, abs=1e-6)
    # Same model afterwards (weights whose gradient is ~0 may differ by rounding, which Adam magnifies)
    trained = hard.log_proba(hard.encode(TRAIN))
    assert (trained - initial).abs().max() > 0.05  # far more than the tolerance below
    torch.testing.assert_close(soft.log_proba(soft.encode(TRAIN)), trained, atol=1e-3, rtol=0)


def test_soft_targets_pull_the_model_toward_them(gpt2_tokenizer):
    model = gpt2_model(gpt2_tokenizer)
    texts = [Example(e.text) for e in TRAIN]  # no labels: the targets are the only signal
    # the opposite of what the words say, not too sharp
    targets = torch.tensor([[0.8, 0.2] if e.label == "positive" else [0.2, 0.8] for e in TRAIN])
    before = soft_cross_entropy(model, texts, targets)
    result = Trainer(model, TrainConfig(max_steps=40, batch_size=8, lr=1e-3, warmup_ratio=0.0, progress=False)).fit(
        texts, targets=targets)
    after = soft_cross_entropy(model, texts, targets)
    assert after < before and result.steps == 40
    predicted = model.log_proba(model.encode(texts)).argmax(1)
    assert torch.equal(predicted, targets.argmax(1))
    # fitted to a soft target, the probabilities approach it, not 0/1
    torch.testing.assert_close(model.log_proba(model.encode(texts)).exp(), targets, atol=0.05, rtol=0)


def test_targets_are_checked(gpt2_tokenizer):
    trainer = Trainer(gpt2_model(gpt2_tokenizer), TrainConfig(max_steps=1, progress=False))
    with pytest.raises(ValueError, match="shape"):
        trainer.fit(TRAIN, targets=torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        trainer.fit(TRAIN, targets=torch.full((8, 2), 0.7))
    with pytest.raises(ValueError, match="non-negative"):
        trainer.fit(TRAIN, targets=torch.tensor([[1.5, -0.5]] * 8))
    with pytest.raises(ValueError, match="label None"):  # without targets, labels are required
        trainer.fit([Example("a film")])


# ----------------------------------------------------------------------------- auxiliary masked-LM loss

def roberta_model(tokenizer) -> PromptModel:
    return PromptModel(base_plm("roberta", tokenizer), "{text} It was {mask}.", Verbalizer(WORDS),
                       methods=["finetune"])


def test_masked_lm_auxiliary_is_the_weighted_mlm_loss_and_reaches_the_plm(roberta_tokenizer):
    model = roberta_model(roberta_tokenizer).eval()  # eval: no dropout, so values compare exactly
    auxiliary = MaskedLMAuxiliary(UNLABELLED, weight=0.5, mask_probability=0.3)
    auxiliary.start(model, TrainConfig(batch_size=4, seed=3))
    batch = auxiliary.batch(2)
    assert torch.equal(batch["labels"], auxiliary.batch(2)["labels"])  # (seed, step) decide it
    assert not torch.equal(batch["input_ids"], auxiliary.batch(3)["input_ids"])
    predicted = batch["labels"] != -100
    assert predicted.any() and (batch["labels"][~predicted] == -100).all()
    assert (batch["attention_mask"].bool() | ~predicted).all()  # padding is never predicted
    loss = auxiliary(model, 2)
    expected = model.model(**batch).loss
    torch.testing.assert_close(loss, 0.5 * expected)
    loss.backward()
    embeddings = model.model.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    layer = next(p for n, p in model.model.named_parameters() if "encoder.layer.0" in n and p.ndim == 2)
    assert layer.grad.abs().sum() > 0


def test_the_trainer_adds_the_auxiliary_loss(roberta_tokenizer):
    config = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, weight_decay=0.0, progress=False)
    plain, extra = roberta_model(roberta_tokenizer), roberta_model(roberta_tokenizer)
    plain_result = Trainer(plain, config).fit(TRAIN)
    extra_result = Trainer(extra, config, auxiliary=MaskedLMAuxiliary(["zebra quokka"] * 4, weight=1.0,
                                                                      mask_probability=0.5)).fit(TRAIN)
    assert extra_result.train_loss > plain_result.train_loss
    # the rows of tokens that only the unlabelled text has move only through the MLM loss
    rows = roberta_tokenizer(" zebra quokka", add_special_tokens=False)["input_ids"]
    seen = {t for e in TRAIN for t in roberta_tokenizer(e.text + " It was great terrible")["input_ids"]}
    rows = [r for r in rows if r not in seen]
    assert rows
    initial = base_plm("roberta", roberta_tokenizer).model.get_input_embeddings().weight[rows]
    assert torch.equal(plain.model.get_input_embeddings().weight[rows], initial)
    assert not torch.equal(extra.model.get_input_embeddings().weight[rows], initial)


def test_masked_lm_auxiliary_refuses_causal_lms(gpt2_tokenizer):
    with pytest.raises(ValueError, match="masked-LM loss; tiny-gpt2 is a causal LM"):
        MaskedLMAuxiliary(UNLABELLED).start(gpt2_model(gpt2_tokenizer), TrainConfig())


def test_pet_trains_pvp_models_with_the_mlm_loss(roberta_tokenizer, fits):
    pet = PET(base_plm("roberta", roberta_tokenizer), MASKED_PVPS, mlm_weight=1e-4, **QUICK)
    pet.fit(TRAIN, UNLABELLED[:6])
    auxiliaries = [aux for _, _, aux in fits]
    assert all(isinstance(a, MaskedLMAuxiliary) and a.weight == 1e-4 for a in auxiliaries[:2])
    assert auxiliaries[2] is None  # not the final classifier
    assert auxiliaries[0].texts == UNLABELLED[:6]


# ----------------------------------------------------------------------------- command line

TEXTS = {
    "positive": ["the movie was great", "wonderful acting and a great film", "great fun", "a wonderful plot",
                 "great acting", "the film was wonderful"],
    "negative": ["a terrible boring film", "a dull plot", "boring and dull", "terrible acting",
                 "the movie was terrible", "a boring film"],
}


@pytest.fixture(scope="module")
def task(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("pet-task")
    plm = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    plm.model.save_pretrained(folder / "model")
    gpt2_tokenizer.save_pretrained(folder / "model")
    data = folder / "sentiment"
    data.mkdir()
    (data / "labels.json").write_text(json.dumps(["negative", "positive"]))
    rows = [{"text": t, "label": label} for label, texts in TEXTS.items() for t in texts]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::3]))
    return folder


@pytest.mark.filterwarnings("ignore:the ensemble labels too few")  # a random tiny model is lopsided
def test_cli_pet_runs_ipet_saves_and_evaluates(task, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pet", "--model", str(task / "model"), "--data", str(task / "sentiment"), "--k", "2",
                 "--seed", "1", "--pattern", "{text} It was {mask}", "--verbalizer", "negative: terrible; positive: great",
                 "--pattern", "{text} All in all, {mask}", "--verbalizer", "negative: dull; positive: wonderful",
                 "--max-steps", "1", "--train-batch-size", "4", "--lr", "1e-3", "--unlabelled", "100",
                 "--ipet-generations", "1", "--factor", "2", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    # unlabelled: the 12 training rows minus the 4 few-shot examples (--unlabelled 100 takes them all)
    assert metrics["examples"] == {"train": 4, "dev": 0, "unlabelled": 8, "test": 4}
    assert [h["train_sizes"] for h in metrics["pet"]["history"]] == [[4, 4], [8, 8]]
    assert metrics["pet"]["weights"] == metrics["pet"]["train_accuracies_before_training"]
    assert metrics["final"]["kind"] == "head" and metrics["final"]["steps"] == 1
    classifier = load(out / "model")
    test = [Example(r["text"], label=r["label"]) for r in map(json.loads, (task / "sentiment" / "test.jsonl").open())]
    assert metrics["accuracy"] == pytest.approx(classifier.evaluate(test).accuracy)
    assert len((out / "test_predictions.jsonl").read_text().splitlines()) == 4
    assert f"test accuracy {metrics['accuracy']:.4f}" in printed and "generation 1: training sets of [8, 8]" in printed


def test_cli_pet_reads_pvps_from_yaml_and_reports_mistakes(task, tmp_path, capsys):
    pvps = tmp_path / "pvps.yaml"
    pvps.write_text("- template: '{text} It was {mask}'\n  verbalizer: {negative: terrible, positive: great}\n"
                    "- template: '{text} All in all, {mask}'\n  verbalizer: 'negative: dull; positive: wonderful'\n")
    assert [p.label_words for p in load_pvps(pvps)] == [WORDS, "negative: dull; positive: wonderful"]
    code = main(["pet", "--model", str(task / "model"), "--data", str(task / "sentiment"), "--k", "2",
                 "--pvps", str(pvps), "--max-steps", "1", "--unlabelled", "3", "--final", "prompt"])
    printed = capsys.readouterr().out
    assert code == 0 and "3 unlabelled" in printed and "test accuracy" in printed

    code = main(["pet", "--model", str(task / "model"), "--data", str(task / "sentiment"),
                 "--pattern", "{text} It was {mask}"])
    assert code == 2 and "give each --pattern its --verbalizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pet", "--help"])
    assert "Pattern-Exploiting Training" in capsys.readouterr().out
