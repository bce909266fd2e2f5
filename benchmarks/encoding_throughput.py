"""Template encoding throughput: deltaprompt's batched PromptTokenizer vs OpenPrompt-style.

Measures how many examples per second go from raw SST-2 sentences to padded tensor batches:

- ours: ``PromptTokenizer.encode(all examples)`` (one fast-tokenizer call for every field
  of every example, fixed template parts tokenised once) and then ``collate`` in batches of
  32, each padded to its own longest row;
- per-example, pad to 512 (OpenPrompt-style): an imitation of OpenPrompt's tokenizer
  wrappers, written for this benchmark. Per example: wrap the template into pieces, call the
  tokenizer once per piece, build per-token side lists (loss_ids, shortenable_ids), truncate,
  concatenate, add special tokens, pad input_ids, attention_mask and loss_ids to 512 in
  Python; then batches of 32 become tensors.

Both run for SmolLM2's tokenizer (causal) and MiniLM's BERT tokenizer (masked). Before the
timings, the un-padded token ids of both methods are compared on a sample of examples (and the
prediction position against OpenPrompt's loss_ids); a mismatch aborts the benchmark.

    .venv/bin/python benchmarks/encoding_throughput.py            # full SST-2 train, 3 runs
    .venv/bin/python benchmarks/encoding_throughput.py --help
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import _common as common

SETUPS = {
    # alias: (family, template)
    "smollm2-135m": ("causal", "Review: {text}\nSentiment: {mask}"),
    "minilm-l6": ("masked", "{text} It was {mask}."),
}
TEMPLATE_MASK = "<mask>"  # OpenPrompt's name for the mask piece


class OpenPromptStyleEncoder:
    """Per-example encoding the way OpenPrompt's ``MLMTokenizerWrapper``/``LMTokenizerWrapper``
    do it (an independent re-implementation, not their code).

    ``wrap`` turns an example into template pieces (dicts with the text and per-piece flags),
    ``tokenize_one`` tokenises piece by piece, truncates from the tail if needed, adds the
    tokenizer's special tokens and pads every per-token list to ``max_length`` in Python;
    ``to_tensors`` stacks a batch. transformers 5 fast tokenizers no longer expose
    ``build_inputs_with_special_tokens``, so the special tokens come from the tokenizer's own
    single-sequence affixes (what that method returned for one sequence).
    """

    def __init__(self, tokenizer: Any, template: Any, family: str, max_length: int = 512):
        self.tokenizer = tokenizer
        self.template = template
        self.family = family
        self.max_length = max_length
        plain = tokenizer("x", add_special_tokens=False)["input_ids"]
        full = tokenizer("x")["input_ids"]
        start = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
        self.special_prefix = list(full[:start])
        self.special_suffix = list(full[start + len(plain) :])
        self.num_specials = len(self.special_prefix) + len(self.special_suffix)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.special_map = {
            "<mask>": tokenizer.mask_token,
            "<eos>": tokenizer.eos_token,
            "<bos>": tokenizer.bos_token,
            "<sep>": getattr(tokenizer, "sep_token", None),
            "<cls>": getattr(tokenizer, "cls_token", None),
        }

    def wrap(self, example: Any) -> list[dict[str, Any]]:
        """The template filled for one example, as a list of pieces (OpenPrompt's wrap_one_example)."""
        pieces = []
        for part in self.template.parts:
            if part.kind == "field":
                text = self.template.field_text(part, example)
            elif part.kind == "text":
                text = part.prefix + (part.value or "")
            elif part.kind == "mask":
                text = TEMPLATE_MASK
            elif part.kind == "special":
                text = part.value or ""
            else:
                raise NotImplementedError("soft tokens are not part of this benchmark")
            pieces.append({
                "text": text,
                "prefix": part.prefix,
                "loss_ids": int(part.kind == "mask"),
                "shortenable_ids": int(part.shortenable),
            })
        return pieces

    def tokenize_one(self, pieces: list[dict[str, Any]]) -> dict[str, list[int]]:
        tokenizer = self.tokenizer
        inputs: dict[str, list[list[int]]] = defaultdict(list)
        for piece in pieces:
            text = piece["text"]
            if not text:
                continue
            if text == TEMPLATE_MASK:
                if self.family == "causal":
                    # A causal LM predicts the label word from the token before the mask; what
                    # follows the mask is dropped.
                    inputs["loss_ids"][-1][-1] = 1
                    break
                text = piece["prefix"] + tokenizer.mask_token
            elif text in self.special_map and self.special_map[text]:
                text = self.special_map[text]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            inputs["input_ids"].append(ids)
            for key, value in piece.items():
                if key not in ("text", "prefix"):
                    inputs[key].append([value] * len(ids))
        self.truncate_tail(inputs)
        inputs.pop("shortenable_ids")
        flat = {key: list(itertools.chain(*parts)) for key, parts in inputs.items()}
        flat = self.add_special_tokens(flat)
        flat["attention_mask"] = [1] * len(flat["input_ids"])
        return self.pad(flat)

    def truncate_tail(self, inputs: dict[str, list[list[int]]]) -> None:
        excess = sum(len(p) for p in inputs["input_ids"]) - self.max_length + self.num_specials
        if excess <= 0:
            return
        shortenable = [flags[0] if flags else 0 for flags in inputs["shortenable_ids"]]
        for key, parts in inputs.items():
            left = excess
            for i in range(len(parts) - 1, -1, -1):
                if not parts[i] or not shortenable[i]:
                    continue
                cut = min(left, len(parts[i]))
                parts[i] = parts[i][: len(parts[i]) - cut]
                left -= cut
                if left <= 0:
                    break
            inputs[key] = parts

    def add_special_tokens(self, flat: dict[str, list[int]]) -> dict[str, list[int]]:
        import numpy as np

        prefix, suffix = self.special_prefix, self.special_suffix
        out = {}
        for key, values in flat.items():
            if key == "input_ids":
                out[key] = prefix + values + suffix
                continue
            # Side lists (loss_ids): special positions become -100, as OpenPrompt does with
            # get_special_tokens_mask and numpy arithmetic.
            special = np.array([1] * len(prefix) + [0] * len(values) + [1] * len(suffix))
            with_special = np.array(prefix + values + suffix)
            out[key] = ((1 - special) * with_special - special * 100).tolist()
        return out

    def pad(self, flat: dict[str, list[int]]) -> dict[str, list[int]]:
        for key, values in flat.items():
            pad = self.pad_id if "input" in key else 0
            values.extend([pad] * (self.max_length - len(values)))
        return flat

    @staticmethod
    def to_tensors(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        return {key: torch.tensor([features[key] for features in batch]) for key in batch[0]}


def sanity_check(ours: list[Any], theirs: list[dict[str, list[int]]], family: str) -> dict[str, Any]:
    """Un-padded ids identical; the prediction position equals OpenPrompt's loss position."""
    id_mismatch, position_mismatch = [], []
    for n, (encoding, features) in enumerate(zip(ours, theirs, strict=True)):
        length = sum(features["attention_mask"])
        if encoding.input_ids != features["input_ids"][:length]:
            id_mismatch.append(n)
        loss_positions = [i for i, flag in enumerate(features["loss_ids"][:length]) if flag == 1]
        if list(encoding.predict_positions) != loss_positions:
            position_mismatch.append(n)
    return {
        "checked": len(ours),
        "ids_identical": not id_mismatch,
        "id_mismatches": len(id_mismatch),
        "prediction_positions_identical": not position_mismatch,
        "position_mismatches": len(position_mismatch),
        "first_mismatches": sorted(set(id_mismatch[:5] + position_mismatch[:5])),
        "family": family,
    }


def benchmark_tokenizer(alias: str, examples: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from deltaprompt import Template
    from deltaprompt.plm import resolve
    from deltaprompt.tokenization import PromptTokenizer

    family, template_text = SETUPS[alias]
    common.log(f"\n== {alias} ({family}), template {template_text!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(alias))
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise SystemExit(f"cannot load the {alias} tokenizer: {exc}") from None
    template = Template(template_text)
    ours = PromptTokenizer(tokenizer, template, family, max_length=args.max_length)
    theirs = OpenPromptStyleEncoder(tokenizer, template, family, max_length=args.max_length)
    size = args.batch_size

    def run_ours():
        encodings = ours.encode(examples)
        batches = [ours.collate(encodings[i : i + size]) for i in range(0, len(encodings), size)]
        return encodings, batches

    def run_theirs():
        features = [theirs.tokenize_one(theirs.wrap(example)) for example in examples]
        batches = [theirs.to_tensors(features[i : i + size]) for i in range(0, len(features), size)]
        return features, batches

    # Sanity check (untimed) on a random sample, which also warms both paths up.
    rng = random.Random(args.seed)
    count = len(examples) if args.check_sample <= 0 else min(args.check_sample, len(examples))
    sample = sorted(rng.sample(range(len(examples)), count))
    picked = [examples[i] for i in sample]
    check = sanity_check(
        ours.encode(picked), [theirs.tokenize_one(theirs.wrap(e)) for e in picked], family
    )
    check["first_mismatches"] = [sample[i] for i in check["first_mismatches"]]
    ok = check["ids_identical"] and check["prediction_positions_identical"]
    common.log(
        f"  sanity check on {count} examples: token ids identical: {check['ids_identical']}, "
        f"prediction positions identical: {check['prediction_positions_identical']}"
    )
    if not ok:
        raise SystemExit(
            f"sanity check FAILED for {alias}: {check['id_mismatches']} id and "
            f"{check['position_mismatches']} position mismatches (e.g. examples "
            f"{check['first_mismatches']}); the two encoders do not produce the same inputs, "
            "so their timings are not comparable. Nothing was written."
        )

    theirs_name = f"per-example, pad to {args.max_length}"
    common.log(f"  timing {len(examples):,} examples, {args.repeats} runs each, alternating "
               f"ours (encode + collate) and {theirs_name}")
    times, outputs = common.time_interleaved({"ours": run_ours, theirs_name: run_theirs}, args.repeats)
    ours_times, (encodings, ours_batches) = times["ours"], outputs["ours"]
    theirs_times, (_, theirs_batches) = times[theirs_name], outputs[theirs_name]

    ours_stats = common.summarise(ours_times, len(examples))
    theirs_stats = common.summarise(theirs_times, len(examples))
    lengths = [len(e.input_ids) for e in encodings]
    ours_cells = sum(b["input_ids"].numel() for b in ours_batches)
    theirs_cells = sum(b["input_ids"].numel() for b in theirs_batches)
    speedup_best = theirs_stats["best_s"] / ours_stats["best_s"]  # same examples: ratio of times
    speedup_median = theirs_stats["median_s"] / ours_stats["median_s"]
    common.log(
        f"  ours {ours_stats['examples_per_s_best']:,.0f} ex/s, per-example/512 "
        f"{theirs_stats['examples_per_s_best']:,.0f} ex/s: {speedup_best:.1f}x "
        f"(target >= {args.target:g}x: {common.mark(speedup_best >= args.target)})"
    )
    return {
        "tokenizer": alias,
        "family": family,
        "template": template_text,
        "tokenizer_class": type(tokenizer).__name__,
        "ours": ours_stats,
        "per_example_pad_max": theirs_stats,
        "speedup_best": round(speedup_best, 2),
        "speedup_median": round(speedup_median, 2),
        "target": args.target,
        "pass": speedup_best >= args.target,
        "tokens_per_example_mean": round(sum(lengths) / len(lengths), 2),
        "tokens_per_example_max": max(lengths),
        "tensor_cells_ours": ours_cells,
        "tensor_cells_pad_max": theirs_cells,
        "sanity_check": check,
    }


def render_markdown(payload: dict[str, Any]) -> str:
    args = payload["settings"]
    rows = []
    for r in payload["results"]:
        rows.append([
            f"{r['tokenizer']} ({r['family']})",
            "`" + r["template"].replace("\n", "\\n") + "`",
            f"{r['ours']['examples_per_s_best']:,.0f}",
            f"{r['per_example_pad_max']['examples_per_s_best']:,.0f}",
            f"**{r['speedup_best']:.1f}x** (median {r['speedup_median']:.1f}x)",
            f">= {r['target']:g}x",
            common.mark(r["pass"]),
            f"{r['sanity_check']['checked']}: "
            + ("identical" if r["sanity_check"]["ids_identical"] else "DIFFERENT"),
        ])
    table = common.markdown_table(
        [
            "Tokenizer (family)",
            "Template",
            "Ours (ex/s)",
            f"Per-example, pad to {args['max_length']} (ex/s)",
            "Speed-up",
            "Target",
            "Result",
            "Token-id check (examples)",
        ],
        rows,
    )
    detail = "\n".join(
        f"- {r['tokenizer']}: {r['tokens_per_example_mean']:.1f} tokens/example on average "
        f"(max {r['tokens_per_example_max']}); tensor cells ours {r['tensor_cells_ours']:,} vs "
        f"{r['tensor_cells_pad_max']:,} padded to {args['max_length']}; runs (s) ours "
        f"{r['ours']['runs_s']}, per-example {r['per_example_pad_max']['runs_s']}."
        for r in payload["results"]
    )
    return (
        f"### Encoding throughput (SST-2 {args['split']}, {payload['results'][0]['ours']['examples']:,} "
        f"examples, batches of {args['batch_size']})\n\n"
        f"{table}\n"
        f"Examples/s from the best of {args['repeats']} run(s) (encode + pad + tensors), the two "
        "methods' runs alternating. "
        "Token-id check: un-padded ids and prediction positions of both methods compared on a "
        "random sample before timing.\n\n"
        f"{detail}\n\n"
        f"Machine: {common.machine_line(payload['machine'])}.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding sst2/ (default: $DELTAPROMPT_DATA or ../shared/data "
                        "relative to the repository root)")
    parser.add_argument("--split", default="train", help="SST-2 split to encode (default: train)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    parser.add_argument("--tokenizers", nargs="+", choices=sorted(SETUPS), default=list(SETUPS),
                        help="which tokenizers to benchmark (default: both)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512,
                        help="the fixed length the per-example baseline pads to (and ours truncates at)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed runs per method, alternating between the methods; the best is "
                        "reported, the median too (default 7)")
    parser.add_argument("--check-sample", type=int, default=1000,
                        help="examples in the token-id sanity check (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sanity-check sample")
    parser.add_argument("--target", type=float, default=10.0, help="speed-up target (default 10x)")
    parser.add_argument("--output-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default="encoding_throughput", help="results file stem")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.max_length < 1:
        parser.error("--batch-size, --repeats and --max-length must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = args.data_dir or common.default_data_dir()
    common.require_task(data_dir, "sst2")

    from deltaprompt import load_task

    examples = load_task("sst2", data_dir).load(args.split, limit=args.limit)
    if not examples:
        raise SystemExit(f"SST-2 {args.split} is empty")
    common.log(f"SST-2 {args.split}: {len(examples):,} examples from {data_dir / 'sst2'}")
    machine = common.machine_info()
    common.log(f"machine: {common.machine_line(machine)}")

    results = [benchmark_tokenizer(alias, examples, args) for alias in args.tokenizers]
    machine["loadavg_at_end"] = common.load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["data_dir"] = str(data_dir)
    payload = {"benchmark": "encoding_throughput", "settings": settings, "machine": machine,
               "results": results}
    return common.publish(args.output_dir, args.name, payload, render_markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
