"""The trainer: learning, separate learning rates, seeds, resumption, early stopping, logs, and
refusing to train on NaN."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from deltaprompt.data import Example
from deltaprompt.model import PromptModel
from deltaprompt.trainer import TrainConfig, Trainer, TrainingDiverged
from deltaprompt.verbalizer import Verbalizer

from .conftest import tiny_plm

TRAIN = [
    Example(text, label=label)
    for text, label in [
        ("the movie was great", "pos"), ("a terrible film", "neg"), ("wonderful acting", "pos"),
        ("boring dull plot", "neg"), ("great and wonderful", "pos"), ("dull and terrible", "neg"),
    ]
] * 2


def prompt_model(tokenizer, methods=("finetune",), template="{text} it was {mask}", seed=0) -> PromptModel:
    """A fresh tiny GPT-2 each call (same initial weights), with dropout active in training."""
    return PromptModel(tiny_plm("gpt2", tokenizer), template, Verbalizer({"neg": "terrible", "pos": "great"}),
                       methods=list(methods), seed=seed)


def weights(model: PromptModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.trainable_parameters().items()}


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 4, "batch_size": 4, "lr": 1e-3, "progress": False, "log_every": 1, **overrides})


def interrupt_after(model: PromptModel, calls: int) -> None:
    """Raise KeyboardInterrupt in the ``calls``-th training forward pass (Ctrl-C mid-run)."""
    forward, seen = model.forward, [0]

    def counting(batch):
        if model.training:
            seen[0] += 1
            if seen[0] == calls:
                raise KeyboardInterrupt
        return forward(batch)

    model.forward = counting


def test_loss_falls_and_dev_accuracy_reaches_one(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer)
    before = model.log_proba(model.encode(TRAIN))
    result = Trainer(model, config(epochs=15)).fit(TRAIN, TRAIN)
    after = model.log_proba(model.encode(TRAIN))
    labels = torch.tensor([model.classes.index(e.label) for e in TRAIN])
    nll = lambda lp: float(torch.nn.functional.nll_loss(lp, labels))  # noqa: E731
    assert nll(after) < 0.5 * nll(before)
    assert result.best_metric == 1.0 and result.steps == 15 * 3
    # The run ends right after a log row (log_every 1): its mean is the loss reported, not 0.
    assert 0 < result.train_loss < nll(before)


def test_same_seed_same_weights_other_seed_differs(gpt2_tokenizer):
    runs = []
    for seed in (1, 1, 2):
        model = prompt_model(gpt2_tokenizer)
        Trainer(model, config(seed=seed)).fit(TRAIN)
        runs.append(weights(model))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_learning_rate_per_role(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer, methods=["finetune"], template='{"soft": "Review:"} {text} it was {mask}')
    trainer = Trainer(model, config(lr=1e-5, soft_lr=0.5))
    groups = trainer._parameter_groups()
    soft = model.soft_prompt.weight
    soft_group = next(g for g in groups if any(p is soft for p in g["params"]))
    assert soft_group["lr"] == 0.5 and soft_group["weight_decay"] == 0.0
    assert {g["lr"] for g in groups if g is not soft_group} == {1e-5}
    # Biases do not decay, matrices do.
    decays = {p.ndim >= 2: g["weight_decay"] for g in groups if g is not soft_group for p in g["params"]}
    assert decays == {True: 0.01, False: 0.0}


def test_frozen_model_is_refused(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer, methods=[])
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(model, config()).fit(TRAIN)


def test_unknown_label_is_refused(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer)
    with pytest.raises(ValueError, match="'meh'"):
        Trainer(model, config()).fit([*TRAIN, Example("so so", label="meh")])


@pytest.mark.parametrize("save_every", [None, 1])
def test_interrupted_run_resumes_to_the_same_weights(gpt2_tokenizer, tmp_path, save_every):
    """Ctrl-C mid-epoch, start again: the final weights equal an uninterrupted run's, bit for
    bit (data order, dropout masks, optimiser moments and schedule all continue)."""
    plain = prompt_model(gpt2_tokenizer)
    Trainer(plain, config(output_dir=str(tmp_path / "plain"), save_every=save_every)).fit(TRAIN, TRAIN[:4])
    expected = weights(plain)

    run = config(output_dir=str(tmp_path / "run"), save_every=save_every)
    first = prompt_model(gpt2_tokenizer)
    interrupt_after(first, calls=8)  # epoch 2, second batch
    with pytest.raises(KeyboardInterrupt):
        Trainer(first, run).fit(TRAIN, TRAIN[:4])
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run" / "checkpoints").iterdir())

    second = prompt_model(gpt2_tokenizer)  # a new process: fresh model from the base weights
    result = Trainer(second, run).fit(TRAIN, TRAIN[:4])
    assert result.steps == 12
    got = weights(second)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    with (tmp_path / "run" / "log.csv").open() as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r["train_loss"]]
    assert steps == list(range(1, 13))  # no step logged twice, none missing


def test_resume_refuses_a_changed_run(gpt2_tokenizer, tmp_path):
    Trainer(prompt_model(gpt2_tokenizer), config(output_dir=str(tmp_path), epochs=1)).fit(TRAIN)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(prompt_model(gpt2_tokenizer), config(output_dir=str(tmp_path), epochs=1, batch_size=2)).fit(TRAIN)


def test_early_stopping_keeps_the_best_weights(gpt2_tokenizer, tmp_path):
    model = prompt_model(gpt2_tokenizer)
    dev = [Example("the movie was great", label="neg")] * 2  # a dev set the training moves away from
    result = Trainer(model, config(output_dir=str(tmp_path), epochs=30, patience=2, eval_every=1)).fit(TRAIN, dev)
    assert result.stopped_early and result.steps < 90
    assert result.steps == result.best_step + 2
    best = load_file(str(tmp_path / "best.safetensors"))
    assert all(torch.equal(best[n], p.detach()) for n, p in model.trainable_parameters().items())
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_nan_loss_stops_with_the_step(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer)
    calls = [0]

    def poison(module, args, output):
        calls[0] += module.training
        if calls[0] == 3:
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    model.model.transformer.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        Trainer(model, config()).fit(TRAIN)
    # The check comes before the optimiser step: no weight took the NaN gradient.
    assert all(torch.isfinite(p).all() for p in model.trainable_parameters().values())


def test_gradient_accumulation_counts_optimiser_steps(gpt2_tokenizer):
    model = prompt_model(gpt2_tokenizer)
    result = Trainer(model, config(epochs=2, batch_size=2, gradient_accumulation_steps=3)).fit(TRAIN)
    assert result.steps == 4  # 6 batches per epoch, 3 per step


def test_max_steps_overrides_epochs(gpt2_tokenizer):
    result = Trainer(prompt_model(gpt2_tokenizer), config(epochs=100, max_steps=5)).fit(TRAIN)
    assert result.steps == 5
