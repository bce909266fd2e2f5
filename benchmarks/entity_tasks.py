"""Entity tasks: NER on CoNLL-2003 and relation classification on SemEval-2010 Task 8.

Every recipe of ``deltaprompt`` for these tasks, on SmolLM2-135M (a decoder LM) and MiniLM-L6
(a BERT encoder without its MLM head, so fine-tuned recipes only), with full fine-tuning and
with LoRA, at a few-shot and a larger training budget:

- ``tagger``: token classification, a linear head on every word's first sub-token (BIO tags);
  entity-level micro F1 (seqeval) on CoNLL test.
- ``span_ner``: prompt-based NER, every span of up to 4 words typed through a prompt (the types'
  words or "none"), trained on the gold entities plus sampled non-entity spans.
- ``relation:<variant>``: the six relation-classification variants (cls, mention_pool,
  mention_pool_position, markers_cls, markers_mention_pool, markers_start); macro-F1 over the
  18 directed relations, Other left out (the SemEval-2010 convention), and accuracy.
- ``relation_prompt``: one template naming both entities, label words from the class names.
- ``relation_ptr``: PTR-style sub-prompts (head role, relation, tail role) combined by rules.
- ``typing_prompt``: entity typing of the gold CoNLL mentions through a prompt (accuracy).

Budgets: ``few``: 16 examples per relation (all of a rarer one), 50 sentences for NER (16 per
type for typing); ``large``: 1,000 training examples (sentences for NER). Test sets are fixed
random samples of ``--test-limit`` examples (seed 0; span NER reads ``--span-test-limit``
sentences because it scores every span). No dev set: a fixed number of epochs. Each run is
written as soon as it ends and ``--resume`` skips runs already recorded.

    .venv/bin/python benchmarks/entity_tasks.py --threads 1 --models minilm-l6
    .venv/bin/python benchmarks/entity_tasks.py --runs smollm2-135m/semeval/relation:markers_start/lora/few
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common

NAME = "entity_tasks"
ENCODER, DECODER = "minilm-l6", "smollm2-135m"
VARIANTS = ("cls", "mention_pool", "mention_pool_position", "markers_cls", "markers_mention_pool", "markers_start")
TYPE_WORDS = {"PER": "person", "LOC": "location", "ORG": "organization", "MISC": "thing"}
TYPING_TEMPLATE = '{"meta": "sentence"}\nIn this sentence, {"meta": "entity"} is a {mask}'
RELATION_TEMPLATE = '{text}\nThe relation between {"meta": "head"} and {"meta": "tail"} is {mask}'
ROLE_TEMPLATE = '{text}\nIn this sentence, {"meta": "%s"} is the {mask}'
LINK_TEMPLATE = '{text}\nThe link between {"meta": "head"} and {"meta": "tail"} is {mask}'
LINK_WORDS = {"Cause-Effect": "causal", "Component-Whole": "part", "Content-Container": "containment",
              "Entity-Destination": "destination", "Entity-Origin": "origin", "Instrument-Agency": "use",
              "Member-Collection": "membership", "Message-Topic": "topic", "Product-Producer": "production",
              "Other": "none"}


def relation_roles(label: str) -> tuple[str, str, str]:
    """'Cause-Effect(e2,e1)' -> ('effect', 'Cause-Effect', 'cause'): the head's role, the
    undirected relation and the tail's role (Other: 'other' twice)."""
    if label == "Other":
        return "other", "Other", "other"
    name, _, direction = label.partition("(")
    first, second = (part.lower() for part in name.split("-"))
    return (first, name, second) if direction.startswith("e1") else (second, name, first)


def relation_words(label: str) -> str:
    head, _, tail = relation_roles(label)
    return "none" if label == "Other" else f"{head} and {tail}"


# ----------------------------------------------------------------------------- data

def sample(examples: Sequence[Any], count: int, seed: int) -> list[Any]:
    chosen = list(examples)
    random.Random(seed).shuffle(chosen)
    return chosen[:count]


def per_class(examples: Sequence[Any], k: int, seed: int) -> list[Any]:
    """Up to k examples of every label (a rarer class gives all it has), shuffled."""
    from deltaprompt.data import few_shot_split

    return few_shot_split(examples, k, seed, dev_per_class=0, rare_classes="keep")[0]


# ----------------------------------------------------------------------------- runs

def train_config(args: argparse.Namespace, recipe: str, budget: str, model: str) -> Any:
    from deltaprompt import TrainConfig

    epochs = args.few_epochs if budget == "few" else args.large_epochs
    if budget == "few" and recipe == "tagger":
        epochs = args.ner_few_epochs  # 50 sentences: a head learning BIO tags from scratch needs more passes
    full_lr = 5e-5 if model == ENCODER else 2e-5
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=full_lr, delta_lr=1e-3, head_lr=1e-3,
                       seed=args.seed, progress=False, tensorboard=False, eval_batch_size=32)


def methods_of(method: str) -> list[Any]:
    return ["finetune"] if method == "finetune" else [{"method": "lora", "r": 8, "alpha": 16}]


def run_one(key: str, args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (model, task, recipe, method, budget) combination."""
    from deltaprompt import load_plm
    from deltaprompt.relation import RelationClassifier
    from deltaprompt.span_ner import SpanTagger
    from deltaprompt.subprompts import SubPromptClassifier
    from deltaprompt.tagging import Tagger

    model, task, recipe, method, budget = key.split("/")
    plm = load_plm(model)
    config = train_config(args, recipe, budget, model)
    methods = methods_of(method)
    seed = args.seed
    if task == "conll2003" and recipe in ("tagger", "span_ner"):
        train = data["ner_few"] if budget == "few" else data["ner_large"]
        test = data["ner_test"]
        if recipe == "tagger":
            classifier = Tagger(plm, data["tags"], methods=methods, seed=seed, batch_size=32)
        else:
            test = test[: args.span_test_limit]
            classifier = SpanTagger(plm, TYPING_TEMPLATE, dict(TYPE_WORDS),
                                    none_word="nothing", methods=methods, seed=seed, batch_size=64)
        classifier.fit(train, config=config)
        evaluation = classifier.evaluate(test)
        return {**evaluation.summary(), "train": len(train), "test": len(test),
                "trainable": classifier.parameter_count().trainable}
    if recipe == "typing_prompt":
        from deltaprompt import PromptClassifier

        train = data["typing_few"] if budget == "few" else data["typing_large"]
        classifier = PromptClassifier(plm, TYPING_TEMPLATE, dict(TYPE_WORDS),
                                      methods=methods, seed=seed, batch_size=32)
        zero = classifier.evaluate(data["typing_test"]).summary()
        classifier.fit(train, config=config)
        evaluation = classifier.evaluate(data["typing_test"])
        return {**evaluation.summary(), "zero_shot_accuracy": zero["accuracy"], "train": len(train),
                "test": len(data["typing_test"]), "trainable": classifier.parameter_count().trainable}
    train = data["re_few"] if budget == "few" else data["re_large"]
    test = data["re_test"]
    classes = data["relations"]
    if recipe.startswith("relation:"):
        classifier = RelationClassifier(plm, classes, variant=recipe.split(":")[1], methods=methods, seed=seed,
                                        batch_size=32)
    elif recipe == "relation_prompt":
        from deltaprompt import PromptClassifier

        classifier = PromptClassifier(plm, RELATION_TEMPLATE, {c: relation_words(c) for c in classes},
                                      methods=methods, seed=seed, batch_size=32)
    elif recipe == "relation_ptr":
        roles = {c: relation_roles(c) for c in classes}
        role_words = {r: r for c in classes for r in (roles[c][0], roles[c][2])}
        subprompts = [
            {"template": ROLE_TEMPLATE % "head", "label_words": role_words},
            {"template": LINK_TEMPLATE, "label_words": dict(LINK_WORDS)},
            {"template": ROLE_TEMPLATE % "tail", "label_words": role_words},
        ]
        classifier = SubPromptClassifier(plm, subprompts, {c: list(roles[c]) for c in classes}, methods=methods,
                                         seed=seed, batch_size=32)
    else:
        raise ValueError(f"unknown recipe {recipe!r}")
    zero = None
    if recipe in ("relation_prompt", "relation_ptr"):
        zero = classifier.evaluate(test).summary()
    classifier.fit(train, config=config)
    evaluation = classifier.evaluate(test)
    out = {**evaluation.summary(), "train": len(train), "test": len(test),
           "trainable": classifier.parameter_count().trainable}
    if zero is not None:
        out["zero_shot_macro_f1"], out["zero_shot_accuracy"] = zero["macro_f1"], zero["accuracy"]
    return out


def default_runs() -> list[str]:
    runs = []
    for model in (ENCODER, DECODER):
        methods = ("finetune", "lora")
        for budget in ("few", "large"):
            for method in methods:
                runs.append(f"{model}/conll2003/tagger/{method}/{budget}")
                for variant in VARIANTS:
                    if model == DECODER and method == "finetune" and variant not in ("cls", "markers_start"):
                        continue  # full fine-tuning of the decoder: the two ends of the range only
                    runs.append(f"{model}/semeval/relation:{variant}/{method}/{budget}")
    for budget in ("few",):
        runs += [f"{DECODER}/semeval/relation_prompt/lora/{budget}", f"{DECODER}/semeval/relation_ptr/lora/{budget}",
                 f"{DECODER}/conll2003/typing_prompt/lora/{budget}", f"{DECODER}/conll2003/span_ner/lora/{budget}"]
    return runs


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    from deltaprompt import load_task
    from deltaprompt.spans import entity_typing_examples

    data_dir = args.data_dir or common.default_data_dir()
    conll, semeval = load_task("conll2003", data_dir), load_task("semeval", data_dir)
    ner_train = conll.load("train")
    ner_test = sample(conll.load("test"), args.test_limit, 0)
    typing_train = entity_typing_examples(ner_train)
    re_train = semeval.load("train")
    return {
        "tags": conll.labels, "relations": semeval.labels,
        "ner_few": sample(ner_train, args.few_sentences, args.seed),
        "ner_large": sample(ner_train, args.large, args.seed),
        "ner_test": ner_test,
        "typing_few": per_class(typing_train, args.k, args.seed),
        "typing_large": sample(typing_train, args.large, args.seed),
        "typing_test": sample(entity_typing_examples(conll.load("test")), args.test_limit, 0),
        "re_few": per_class(re_train, args.k, args.seed),
        "re_large": sample(re_train, args.large, args.seed),
        "re_test": sample(semeval.load("test"), args.test_limit, 0),
    }


# ----------------------------------------------------------------------------- report

def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def markdown(payload: dict[str, Any]) -> str:
    runs = payload["runs"]
    lines = ["# Entity tasks: NER (CoNLL-2003) and relations (SemEval-2010 Task 8)\n",
             "Micro entity F1 (seqeval) for NER; macro-F1 without Other and accuracy for relations; "
             "accuracy for typing. `few`: 16 per relation/type or 50 sentences; `large`: 1,000. "
             "Prompt rows also give the untrained (zero-shot) score.\n"]
    header = ["model", "task", "recipe", "method", "budget", "train", "test", "F1", "accuracy", "zero-shot",
              "trainable", "seconds"]
    rows = []
    for key in sorted(runs):
        r = runs[key]
        model, task, recipe, method, budget = key.split("/")
        f1 = r.get("f1", r.get("macro_f1"))
        zero = r.get("zero_shot_macro_f1", r.get("zero_shot_accuracy"))
        rows.append([model, task, recipe, method, budget, r["train"], r["test"],
                     "" if f1 is None or recipe == "typing_prompt" else f"{f1:.3f}", f"{r['accuracy']:.3f}",
                     "" if zero is None else f"{zero:.3f}", f"{r['trainable']:,}", r["seconds"]])
    lines.append(common.markdown_table(header, rows))
    info = payload["machine"]
    lines.append(f"- Settings: {payload['settings']}.")
    lines.append(f"- Machine: {common.machine_line(info)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=None, help="run keys model/task/recipe/method/budget")
    parser.add_argument("--models", nargs="+", default=[ENCODER, DECODER])
    parser.add_argument("--k", type=int, default=16, help="few-shot examples per relation / entity type")
    parser.add_argument("--few-sentences", type=int, default=50)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--few-epochs", type=int, default=5)
    parser.add_argument("--ner-few-epochs", type=int, default=30, help="epochs of the tagger on the few NER sentences")
    parser.add_argument("--large-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=300)
    parser.add_argument("--span-test-limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--resume", action="store_true", help="skip runs already in the results file")
    parser.add_argument("--list", action="store_true", help="print the default run keys and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(default_runs()))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    common.require_task(data_dir, "conll2003")
    common.require_task(data_dir, "semeval")
    keys = args.runs or [k for k in default_runs() if k.split("/")[0] in args.models]
    path = args.out_dir / f"{args.name}.json"
    payload = load_results(path) if args.resume else {}
    payload.setdefault("runs", {})
    payload.update(name=args.name, machine=common.machine_info(), settings={
        k: getattr(args, k) for k in ("k", "few_sentences", "large", "few_epochs", "ner_few_epochs", "large_epochs", "batch_size",
                                      "test_limit", "span_test_limit", "seed")})
    data = load_data(args)
    common.run_pending(keys, payload, lambda key: run_one(key, args, data), args.out_dir, args.name, markdown,
                       merge_file=True)  # two processes may fill one results file
    return common.publish(args.out_dir, args.name, payload, markdown(payload)) if payload["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
