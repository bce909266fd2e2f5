"""A small generation task: turn a CoNLL-2003 sentence into a JSON record of its entities.

    {"persons": ["Ada Lovelace"], "organizations": [], "locations": ["Paris"], "misc": []}

Three ways to get there with one model (default SmolLM2-135M-Instruct):

- ``prompt_tuning``: 20 soft tokens trained with teacher forcing on ``--train`` sentences (the
  PLM frozen), template ``Sentence: {text}\\nEntities: {mask}``;
- ``lora``: LoRA (r 8, alpha 16) on the same template and sentences;
- ``zero_shot``: no training, a PromptSpec whose output format is the record's JSON Schema,
  through the model's chat template (plain text for a tokenizer without one).

Every output goes through the ``json`` post-processing step with that schema. Metrics on
``--test`` sentences (a fixed random sample, seed 0): ``exact_match``: the whole record right
(JSON with sorted keys; entities in sentence order, as the gold records list them);
``token_f1``: SQuAD token F1 of the record as JSON text with sorted keys (field names count as tokens;
rejected outputs score as empty, as ``deltaprompt eval`` does); ``valid_json``: share of outputs
holding a JSON object; ``schema_valid``: share matching the schema; ``entity_f1``: micro F1 of
(field, entity) pairs over the sentences (rejected outputs predict none), and per field.

The data is built in memory from ``conll2003`` under ``--data-dir`` (default ../shared/data);
nothing is copied. Each run is written as soon as it ends; ``--resume`` skips runs already in
the results file (made with the same settings).

    .venv/bin/python benchmarks/json_records.py --threads 2
    .venv/bin/python benchmarks/json_records.py --runs zero_shot --test 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common

NAME = "json_records"
RUNS = ("prompt_tuning", "lora", "zero_shot")
TEMPLATE = "Sentence: {text}\nEntities: {mask}"
METHODS: dict[str, list[Any]] = {
    "prompt_tuning": [{"method": "prompt_tuning", "num_tokens": 20}],
    "lora": [{"method": "lora", "r": 8, "alpha": 16}],
}
SETTING_KEYS = ("model", "train", "test", "epochs", "batch_size", "max_new_tokens", "seed")


# ----------------------------------------------------------------------------- data

def sample(examples: Sequence[Any], count: int, seed: int) -> list[Any]:
    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


def build_data(data_dir: Path, train: int, test: int, seed: int) -> dict[str, Any]:
    """Sentence -> record examples: ``train`` sentences drawn with ``seed``, ``test`` with seed 0."""
    from deltaprompt import load_task
    from deltaprompt.entity_records import (
        entity_record_examples,
        entity_record_schema,
        record_types,
    )

    task = load_task("conll2003", data_dir)
    types = record_types(task.labels)
    return {
        "types": types,
        "schema": entity_record_schema(types),
        "train": entity_record_examples(sample(task.load("train"), train, seed), types),
        "test": entity_record_examples(sample(task.load("test"), test, 0), types),
    }


def zero_shot_spec(schema: dict[str, Any]) -> Any:
    from deltaprompt import OutputFormat, PromptSpec

    return PromptSpec(
        task="List the named entities mentioned in the sentence, by type: persons (people), organizations, "
             "locations, and misc (other names: nationalities, events, works, products).",
        input="Sentence: {text}",
        output_format=OutputFormat(kind="json", schema=schema, description=(
            "Its shape: " + json.dumps({f: [] for f in schema["properties"]}) + ", each list holding strings.")),
        constraints={"rules": ["Copy each entity exactly as it is written in the sentence.",
                               "Give an empty list for a type the sentence does not mention."]},
        answer_prefix="JSON:",
    )


# ----------------------------------------------------------------------------- metrics

def entity_counts(predicted: dict[str, list[str]] | None, gold: dict[str, list[str]],
                  fields: Sequence[str]) -> dict[str, Counter]:
    """Per field: true positives, predicted and gold entity counts (multisets)."""
    out: dict[str, Counter] = {}
    for field in fields:
        pred = Counter(str(x) for x in (predicted or {}).get(field, []))
        true = Counter(gold.get(field, []))
        out[field] = Counter(tp=sum((pred & true).values()), predicted=sum(pred.values()), gold=sum(true.values()))
    return out


def f1(counts: Counter) -> float:
    precision = counts["tp"] / counts["predicted"] if counts["predicted"] else 0.0
    recall = counts["tp"] / counts["gold"] if counts["gold"] else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def score(texts: Sequence[str], examples: Sequence[Any], schema: dict[str, Any],
          metrics: Sequence[str] = ("exact_match", "token_f1")) -> dict[str, Any]:
    """The benchmark's metrics for generated texts against the examples' records."""
    from deltaprompt.generation import target_of
    from deltaprompt.generation_cli import Generated, score_outputs
    from deltaprompt.postprocess import make_pipeline

    any_json, with_schema = make_pipeline(["json"]), make_pipeline([{"json": {"schema": schema}}])
    checked = [with_schema.apply(t) for t in texts]
    golds = [json.loads(target_of(e)) for e in examples]
    fields = list(schema["properties"])
    totals = {field: Counter() for field in fields}
    exact = 0
    for processed, gold in zip(checked, golds, strict=True):
        value = processed.value if processed.ok else None
        exact += value is not None and json.dumps(value, sort_keys=True) == json.dumps(gold, sort_keys=True)
        for field, counts in entity_counts(value, gold, fields).items():
            totals[field].update(counts)
    library = score_outputs(Generated(list(texts), [p.error or p.value for p in checked]),
                            [target_of(e) for e in examples], list(metrics))
    n = len(texts)
    return {
        "exact_match": exact / n,
        "token_f1": library["token_f1"],
        "valid_json": sum(any_json.apply(t).ok for t in texts) / n,
        "schema_valid": sum(p.ok for p in checked) / n,
        "entity_f1": f1(sum(totals.values(), Counter())),
        "entity_f1_per_field": {field: round(f1(c), 4) for field, c in totals.items()},
        "n": n,
    }


# ----------------------------------------------------------------------------- runs

def run_one(key: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Train (or not) and evaluate one method."""
    from deltaprompt import PromptForGeneration, TrainConfig

    plm, _ = common.load_model(args.model)
    out: dict[str, Any] = {"train": 0, "test": len(data["test"])}
    if key == "zero_shot":
        chat = bool(getattr(plm.tokenizer, "chat_template", None))
        gen = PromptForGeneration(plm, zero_shot_spec(data["schema"]), chat=chat, max_new_tokens=args.max_new_tokens,
                                  seed=args.seed, batch_size=args.eval_batch_size)
        out["chat"] = chat
    elif key in METHODS:
        gen = PromptForGeneration(plm, TEMPLATE, methods=METHODS[key], max_new_tokens=args.max_new_tokens,
                                  seed=args.seed, batch_size=args.eval_batch_size)
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False,
                             tensorboard=False)
        gen.fit(data["train"], config=config)
        assert gen.result is not None
        out.update(train=len(data["train"]), train_loss=round(gen.result.train_loss, 4), steps=gen.result.steps)
    else:
        raise ValueError(f"unknown run {key!r}; choose from {', '.join(RUNS)}")
    out["trainable"] = 0 if key == "zero_shot" else gen.parameter_count().trainable  # zero-shot trains nothing
    started = time.perf_counter()
    texts = gen.generate(data["test"])
    out["generate_seconds"] = round(time.perf_counter() - started, 1)
    return {**score(texts, data["test"], data["schema"]), **out}


# ----------------------------------------------------------------------------- report

def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def markdown(payload: dict[str, Any]) -> str:
    runs = payload["runs"]
    fields = next((list(r["entity_f1_per_field"]) for r in runs.values()), [])
    lines = ["# JSON records of CoNLL-2003 entities: prompt tuning vs LoRA vs zero-shot\n",
             "Each sentence becomes a record of its entities by type; every output goes through the `json` "
             "post-processing step with the record's schema. Exact match: the whole record; token F1: the "
             "record as JSON text (field names included); entity F1: (field, entity) pairs, micro.\n"]
    header = ["method", "train", "test", "exact match", "token F1", "valid JSON", "schema-valid", "entity F1",
              *[f"{f} F1" for f in fields], "trainable", "seconds"]
    rows = []
    for key in [k for k in RUNS if k in runs] + sorted(set(runs) - set(RUNS)):
        r = runs[key]
        name = key + (" (chat)" if r.get("chat") else " (plain)" if key == "zero_shot" else "")
        rows.append([name, r["train"], r["test"], f"{r['exact_match']:.3f}", f"{r['token_f1']:.3f}",
                     f"{r['valid_json']:.3f}", f"{r['schema_valid']:.3f}", f"{r['entity_f1']:.3f}",
                     *[f"{r['entity_f1_per_field'].get(f, 0.0):.3f}" for f in fields],
                     f"{r['trainable']:,}", r["seconds"]])
    lines.append(common.markdown_table(header, rows))
    lines.append(f"- Settings: {payload['settings']}.")
    lines.append(f"- Machine: {common.machine_line(payload['machine'])}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="methods to run (default: all)")
    parser.add_argument("--model", default="smollm2-135m", help="alias, hub id or model folder (default smollm2-135m)")
    parser.add_argument("--train", type=int, default=200, help="training sentences (default 200)")
    parser.add_argument("--test", type=int, default=100, help="test sentences (default 100)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--resume", action="store_true", help="skip runs already in the results file")
    args = parser.parse_args(argv)
    for flag in ("train", "test", "epochs", "batch_size", "eval_batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    common.require_task(data_dir, "conll2003")
    path = args.out_dir / f"{args.name}.json"
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    payload = load_results(path) if args.resume else {}
    if payload.get("runs") and payload.get("settings") != settings:
        raise SystemExit(f"{path} holds runs made with other settings ({payload.get('settings')}); "
                         "drop --resume or pass --name for a new results file")
    payload.setdefault("runs", {})
    payload.update(name=args.name, machine=common.machine_info(), settings=settings,
                   template=TEMPLATE, methods=METHODS)
    data = build_data(data_dir, args.train, args.test, args.seed)
    payload["zero_shot_spec"] = zero_shot_spec(data["schema"]).to_dict()
    common.log(f"data: {len(data['train'])} train and {len(data['test'])} test sentences; fields "
               f"{list(data['schema']['properties'])}")
    common.run_pending(args.runs, payload, lambda key: run_one(key, args, data), args.out_dir, args.name, markdown)
    return common.publish(args.out_dir, args.name, payload, markdown(payload)) if payload["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
