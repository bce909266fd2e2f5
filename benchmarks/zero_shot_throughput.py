"""Zero-shot inference throughput: PromptClassifier vs plain transformers.

SmolLM2-135M classifies SST-2 test sentences with the prompt "Review: {text}\\nSentiment:"
and the label words " negative" / " positive", three ways, on the same examples, with the
same loaded model and batches of 32:

- ours: ``PromptClassifier(...).predict_proba`` (batched template encoding, length-sorted
  batches padded to their longest row, LM head computed only for the two label words at the
  last position);
- plain transformers, pad to longest: the prompt strings in data order,
  ``tokenizer(batch, padding="longest")`` with left padding, ``model(**enc).logits`` (the
  full vocabulary at every position), last position, argmax over the two label-word ids;
- plain transformers, pad to 512: the same with ``padding="max_length", max_length=512``.

Reports examples/s, accuracy, agreement of the predictions with ours, and the speed-ups of
ours against both baselines (targets: >= 1.2x vs longest, >= 5x vs 512).

    .venv/bin/python benchmarks/zero_shot_throughput.py                  # first 256 test sentences
    .venv/bin/python benchmarks/zero_shot_throughput.py --limit-512 64   # quicker 512 baseline
    .venv/bin/python benchmarks/zero_shot_throughput.py --full-ours      # + ours on all 1,821
    .venv/bin/python benchmarks/zero_shot_throughput.py --device cuda --model-config llama-1b

``--model-config`` builds a model of a known shape with random weights instead (speed only: its
accuracy means nothing, the agreement between the methods still checks them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import _common as common

MODEL = "smollm2-135m"
TEMPLATE = "Review: {text}\nSentiment: {mask}"
PLAIN_PROMPT = "Review: {text}\nSentiment:"  # the same prompt as a plain string
LABEL_WORDS = {"negative": "negative", "positive": "positive"}
CLASSES = ("negative", "positive")


def accuracy(predictions: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


class PlainTransformers:
    """The prompt as a string, tokenised and scored the textbook way (full-vocabulary logits)."""

    def __init__(self, model: Any, tokenizer: Any, word_ids: list[int], batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.word_ids = word_ids
        self.batch_size = batch_size
        self.batch_times: list[float] = []  # seconds per batch of the last call

    def texts(self, examples: list[Any]) -> list[str]:
        return [PLAIN_PROMPT.format(text=e.text) for e in examples]

    def __call__(self, examples: list[Any], padding: str, max_length: int | None = None,
                 progress: bool = False) -> tuple[list[int], list[float]]:
        import torch

        texts = self.texts(examples)
        size = self.batch_size
        total = (len(texts) + size - 1) // size
        predictions: list[int] = []
        positive: list[float] = []
        self.batch_times = []
        start = time.perf_counter()
        for n, i in enumerate(range(0, len(texts), size)):
            batch_start = time.perf_counter()
            options = {"max_length": max_length} if padding == "max_length" else {}
            enc = self.tokenizer(texts[i : i + size], padding=padding, return_tensors="pt", **options)
            enc = enc.to(self.model.device)
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                scores = logits[:, -1, self.word_ids].float()
            del logits
            predictions += scores.argmax(-1).tolist()
            positive += torch.softmax(scores, -1)[:, 1].tolist()
            self.batch_times.append(time.perf_counter() - batch_start)
            if progress:
                elapsed = time.perf_counter() - start
                eta = elapsed / (n + 1) * (total - n - 1)
                common.log(
                    f"    batch {n + 1}/{total} ({enc['input_ids'].shape[1]} tokens wide): "
                    f"{self.batch_times[-1]:.1f} s, elapsed {elapsed:.0f} s, "
                    f"about {eta:.0f} s left"
                )
        return predictions, positive


def method_result(name: str, times: list[float], predictions: list[int], labels: list[int],
                  ours: list[int] | None, **extra: Any) -> dict[str, Any]:
    result = {"method": name, **common.summarise(times, len(predictions))}
    result["accuracy"] = round(accuracy(predictions, labels), 4)
    if ours is not None:
        result["agreement_with_ours"] = round(agreement(predictions, ours[: len(predictions)]), 4)
        result["disagreements"] = sum(a != b for a, b in zip(predictions, ours, strict=False))
    result.update(extra)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from deltaprompt import PromptClassifier

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = args.data_dir or common.default_data_dir()
    task = common.sst2_task(data_dir, CLASSES)
    all_examples = task.load(args.split)
    examples = all_examples[: args.limit] if args.limit else all_examples
    if not examples:
        raise SystemExit(f"SST-2 {args.split} is empty")
    labels = [CLASSES.index(e.label) for e in examples]
    limit_512 = min(args.limit_512 or len(examples), len(examples))
    common.log(f"SST-2 {args.split}: {len(examples):,} examples (of {len(all_examples):,}) from "
               f"{data_dir / 'sst2'}; pad-to-{args.max_length} baseline on {limit_512:,}")
    machine = common.machine_info()
    common.log(f"machine: {common.machine_line(machine)}")

    if args.model_config is None and args.device == "cpu":
        plm, load_s = common.load_model(MODEL)
    else:
        start = time.perf_counter()
        plm = common.build_plm(args.model_config, args.device)
        load_s = time.perf_counter() - start
    model, tokenizer = plm.model, plm.tokenizer
    model.eval()
    common.log(f"  loaded in {load_s:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
               f"parameters, {model.dtype}, {plm.device})")

    clf = PromptClassifier(plm, TEMPLATE, LABEL_WORDS, classes=CLASSES, batch_size=args.batch_size,
                           progress=False)
    if tuple(clf.classes) != CLASSES:
        raise SystemExit(f"unexpected class order {clf.classes}")
    word_ids = []
    for cls in CLASSES:
        ids = tokenizer(" " + LABEL_WORDS[cls], add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SystemExit(f"label word {' ' + LABEL_WORDS[cls]!r} is {len(ids)} tokens; expected 1")
        word_ids.append(ids[0])
    ours_word_ids = [list(ids) for ids in clf.model.label_words.token_ids]
    if ours_word_ids != [[i] for i in word_ids]:
        raise SystemExit(f"label-word ids differ: ours {ours_word_ids}, plain {word_ids}")
    common.log(f"  label words {[' ' + LABEL_WORDS[c] for c in CLASSES]} -> token ids {word_ids}; "
               f"efficient head: {clf.model.efficient_head}")

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # ours pads by itself (collate) and is unaffected
    plain = PlainTransformers(model, tokenizer, word_ids, args.batch_size)

    # Do both methods feed the model the same tokens? (Untimed; explains any disagreement.)
    ours_ids = [e.input_ids for e in clf.model.encode(examples)]
    plain_ids = tokenizer(plain.texts(examples))["input_ids"]
    same_tokens = sum(a == b for a, b in zip(ours_ids, plain_ids, strict=True))
    common.log(f"  identical token ids (ours vs plain string) for {same_tokens}/{len(examples)} examples")

    warm = examples[: args.warmup]
    results: dict[str, Any] = {}

    # -- ours
    common.log(f"\n== ours (PromptClassifier.predict_proba), {args.repeats} runs")
    clf.predict_proba(warm)
    times, proba = common.time_runs(lambda: clf.predict_proba(examples), args.repeats, "ours")
    ours_pred = proba.argmax(1).tolist()
    ours_pos = proba[:, 1].tolist()
    results["ours"] = method_result("ours", times, ours_pred, labels, None)
    common.log(f"  {results['ours']['examples_per_s_best']:.1f} ex/s, accuracy {results['ours']['accuracy']:.4f}")

    # -- plain, pad to longest
    common.log(f"\n== plain transformers, pad to longest, {args.repeats} runs")
    plain(warm, "longest")
    times, (pred, pos) = common.time_runs(lambda: plain(examples, "longest"), args.repeats, "longest")
    results["longest"] = method_result(
        "plain transformers, pad to longest", times, pred, labels, ours_pred,
        max_abs_prob_diff_vs_ours=round(max(abs(a - b) for a, b in zip(pos, ours_pos, strict=True)), 6),
    )
    common.log(f"  {results['longest']['examples_per_s_best']:.1f} ex/s, accuracy "
               f"{results['longest']['accuracy']:.4f}, agreement {results['longest']['agreement_with_ours']:.4f}")
    longest_pred = pred

    # -- plain, pad to 512
    subset = examples[:limit_512]
    n_batches = (len(subset) + args.batch_size - 1) // args.batch_size
    common.log(f"\n== plain transformers, pad to {args.max_length}: {len(subset)} examples, "
               f"{n_batches} batches, {args.repeats_512} run(s); slow on few cores")
    common.log(f"  warm-up ({len(warm)} examples) ...")
    plain(warm, "max_length", args.max_length)
    times, (pred, pos) = common.time_runs(
        lambda: plain(subset, "max_length", args.max_length, progress=True), args.repeats_512,
        f"pad-{args.max_length}",
    )
    sub_labels = labels[: len(subset)]
    # Per batch (last run): the fastest full batch gives a rate that other load on the machine
    # can only have slowed down less, i.e. a conservative (baseline-friendly) figure.
    full_batches = plain.batch_times[: len(subset) // args.batch_size]
    fastest = args.batch_size / min(full_batches) if full_batches else None
    results["max_length"] = method_result(
        f"plain transformers, pad to {args.max_length}", times, pred, sub_labels, ours_pred,
        max_abs_prob_diff_vs_ours=round(
            max(abs(a - b) for a, b in zip(pos, ours_pos[: len(pos)], strict=True)), 6
        ),
        batch_times_s=[round(t, 3) for t in plain.batch_times],
        examples_per_s_fastest_batch=round(fastest, 3) if fastest else None,
    )
    if len(subset) < len(examples):
        results["subset"] = {
            "examples": len(subset),
            "accuracy_ours": round(accuracy(ours_pred[: len(subset)], sub_labels), 4),
            "accuracy_longest": round(accuracy(longest_pred[: len(subset)], sub_labels), 4),
            "accuracy_max_length": results["max_length"]["accuracy"],
            "agreement_longest_with_ours": round(
                agreement(longest_pred[: len(subset)], ours_pred[: len(subset)]), 4
            ),
        }
    common.log(f"  {results['max_length']['examples_per_s_best']:.2f} ex/s, accuracy "
               f"{results['max_length']['accuracy']:.4f}, agreement {results['max_length']['agreement_with_ours']:.4f}")

    # -- ours on the whole test set
    if args.full_ours:
        common.log(f"\n== ours on the whole {args.split} set ({len(all_examples):,} examples), "
                   f"{args.repeats_full} run(s)")
        times, proba = common.time_runs(lambda: clf.predict_proba(all_examples), args.repeats_full,
                                        "ours, full")
        full_labels = [CLASSES.index(e.label) for e in all_examples]
        results["ours_full"] = method_result(f"ours, whole {args.split} set", times,
                                             proba.argmax(1).tolist(), full_labels, None)
        common.log(f"  {results['ours_full']['examples_per_s_best']:.1f} ex/s, accuracy "
                   f"{results['ours_full']['accuracy']:.4f}")

    def rate(result: dict[str, Any]) -> float:  # unrounded examples/s of the best run
        return result["examples"] / result["best_s"]

    ours_rate = rate(results["ours"])
    speedups = {
        "ours_vs_longest": round(ours_rate / rate(results["longest"]), 2),
        "ours_vs_max_length": round(ours_rate / rate(results["max_length"]), 2),
    }
    if fastest:
        speedups["ours_vs_max_length_fastest_batch"] = round(ours_rate / fastest, 2)
    targets = {"ours_vs_longest": args.target_longest, "ours_vs_max_length": args.target_512}
    machine["loadavg_at_end"] = common.load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(data_dir=str(data_dir), limit_512_effective=len(subset))
    return {
        "benchmark": "zero_shot_throughput",
        "model": args.model_config or MODEL,
        "device": args.device,
        "template": TEMPLATE,
        "plain_prompt": PLAIN_PROMPT,
        "label_word_ids": dict(zip(CLASSES, word_ids, strict=True)),
        "settings": settings,
        "machine": machine,
        "model_load_s": round(load_s, 3),
        "efficient_head": clf.model.efficient_head,
        "identical_token_ids": {"examples": len(examples), "identical": same_tokens},
        "results": results,
        "speedups": speedups,
        "targets": targets,
        "pass": {k: speedups[k] >= targets[k] for k in targets},
    }


def render_markdown(payload: dict[str, Any]) -> str:
    s, r = payload["settings"], payload["results"]
    sp, tg, ok = payload["speedups"], payload["targets"], payload["pass"]
    rows = [
        ["ours (`PromptClassifier.predict_proba`)", f"{r['ours']['examples']:,}", "per batch, longest row (length-sorted)",
         f"{r['ours']['examples_per_s_best']:.1f}", f"{r['ours']['accuracy']:.4f}", "-", "-", "-", "-"],
        ["plain transformers, pad to longest", f"{r['longest']['examples']:,}", "per batch, longest row (data order)",
         f"{r['longest']['examples_per_s_best']:.1f}", f"{r['longest']['accuracy']:.4f}",
         f"{r['longest']['agreement_with_ours']:.4f}", f"**{sp['ours_vs_longest']:.2f}x**",
         f">= {tg['ours_vs_longest']:g}x", common.mark(ok["ours_vs_longest"])],
        [f"plain transformers, pad to {s['max_length']}", f"{r['max_length']['examples']:,}", f"fixed {s['max_length']}",
         f"{r['max_length']['examples_per_s_best']:.2f}", f"{r['max_length']['accuracy']:.4f}",
         f"{r['max_length']['agreement_with_ours']:.4f}", f"**{sp['ours_vs_max_length']:.1f}x**",
         f">= {tg['ours_vs_max_length']:g}x", common.mark(ok["ours_vs_max_length"])],
    ]
    if "ours_full" in r:
        rows.append([f"ours, whole {s['split']} set", f"{r['ours_full']['examples']:,}", "per batch, longest row (length-sorted)",
                     f"{r['ours_full']['examples_per_s_best']:.1f}", f"{r['ours_full']['accuracy']:.4f}",
                     "-", "-", "-", "-"])
    table = common.markdown_table(
        ["Method", "Examples", "Padding", "Examples/s", "Accuracy", "Agreement with ours",
         "Speed-up of ours", "Target", "Result"],
        rows,
    )
    notes = [
        f"Examples/s: best of {s['repeats']} run(s) for ours and pad-to-longest, "
        f"{s['repeats_512']} run(s) for pad-to-{s['max_length']}"
        + (f", {s['repeats_full']} for the whole set" if "ours_full" in r else "")
        + f"; each method had an untimed warm-up on {s['warmup']} examples. "
        f"Median examples/s: ours {r['ours']['examples_per_s_median']:.1f}, longest "
        f"{r['longest']['examples_per_s_median']:.1f}, pad-to-{s['max_length']} "
        f"{r['max_length']['examples_per_s_median']:.2f}.",
        f"Same examples for all three (the first {r['ours']['examples']:,} sentences of SST-2 "
        f"{s['split']}), batch size {s['batch_size']}, the same {payload['model']} model object, "
        f"{payload.get('device', 'cpu')}."
        + (" Random weights: the accuracy means nothing, the agreement checks the methods."
           if s.get("model_config") else ""),
        f"Token ids fed to the model are identical for ours and the plain prompt string in "
        f"{payload['identical_token_ids']['identical']}/{payload['identical_token_ids']['examples']} "
        f"examples; largest |P(positive) difference| vs ours: longest "
        f"{r['longest']['max_abs_prob_diff_vs_ours']:.2g}, pad-to-{s['max_length']} "
        f"{r['max_length']['max_abs_prob_diff_vs_ours']:.2g}.",
    ]
    if "ours_vs_max_length_fastest_batch" in sp:
        notes.append(
            f"Pad-to-{s['max_length']} per batch (s): {r['max_length']['batch_times_s']}; at the "
            f"rate of its fastest full batch ({r['max_length']['examples_per_s_fastest_batch']:.2f} ex/s) "
            f"the speed-up of ours would be {sp['ours_vs_max_length_fastest_batch']:.1f}x."
        )
    if "subset" in r:
        sub = r["subset"]
        notes.append(
            f"The pad-to-{s['max_length']} baseline ran on the first {sub['examples']:,} examples only "
            f"(`--limit-512`); its examples/s is per example and comparable, its accuracy is on that "
            f"subset. On the same subset: ours {sub['accuracy_ours']:.4f}, pad-to-longest "
            f"{sub['accuracy_longest']:.4f}, pad-to-{s['max_length']} {sub['accuracy_max_length']:.4f} "
            f"(agreement of pad-to-longest with ours {sub['agreement_longest_with_ours']:.4f})."
        )
    notes.append(f"Model load: {payload['model_load_s']:.1f} s (not included). Machine: "
                 f"{common.machine_line(payload['machine'])}.")
    return (
        f"### Zero-shot throughput ({payload['model']}, SST-2 {s['split']}, {payload.get('device', 'cpu')})\n\n"
        f"{table}\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding sst2/ (default: $DELTAPROMPT_DATA or ../shared/data "
                        "relative to the repository root)")
    parser.add_argument("--split", default="test", help="SST-2 split (default: test)")
    parser.add_argument("--limit", type=int, default=256,
                        help="classify the first N sentences (default 256; 0: all)")
    parser.add_argument("--limit-512", type=int, default=None,
                        help="run the pad-to-512 baseline on only the first N of those examples")
    parser.add_argument("--full-ours", action="store_true",
                        help="also time ours on the whole split and report its accuracy")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512, help="fixed padding length of the slow baseline")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours and pad-to-longest (default 3)")
    parser.add_argument("--repeats-512", type=int, default=1, help="timed runs of pad-to-512 (default 1)")
    parser.add_argument("--repeats-full", type=int, default=1, help="timed runs of --full-ours (default 1)")
    parser.add_argument("--warmup", type=int, default=8, help="examples in each method's untimed warm-up batch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--model-config", choices=common.MODEL_CONFIGS, default=None,
                        help="a randomly initialised model of this shape instead of SmolLM2-135M (speed only)")
    parser.add_argument("--target-longest", type=float, default=1.2)
    parser.add_argument("--target-512", type=float, default=5.0)
    parser.add_argument("--output-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default="zero_shot_throughput", help="results file stem")
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_length", "repeats", "repeats_512", "repeats_full", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    if args.limit_512 is not None and args.limit_512 < 1:
        parser.error("--limit-512 must be positive")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error("--device must be cpu or cuda[:N]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.require_task(args.data_dir or common.default_data_dir(), "sst2")
    why = common.cannot_run(args.model_config, args.device)
    if why:
        print(f"{why}\nNothing was measured and no results were written.")
        return 0
    payload = run(args)
    return common.publish(args.output_dir, args.name, payload, render_markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
