"""The run config: schema errors a user can act on, overrides, paths, and the data it selects."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from deltaprompt.config import (
    RunConfig,
    apply_override,
    build_config,
    load_config,
    load_run_data,
    parse_key,
)
from deltaprompt.schema import ConfigError
from deltaprompt.search_delta_cli import load_search_config

from .test_data import write_task

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def base(**sections):
    raw = {
        "model": {"name": "some-model"},
        "data": {"train": "/data/train.jsonl"},
        "classifier": {"template": "{text} It was {mask}", "label_words": {"neg": "bad", "pos": "good"}},
    }
    raw.update(sections)
    return raw


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(raw, "run.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("run.yaml: ")
    return message


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- schema errors

def test_a_minimal_config_gets_the_defaults():
    config = build_config(base())
    assert isinstance(config, RunConfig)
    assert config.classifier.kind == "prompt" and config.methods is None
    assert config.training.epochs == 10 and config.data.seed == 13
    assert build_config(config.to_dict()) == config  # what train writes to config.yaml reads back


@pytest.mark.parametrize(("section", "key", "suggestion"), [
    (None, "trainig", "training"),
    ("training", "lrr", "lr"),
    ("training", "epoch", "epochs"),
    ("data", "shot", "shots"),
    ("classifier", "templat", "template"),
    ("model", "nmae", "name"),
])
def test_unknown_keys_are_named_with_the_closest_valid_one(section, key, suggestion):
    raw = base()
    if section is None:
        raw[key] = {}
    else:
        raw.setdefault(section, {})[key] = 1
    message = error_of(raw)
    where = f"{section}: " if section else ""
    assert f"{where}unknown key {key!r}; did you mean {suggestion!r}?" in message


def test_wrong_types_and_choices_name_the_key():
    assert "training.epochs: expected int, got str 'ten'" in error_of(base(training={"epochs": "ten"}))
    assert "training.schedule: must be one of 'linear', 'cosine', 'constant'; got 'cosin'" in error_of(
        base(training={"schedule": "cosin"}))
    assert "classifier.kind: must be one of 'prompt', 'head'" in error_of(
        base(classifier={"kind": "heads"}))
    assert "training: epochs must be at least 1, got 0" in error_of(base(training={"epochs": 0}))
    assert "model.family: expected 'masked' or 'causal' or 'seq2seq' or null, got 'decoder'" in error_of(base(model={"name": "m", "family": "decoder"}))


def test_missing_and_empty_sections_say_what_is_needed():
    raw = base()
    del raw["model"]
    assert "model.name is required" in error_of(raw)
    assert "data: give a task" in error_of(base(data=None))
    raw = base()
    del raw["classifier"]
    assert "a prompt classifier needs template and label_words" in error_of(raw)
    assert build_config(base(training=None)).training.epochs == 10  # `training:` with nothing under it


@pytest.mark.parametrize(("classifier", "expected"), [
    ({"kind": "head", "label_words": {"a": "b"}}, "classifier.label_words: a head classifier has no label words"),
    ({"kind": "head", "template": "{text} {mask}"}, "a head classifier pools hidden states and reads no {mask}"),
    ({"kind": "head", "calibrate": True}, "classifier.calibrate applies to prompt classifiers"),
    ({"kind": "head", "aggregation": "max"}, "classifier.aggregation applies to label words"),
    ({"kind": "head", "pooling": "first"}, "classifier.pooling: expected 'cls' or 'mean' or 'last' or null"),
    ({"template": "{text} {mask}"}, "a prompt classifier needs label_words"),
    ({"label_words": "a: b; c: d"}, "a prompt classifier needs template"),
    ({"template": "{text}", "label_words": "a: b; c: d"}, "exactly one {mask}; this one has 0"),
    ({"template": "{text} {mask", "label_words": "a: b; c: d"}, "classifier.template: '{' is never closed"),
    ({"template": "{text} {mask}", "label_words": "a: b; c: d", "pooling": "cls"},
     "classifier.pooling applies to kind: head"),
    ({"template": "{text} {mask}", "label_words": {"a": ""}}, "classifier.label_words: class 'a': label words"),
    ({"template": "{text} {mask}", "label_words": "words.yaml"}, "classifier.label_words: no such file"),
    ({"template": "{text} {mask}", "label_words": "a: b; c: d", "verbalizer": "sofft"},
     "classifier.verbalizer: unknown verbalizer 'sofft'; did you mean 'soft'?"),
    ({"template": "{text} {mask}", "label_words": "a: b; c: d", "verbalizer": {"type": "prototype", "tau2": 1}},
     "classifier.verbalizer: unknown option(s) ['tau2'] for the prototype verbalizer"),
    ({"kind": "head", "verbalizer": "soft"}, "classifier.verbalizer applies to label words"),
])
def test_impossible_classifier_combinations(classifier, expected):
    assert expected in error_of(base(classifier=classifier))


def test_verbalizer_kinds_reach_the_classifier(gpt2_tokenizer):
    from deltaprompt.config import build_classifier
    from deltaprompt.verbalizer import PrototypeVerbalizer, SoftVerbalizer

    from .conftest import tiny_plm

    plm = tiny_plm("gpt2", gpt2_tokenizer)
    for spec, kind in (("soft", SoftVerbalizer), ({"type": "prototype", "tau": 0.05}, PrototypeVerbalizer)):
        config = build_config(base(classifier={"template": "{text} It was {mask}",
                                               "label_words": ["terrible", "great"], "verbalizer": spec}))
        model = build_classifier(config, plm, ("negative", "positive")).model
        assert isinstance(model.verbalizer, kind) and model.head is not None
    assert model.verbalizer.tau == 0.05


def test_head_classifier_without_template_is_fine():
    config = build_config(base(classifier={"kind": "head", "pooling": "mean", "dropout": 0.2}))
    assert config.classifier.kind == "head" and config.classifier.classes() is None


def test_delta_methods_are_checked_by_name_options_and_combination():
    assert "methods[0]: unknown delta method 'lorra'; did you mean 'lora'?" in error_of(base(methods=["lorra"]))
    message = error_of(base(methods=[{"method": "finetune", "freeze_embedings": True}]))
    assert "methods[0] (finetune): unknown key 'freeze_embedings'; did you mean 'freeze_embeddings'?" in message
    assert "methods[1]: a method given as a mapping needs a \"method\" key" in error_of(
        base(methods=["finetune", {"r": 8}]))
    assert "listed twice" in error_of(base(methods=["finetune", "finetune"]))
    assert "methods[0] (finetune).freeze_embeddings: expected bool" in error_of(
        base(methods=[{"method": "finetune", "freeze_embeddings": "yes please"}]))
    config = build_config(base(methods="finetune"))  # one method may be given bare
    assert config.methods == ["finetune"]


def test_methods_that_exclude_each_other():
    pytest.importorskip("deltaprompt.delta.lora")
    assert "methods: delta methods 'finetune' and 'lora' cannot be combined" in error_of(
        base(methods=["lora", "finetune"]))
    assert "methods[0] (lora).r: expected int" in error_of(base(methods=[{"method": "lora", "r": "eight"}]))


def test_nothing_to_train_is_refused():
    message = error_of(base(methods=[]))
    assert "nothing would train" in message
    soft = base(methods=[], classifier={"template": "{soft} {text} {mask}", "label_words": "a: b; c: d"})
    assert build_config(soft).methods == []
    head = base(methods=[], classifier={"kind": "head"})
    assert build_config(head).methods == []  # the head trains


def test_data_combinations():
    assert "data.shots samples from the training split; give data.train" in error_of(
        base(data={"test": "t.jsonl", "shots": 8}))
    assert "training needs examples; give data.train" in error_of(base(data={"test": "t.jsonl"}))
    assert "give either a task or files" in error_of(base(data={"task": "sst2", "train": "a.jsonl"}))
    assert "data.dev_per_class applies to few-shot sampling" in error_of(
        base(data={"task": "sst2", "dev_per_class": 4}))
    assert "data.shots must be at least 1" in error_of(base(data={"task": "sst2", "shots": 0}))
    assert "data.test_limit must be at least 1" in error_of(base(data={"task": "sst2", "test_limit": 0}))
    assert "but data.labels are ['x', 'y']" in error_of(base(data={"task": "sst2", "labels": ["x", "y"]}))


# ----------------------------------------------------------------------------- files and overrides

def test_yaml_file_with_relative_paths_and_floats_written_the_usual_way(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = write_yaml(tmp_path / "run.yaml", """
model: {name: model}
data: {train: data/train.jsonl, test: data/test.jsonl}
classifier:
  template: "Review: {text}\\nSentiment: {mask}"
  label_words: "neg: bad; pos: good"
training: {lr: 1e-4, delta_lr: 5E-3, weight_decay: 0}
""")
    config = load_config(path)
    assert config.model.name == str(tmp_path / "model")
    assert config.data.train == str(tmp_path / "data" / "train.jsonl")
    assert config.data.test == str(tmp_path / "data" / "test.jsonl")
    assert config.training.lr == 1e-4 and config.training.delta_lr == 5e-3
    assert config.training.weight_decay == 0.0
    assert config.classifier.template == "Review: {text}\nSentiment: {mask}"


def test_yaml_errors_are_one_line_with_the_position(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "model:\n  name: [unclosed\ndata: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\)") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(write_yaml(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.yaml")


def test_overrides_change_values_and_create_what_is_missing():
    config = load_config(base(), [
        "training.lr=1e-4",
        "training.max_grad_norm=null",
        "data.shots=16",
        "methods[0]=finetune",
        "methods[0].freeze_embeddings=true",  # a method given by name becomes a mapping
        "classifier.template=Review: {text}\\nSentiment: {mask}",  # text, not a YAML mapping
        "classifier.label_words={neg: [bad, awful], pos: good}",  # YAML for structured values
        "output_dir=runs/x",
    ])
    assert config.training.lr == 1e-4 and config.training.max_grad_norm is None
    assert config.data.shots == 16
    assert config.methods == [{"method": "finetune", "freeze_embeddings": True}]
    assert config.classifier.template == "Review: {text}\nSentiment: {mask}"
    assert config.classifier.label_words == {"neg": ["bad", "awful"], "pos": "good"}
    assert config.output_dir == "runs/x"


def test_override_errors_name_the_key():
    with pytest.raises(ConfigError, match="training: unknown key 'lrr'; did you mean 'lr'"):
        load_config(base(), ["training.lrr=1"])
    with pytest.raises(ConfigError, match="training.epochs: expected int, got str 'many'"):
        load_config(base(), ["training.epochs=many"])
    with pytest.raises(ConfigError, match="write key=value"):
        load_config(base(), ["training.lr"])
    with pytest.raises(ConfigError, match="index 3 would leave a gap"):
        load_config(base(methods=["finetune"]), ["methods[3].lr=1"])
    with pytest.raises(ConfigError, match="cannot read the key"):
        load_config(base(), ["training..lr=1"])
    with pytest.raises(ConfigError, match="is not a list"):
        load_config(base(training={"lr": 1}), ["training[0]=1"])


def test_override_never_evaluates_code():
    config = load_config(base(), ["output_dir=__import__('os').getcwd()"])
    assert config.output_dir == "__import__('os').getcwd()"
    with pytest.raises(ConfigError):
        load_config(base(), ["training.epochs=!!python/object/apply:os.getcwd []"])


def test_key_paths_parse_and_overrides_leave_the_input_alone():
    assert parse_key("methods[0].r") == ["methods", 0, "r"]
    assert parse_key("training.lr") == ["training", "lr"]
    raw = base(methods=["finetune"])
    changed = apply_override(raw, "methods[0].lr", "0.1")
    assert raw["methods"] == ["finetune"]
    assert changed["methods"] == [{"method": "finetune", "lr": 0.1}]


# ----------------------------------------------------------------------------- data selection

def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_files_with_few_shot_sampling_and_class_order_from_the_label_words(tmp_path):
    rows = [{"sentence": f"{label} {i}", "gold": label} for label in ("pos", "neg") for i in range(10)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:3])
    raw = base(data={"train": train, "test": test, "shots": 3, "dev_per_class": 2, "seed": 7,
                     "text_column": "sentence", "label_column": "gold"})
    data = load_run_data(build_config(raw))
    assert data.classes == ("neg", "pos")  # the order of the label words, not of the file
    assert Counter(e.label for e in data.train) == {"neg": 3, "pos": 3}
    assert Counter(e.label for e in data.dev) == {"neg": 2, "pos": 2}
    assert not {e.text for e in data.train} & {e.text for e in data.dev}
    assert len(data.test) == 3
    again = load_run_data(build_config(raw))
    assert [e.text for e in again.train] == [e.text for e in data.train]  # same seed, same sample


def test_a_task_by_name_with_limits_and_unknown_labels(tmp_path):
    write_task(tmp_path, name="toy", labels=("neg", "pos"), per_label=6)
    raw = base(data={"task": "toy", "data_dir": str(tmp_path), "test_limit": 5, "train_limit": 4},
               classifier={"kind": "head"})
    data = load_run_data(build_config(raw))
    assert data.classes == ("neg", "pos") and len(data.train) == 4 and len(data.test) == 5
    assert data.dev is None
    bad = base(data={"task": "toy", "data_dir": str(tmp_path)},
               classifier={"template": "{text} {mask}", "label_words": {"neg": "bad", "other": "x"}})
    with pytest.raises(ValueError, match="no label words for \\['pos'\\]; unknown classes \\['other'\\]"):
        load_run_data(build_config(bad))
    rows = [{"text": "x", "label": "maybe"}]
    files = base(data={"train": write_jsonl(tmp_path / "odd.jsonl", rows)})
    with pytest.raises(ValueError, match="the train split has labels \\['maybe'\\] that are not classes"):
        load_run_data(build_config(files))


def test_a_task_folder_beside_the_config(tmp_path):
    write_task(tmp_path, name="toy")
    path = write_yaml(tmp_path / "run.yaml",
                      "model: {name: m}\ndata: {task: toy, shots: 2}\nclassifier: {kind: head}\n")
    config = load_config(path)
    assert config.data.task == str(tmp_path / "toy")
    data = load_run_data(config)
    assert len(data.train) == 4 and len(data.dev) == 4


def test_the_example_configs_are_valid(tmp_path):
    for example in sorted(EXAMPLES.glob("*.yaml")):
        text = example.read_text()
        if "method: lora" in text:
            pytest.importorskip("deltaprompt.delta.lora")
        copy = tmp_path / example.name
        shutil.copy(example, copy)
        # A search config is a run config with a `search` section (deltaprompt search-delta).
        config = load_search_config(copy)[0] if "\nsearch:" in text else load_config(copy)
        assert config.output_dir
