"""Prompted multi-task training, soft-prompt transfer and the delta-structure search, on the shared tasks.

Three kinds of runs on one model (default SmolLM2-135M), each a row of the results file:

- ``loo_<task>`` (``--held-out``, default mr and sst5): LoRA (r ``--lora-r``) trained for
  ``--mix-steps`` single-task batches drawn from a temperature mixture (``--temperature``) of
  the other ``--mixture`` tasks (``--mix-shots`` examples per class of each, fewer where a
  class has fewer), then the held-out task scored zero-shot through its own prompt, beside
  the same prompt on the untouched model (``deltaprompt.multitask.leave_one_out``).
- ``transfer_sst2_<task>`` (``--targets``, default mr and sst5): a 20-token prompt-tuning
  prompt is trained once on SST-2 (``--source-shots`` per class, ``--source-epochs``), then on
  the target at K = ``--k`` per class (K more per class as dev) prompt tuning starts from
  random vectors, from the label words' embeddings ("text") and from the SST-2 prompt
  ("transfer"), for each of ``--seeds`` (``deltaprompt.transfer.compare_initialisations``).
- ``search_sst2``: the delta-structure search on SST-2 at K = ``--k`` (K more per class as
  dev) under a ``--budget`` trainable-parameter cap (0.5 %), ``--search-trials`` trials; its
  own baselines are each method alone at its default size. The best structure and the best
  baseline (by dev score) are then scored on the test sample.

Every task's prompt and label words are those of ``few_shot_methods.py`` (so the zero-shot rows
compare with that benchmark's). Test sets are a fixed random sample of ``--test-limit`` test
examples per task (seed 0). Each run is written to the results file when it ends;
``--resume`` skips recorded runs (made with the same settings) and continues an interrupted
one where it can: the search from its stored study, a multi-task run from its checkpoints,
the transfer runs from the saved SST-2 prompt. Training state lives in ``--work-dir``
(default runs/<name>), which a run without ``--resume`` clears first.

    .venv/bin/python benchmarks/multitask_transfer.py --threads 2
    .venv/bin/python benchmarks/multitask_transfer.py --runs loo_mr --mix-steps 100 --test-limit 100
    .venv/bin/python benchmarks/multitask_transfer.py --runs search_sst2 --search-trials 20 --resume
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as common
from few_shot_methods import PROMPTS

NAME = "multitask_transfer"
TASKS = ("sst2", "sst5", "mr", "agnews", "rte", "cb")
SOURCE = "sst2"
INITS = ("random", "text", "transfer")
SETTING_KEYS = (
    "model", "seed", "test_limit", "batch_size", "mixture", "mix_shots", "mix_steps", "temperature", "lora_r",
    "k", "seeds", "num_tokens", "source_shots", "source_epochs", "transfer_epochs", "budget", "search_trials",
    "search_epochs", "search_methods", "max_methods",
)


def run_keys(args: argparse.Namespace) -> list[str]:
    """Every run the options name: ``loo_<held out>``, ``transfer_sst2_<target>``, ``search_sst2``."""
    return ([f"loo_{t}" for t in args.held_out] + [f"transfer_{SOURCE}_{t}" for t in args.targets]
            + [f"search_{SOURCE}"])


# ----------------------------------------------------------------------------- data

class Data:
    """The tasks under ``data_dir``, loaded once each."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._tasks: dict[str, Any] = {}

    def task(self, name: str) -> Any:
        from deltaprompt import load_task

        if name not in self._tasks:
            common.require_task(self.data_dir, name)
            task = load_task(name, self.data_dir)
            if set(task.labels) != set(PROMPTS[name].label_words):
                raise SystemExit(f"{name}: labels {task.labels} are not the classes of the benchmark's label words "
                                 f"{list(PROMPTS[name].label_words)}")
            self._tasks[name] = task
        return self._tasks[name]

    def train(self, name: str) -> list[Any]:
        return self.task(name).load("train")

    def test(self, name: str, limit: int) -> list[Any]:
        """A fixed random sample of ``limit`` test examples (seed 0), the same for every run."""
        examples = list(self.task(name).load("test"))
        if len(examples) > limit:
            examples = random.Random(0).sample(examples, limit)
        return examples

    def few_shot(self, name: str, k: int, seed: int, dev: int = 0) -> tuple[list[Any], list[Any]]:
        """K per class (a class with fewer gives what it has) and ``dev`` more per class."""
        from deltaprompt import few_shot_split

        return few_shot_split(self.train(name), k, seed, self.task(name).labels, dev_per_class=dev,
                              rare_classes="keep")


def score(evaluation: Any) -> dict[str, float]:
    return {"accuracy": round(evaluation.accuracy, 4), "macro_f1": round(evaluation.macro_f1, 4)}


# ----------------------------------------------------------------------------- runs

def run_loo(held: str, args: argparse.Namespace, data: Data, work: Path) -> dict[str, Any]:
    """Multi-task LoRA on every mixture task but ``held``, then ``held`` zero-shot."""
    from deltaprompt import MixtureTask, TrainConfig, leave_one_out

    tasks = []
    for name in dict.fromkeys([*args.mixture, held]):
        prompt = PROMPTS[name]
        labels = data.task(name).labels
        if name == held:
            test = data.test(name, args.test_limit)
            tasks.append(MixtureTask(name, test, prompt.template, prompt.label_words, classes=labels, test=test))
        else:
            train, _ = data.few_shot(name, args.mix_shots, args.seed)
            tasks.append(MixtureTask(name, train, prompt.template, prompt.label_words, classes=labels))
    plm, _ = common.load_model(args.model)
    config = TrainConfig(max_steps=args.mix_steps, batch_size=8, eval_batch_size=args.batch_size, seed=args.seed,
                         progress=False, tensorboard=False)
    methods = [{"method": "lora", "r": args.lora_r, "alpha": 2 * args.lora_r}]
    result = leave_one_out(tasks, held, plm, methods, config, strategy="temperature", temperature=args.temperature,
                           output_dir=work / f"loo_{held}", seed=args.seed)
    assert result.score is not None and result.baseline is not None
    zero, trained = score_of(result.baseline), score_of(result.score)
    return {
        "held_out": held, "template": PROMPTS[held].template, "n_test": result.score["n"],
        "mixture": {n: round(p, 4) for n, p in result.mixture["probabilities"].items()},
        "train_examples": result.mixture["sizes"], "batches_drawn": result.steps_drawn,
        "zero_shot": zero, "multitask": trained,
        "gain_accuracy": round(trained["accuracy"] - zero["accuracy"], 4),
        "gain_macro_f1": round(trained["macro_f1"] - zero["macro_f1"], 4),
        "trainable": result.parameters["trainable"], "steps": result.steps, "train_loss": round(result.train_loss, 4),
    }


def score_of(summary: dict[str, Any]) -> dict[str, float]:
    return {"accuracy": round(float(summary["accuracy"]), 4), "macro_f1": round(float(summary["macro_f1"]), 4)}


def source_prompt(args: argparse.Namespace, data: Data, work: Path, plm: Any) -> tuple[Any, dict[str, Any]]:
    """The SST-2 prompt-tuning prompt, trained once and kept in the work folder."""
    from deltaprompt import PromptClassifier, load_soft_prompt, save_soft_prompt

    folder = work / f"source_{SOURCE}"
    path, about = folder / "soft_prompt.safetensors", folder / "source.json"
    if path.is_file() and about.is_file():
        return load_soft_prompt(path), json.loads(about.read_text())
    prompt = PROMPTS[SOURCE]
    train, dev = data.few_shot(SOURCE, args.source_shots, args.seed, dev=args.k)
    common.log(f"  training the {SOURCE} source prompt on {len(train)} examples ...")
    started = time.perf_counter()
    clf = PromptClassifier(plm, prompt.template, prompt.label_words, classes=data.task(SOURCE).labels,
                           methods=[{"method": "prompt_tuning", "num_tokens": args.num_tokens}], seed=args.seed,
                           batch_size=args.batch_size)
    clf.fit(train, dev, epochs=args.source_epochs, batch_size=8, seed=args.seed, progress=False, tensorboard=False)
    info = {"task": SOURCE, "train": len(train), "dev": len(dev), "epochs": args.source_epochs,
            "steps": clf.result.steps if clf.result else None, "num_tokens": args.num_tokens,
            "test": score(clf.evaluate(data.test(SOURCE, args.test_limit))),
            "seconds": round(time.perf_counter() - started, 1)}
    save_soft_prompt(clf, path, task=SOURCE)
    common.atomic_write(about, json.dumps(info, indent=2) + "\n")
    return load_soft_prompt(path), info


def run_transfer(target: str, args: argparse.Namespace, data: Data, work: Path) -> dict[str, Any]:
    """Prompt tuning on ``target`` from random, text and the SST-2 prompt, per seed."""
    from deltaprompt import compare_initialisations
    from deltaprompt.transfer import summarise

    plm, _ = common.load_model(args.model)
    source, info = source_prompt(args, data, work, plm)
    prompt, test = PROMPTS[target], data.test(target, args.test_limit)
    options = {"epochs": args.transfer_epochs, "batch_size": 8, "progress": False}
    # Each (seed, init) row is kept in the work folder as it ends, so --resume loses at most one.
    saved = work / f"transfer_{SOURCE}_{target}" / "rows.jsonl"
    made_with = json.dumps({k: getattr(args, k) for k in SETTING_KEYS}, sort_keys=True)
    settings_file = saved.with_name("settings.json")
    if not settings_file.is_file() or settings_file.read_text() != made_with:  # rows of other settings: drop
        saved.unlink(missing_ok=True)
        saved.parent.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(made_with)
    done = {(r["seed"], r["init"]): r for r in map(json.loads, saved.read_text().splitlines())} if saved.is_file() else {}
    rows = []
    for seed in args.seeds:
        train, dev = data.few_shot(target, args.k, seed, dev=args.k)
        for init in INITS:
            if (seed, init) not in done:
                (row,) = compare_initialisations(plm, train, dev, test, prompt.template, prompt.label_words, source,
                                                 num_tokens=args.num_tokens, inits=[init], seeds=[seed],
                                                 train_options=options, batch_size=args.batch_size)
                done[seed, init] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                with saved.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(done[seed, init]) + "\n")
                common.log(f"  {target} seed {seed} {init}: accuracy {row['accuracy']:.4f}")
            rows.append(done[seed, init])
    summary = {entry.pop("init"): {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}
               for entry in summarise(rows)}
    return {
        "source": info, "target": target, "template": prompt.template, "k": args.k, "seeds": list(args.seeds),
        "n_test": len(test), "summary": summary,
        "transfer_minus_random": round(summary["transfer"]["accuracy"] - summary["random"]["accuracy"], 4),
        "transfer_minus_text": round(summary["transfer"]["accuracy"] - summary["text"]["accuracy"], 4),
        "runs": rows,
    }


def run_search(args: argparse.Namespace, data: Data, work: Path) -> dict[str, Any]:
    """The structure search on SST-2; the best structure and the best baseline on the test sample."""
    from deltaprompt import load
    from deltaprompt.ab import mcnemar
    from deltaprompt.config import build_config
    from deltaprompt.search.delta_structure import SearchSection, copy_plm, search_delta_structures

    prompt = PROMPTS[SOURCE]
    data.task(SOURCE)  # checks the folder and its labels
    config = build_config({
        "model": {"name": args.model},
        "data": {"task": SOURCE, "data_dir": str(data.data_dir), "shots": args.k, "dev_per_class": args.k,
                 "seed": args.seed},
        "classifier": {"kind": "prompt", "template": prompt.template, "label_words": prompt.label_words,
                       "batch_size": args.batch_size},
        "training": {"epochs": args.search_epochs, "batch_size": 8, "eval_batch_size": args.batch_size,
                     "seed": args.seed, "tensorboard": False, "progress": False},
    })
    section = SearchSection(methods=list(args.search_methods), max_methods=args.max_methods,
                            budget_params=args.budget, trials=args.search_trials, save_models=True)
    plm, _ = common.load_model(args.model)
    folder = work / f"search_{SOURCE}"

    def show(trial: Any) -> None:
        dev = "-" if trial.score is None else f"{trial.score:.4f}"
        common.log(f"  trial {trial.number}: {trial.state}, dev {dev}, {trial.trainable} trainable, {trial.label}"
                   + (f" [baseline {trial.baseline}]" if trial.baseline else "")
                   + (f" ({trial.reason})" if trial.reason and trial.state != "complete" else ""))

    result = search_delta_structures(config, section, folder, plm=plm, on_trial=show)
    test = data.test(SOURCE, args.test_limit)

    right: dict[int, list[bool]] = {}  # per scored trial, test example right or wrong

    def entry(trial: Any) -> dict[str, Any] | None:
        if trial is None:
            return None
        out = {"trial": trial.number, "structure": trial.label, "trainable": trial.trainable,
               "percent": trial.percent, "dev": round(trial.score, 4), "seconds": trial.seconds}
        model = folder / "trials" / f"{trial.number:04d}" / "model"
        if model.is_dir():
            evaluation = load(model, plm=copy_plm(plm)).evaluate(test)
            out["test"] = score(evaluation)
            right[trial.number] = [g == p for g, p in zip(evaluation.gold, evaluation.predictions, strict=True)]
        return out

    baselines = [{"method": t.baseline, "state": t.state, "trainable": t.trainable,
                  "dev": None if t.score is None else round(t.score, 4), "reason": t.reason}
                 for t in result.trials if t.baseline]
    over = sum(t.over_budget for t in result.trials)
    best, best_baseline = entry(result.best), entry(result.best_baseline)
    paired = None  # is the test difference between the two real?
    if best and best_baseline and best["trial"] != best_baseline["trial"] and len(right) == 2:
        paired = mcnemar(right[best_baseline["trial"]], right[best["trial"]]).to_dict()
    return {
        "budget": result.budget, "cap": result.cap, "total_parameters": result.total_parameters,
        "train": result.train_size, "dev": result.dev_size, "n_test": len(test), "trials": len(result.trials),
        "complete": sum(t.state == "complete" for t in result.trials), "over_budget": over,
        "stopped_early": sum(t.state == "pruned" for t in result.trials) - over,
        "failed": sum(t.state == "fail" for t in result.trials),
        "trained": sum(t.trained for t in result.trials),
        "best": best, "best_baseline": best_baseline, "test_mcnemar": paired, "baselines": baselines,
        "verdict": result.verdict(), "report": str(folder / "search.md"),
    }


# ----------------------------------------------------------------------------- report

def load_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def cell(scores: dict[str, float] | None, key: str = "accuracy") -> str:
    return "-" if not scores else f"{scores[key]:.3f}"


def markdown(payload: dict[str, Any]) -> str:
    runs, settings = payload["runs"], payload["settings"]
    lines = ["# Multi-task prompting, prompt transfer and delta-structure search\n"]
    loo = {k: r for k, r in runs.items() if k.startswith("loo_")}
    if loo:
        lines.append(f"## Leave one task out: zero-shot after prompted multi-task LoRA vs plain zero-shot\n\n"
                     f"LoRA r {settings['lora_r']}, {settings['mix_steps']} batches of 8 from a temperature mixture "
                     f"(T = {settings['temperature']}) of the other tasks, {settings['mix_shots']} examples per class "
                     "each. Accuracy (macro-F1) on the held-out task's test sample.\n")
        rows = [[r["held_out"], ", ".join(f"{n} {p:.2f}" for n, p in r["mixture"].items()), r["n_test"],
                 f"{cell(r['zero_shot'])} ({cell(r['zero_shot'], 'macro_f1')})",
                 f"{cell(r['multitask'])} ({cell(r['multitask'], 'macro_f1')})", f"{r['gain_accuracy']:+.3f}",
                 f"{r['trainable']:,}", r["seconds"]] for r in loo.values()]
        lines.append(common.markdown_table(["held out", "mixture (probability)", "test", "plain zero-shot",
                                            "after multi-task", "change", "trainable", "seconds"], rows))
    transfer = {k: r for k, r in runs.items() if k.startswith("transfer_")}
    if transfer:
        first = next(iter(transfer.values()))
        source = first["source"]
        lines.append(f"## Soft-prompt transfer from {source['task']} at K = {settings['k']}\n\n"
                     f"Prompt tuning ({settings['num_tokens']} tokens, epochs {settings['transfer_epochs']}, K more per "
                     f"class as dev) from each initialisation; mean ± std accuracy over seeds {settings['seeds']}. "
                     f"The source prompt: {source['train']} {source['task']} examples, epochs {source['epochs']}, "
                     f"test accuracy {source['test']['accuracy']:.3f}.\n")
        rows = []
        for r in transfer.values():
            s = r["summary"]
            rows.append([f"{r['source']['task']} → {r['target']}", r["n_test"],
                         *[f"{s[i]['accuracy']:.3f} ± {s[i]['accuracy_std']:.3f}" if i in s else "-" for i in INITS],
                         f"{r['transfer_minus_random']:+.3f}", f"{r['transfer_minus_text']:+.3f}", r["seconds"]])
        lines.append(common.markdown_table(["transfer", "test", *INITS, "transfer − random", "transfer − text",
                                            "seconds"], rows))
        # Three seeds make a mean ± std; the seed-by-seed rows show whether a gain is consistent.
        seed_rows = []
        for r in transfer.values():
            by_seed: dict[int, dict[str, float]] = {}
            for row in r["runs"]:
                by_seed.setdefault(row["seed"], {})[row["init"]] = row["accuracy"]
            for seed, scores in sorted(by_seed.items()):
                seed_rows.append([f"{r['source']['task']} → {r['target']}", seed,
                                  *[f"{scores[i]:.3f}" if i in scores else "-" for i in INITS]])
        lines.append("Accuracy per seed:\n\n" + common.markdown_table(["transfer", "seed", *INITS], seed_rows))
    search = {k: r for k, r in runs.items() if k.startswith("search_")}
    for key, r in search.items():
        lines.append(f"## Delta-structure search ({key.removeprefix('search_')}, K = {settings['k']}, budget "
                     f"{r['budget']} = {r['cap']:,} parameters)\n\n"
                     f"{r['trials']} proposals: {r['trained']} structures trained, {r['over_budget']} over the budget "
                     f"(not trained), {r['trials'] - r['trained'] - r['over_budget']} repeats of a trained structure "
                     "(its outcome reused). Dev accuracy on "
                     f"{r['dev']} examples; test on {r['n_test']}.\n")
        rows = [[name, f"`{e['structure']}`", f"{e['trainable']:,}", f"{e['percent']:.3f}", f"{e['dev']:.3f}",
                 cell(e.get("test")), cell(e.get("test"), "macro_f1")]
                for name, e in (("best structure", r["best"]), ("best baseline", r["best_baseline"])) if e]
        lines.append(common.markdown_table(["", "structure", "trainable", "% of model", "dev", "test accuracy",
                                            "test macro-F1"], rows))
        lines.append(f"Verdict (dev): {r['verdict']}.\n")
        test = r.get("test_mcnemar")
        if test:
            lines.append(f"On the test sample, best structure minus best baseline: {test['difference']:+.3f} accuracy "
                         f"({test['name']}, p = {test['p_value']:.3g}; {test['c']} examples only the structure got "
                         f"right, {test['b']} only the baseline).\n")
    lines.append(f"- Settings: {settings}.")
    lines.append(f"- Machine: {common.machine_line(payload['machine'])}.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    from deltaprompt.search.delta_structure import DEFAULT_METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", help="run keys (default: every run the options below name)")
    parser.add_argument("--model", default="smollm2-135m", help="alias, hub id or model folder (default smollm2-135m)")
    parser.add_argument("--seed", type=int, default=13, help="draws the training examples and the mixture (13)")
    parser.add_argument("--test-limit", type=int, default=200, help="test examples per task (200)")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (32)")
    parser.add_argument("--mixture", nargs="+", choices=TASKS, default=list(TASKS),
                        help="the multi-task tasks; each held-out task is taken out of it (all six)")
    parser.add_argument("--held-out", nargs="+", choices=TASKS, default=["mr", "sst5"], help="(mr sst5)")
    parser.add_argument("--mix-shots", type=int, default=32, help="training examples per class per task (32)")
    parser.add_argument("--mix-steps", type=int, default=200, help="multi-task batches of 8 (200)")
    parser.add_argument("--temperature", type=float, default=2.0, help="mixing temperature T: rates size^(1/T) (2)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank of the multi-task runs (8; alpha 2r)")
    parser.add_argument("--targets", nargs="+", choices=[t for t in TASKS if t != SOURCE], default=["mr", "sst5"],
                        help="transfer targets of the SST-2 prompt (mr sst5)")
    parser.add_argument("--k", type=int, default=16, help="examples per class of a few-shot target (16)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 21, 42], help="transfer seeds (13 21 42)")
    parser.add_argument("--num-tokens", type=int, default=20, help="soft tokens of the transferred prompt (20)")
    parser.add_argument("--source-shots", type=int, default=64, help="SST-2 examples per class for the source (64)")
    parser.add_argument("--source-epochs", type=int, default=5, help="epochs of the source prompt (5)")
    parser.add_argument("--transfer-epochs", type=int, default=10, help="epochs of each target run (10)")
    parser.add_argument("--budget", default="0.5%", help="the search's trainable-parameter cap (0.5%%)")
    parser.add_argument("--search-trials", type=int, default=12, help="structures the search trains (12)")
    parser.add_argument("--search-epochs", type=int, default=5, help="epochs of each search trial (5)")
    parser.add_argument("--search-methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"candidate methods ({' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--max-methods", type=int, default=2, help="largest combination searched (2)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--work-dir", type=Path, default=None, help="training state (default runs/<name>)")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--resume", action="store_true", help="skip recorded runs; continue an interrupted one")
    args = parser.parse_args(argv)
    for flag in ("test_limit", "batch_size", "mix_shots", "mix_steps", "lora_r", "k", "num_tokens", "source_shots",
                 "source_epochs", "transfer_epochs", "search_trials", "search_epochs", "max_methods"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    if args.temperature <= 0:
        parser.error("--temperature must be positive")
    keys = run_keys(args)
    runs = args.runs or keys
    unknown = [r for r in runs if r not in keys]
    if unknown:
        parser.error(f"unknown runs {unknown}; with these options the runs are {', '.join(keys)}")
    for held in args.held_out:
        if not [t for t in args.mixture if t != held]:
            parser.error(f"--mixture has no task left once {held} is held out")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Data(args.data_dir or common.default_data_dir())
    work = args.work_dir or common.REPO_ROOT / "runs" / args.name
    if not args.resume and work.exists():
        shutil.rmtree(work)  # this script's own training state: start over
    path = args.out_dir / f"{args.name}.json"
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    payload = load_results(path) if args.resume else {}
    if payload.get("runs") and payload.get("settings") != json.loads(json.dumps(settings)):
        raise SystemExit(f"{path} holds runs made with other settings ({payload.get('settings')}); "
                         "drop --resume or pass --name for a new results file")
    payload.setdefault("runs", {})
    payload.update(name=args.name, machine=common.machine_info(), settings=settings,
                   prompts={t: {"template": PROMPTS[t].template, "label_words": PROMPTS[t].label_words} for t in TASKS})

    def run(key: str) -> dict[str, Any]:
        if key.startswith("loo_"):
            return run_loo(key.removeprefix("loo_"), args, data, work)
        if key.startswith("transfer_"):
            return run_transfer(key.removeprefix(f"transfer_{SOURCE}_"), args, data, work)
        return run_search(args, data, work)

    common.run_pending(runs, payload, run, args.out_dir, args.name, markdown,
                       merge_file=True)  # two processes may fill one results file
    return common.publish(args.out_dir, args.name, payload, markdown(payload)) if payload["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
