"""Prompted multi-task training: mixture proportions, single-task batches, a shared delta that
reaches a left-out task's prompt, and the ``multitask`` config and command."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from deltaprompt import Example, PromptClassifier
from deltaprompt.cli import main
from deltaprompt.multitask import (
    MixtureTask,
    MultitaskModel,
    TaskMixture,
    batch_example,
    leave_one_out,
    load_delta,
    save_delta,
    train_mixture,
)
from deltaprompt.multitask_cli import load_multitask_config
from deltaprompt.schema import ConfigError
from deltaprompt.trainer import TrainConfig

from .conftest import TRAIN, WORDS, responsive, tiny_plm

SENTIMENT = "{text} It was {mask}"
TOPICS = [
    Example("world sports news", label="sports"),
    Example("sports news", label="sports"),
    Example("the sports review", label="sports"),
    Example("sports and business", label="sports"),
    Example("science technology news", label="science"),
    Example("technology and science", label="science"),
    Example("the science review", label="science"),
    Example("science news", label="science"),
]
HELD_TEMPLATE = "review: {text} sentiment {mask}"
HELD_WORDS = {"negative": "negative", "positive": "positive"}


def sized(name: str, size: int, weight: float = 1.0) -> MixtureTask:
    return MixtureTask(name, [Example(f"{name} {i}", label="x") for i in range(size)], "{text} {mask}",
                       {"x": "x"}, weight=weight)


SIZES = {"small": 100, "medium": 400, "large": 1600}
# Probabilities worked out by hand from the sizes 100, 400, 1600.
EXPECTED = {
    "proportional": ({}, {"small": 100 / 2100, "medium": 400 / 2100, "large": 1600 / 2100}),
    # size^(1/2): 10, 20, 40
    "temperature": ({"temperature": 2.0}, {"small": 1 / 7, "medium": 2 / 7, "large": 4 / 7}),
    # min(size, 400): 100, 400, 400
    "capped": ({"cap": 400}, {"small": 1 / 9, "medium": 4 / 9, "large": 4 / 9}),
}


def mixture(strategy: str = "proportional", **knobs) -> TaskMixture:
    return TaskMixture([sized(n, s) for n, s in SIZES.items()], strategy, **knobs)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_probabilities_match_hand_computed_values(strategy):
    knobs, expected = EXPECTED[strategy]
    got = mixture(strategy, **knobs).probabilities
    assert got == pytest.approx(expected, abs=1e-12)


def test_capped_with_temperature_and_manual_weights():
    # min(size, 400)^(1/2): 10, 20, 20
    assert mixture("capped", cap=400, temperature=2.0).probabilities == pytest.approx(
        {"small": 0.2, "medium": 0.4, "large": 0.4})
    # uniform: the weights alone decide
    tasks = [sized("a", 10, weight=1), sized("b", 1000, weight=1), sized("c", 5, weight=2)]
    assert TaskMixture(tasks, "uniform").probabilities == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})
    # a large temperature tends to uniform
    hot = mixture("temperature", temperature=1000.0).probabilities
    assert max(hot.values()) - min(hot.values()) < 0.002


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_draws_follow_the_probabilities(strategy):
    knobs, expected = EXPECTED[strategy]
    draws = 20_000
    counts = Counter(mixture(strategy, **knobs).draw(draws, seed=7))
    assert set(counts) == set(expected)
    for name, p in expected.items():
        standard_error = math.sqrt(draws * p * (1 - p))
        assert abs(counts[name] - draws * p) < 4 * standard_error, (name, counts[name], draws * p)


def test_draws_and_batches_are_determined_by_the_seed():
    mix = mixture("temperature", temperature=2.0)
    assert mix.draw(500, seed=1) == mix.draw(500, seed=1)
    assert mix.draw(500, seed=1) != mix.draw(500, seed=2)
    assert mix.batches(50, 4, seed=3) == mix.batches(50, 4, seed=3)


def test_batches_are_single_task_and_pass_over_each_task_before_repeating():
    tasks = [sized("a", 6), sized("b", 10)]
    mix = TaskMixture(tasks, "proportional")
    plan = mix.batches(200, 3, seed=5)
    own = {t.name: {e.text for e in t.examples} for t in tasks}
    for name, examples in plan:
        assert len(examples) == 3 and {e.text for e in examples} <= own[name]
    # each task's stream is a sequence of permutations of its examples
    a_stream = [e.text for name, batch in plan if name == "a" for e in batch]
    for start in range(0, len(a_stream) - 5, 6):
        assert set(a_stream[start:start + 6]) == own["a"]


def test_mixture_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs a temperature"):
        mixture("temperature")
    with pytest.raises(ConfigError, match="cap applies to strategy capped"):
        mixture("proportional", cap=10)
    with pytest.raises(ConfigError, match="needs a cap"):
        mixture("capped")
    with pytest.raises(ConfigError, match="twice"):
        TaskMixture([sized("a", 3), sized("a", 4)])
    with pytest.raises(ConfigError, match="no training examples"):
        TaskMixture([sized("a", 0)])


# ----------------------------------------------------------------------------- training

LORA = {"method": "lora", "r": 4, "lr": 2e-2, "dropout": 0.0}
PREFIX = {"method": "prefix", "num_virtual_tokens": 3, "lr": 1e-1}


def quiet_gpt2(tokenizer):
    """A responsive tiny GPT-2 without dropout: the trainer trains in train mode, and the loss
    curve should be the method's alone."""
    plm = responsive(tiny_plm("gpt2", tokenizer))
    for module in plm.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return plm


@pytest.fixture
def gpt2(gpt2_tokenizer):
    return quiet_gpt2(gpt2_tokenizer)


def two_tasks() -> list[MixtureTask]:
    return [MixtureTask("sentiment", list(TRAIN), SENTIMENT, WORDS),
            MixtureTask("topic", list(TOPICS), "{text} topic {mask}", {"sports": "sports", "science": "science"})]


def task_loss(model: MultitaskModel, name: str, examples) -> float:
    view = model.tasks[name]
    batch = view.collate(view.encode(examples))
    labels = torch.tensor([view.classes.index(e.label) for e in examples])
    with torch.no_grad():
        return float(torch.nn.functional.nll_loss(view(batch), labels))


def test_training_on_the_mixture_lowers_both_losses_with_single_task_batches(gpt2):
    tasks = two_tasks()
    model = MultitaskModel(gpt2, tasks, methods=[LORA], seed=0)
    before = {t.name: task_loss(model, t.name, t.examples) for t in tasks}
    calls: list[tuple[str, int]] = []
    for name, view in model.tasks.items():
        view.register_forward_pre_hook(lambda _m, args, name=name: calls.append((name, args[0]["input_ids"].size(0))))
    config = TrainConfig(max_steps=40, batch_size=4, warmup_ratio=0.0, tensorboard=False, seed=1)
    result, drawn = train_mixture(model, TaskMixture(tasks, "uniform"), config)
    # one view ran per training step, on a whole batch of its own task, as often as it was drawn
    assert Counter(name for name, _ in calls) == drawn and {size for _, size in calls} == {4}
    assert result.steps == 40 and sum(drawn.values()) == 40
    after = {t.name: task_loss(model, t.name, t.examples) for t in tasks}
    assert after["sentiment"] < 0.5 * before["sentiment"], (before, after)
    assert after["topic"] < 0.5 * before["topic"], (before, after)


def test_soft_tokens_of_a_task_template_train_and_are_saved(gpt2, tmp_path):
    tasks = two_tasks()
    tasks[1].template = '{"soft": "topic"} {text} {mask}'
    model = MultitaskModel(gpt2, tasks, methods=[LORA])
    soft = model.tasks["topic"].soft_prompt.weight
    start = soft.detach().clone()
    assert model.role_of("tasks.topic.soft_prompt.weight", soft) == ("soft", None)
    config = TrainConfig(max_steps=4, batch_size=2, tensorboard=False, soft_lr=1e-1)
    train_mixture(model, TaskMixture(tasks, "uniform"), config)
    assert not torch.equal(soft.detach(), start)
    save_delta(model, tmp_path / "delta")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "delta" / "weights.safetensors"))
    assert torch.equal(saved["tasks.topic.soft_prompt.weight"], soft.detach())


def test_a_batch_mixing_tasks_is_refused(gpt2):
    tasks = two_tasks()
    model = MultitaskModel(gpt2, tasks, methods=["lora"])
    features = model.encode([batch_example("sentiment", TRAIN[:2]), batch_example("topic", TOPICS[:2])])
    with pytest.raises(ValueError, match="one task"):
        model.collate(features)
    with pytest.raises(ValueError, match="batch_example"):
        model.encode([TRAIN[0]])


def test_methods_that_rewrite_one_template_are_refused(gpt2):
    with pytest.raises(ConfigError, match="prompt_tuning trains one template"):
        MultitaskModel(gpt2, two_tasks(), methods=["prompt_tuning"])


@pytest.mark.parametrize("method", [LORA, PREFIX], ids=["lora", "prefix"])
def test_held_out_prompt_reads_the_trained_delta_and_a_reloaded_one_agrees(method, gpt2_tokenizer, tmp_path):
    tasks = two_tasks()
    model = MultitaskModel(quiet_gpt2(gpt2_tokenizer), tasks, methods=[method], seed=0)
    config = TrainConfig(max_steps=15, batch_size=4, warmup_ratio=0.0, tensorboard=False)
    train_mixture(model, TaskMixture(tasks), config)
    save_delta(model, tmp_path / "delta")
    texts = [e.text for e in TRAIN]
    trained = model.classifier(HELD_TEMPLATE, HELD_WORDS).predict_proba(texts)
    untouched = PromptClassifier(responsive(tiny_plm("gpt2", gpt2_tokenizer)), HELD_TEMPLATE, HELD_WORDS)
    assert not torch.allclose(torch.tensor(trained), torch.tensor(untouched.predict_proba(texts)), atol=1e-4)
    fresh = responsive(tiny_plm("gpt2", gpt2_tokenizer))
    reloaded = load_delta(tmp_path / "delta", fresh, HELD_TEMPLATE, HELD_WORDS)
    assert torch.allclose(torch.tensor(trained), torch.tensor(reloaded.predict_proba(texts)), atol=1e-5)
    with pytest.raises(ValueError, match="save_delta"):
        model.classifier(HELD_TEMPLATE, HELD_WORDS).save(tmp_path / "view")
    # the delta saved is exactly the trainable tensors of the shared model
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "delta" / "weights.safetensors"))
    assert set(saved) == set(model.trainable_parameters()) and saved


def test_leave_one_out_scores_the_held_out_task_against_plain_zero_shot(gpt2_tokenizer, tmp_path):
    tasks = [*two_tasks(), MixtureTask("held", list(TRAIN), HELD_TEMPLATE, HELD_WORDS)]
    config = TrainConfig(max_steps=12, batch_size=4, tensorboard=False)
    result = leave_one_out(tasks, "held", responsive(tiny_plm("gpt2", gpt2_tokenizer)), [LORA], config,
                           strategy="capped", cap=8, output_dir=tmp_path / "run", seed=3)
    assert result.mixture["probabilities"] == pytest.approx({"sentiment": 0.5, "topic": 0.5})
    assert set(result.steps_drawn) == {"sentiment", "topic"} and sum(result.steps_drawn.values()) == 12
    # the baseline is the same template on the untouched model; the score is the saved delta's
    untouched = PromptClassifier(responsive(tiny_plm("gpt2", gpt2_tokenizer)), HELD_TEMPLATE, HELD_WORDS)
    assert result.baseline == pytest.approx(untouched.evaluate(TRAIN).summary(), abs=1e-6)
    loaded = load_delta(tmp_path / "run" / "delta", responsive(tiny_plm("gpt2", gpt2_tokenizer)), HELD_TEMPLATE,
                        HELD_WORDS)
    assert result.score == pytest.approx(loaded.evaluate(TRAIN).summary(), abs=1e-6)
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["held_out"] == "held" and written["score"] == result.score
    report = (tmp_path / "run" / "result.md").read_text()
    assert "untouched PLM (plain zero-shot)" in report and "| sentiment | 8 | 0.5000 |" in report
    assert not list((tmp_path / "run").glob(".*tmp*"))  # nothing half-written left behind


def test_a_training_folder_of_another_mixture_is_refused(gpt2, tmp_path):
    tasks = two_tasks()
    config = TrainConfig(max_steps=2, batch_size=2, tensorboard=False, output_dir=str(tmp_path / "train"))
    train_mixture(MultitaskModel(gpt2, tasks, methods=["lora"]), TaskMixture(tasks), config)
    with pytest.raises(ValueError, match="another mixture"):
        train_mixture(MultitaskModel(responsive(tiny_plm("gpt2", gpt2.tokenizer)), tasks, methods=["bitfit"]),
                      TaskMixture(tasks, "uniform"), config)


# ----------------------------------------------------------------------------- config and command

def write_task(folder: Path, examples, labels) -> None:
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    for split in ("train", "test"):
        lines = [json.dumps({"text": e.text, "label": e.label}) for e in examples]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


CONFIG = """
model: {{name: {model}}}
tasks:
  sentiment: {{data: sentiment, template: "{{text}} It was {{mask}}", label_words: {{negative: terrible, positive: great}}}}
  topic:
    data: topic
    spec: {{task: "Classify the topic.", input: "{{text}}"}}
    label_words: [sports, science]
    shots: 2
  held: {{data: sentiment, template: "review: {{text}} sentiment {{mask}}", label_words: {{negative: negative, positive: positive}}}}
mixing: {{strategy: temperature, temperature: 2}}
methods: [{{method: lora, r: 2}}]
training: {{max_steps: 3, batch_size: 2, tensorboard: false}}
data_dir: data
seed: 5
"""


@pytest.fixture
def config_file(tmp_path, model_dir) -> Path:
    write_task(tmp_path / "data" / "sentiment", TRAIN, ["negative", "positive"])
    write_task(tmp_path / "data" / "topic", TOPICS, ["sports", "science"])
    path = tmp_path / "multitask.yaml"
    path.write_text(CONFIG.format(model=model_dir))
    return path


def test_config_reads_tasks_and_refuses_unknown_keys(config_file):
    config = load_multitask_config(config_file, leave_out="held")
    assert config.leave_out == "held" and list(config.tasks) == ["sentiment", "topic", "held"]
    assert config.tasks["topic"].prompt().text == "Classify the topic.\n\n{text}\nAnswer: {mask}"  # from the spec
    assert config.mixing.temperature == 2.0 and config.training.max_steps == 3 and config.methods == [
        {"method": "lora", "r": 2}]
    text = config_file.read_text()
    for bad, message in [
        (text.replace("mixing:", "mixng:"), "unknown key 'mixng'; did you mean 'mixing'"),
        (text.replace("template: \"{text} It was", "templte: \"{text} It was"), "did you mean 'template'"),
        (text.replace("temperature: 2}", "cap: 3}"), "needs a temperature"),
        (text.replace("strategy: temperature", "strategy: temprature"), "must be one of"),
        (text + "leave_out: helt\n", "no task 'helt'; did you mean 'held'"),
        (text.replace("template: \"{text} It was {mask}\"", "template: \"{text} It was\""), "exactly one {mask}"),
    ]:
        config_file.write_text(bad)
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
            load_multitask_config(config_file)


def test_the_multitask_command_leaves_a_task_out_and_writes_its_results(config_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["multitask", str(config_file), "--leave-out", "held", "--output-dir", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["held_out"] == "held" and set(result["steps_drawn"]) <= {"sentiment", "topic"}
    assert result["mixture"]["sizes"] == {"sentiment": 8, "topic": 4}  # shots: 2 per class
    assert result["score"]["n"] == len(TRAIN) and result["baseline"]["n"] == len(TRAIN)
    assert (out / "delta" / "weights.safetensors").is_file() and (out / "result.md").is_file()
    assert "plain zero-shot" in capsys.readouterr().out
    assert main(["multitask", str(config_file), "--leave-out", "nope", "--output-dir", str(out)]) == 2
    assert "leave_out: no task 'nope'; tasks: sentiment, topic, held" in capsys.readouterr().err
