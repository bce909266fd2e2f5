"""Entity recipes through run configs and the command line: tagged data, the entity kinds, and
``deltaprompt train / eval / predict`` on a tiny model saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deltaprompt import load
from deltaprompt.cli import main
from deltaprompt.config import ConfigError, load_config, load_run_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCES = [
    (["Paris", "is", "great"], ["B-LOC", "O", "O"]),
    (["the", "movie", "was", "great"], ["O", "O", "O", "O"]),
    (["Bob", "Smith", "was", "wonderful"], ["B-PER", "I-PER", "O", "O"]),
    (["a", "film", "about", "London"], ["O", "O", "O", "B-LOC"]),
    (["Anna", "liked", "the", "plot"], ["B-PER", "O", "O", "O"]),
    (["news", "from", "Berlin"], ["O", "O", "B-LOC"]),
]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
RELATIONS = [
    ("the movie caused great fun", (4, 9), (20, 26), "Cause-Effect(e1,e2)"),
    ("great fun from the movie", (0, 9), (19, 24), "Cause-Effect(e2,e1)"),
    ("the plot and the film", (4, 8), (17, 21), "Other"),
    ("the film was caused by the plot", (4, 8), (27, 31), "Cause-Effect(e2,e1)"),
    ("the acting causes boring news", (4, 10), (25, 29), "Cause-Effect(e1,e2)"),
    ("a review and a sentiment", (2, 8), (15, 24), "Other"),
]


def write_task(folder: Path, labels: list[str], rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("entity-data")
    write_task(root / "ner", TAGS, [{"tokens": w, "tags": t} for w, t in SENTENCES])
    relation_rows = [{"text": text, "head": {"start": h[0], "end": h[1], "text": text[h[0]:h[1]]},
                      "tail": {"start": t[0], "end": t[1], "text": text[t[0]:t[1]]}, "label": label}
                     for text, h, t, label in RELATIONS]
    write_task(root / "re", ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other"], relation_rows)
    return root


def run_config(tasks: Path, model_dir: str, task: str, classifier: dict, **data) -> dict:
    return {"model": {"name": model_dir}, "data": {"task": str(tasks / task), **data}, "classifier": classifier,
            "methods": ["lora"], "training": {"epochs": 1, "batch_size": 4, "tensorboard": False, "progress": False}}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name.startswith(("conll", "semeval"))))
def test_the_documented_entity_configs_are_valid(name):
    config = load_config(EXAMPLES / name)
    assert config.classifier.kind in ("tagger", "relation", "prompt", "subprompts", "span_ner", "generation")
    if config.classifier.kind == "subprompts":  # every class's rule names one answer of each sub-prompt
        raw = yaml.safe_load((EXAMPLES / name).read_text())["classifier"]
        answers = [set(s["label_words"]) for s in raw["subprompts"]]
        assert len(raw["rules"]) == 19
        assert all(all(a in answers[i] for i, a in enumerate(rule)) for rule in raw["rules"].values())


@pytest.mark.parametrize(("classifier", "message"), [
    ({"kind": "tagger", "variant": "cls"}, "classifier.variant applies to kind: relation, not to kind: tagger"),
    ({"kind": "relation", "template": "{text}"}, "kind: relation puts a head on the PLM and takes no template"),
    ({"kind": "tagger", "label_words": {"a": "b"}}, "takes no label_words"),
    ({"kind": "subprompts", "rules": {"a": ["x"]}}, "kind: subprompts needs subprompts"),
    ({"kind": "span_ner", "template": "{text} {mask}"}, "kind: span_ner needs label_words"),
    ({"kind": "span_ner", "template": "{text} {mask}", "label_words": {"PER": "person"}, "threshold": 2},
     "threshold must be in \\[0, 1\\]"),
    ({"kind": "span_ner", "template": "{text} {mask}", "label_words": {"PER": "person"}, "dropout": 0.1},
     "dropout applies to heads"),
    ({"kind": "prompt", "template": "{text} {mask}", "label_words": {"a": "b", "c": "d"}, "alignment": "all"},
     "classifier.alignment applies to kind: tagger"),
])
def test_entity_options_are_checked_against_the_kind(classifier, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": {"name": "x"}, "data": {"task": "t"}, "classifier": classifier})


def test_tagged_data_samples_sentences_and_turns_into_typing_examples(tasks, model_dir):
    config = load_config(run_config(tasks, model_dir, "ner", {"kind": "tagger"}, shots=2, dev_per_class=1, seed=3))
    data = load_run_data(config)
    assert data.classes == tuple(TAGS)
    assert len(data.train) == 2 and len(data.dev) == 1 and len(data.test) == 6
    assert all("tags" in e.meta for e in data.train + data.dev)
    again = load_run_data(config)
    assert [e.text for e in again.train] == [e.text for e in data.train]  # seeded

    typing = load_run_data(load_config(run_config(
        tasks, model_dir, "ner", {"kind": "prompt", "template": '{"meta": "entity"} is a {mask}',
                                  "label_words": {"PER": "person", "LOC": "place"}}, entity_typing=True)))
    assert typing.classes == ("LOC", "PER")
    assert [(e.field("entity"), e.label) for e in typing.train][:3] == [("Paris", "LOC"), ("Bob Smith", "PER"),
                                                                     ("London", "LOC")]
    with pytest.raises(ValueError, match="needs tagged sentences"):
        main_config = run_config(tasks, model_dir, "re", {"kind": "tagger"})
        from deltaprompt.config import build_classifier, load_base_model

        config = load_config(main_config)
        build_classifier(config, load_base_model(config.model), load_run_data(config).classes)


def train_run(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main(["train", str(path), "--output-dir", str(out)]) == 0
    return out


def test_tagger_trains_evaluates_and_predicts_from_the_command_line(tasks, model_dir, tmp_path, capsys):
    out = train_run(tmp_path, run_config(tasks, model_dir, "ner", {"kind": "tagger", "alignment": "all"}))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "tagger" and metrics["classes"] == TAGS
    tagger = load(out / "model")
    evaluation = tagger.evaluate([{"tokens": w, "tags": t} for w, t in SENTENCES])
    assert metrics["f1"] == pytest.approx(evaluation.f1) and metrics["accuracy"] == pytest.approx(evaluation.accuracy)
    assert set(metrics["test"]["per_type"]) >= {"LOC", "PER"}
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows] == [w for w, _ in SENTENCES]
    assert [r["prediction"] for r in rows] == evaluation.predicted

    assert main(["eval", str(out / "model"), "--data", str(tasks / "ner"), "--split", "test",
                 "--metrics", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["f1"] == pytest.approx(evaluation.f1)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("Paris is great\nBob liked London\n")
    capsys.readouterr()
    assert main(["predict", str(out / "model"), "--input", str(inputs)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(r["prediction"]) for r in lines] == [3, 3]
    assert [r["prediction"] for r in lines] == tagger.predict(["Paris is great", "Bob liked London"])


def test_relation_run_reports_macro_f1_without_other(tasks, model_dir, tmp_path):
    out = train_run(tmp_path, run_config(tasks, model_dir, "re", {"kind": "relation", "variant": "markers_start"}))
    metrics = json.loads((out / "metrics.json").read_text())
    classifier = load(out / "model")
    assert classifier.kind == "relation" and classifier.model.variant == "markers_start"
    from deltaprompt.data import load_task

    evaluation = classifier.evaluate(load_task(tasks / "re").load("test"))
    assert evaluation.ignore == ("Other",)
    assert metrics["macro_f1"] == pytest.approx(evaluation.macro_f1)
    assert metrics["test"]["confusion"] == evaluation.confusion.tolist()
