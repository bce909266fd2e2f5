"""Few-shot methods without (or with little) weight training, on SmolLM2-135M and six tasks.

For every task (SST-2, SST-5, MR, AG News, RTE, CB) and seed, LM-BFF's protocol: K examples
per class from the task's train split as the labelled set and, disjoint from them, K per class
as the dev set (``few_shot_split``). Rows:

- ``zero_shot``: the task's prompt and manual label words, no examples (seed-independent).
- ``zero_shot_calibrated``: the same with contextual calibration (Zhao et al. 2021) from the
  usual content-free inputs ("N/A", "", "[MASK]").
- ``icl_random_4`` / ``icl_knn_4`` / ``icl_random_16`` / ``icl_knn_16``: in-context learning
  with 4 or 16 demonstrations from the labelled set, one class-agnostic random draw shared by
  every query (seeded) or the query's nearest neighbours by MiniLM sentence embedding.
- ``auto_verbalizer``: the same prompt zero-shot with label words found by
  ``search_label_words`` on the labelled set and chosen on the dev set.
- ``pet`` / ``ipet`` (``--pet-tasks``, SST-2 by default; they train several models, so they are
  the expensive rows): three patterns, LoRA, distilled into a prompt model on unlabelled
  sentences from the rest of the train split.

The test set is a fixed random sample of ``--test-limit`` test examples per task (seed 0, the
same for every row and seed; CB's whole test split has 56). Every (task, seed, row) result is
written as soon as it exists, and ``--resume`` skips those already in the results file, so an
interrupted run continues where it stopped.

    .venv/bin/python benchmarks/few_shot_methods.py --threads 2
    .venv/bin/python benchmarks/few_shot_methods.py --tasks sst2 --rows zero_shot icl_random_4 --seeds 13
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as common
import torch

MODEL = "smollm2-135m"
SEEDS = (13, 21, 42, 87, 100)
NAME = "few_shot_methods"


@dataclass(frozen=True)
class TaskPrompt:
    template: str
    label_words: dict[str, str]
    # Two more patterns for PET (each with the same label words).
    extra_patterns: tuple[str, ...] = ()


NLI = "{text}\nQuestion: {text_b} Yes, no, or maybe?\nAnswer: {mask}"
PROMPTS: dict[str, TaskPrompt] = {
    "sst2": TaskPrompt("Review: {text}\nSentiment: {mask}", {"negative": "negative", "positive": "positive"},
                       ("{text} All in all, it was {mask}", "Movie review: {text}\nWas it good or bad? {mask}")),
    "mr": TaskPrompt("Review: {text}\nSentiment: {mask}", {"negative": "negative", "positive": "positive"},
                     ("{text} All in all, it was {mask}", "Movie review: {text}\nWas it good or bad? {mask}")),
    "sst5": TaskPrompt("Review: {text}\nSentiment: {mask}",
                       {"very negative": "terrible", "negative": "bad", "neutral": "okay", "positive": "good",
                        "very positive": "great"}),
    "agnews": TaskPrompt("Article: {text}\nTopic: {mask}",
                         {"World": "world", "Sports": "sports", "Business": "business", "Sci/Tech": "technology"}),
    "rte": TaskPrompt(NLI.replace(" Yes, no, or maybe?", " Yes or no?"),
                      {"entailment": "yes", "not_entailment": "no"}),
    "cb": TaskPrompt(NLI, {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}),
}
SST2_PET_WORDS = {
    "{text} All in all, it was {mask}": {"negative": "bad", "positive": "good"},
    "Movie review: {text}\nWas it good or bad? {mask}": {"negative": "bad", "positive": "good"},
}


# ----------------------------------------------------------------------------- rows

Row = Callable[["Context"], dict[str, Any]]


@dataclass
class Context:
    args: argparse.Namespace
    plm: Any
    task: str
    seed: int
    prompt: TaskPrompt
    classes: tuple[str, ...]
    train: list[Any]  # K per class, labelled
    dev: list[Any]  # K per class, disjoint
    test: list[Any]
    pool: list[Any]  # the rest of the train split (unlabelled data for PET)


def evaluate(classifier: Any, test: list[Any]) -> dict[str, Any]:
    evaluation = classifier.evaluate(test)
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1}


def row_zero_shot(ctx: Context, calibrate: bool = False) -> dict[str, Any]:
    from deltaprompt import PromptClassifier

    classifier = PromptClassifier(ctx.plm, ctx.prompt.template, ctx.prompt.label_words, classes=ctx.classes,
                                  batch_size=ctx.args.batch_size, progress=False, calibrate=calibrate)
    return evaluate(classifier, ctx.test)


def row_icl(ctx: Context, shots: int, selection: str) -> dict[str, Any]:
    from deltaprompt import ICLClassifier

    classifier = ICLClassifier(ctx.plm, ctx.prompt.template, ctx.prompt.label_words, classes=ctx.classes,
                               demonstrations=ctx.train, shots=shots, selection=selection, seed=ctx.seed,
                               batch_size=ctx.args.batch_size, progress=False)
    log_probs = torch.from_numpy(classifier.predict_log_proba(ctx.test))
    result = scores(ctx, log_probs)
    if selection == "random":
        # One shared set: its calibration is one vector, applied to the same scores.
        classifier.calibrate()
        calibrated = torch.log_softmax(log_probs - classifier.calibration, -1)
        result["also"] = {f"icl_random_{shots}_calibrated": scores(ctx, calibrated)}
    return result


def scores(ctx: Context, log_probs: Any) -> dict[str, Any]:
    from deltaprompt import Evaluation

    predicted = [ctx.classes[i] for i in log_probs.argmax(1).tolist()]
    evaluation = Evaluation(ctx.classes, [e.label for e in ctx.test], predicted, log_probs.exp().numpy())
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1}


def row_auto_verbalizer(ctx: Context) -> dict[str, Any]:
    from deltaprompt import PromptClassifier, search_label_words

    search = search_label_words(ctx.plm, ctx.prompt.template, ctx.train, ctx.dev, classes=ctx.classes,
                                seed=ctx.seed, batch_size=ctx.args.batch_size, progress=False)
    classifier = PromptClassifier(ctx.plm, ctx.prompt.template, search.verbalizer, classes=ctx.classes,
                                  batch_size=ctx.args.batch_size, progress=False)
    result = evaluate(classifier, ctx.test)
    result["details"] = {"label_words": {c: list(w) for c, w in search.verbalizer.label_words.items()}}
    return result


def pet_patterns(ctx: Context) -> list[tuple[str, dict[str, str]]]:
    prompt = ctx.prompt
    words = SST2_PET_WORDS if ctx.task in ("sst2", "mr") else {}
    return [(prompt.template, prompt.label_words),
            *[(p, words.get(p, prompt.label_words)) for p in prompt.extra_patterns]]


def row_pet(ctx: Context, generations: int = 0) -> dict[str, Any]:
    """PET (generations=0) or iPET: LoRA PVP models, distilled into a LoRA prompt model."""
    from deltaprompt import PET, TrainConfig
    from deltaprompt.pet import unlabelled_pool

    args = ctx.args
    shared = {"batch_size": 8, "eval_batch_size": 32, "warmup_ratio": 0.1, "schedule": "linear",
              "weight_decay": 0.01, "max_grad_norm": 1.0, "load_best": True, "seed": ctx.seed, "progress": False}
    pet = PET(ctx.plm, pet_patterns(ctx), classes=ctx.classes, methods=["lora"], final="prompt",
              train_config=TrainConfig(epochs=args.pet_epochs, patience=4, **shared),
              final_config=TrainConfig(epochs=args.final_epochs, patience=2, **shared),
              temperature=2.0, generations=generations, factor=args.factor, keep_models=False, seed=ctx.seed,
              batch_size=32, progress=False)
    unlabelled = unlabelled_pool(ctx.pool, ctx.train + ctx.dev, args.unlabelled, ctx.seed)
    classifier = pet.fit(ctx.train, unlabelled, ctx.dev)
    result = evaluate(classifier, ctx.test)
    summary = pet.summary()
    result["details"] = {"weights": [round(float(w), 4) for w in pet.weights], "history": summary.get("history")}
    return result


ROWS: dict[str, Row] = {
    "zero_shot": row_zero_shot,
    "zero_shot_calibrated": lambda ctx: row_zero_shot(ctx, calibrate=True),
    "icl_random_4": lambda ctx: row_icl(ctx, 4, "random"),
    "icl_knn_4": lambda ctx: row_icl(ctx, 4, "knn"),
    "icl_random_16": lambda ctx: row_icl(ctx, 16, "random"),
    "icl_knn_16": lambda ctx: row_icl(ctx, 16, "knn"),
    "auto_verbalizer": row_auto_verbalizer,
    "pet": row_pet,
    "ipet": lambda ctx: row_pet(ctx, generations=1),
}
SEED_INDEPENDENT = {"zero_shot", "zero_shot_calibrated"}
ROW_NAMES = {
    "zero_shot": "zero-shot",
    "zero_shot_calibrated": "zero-shot + calibration",
    "icl_random_4": "ICL, 4 random demonstrations (one set per seed)",
    "icl_random_4_calibrated": "ICL, 4 random demonstrations + calibration",
    "icl_knn_4": "ICL, 4 nearest demonstrations (MiniLM kNN)",
    "icl_random_16": "ICL, 16 random demonstrations",
    "icl_random_16_calibrated": "ICL, 16 random demonstrations + calibration",
    "icl_knn_16": "ICL, 16 nearest demonstrations",
    "auto_verbalizer": "zero-shot, automatic label words (searched on train, chosen on dev)",
    "pet": "PET (3 PVPs, LoRA; distilled into a LoRA prompt model)",
    "ipet": "iPET (1 extra generation)",
}


# ----------------------------------------------------------------------------- driver

def test_sample(examples: list[Any], limit: int | None) -> list[Any]:
    if limit is None or len(examples) <= limit:
        return list(examples)
    return random.Random(0).sample(list(examples), limit)


def task_k(examples: list[Any], classes: Sequence[str], k: int) -> int:
    """K, or less when a class cannot give K training and K dev examples (CB's train split has
    16 'neutral' examples: K = 8 there)."""
    counts = Counter(e.label for e in examples)
    return min(k, min(counts[c] for c in classes) // 2)


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def run_key(task: str, seed: int | None, row: str) -> str:
    return f"{task}/{row}/{seed if seed is not None else '-'}"


def summary_rows(runs: dict[str, dict[str, Any]], tasks: list[str], rows: list[str]) -> list[list[str]]:
    table = []
    for row in rows:
        cells = [ROW_NAMES.get(row, row)]
        for task in tasks:
            values = [r["accuracy"] for k, r in runs.items() if k.startswith(f"{task}/{row}/")]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}" + ("" if row in SEED_INDEPENDENT else " (1 seed)"))
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)})")
        table.append(cells)
    return table


def write(out_dir: Path, payload: dict[str, Any]) -> None:
    """The results so far: every task and row recorded (also by earlier invocations)."""
    runs = payload["runs"]
    tasks = [t for t in PROMPTS if t in payload["test_sizes"]]
    rows = [r for r in ROW_NAMES if any(k.split("/")[1] == r for k in runs)]
    info = payload["machine"]
    header = ["Method", *[t.upper() if len(t) <= 4 else t for t in tasks]]
    lines = [
        f"### Few-shot methods ({MODEL}, K = {payload['k']} per class, CPU)\n",
        common.markdown_table(header, summary_rows(runs, tasks, rows)),
        "- K per task: " + ", ".join(f"{t}: {payload.get('k_per_task', {}).get(t, payload['k'])}" for t in tasks)
        + " (training examples per class, and as many again per class for the dev set).",
        "- Accuracy on a fixed random sample of each task's test split (seed 0; "
        + ", ".join(f"{t}: {payload['test_sizes'].get(t, '?')}" for t in tasks)
        + "). Mean ± standard deviation over seeds (number of seeds in brackets); "
        "zero-shot rows do not depend on the seed.",
        "- Prompts: " + "; ".join(f"{t}: `{PROMPTS[t].template!r}` {PROMPTS[t].label_words}" for t in tasks) + ".",
        f"- Settings: {payload['settings']}.",
        f"- Machine: {common.machine_line(info)}; total wall time of the runs recorded here "
        f"{sum(r['seconds'] for r in runs.values()):.0f} s.",
    ]
    common.write_results(out_dir, payload["name"], payload, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS[:3]))
    parser.add_argument("--k", type=int, default=16, help="examples per class (train and, again, dev)")
    parser.add_argument("--test-limit", type=int, default=200, help="test examples per task (fixed random sample)")
    parser.add_argument("--pet-tasks", nargs="+", default=["sst2"], help="tasks the PET/iPET rows run on")
    parser.add_argument("--unlabelled", type=int, default=400, help="unlabelled examples for PET/iPET")
    parser.add_argument("--pet-epochs", type=int, default=10, help="epochs of each PVP model")
    parser.add_argument("--final-epochs", type=int, default=3, help="epochs of the distilled classifier")
    parser.add_argument("--factor", type=float, default=5.0, help="iPET's training-set growth per generation")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default=NAME, help="results file name (without extension)")
    parser.add_argument("--resume", action="store_true", help="skip runs already in the results file")
    args = parser.parse_args(argv)

    import torch

    from deltaprompt import load_plm, load_task
    from deltaprompt.data import few_shot_split

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    for task in args.tasks:
        common.require_task(data_dir, task)
    path = args.out_dir / f"{args.name}.json"
    payload = load_results(path) if args.resume else {}
    payload.setdefault("runs", {})
    payload.setdefault("test_sizes", {})
    payload.update(name=args.name, model=MODEL, k=args.k, machine=common.machine_info(),
                   settings={"test_limit": args.test_limit, "batch_size": args.batch_size,
                             "unlabelled": args.unlabelled, "pet_tasks": args.pet_tasks,
                             "pet_epochs": args.pet_epochs, "final_epochs": args.final_epochs, "factor": args.factor})
    plm = load_plm(MODEL)
    all_rows = [r for r in ROWS if r in args.rows]
    for task_name in args.tasks:
        task = load_task(task_name, data_dir)
        classes = task.labels
        test = test_sample(task.load("test"), args.test_limit)
        payload["test_sizes"][task_name] = len(test)
        full_train = task.load("train")
        k = task_k(full_train, classes, args.k)
        payload.setdefault("k_per_task", {})[task_name] = k
        for row in all_rows:
            if row in PET_ROWS and task_name not in args.pet_tasks:
                continue
            for seed in [None] if row in SEED_INDEPENDENT else args.seeds:
                key = run_key(task_name, seed, row)
                if key in payload["runs"]:
                    continue
                split_seed = seed if seed is not None else args.seeds[0]
                train, dev = few_shot_split(full_train, k, split_seed, classes)
                used = {id(e) for e in train + dev}
                pool = [e for e in full_train if id(e) not in used]
                ctx = Context(args, plm, task_name, split_seed, PROMPTS[task_name], tuple(classes),
                              train, dev, test, pool)
                common.log(f"{key} ...")
                started = time.perf_counter()
                result = ROWS[row](ctx)
                result["seconds"] = round(time.perf_counter() - started, 1)
                for name, extra in result.pop("also", {}).items():  # rows computed on the way
                    payload["runs"][run_key(task_name, seed, name)] = {**extra, "seconds": 0.0}
                payload["runs"][key] = result
                common.log(f"{key}: accuracy {result['accuracy']:.4f} ({result['seconds']} s)")
                # Another invocation may have written other runs meanwhile: keep them.
                payload["runs"] = {**load_results(path).get("runs", {}), **payload["runs"]}
                payload["test_sizes"] = {**load_results(path).get("test_sizes", {}), **payload["test_sizes"]}
                payload["machine"]["loadavg_at_end"] = common.load_average()
                write(args.out_dir, payload)
    return 0


PET_ROWS = {"pet", "ipet"}

if __name__ == "__main__":
    sys.exit(main())
