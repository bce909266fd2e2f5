"""16-shot SST-2 per delta method on SmolLM2-135M (CPU): accuracy, macro-F1, cost.

LM-BFF's protocol (Gao et al. 2021): for each seed, 16 training sentences per class drawn
from SST-2 train with ``few_shot_split`` and, disjoint from them, 16 per class as the dev set
(early stopping and the best checkpoint); evaluation on the whole SST-2 test split (1,821).
Every method trains through ``PromptClassifier(plm, "Review: {text}\\nSentiment: {mask}",
{"negative": "negative", "positive": "positive"}, methods=[...]).fit(train, dev, ...)`` with
the same schedule; zero-shot (the same prompt, untrained) is the reference row and
``HeadClassifier`` fine-tuning (every weight + a linear head on the last token, no prompt)
the classic baseline.

Hyper-parameters are fixed once, before looking at any test score: each method's learning
rate is its config's default (the papers' rates; full fine-tuning at LM-BFF's 1e-5), the
schedule is shared (batch 8, ``--epochs`` epochs, linear decay after 10% warm-up, dev
accuracy each epoch, stop after ``--patience`` evaluations without improvement, keep the best
dev checkpoint). ``--lr-grid`` optionally picks each method's rate among multiples of its
default by dev accuracy (then dev loss), never by test accuracy. All of it is written into
the results.

    .venv/bin/python benchmarks/few_shot.py                     # 1 seed (13), all methods
    .venv/bin/python benchmarks/few_shot.py --seeds 3           # seeds 13, 21, 42
    .venv/bin/python benchmarks/few_shot.py --methods lora bitfit --test-limit 200   # quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _common as common

MODEL = common.SST2_MODEL
TEMPLATE = common.SST2_TEMPLATE
LABEL_WORDS = common.SST2_LABEL_WORDS
CLASSES = common.SST2_CLASSES
SEEDS = (13, 21, 42, 87, 100)  # LM-BFF's
FINETUNE_LR = 1e-5  # LM-BFF's full fine-tuning rate (TrainConfig's default ``lr``)

# (row key, kind, method spec or None for zero-shot): zero-shot first, then every method.
RUNS: list[tuple[str, str, dict[str, Any] | None]] = [("zero_shot", "prompt", None), *common.METHOD_RUNS]
ROW_NAMES = {"zero_shot": "zero-shot (same prompt, no training)", **common.METHOD_ROW_NAMES}


def default_lr(spec: dict[str, Any]) -> float:
    """The rate a method's own parameters train at: its config's ``lr``, or for full
    fine-tuning (whose config leaves it to the trainer) the trainer's PLM rate."""
    from deltaprompt.delta import make_method

    lr = make_method(dict(spec)).config.lr
    return FINETUNE_LR if lr is None else lr


def with_lr(kind: str, spec: dict[str, Any], lr: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method spec, TrainConfig overrides) training the method's parameters at ``lr``."""
    if spec["method"] == "finetune":
        return dict(spec), {"lr": lr}
    return {**spec, "lr": lr}, {}


def train_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The schedule every method shares (TrainConfig fields)."""
    return {
        "epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
        "patience": args.patience, "eval_every": args.eval_every, "warmup_ratio": 0.1, "schedule": "linear",
        "weight_decay": 0.01, "max_grad_norm": 1.0, "metric": "accuracy", "load_best": True,
        "seed": seed, "progress": False,
    }


def build(plm: Any, kind: str, spec: dict[str, Any] | None, seed: int, eval_batch_size: int) -> Any:
    from deltaprompt.classifier import HeadClassifier, PromptClassifier

    methods = None if spec is None else [spec]
    if kind == "head":
        return HeadClassifier(plm, list(CLASSES), methods=methods, batch_size=eval_batch_size, progress=False,
                              seed=seed)
    return PromptClassifier(plm, TEMPLATE, LABEL_WORDS, classes=CLASSES, methods=methods,
                            batch_size=eval_batch_size, progress=False, seed=seed)


def run_one(args: argparse.Namespace, key: str, kind: str, spec: dict[str, Any] | None, seed: int,
            train: list[Any], dev: list[Any], test: list[Any]) -> dict[str, Any]:
    from deltaprompt import load_plm
    from deltaprompt.structure import count_parameters

    out: dict[str, Any] = {"key": key, "seed": seed}
    config = train_config(args, seed)
    if spec is not None:
        base = default_lr(spec)
        candidates = []
        for factor in args.lr_grid:
            lr = base * factor
            plm = load_plm(MODEL)
            method_spec, overrides = with_lr(kind, spec, lr)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = build(plm, kind, method_spec, seed, args.eval_batch_size)
            counts = count_parameters(clf.model)
            common.log(f"  [{key}, seed {seed}] lr {lr:g}: {counts}")
            start = time.perf_counter()
            clf.fit(train, dev, **config, **overrides)
            train_s = time.perf_counter() - start
            r = clf.result
            assert r is not None
            dev_loss = min((h["dev_loss"] for h in r.history if h["step"] == r.best_step), default=float("nan"))
            common.log(f"    {r.steps} steps ({r.epochs} epochs{', stopped early' if r.stopped_early else ''}) in "
                       f"{train_s:.0f} s; best dev accuracy {r.best_metric:.4f} at step {r.best_step} "
                       f"(dev loss {dev_loss:.4f}); last train loss {r.train_loss:.4f}")
            candidates.append({
                "lr": lr, "lr_factor": factor, "method_spec": method_spec, "trainer_overrides": overrides,
                "steps": r.steps, "epochs": r.epochs, "stopped_early": r.stopped_early, "best_step": r.best_step,
                "dev_accuracy": r.best_metric, "dev_loss": dev_loss, "train_loss_last": r.train_loss,
                "train_s": round(train_s, 2), "history": r.history, "parameters": counts.to_dict(),
            })
            if len(args.lr_grid) > 1 and factor != args.lr_grid[-1]:
                del clf, plm
                gc.collect()
        # Chosen on dev only: the best dev accuracy, then the lower dev loss.
        best = max(range(len(candidates)), key=lambda i: (candidates[i]["dev_accuracy"], -candidates[i]["dev_loss"]))
        if best != len(candidates) - 1:  # retrain the chosen one (same seed: the same run)
            chosen = candidates[best]
            plm = load_plm(MODEL)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = build(plm, kind, chosen["method_spec"], seed, args.eval_batch_size)
            clf.fit(train, dev, **config, **chosen["trainer_overrides"])
        out["candidates"] = candidates
        out.update({k: candidates[best][k] for k in ("lr", "method_spec", "trainer_overrides", "steps", "epochs",
                                                      "stopped_early", "best_step", "dev_accuracy", "train_s",
                                                      "parameters")})
    else:
        plm = load_plm(MODEL)
        clf = build(plm, kind, None, seed, args.eval_batch_size)
        counts = count_parameters(clf.model)
        out.update(parameters={"trainable": 0, "total": counts.total, "percent": 0.0}, steps=0, train_s=0.0)
        dev_eval = clf.evaluate(dev)
        out["dev_accuracy"] = dev_eval.accuracy
    start = time.perf_counter()
    evaluation = clf.evaluate(test)
    out["test_eval_s"] = round(time.perf_counter() - start, 2)
    out["accuracy"] = evaluation.accuracy
    out["macro_f1"] = evaluation.macro_f1
    out["confusion"] = evaluation.confusion.tolist()
    common.log(f"  [{key}, seed {seed}] test accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f} "
               f"({len(test):,} examples, {out['test_eval_s']:.0f} s)")
    del clf, plm
    gc.collect()
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(key: str, kind: str, spec: dict[str, Any] | None, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    row: dict[str, Any] = {"key": key, "name": ROW_NAMES.get(key, key), "kind": kind, "spec": spec, "runs": runs,
                           "errors": [r["error"] for r in runs if "error" in r]}
    if not good:
        return row
    for metric in ("accuracy", "macro_f1", "dev_accuracy"):
        mean, std = mean_std([r[metric] for r in good])
        row[f"{metric}_mean"], row[f"{metric}_std"] = round(mean, 4), None if std is None else round(std, 4)
    row["train_s_mean"] = round(statistics.fmean(r["train_s"] for r in good), 1)
    row["steps_mean"] = round(statistics.fmean(r["steps"] for r in good), 1)
    row["steps"] = [r["steps"] for r in good]
    row["parameters"] = good[0]["parameters"]
    row["lrs"] = [r.get("lr") for r in good]
    return row


# Settings a resumed run must share with the saved one (its runs are reused as they are).
SAME_FOR_RESUME = ("shots", "epochs", "patience", "eval_every", "batch_size", "eval_batch_size", "lr_grid",
                   "test_limit")


def previous_runs(args: argparse.Namespace) -> tuple[dict[tuple[str, int], dict[str, Any]], float]:
    """Finished runs of an earlier (interrupted) invocation with the same settings, by
    (method, seed), and its wall time; nothing unless ``--resume``."""
    path = args.output_dir / f"{args.name}.json"
    if not args.resume or not path.is_file():
        return {}, 0.0
    saved = json.loads(path.read_text())
    changed = [k for k in SAME_FOR_RESUME if saved.get("settings", {}).get(k) != getattr(args, k)]
    if changed:
        raise SystemExit(f"--resume: {path} was run with different {', '.join(changed)}; not mixing them")
    runs = {(r["key"], r["seed"]): r for row in saved["methods"] for r in row["runs"] if "error" not in r}
    common.log(f"resuming: {len(runs)} finished run(s) from {path}")
    return runs, float(saved.get("wall_s", 0.0))


def run(args: argparse.Namespace, checkpoint: Any = None) -> dict[str, Any]:
    """Every (seed, method); after each one, ``checkpoint(payload)`` gets the results so far."""
    import torch

    from deltaprompt import few_shot_split

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    task = common.sst2_task(data_dir, CLASSES)
    pool = task.load("train")
    test_all = task.load("test")
    test = test_all[: args.test_limit] if args.test_limit else test_all
    seeds = list(SEEDS[: args.seeds]) if args.seed_list is None else args.seed_list
    machine = common.machine_info()
    common.log(f"SST-2: {len(pool):,} train sentences to sample from, test {len(test):,} of {len(test_all):,}; "
               f"seeds {seeds}; {args.shots} per class for training and {args.shots} per class as dev")
    common.log(f"machine: {common.machine_line(machine)}")
    selected = [r for r in RUNS if r[0] in args.methods]
    done, earlier_wall_s = previous_runs(args)
    results: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in selected}
    splits = {}
    started = time.perf_counter()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(data_dir=str(data_dir), seeds_used=seeds, test_examples=len(test))
    hyper = {key: ({"lr_default": default_lr(spec), "method": spec} if spec else None) for key, _, spec in selected}
    total = len(seeds) * len(selected)

    def payload() -> dict[str, Any]:
        finished = sum(len(v) for v in results.values())
        machine["loadavg_at_end"] = common.load_average()
        return {
            "benchmark": "few_shot",
            "complete": finished == total,
            "runs_finished": f"{finished} of {total}",
            "model": MODEL,
            "template": TEMPLATE,
            "label_words": LABEL_WORDS,
            "settings": settings,
            "train_config": train_config(args, seeds[0]) | {"seed": "the split seed"},
            "hyper_parameters": hyper,
            "machine": machine,
            "wall_s": round(earlier_wall_s + time.perf_counter() - started, 1),
            "resumed_runs": len([1 for key, _, _ in selected for seed in seeds if (key, seed) in done]),
            "methods": [aggregate(key, kind, spec, results[key]) for key, kind, spec in selected],
            "splits": splits,
        }

    for seed in seeds:
        train, dev = few_shot_split(pool, args.shots, seed, CLASSES, dev_per_class=args.shots)
        splits[seed] = {"train": [e.text for e in train], "dev": [e.text for e in dev]}
        for key, kind, spec in selected:
            if (key, seed) in done:
                common.log(f"\n== seed {seed}: {key}: done in the earlier run, reused")
                results[key].append(done[key, seed])
                continue
            common.log(f"\n== seed {seed}: {key}")
            try:
                results[key].append(run_one(args, key, kind, spec, seed, train, dev, test))
            except Exception as exc:  # one method failing must not lose the others
                common.log(f"  FAILED: {type(exc).__name__}: {exc}")
                results[key].append({"key": key, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                gc.collect()
            if checkpoint is not None:
                checkpoint(payload())
    return payload()


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def render_markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    seeds = s["seeds_used"]
    rows = []
    for row in payload["methods"]:
        if "accuracy_mean" not in row:
            rows.append([row["name"], "-", "-", "-", "-", "-", "-", "-",
                         f"failed: {row['errors'][0] if row['errors'] else '?'}"])
            continue
        p = row["parameters"]
        trained = row["key"] != "zero_shot"
        lrs = sorted({lr for lr in row["lrs"] if lr is not None})
        rows.append([
            row["name"],
            _pm(row["accuracy_mean"], row["accuracy_std"]),
            _pm(row["macro_f1_mean"], row["macro_f1_std"]),
            _pm(row["dev_accuracy_mean"], row["dev_accuracy_std"]),
            f"{p['trainable']:,} ({p['percent']:.3g}%)" if trained else "0",
            f"{row['train_s_mean']:.0f}" if trained else "-",
            "/".join(str(n) for n in row["steps"]) if trained else "-",
            ", ".join(f"{lr:g}" for lr in lrs) if trained else "-",
            ("; ".join(row["errors"]) if row["errors"] else ""),
        ])
    table = common.markdown_table(
        ["Method", "Test accuracy", "Test macro-F1", "Best dev accuracy", "Trainable params", "Train time (s)",
         "Steps", "LR", "Notes"],
        rows,
    )
    tc = payload["train_config"]
    notes = [
        f"SmolLM2-135M ({payload['model']}), template `{payload['template']!r}`, label words "
        f"{payload['label_words']}; {s['shots']} training and {s['shots']} dev sentences per class from SST-2 train "
        f"(`few_shot_split`, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}), test on "
        f"{s['test_examples']:,} SST-2 test sentences. **{len(seeds)} seed{'s' if len(seeds) > 1 else ''}**"
        + ("; mean ± standard deviation over seeds." if len(seeds) > 1 else "; no spread can be given."),
        f"Shared schedule: batch {tc['batch_size']}, up to {tc['epochs']} epochs, AdamW (weight decay "
        f"{tc['weight_decay']}), linear decay after {tc['warmup_ratio']:.0%} warm-up, gradient norm clipped at "
        f"{tc['max_grad_norm']}, dev accuracy "
        + ("each epoch" if tc["eval_every"] is None else f"every {tc['eval_every']} steps")
        + f", early stop after {tc['patience']} evaluations without improvement, best dev checkpoint kept (ties: "
        "lower dev loss). Train time includes the dev evaluations; steps per seed.",
        "Learning rates (fixed before any test score): each method's config default, i.e. the papers' rates "
        "(prompt tuning 3e-2, P-Tuning 1e-4, prefix 1e-2, LoRA 5e-4, adapters 1e-4, BitFit 1e-3, intrinsic "
        "(SAID) 3e-2, full fine-tuning 1e-5 as LM-BFF; the head baseline's new linear head trains at the "
        "trainer's head rate 1e-3)"
        + (f"; chosen per method and seed from multiples {s['lr_grid']} of that default by dev accuracy"
           if len(s["lr_grid"]) > 1 else "") + ".",
        "Methods at their configs' defaults otherwise (P-Tuning: LSTM encoder over 20 prepended tokens); "
        "the head baseline reads the sentence alone (no prompt) and classifies the last token's hidden state.",
        f"Machine: {common.machine_line(payload['machine'])}; the machine was shared with other jobs, so "
        f"times are indicative; total wall time {payload['wall_s']:.0f} s.",
    ]
    if not payload.get("complete", True):
        notes.insert(0, f"**Partial results**: {payload['runs_finished']} runs finished so far.")
    if payload.get("resumed_runs"):
        notes.append(f"{payload['resumed_runs']} run(s) were taken over from an earlier, interrupted invocation "
                     "with the same settings (`--resume`); the wall time adds up both.")
    return (f"### Few-shot SST-2 ({s['shots']}-shot, {payload['model']}, CPU)\n\n{table}\n"
            + "\n".join(f"- {n}" for n in notes) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding sst2/ (default: $DELTAPROMPT_DATA or ../shared/data)")
    parser.add_argument("--methods", nargs="+", default=[key for key, _, _ in RUNS],
                        choices=[key for key, _, _ in RUNS], help="rows to run (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help=f"how many of the seeds {SEEDS} (default 1)")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds instead")
    parser.add_argument("--shots", type=int, default=16, help="training (and dev) examples per class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5, help="dev evaluations without improvement")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between dev evaluations (default: epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1.0],
                        help="multiples of each method's default rate to choose from on dev (default: 1)")
    parser.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test sentences (0: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--output-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default="few_shot", help="results file stem")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the finished runs in an interrupted run's results (same settings)")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= len(SEEDS):
        parser.error(f"--seeds must be between 1 and {len(SEEDS)}")
    for name in ("shots", "epochs", "batch_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.patience is not None and args.patience < 1:
        parser.error("--patience must be positive")
    if any(f <= 0 for f in args.lr_grid):
        parser.error("--lr-grid factors must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.require_task(args.data_dir or common.default_data_dir(), "sst2")
    from deltaprompt.plm import resolve

    try:
        resolve(MODEL)
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        print(f"model not available: {exc}\nNothing was measured and no results were written.")
        return 0

    def write(payload: dict[str, Any]) -> tuple[Path, Path]:
        return common.write_results(args.output_dir, args.name, payload, render_markdown(payload))

    payload = run(args, checkpoint=write)
    json_path, md_path = write(payload)
    common.log("\n" + render_markdown(payload))
    common.log(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
