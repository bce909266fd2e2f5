"""``deltaprompt transfer``: start a few-shot target task's soft prompt from a trained source
prompt, and compare with random and text initialisation (see ``deltaprompt.transfer``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .files import atomic_write

DESCRIPTION = (
    "Prompt transfer (PPT / SPoT): load one or more source soft prompts (--source: a file from "
    "save_soft_prompt, or a saved classifier folder trained with prompt_tuning / p_tuning), pick the most "
    "similar one to the target task (--by prompt: cosine similarity with a prompt trained on the target from "
    "random vectors, the first seed's 'random' run; --by task: cosine similarity of task embeddings, mean-pooled "
    "hidden states over the task's texts), then train prompt tuning on K examples per class of the target from "
    "each initialisation (--inits) and seed, and evaluate on the test split. Writes OUT/transfer.json and "
    "OUT/transfer.md."
)


def add_transfer_command(commands: Any) -> None:
    from .cli import add_column_options, add_model_options

    parser = commands.add_parser("transfer", help="initialise a target task's soft prompt from a source prompt",
                                 description=DESCRIPTION)
    parser.add_argument("--source", action="append", required=True, metavar="PATH",
                        help="a saved soft prompt or classifier folder (repeatable: the most similar is used)")
    parser.add_argument("--source-data", action="append", default=[], metavar="TASK",
                        help="with --by task: a source's task (name, folder or file), in --source order, for "
                        "sources saved without a task embedding")
    parser.add_argument("--by", choices=("prompt", "task"), default="prompt", help="how sources are ranked")
    parser.add_argument("--data", required=True, help="the target: task folder, task name, or .jsonl/.csv/.tsv file")
    parser.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    parser.add_argument("--split", default="train", help="split the K-shot examples are drawn from (default train)")
    parser.add_argument("--test-split", default="test", help="split evaluated on (default test)")
    parser.add_argument("--test-data", help="a file of test examples instead of --test-split (for a --data file)")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test examples")
    parser.add_argument("--limit", type=int, help="draw the K shots from the first N examples only")
    parser.add_argument("--k", "--shots", type=int, default=16, dest="k", help="training examples per class (16)")
    parser.add_argument("--dev-per-class", type=int, help="dev examples per class (default: --k; 0: no dev)")
    parser.add_argument("--seeds", default="13", help="comma-separated seeds; each draws its own K shots (13)")
    parser.add_argument("--template", required=True, help="template text; \\n means a newline")
    parser.add_argument("--label-words", required=True, help="'class: word, word; class: word' or a file")
    parser.add_argument("--inits", default="random,text,transfer",
                        help="initialisations compared: random, vocab, text, transfer (default random,text,transfer)")
    parser.add_argument("--init-text", help="text of the 'text' initialisation (default: the label words)")
    parser.add_argument("--num-tokens", type=int, help="soft tokens (default: the chosen source's length)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run (default 10)")
    parser.add_argument("--max-steps", type=int, help="stop each run after N optimiser steps")
    parser.add_argument("--train-batch-size", type=int, default=8, help="training batch size (default 8)")
    parser.add_argument("--soft-lr", type=float, default=3e-2, help="soft prompt learning rate (default 3e-2)")
    parser.add_argument("--base-mismatch", choices=("error", "warn"), default="error",
                        help="a source trained on another base model: refuse (default) or warn")
    parser.add_argument("--out", required=True, help="folder for transfer.json and transfer.md")
    add_column_options(parser)
    add_model_options(parser)
    parser.set_defaults(run=run_transfer, model=None)  # default model: the source's base model


def _examples(args: argparse.Namespace, data: str, split: str, limit: int | None) -> tuple[list, tuple | None]:
    from .cli import load_cli_examples

    view = argparse.Namespace(**{**vars(args), "data": data, "split": split, "limit": limit})
    return load_cli_examples(view)


def run_transfer(args: argparse.Namespace) -> int:
    from .cli import unescape
    from .data import few_shot_split
    from .plm import load_plm
    from .transfer import (
        compare_initialisations,
        load_soft_prompt,
        most_similar_source,
        summarise,
        train_with_init,
    )

    sources = [load_soft_prompt(path) for path in args.source]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    inits = [i.strip() for i in args.inits.split(",") if i.strip()]
    unknown = [i for i in inits if i not in ("random", "vocab", "text", "transfer")]
    if unknown or not seeds:
        raise ValueError(f"--inits takes random, vocab, text, transfer (got {unknown}); --seeds at least one seed")
    if args.source_data and len(args.source_data) != len(sources):
        raise ValueError(f"--source-data: give one per --source ({len(sources)}), got {len(args.source_data)}")
    model_name = args.model or sources[0].base_model
    if not model_name:
        raise ValueError("the source does not name its base model; give --model")
    plm = load_plm(model_name, args.family, device=args.device)
    template, label_words = unescape(args.template), args.label_words
    pool, classes = _examples(args, args.data, args.split, args.limit)
    if args.test_data:
        test, _ = _examples(args, args.test_data, args.test_split, args.test_limit)
    else:
        test, _ = _examples(args, args.data, args.test_split, args.test_limit)
    splits = {seed: few_shot_split(pool, args.k, seed, labels=classes, dev_per_class=args.dev_per_class)
              for seed in seeds}
    train_options: dict[str, Any] = {"epochs": args.epochs, "max_steps": args.max_steps,
                                     "batch_size": args.train_batch_size, "soft_lr": args.soft_lr, "progress": False}
    common = {"init_text": args.init_text, "train_options": train_options, "base_mismatch": args.base_mismatch,
              "batch_size": args.batch_size,
              "classifier_options": {"max_length": args.max_length, "truncation": args.truncation}}

    ranking, done = [], []
    chosen = sources[0]
    if len(sources) > 1:
        if args.by == "prompt":
            n = args.num_tokens or sources[0].num_tokens
            train, dev = splits[seeds[0]]
            row, target = train_with_init(plm, train, dev or None, test, template, label_words, "random", n, seeds[0],
                                          **common)
            done.append(row)
            ranking = most_similar_source(target, sources, by="prompt")
        else:
            named = {s.name: _examples(args, d, "train", None)[0] for s, d in zip(sources, args.source_data, strict=False)}
            ranking = most_similar_source(pool, sources, plm, by="task", source_examples=named or None)
        chosen = ranking[0].source
        for match in ranking:
            print(f"source {match.name}: similarity {match.similarity:+.4f}")
    print(f"transferring from {chosen.name} ({chosen.num_tokens} tokens)")

    rows = []
    for seed in seeds:
        train, dev = splits[seed]
        rows += compare_initialisations(
            plm, train, dev or None, test, template, label_words, chosen, num_tokens=args.num_tokens, inits=inits,
            seeds=[seed], precomputed=[r for r in done if r["seed"] == seed], **common)
    summary = summarise(rows)
    result = {
        "target": args.data, "model": model_name, "k": args.k, "seeds": seeds, "template": template,
        "label_words": label_words, "by": args.by, "chosen_source": {"name": chosen.name, "path": chosen.path},
        "ranking": [{"name": m.name, "path": m.source.path, "similarity": m.similarity} for m in ranking],
        "summary": summary, "runs": rows,
    }
    out = Path(args.out)
    with atomic_write(out / "transfer.json") as handle:
        handle.write(json.dumps(result, indent=2) + "\n")
    markdown = render_markdown(result)
    with atomic_write(out / "transfer.md") as handle:
        handle.write(markdown)
    print(markdown, end="")
    return 0


def render_markdown(result: dict[str, Any]) -> str:
    """The summary table (mean ± std over seeds) and the source ranking, as Markdown."""
    lines = [f"# Prompt transfer to {result['target']} (K = {result['k']}, {len(result['seeds'])} seed(s))", "",
             f"Source: {result['chosen_source']['name']}; model: {result['model']}", "",
             "| init | runs | accuracy | macro-F1 |", "|---|---|---|---|"]
    for entry in result["summary"]:
        lines.append(f"| {entry['init']} | {entry['runs']} | {entry['accuracy']:.3f} ± {entry['accuracy_std']:.3f} "
                     f"| {entry['macro_f1']:.3f} ± {entry['macro_f1_std']:.3f} |")
    if result["ranking"]:
        lines += ["", f"Sources ranked by {result['by']} similarity:", "", "| source | similarity |", "|---|---|"]
        lines += [f"| {m['name']} | {m['similarity']:+.4f} |" for m in result["ranking"]]
    return "\n".join(lines) + "\n"
