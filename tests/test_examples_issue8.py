"""The multi-task and structure-search example configs: they load and validate without a model,
and their tasks, label words and few-shot draws fit data laid out as the shared tasks are (tiny
folders written here with the shared tasks' names and labels; no model is loaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deltaprompt.config import load_run_data
from deltaprompt.multitask import TaskMixture
from deltaprompt.multitask_cli import load_multitask_config, mixture_tasks
from deltaprompt.search.delta_structure import ParameterBudget
from deltaprompt.search_delta_cli import load_search_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MULTITASK = EXAMPLES / "multitask" / "leave-out-mr.yaml"
SEARCH = EXAMPLES / "search-delta-sst2.yaml"
# The label names of the shared tasks (../shared/data/<task>/labels.json), in their order.
LABELS = {
    "sst2": ["negative", "positive"],
    "sst5": ["very negative", "negative", "neutral", "positive", "very positive"],
    "mr": ["negative", "positive"],
    "agnews": ["World", "Sports", "Business", "Sci/Tech"],
    "rte": ["entailment", "not_entailment"],
    "cb": ["entailment", "contradiction", "neutral"],
}
PAIRS = {"rte", "cb"}


def write_shared_layout(root: Path, per_class: int = 70) -> Path:
    """Each task as a folder (labels.json, train/test .jsonl) with ``per_class`` made-up
    examples per class in train and 3 in test."""
    for task, labels in LABELS.items():
        folder = root / task
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, count in (("train", per_class), ("test", 3)):
            rows = []
            for label in labels:
                for i in range(count):
                    row = {"text": f"{task} {split} {label} {i}", "label": label}
                    if task in PAIRS:
                        row["text_b"] = f"hypothesis {i}"
                    rows.append(row)
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def multitask_example(tmp_path) -> Path:
    """The example beside a data folder of the shared layout (its data_dir set to it)."""
    data = write_shared_layout(tmp_path / "data")
    path = tmp_path / MULTITASK.name
    path.write_text(MULTITASK.read_text() + f"data_dir: {json.dumps(str(data))}\n")
    return path


def test_the_multitask_example_leaves_mr_out_of_a_temperature_mixture():
    config = load_multitask_config(MULTITASK)
    assert config.leave_out == "mr" and config.model.name == "smollm2-135m"
    assert {"sst2", "agnews", "rte"} <= set(config.tasks) and "mr" in config.tasks
    assert config.mixing.strategy == "temperature" and config.mixing.temperature == 2
    assert [m["method"] for m in config.methods] == ["lora"]  # type: ignore[index]
    assert config.output_dir and config.training.max_steps
    for entry in config.tasks.values():
        assert entry.prompt().text.endswith("{mask}")  # SmolLM2 reads the mask at the very end
    other = load_multitask_config(MULTITASK, leave_out="sst5")  # --leave-out overrides the file
    assert other.leave_out == "sst5"


def test_the_multitask_example_fits_the_shared_tasks(multitask_example):
    config = load_multitask_config(multitask_example)
    tasks = {t.name: t for t in mixture_tasks(config)}
    assert set(tasks) == set(LABELS)
    for name, task in tasks.items():
        # the label words name exactly the task's classes, in labels.json's order
        assert list(task.verbalizer().classes) == LABELS[name]
        shots = config.tasks[name].shots
        if shots is not None:
            assert len(task.examples) == shots * len(LABELS[name])
    assert tasks["mr"].test is not None and len(tasks["mr"].test) == 3 * 2  # scored on the test split
    assert all(tasks[n].test is None for n in tasks if n != "mr")
    mixture = TaskMixture([t for n, t in tasks.items() if n != "mr"], config.mixing.strategy,
                          config.mixing.temperature)
    probabilities = mixture.probabilities
    # size^(1/2) times the weight: CB (48 examples, weight 0.5) is drawn least, SST-5 (160) most
    assert min(probabilities, key=probabilities.get) == "cb"  # type: ignore[arg-type]
    assert max(probabilities, key=probabilities.get) == "sst5"  # type: ignore[arg-type]
    assert probabilities["cb"] / probabilities["sst2"] == pytest.approx(0.5 * (48 / 128) ** 0.5)


def test_the_multitask_example_refuses_a_task_it_does_not_have(multitask_example):
    from deltaprompt.schema import ConfigError

    with pytest.raises(ConfigError, match="no task 'mrr'; did you mean 'mr'"):
        load_multitask_config(multitask_example, leave_out="mrr")


def test_the_search_example_is_a_run_config_with_a_half_percent_budget(tmp_path):
    config, section = load_search_config(SEARCH)
    assert config.data.task == "sst2" and config.data.shots == 16 and config.data.dev_per_class == 16
    assert config.methods is None  # the search picks them
    assert section.budget() == ParameterBudget(0.5, relative=True)
    assert section.budget().cap(134_515_008) == 672_575  # SmolLM2-135M's parameters
    assert section.trials >= 1 and section.max_methods == 2
    assert ("lora", "bitfit") in section.combinations() and ("prefix", "prompt_tuning") in section.combinations()
    assert section.choices()["lora"]["modules"] == ["qv", "attention", "all"]
    # flags override the section as the command does; the config beside the data draws a dev split
    data = write_shared_layout(tmp_path / "data", per_class=40)
    copy = tmp_path / SEARCH.name
    shutil.copy(SEARCH, copy)
    config, _ = load_search_config(copy, [f"data.data_dir={data}", "training.epochs=1"])
    assert config.training.epochs == 1
    run = load_run_data(config)
    assert len(run.train) == 32 and len(run.dev) == 32 and run.classes == ("negative", "positive")
    assert not {e.text for e in run.train} & {e.text for e in run.dev}
