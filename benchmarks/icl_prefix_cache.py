"""In-context learning on CPU: shared demonstrations cached once vs recomputed for every query.

SmolLM2-135M classifies SST-2 test sentences with 16 demonstrations in the prompt, the same 16
for every query (balanced selection from 16 training sentences per class, one draw per seed),
two ways, on the same examples and the same loaded model:

- cached: ``ICLClassifier(..., share_prefix=True)``: the demonstrations are encoded once into a
  key/value cache; every batch continues from a copy of it and runs only its queries' tokens;
- full: ``ICLClassifier(..., share_prefix=False)``: every prompt, demonstrations included, goes
  through the model.

Both must give the same predictions (the script stops otherwise); it reports examples/s, the
speed-up of the cache, accuracy, and the largest difference in class log-probabilities.

    .venv/bin/python benchmarks/icl_prefix_cache.py --threads 1   # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import _common as common

MODEL = common.SST2_MODEL
TEMPLATE = common.SST2_TEMPLATE
LABEL_WORDS = common.SST2_LABEL_WORDS
CLASSES = common.SST2_CLASSES


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from deltaprompt import ICLClassifier, sample_per_class

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    task = common.sst2_task(data_dir, CLASSES)
    examples = task.load(args.split, limit=args.limit)
    pool = sample_per_class(task.load("train"), args.k, args.seed, labels=CLASSES)
    common.log(f"SST-2 {args.split}: {len(examples)} queries; pool of {len(pool)} training sentences "
               f"({args.k} per class, seed {args.seed}); {args.shots} shared demonstrations")
    machine = common.machine_info()
    common.log(f"machine: {common.machine_line(machine)}")

    plm, load_s = common.load_model(MODEL)

    def classifier(share_prefix: bool) -> ICLClassifier:
        return ICLClassifier(plm, TEMPLATE, LABEL_WORDS, classes=CLASSES, demonstrations=pool, shots=args.shots,
                             selection="balanced", seed=args.seed, batch_size=args.batch_size,
                             share_prefix=share_prefix, progress=False)

    cached, full = classifier(True), classifier(False)
    if not cached.model.caches_prefix or full.model.caches_prefix:
        raise SystemExit("expected the first classifier to cache the shared prefix and the second not to")
    demonstrations = cached.shared_demonstrations
    assert demonstrations is not None and demonstrations == full.shared_demonstrations
    prefix_tokens = len(cached.model.demonstration_ids(cached.model.shared_plan))
    query_tokens = [len(e.input_ids) for e in cached.model.query_tokenizer.encode(examples)]
    shared_rows = sum(f.shared for f in cached.model.encode(examples))
    common.log(f"  loaded in {load_s:.1f} s; shared prefix {prefix_tokens} tokens, queries "
               f"{statistics.mean(query_tokens):.1f} tokens on average; {shared_rows}/{len(examples)} "
               f"queries continue from the cache")

    warm = examples[: args.warmup]
    common.log(f"\n== warm-up ({len(warm)} queries each), then {args.repeats} interleaved run(s)")
    for clf in (cached, full):
        clf.predict_log_proba(warm)
    times, results = common.time_interleaved(
        {"cached": lambda: cached.predict_log_proba(examples), "full": lambda: full.predict_log_proba(examples)},
        args.repeats,
    )
    labels = np.array([CLASSES.index(e.label) for e in examples])
    predictions = {name: result.argmax(1) for name, result in results.items()}
    same = int((predictions["cached"] == predictions["full"]).sum())
    difference = float(np.abs(results["cached"] - results["full"]).max())
    if same != len(examples):
        raise SystemExit(f"cached and full prompts disagree on {len(examples) - same} queries "
                         f"(largest log-probability difference {difference:.2g}); nothing written")
    summary = {name: {**common.summarise(times[name], len(examples)),
                      "accuracy": round(float((predictions[name] == labels).mean()), 4)} for name in times}
    speedup = summary["full"]["best_s"] / summary["cached"]["best_s"]
    speedup_median = summary["full"]["median_s"] / summary["cached"]["median_s"]
    common.log(f"  cached {summary['cached']['examples_per_s_best']:.2f} ex/s, full "
               f"{summary['full']['examples_per_s_best']:.2f} ex/s: {speedup:.2f}x")
    machine["loadavg_at_end"] = common.load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["data_dir"] = str(data_dir)
    return {
        "benchmark": "icl_prefix_cache",
        "model": MODEL,
        "template": TEMPLATE,
        "label_words": LABEL_WORDS,
        "settings": settings,
        "machine": machine,
        "model_load_s": round(load_s, 3),
        "demonstrations": [{"text": e.text, "label": e.label} for e in demonstrations],
        "prefix_tokens": prefix_tokens,
        "query_tokens_mean": round(statistics.mean(query_tokens), 2),
        "shared_rows": shared_rows,
        "results": summary,
        "same_predictions": same,
        "max_abs_log_prob_difference": difference,
        "speedup_best": round(speedup, 2),
        "speedup_median": round(speedup_median, 2),
    }


def render_markdown(payload: dict[str, Any]) -> str:
    s, r = payload["settings"], payload["results"]
    rows = [
        ["shared prefix cached (`share_prefix=True`)", r["cached"]["examples"], f"{r['cached']['examples_per_s_best']:.2f}",
         f"{r['cached']['examples_per_s_median']:.2f}", f"{r['cached']['accuracy']:.4f}",
         f"**{payload['speedup_best']:.2f}x**"],
        ["full prompt recomputed (`share_prefix=False`)", r["full"]["examples"], f"{r['full']['examples_per_s_best']:.2f}",
         f"{r['full']['examples_per_s_median']:.2f}", f"{r['full']['accuracy']:.4f}", "1.00x"],
    ]
    table = common.markdown_table(
        ["Method", "Queries", "Examples/s (best)", "Examples/s (median)", "Accuracy", "Speed-up"], rows)
    notes = [
        f"{payload['model']}, template `{payload['template']!r}`, label words {payload['label_words']}; "
        f"{s['shots']} demonstrations shared by every query (balanced selection from {s['k']} SST-2 training "
        f"sentences per class, seed {s['seed']}), the first {r['cached']['examples']} sentences of SST-2 {s['split']}, "
        f"batch size {s['batch_size']}, CPU.",
        f"Shared prefix {payload['prefix_tokens']} tokens; queries {payload['query_tokens_mean']:.1f} tokens on "
        f"average; {payload['shared_rows']}/{r['cached']['examples']} queries continued from the cache.",
        f"Same predictions for {payload['same_predictions']}/{r['cached']['examples']} queries; largest "
        f"|class log-probability difference| {payload['max_abs_log_prob_difference']:.2g}.",
        f"Best of {s['repeats']} interleaved run(s) after an untimed warm-up on {s['warmup']} queries; median "
        f"speed-up {payload['speedup_median']:.2f}x. Runs (s): cached {r['cached']['runs_s']}, full {r['full']['runs_s']}.",
        f"Model load: {payload['model_load_s']:.1f} s (not included). Machine: {common.machine_line(payload['machine'])}.",
    ]
    return (f"### In-context learning, shared prefix cached vs recomputed ({payload['model']}, SST-2, CPU)\n\n"
            f"{table}\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding sst2/ (default: $DELTAPROMPT_DATA or ../shared/data)")
    parser.add_argument("--split", default="test", help="SST-2 split the queries come from (default: test)")
    parser.add_argument("--limit", type=int, default=64, help="queries: the first N sentences (default 64)")
    parser.add_argument("--shots", type=int, default=16, help="shared demonstrations (default 16)")
    parser.add_argument("--k", type=int, default=16, help="pool: training sentences per class (default 16)")
    parser.add_argument("--seed", type=int, default=13, help="seeds the pool and the demonstrations (default 13)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method (default 1)")
    parser.add_argument("--warmup", type=int, default=4, help="queries in each method's untimed warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--output-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default="icl_prefix_cache", help="results file stem")
    args = parser.parse_args(argv)
    for name in ("limit", "shots", "k", "batch_size", "repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.require_task(args.data_dir or common.default_data_dir(), "sst2")
    payload = run(args)
    return common.publish(args.output_dir, args.name, payload, render_markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
