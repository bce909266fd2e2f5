"""The command line of generation: ``deltaprompt generate``, and what ``train`` / ``eval`` do
for a generation model (``classifier.kind: generation``).

A trained generation model folder (OUTPUT/model of ``train``) also holds ``generation.json``:
the run config's decoding, post-processing, retry and metrics, which ``eval`` and ``generate``
use unless flags say otherwise. Prediction files have one JSON line per example: ``index``,
``text`` (``text_b``), ``target`` when the example has one, ``prediction`` (the generated text,
or with post-processing its value, null when rejected), and with post-processing ``valid``,
``error`` (the structured error as a dict, when rejected) and ``output`` (the generated text;
left out with ``--retry-invalid``, where the text that counts may be the retry's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .config import (
    DEFAULT_GENERATION_METRICS,
    DecodingSection,
    parse_flag_entry,
    read_targets,
    read_yaml,
)
from .data import Example
from .files import atomic_write
from .schema import ConfigError

SETTINGS_FILE = "generation.json"
SCORE_KEYS = ("exact_match", "token_f1", "bleu", "rouge1", "rouge2", "rougeL", "invalid")

GENERATE_DESCRIPTION = (
    "Generate text for inputs from --data or --text, with a saved generation model folder (OUTPUT/model "
    "of a train run with classifier kind: generation) or, with no training, with a base model (--model) and "
    "a prompt: --template (its {mask} is where the answer goes; none: after its end), or --spec FILE (a "
    "PromptSpec in YAML), optionally through the model's chat template (--chat). Decoding: greedy unless "
    "--num-beams, --do-sample... say otherwise. --postprocess applies named post-processing steps (e.g. "
    "'strip', 'answer', 'truncate:max_words=20', '{json: {schema: {...}}}'); --retry-invalid prompts once "
    "more where they reject an output. Prints one output per line, or writes JSON Lines with --out; "
    "--evaluate prints generation metrics when the data has outputs."
)


# ----------------------------------------------------------------------------- options

def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """Decoding, post-processing and metrics flags; unset ones fall back to a saved model's
    generation.json, then to the defaults."""
    from .generation_metrics import METRICS

    group = parser.add_argument_group("decoding and post-processing (default: as saved by train, else greedy)")
    group.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the model's, 64)")
    group.add_argument("--num-beams", type=int, help="beam search with this many beams (default 1: greedy)")
    group.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                       help="sample instead of searching (with --temperature, --top-p, --top-k)")
    group.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    group.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens with this mass")
    group.add_argument("--top-k", type=int, help="sample among the K likeliest tokens only")
    group.add_argument("--repetition-penalty", type=float, help="above 1 discourages repeating tokens (default 1.0)")
    group.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size (default 0: off)")
    group.add_argument("--seed", type=int, help="seeds sampling (default: the model's seed)")
    group.add_argument("--postprocess", nargs="+", action="extend", metavar="STEP",
                       help="post-processing steps in order: a name (strip, answer, json...), name:key=value,... "
                       "or a YAML mapping such as '{json: {schema: {type: object}}}'; repeatable")
    group.add_argument("--postprocess-file", help="a YAML list of steps (applied before any --postprocess steps)")
    group.add_argument("--no-postprocess", action="store_true", help="ignore the saved post-processing steps")
    group.add_argument("--retry-invalid", action=argparse.BooleanOptionalAction, default=None,
                       help="prompt once more, with the error, where post-processing rejects an output")
    group.add_argument("--metric", action="append", choices=METRICS,
                       help="generation metric to report (repeatable; default exact_match and token_f1)")
    group.add_argument("--target-column", default="target",
                       help="the column holding each example's output (default target)")
    group.add_argument("--entity-records", action="store_true",
                       help="tagged sentences (CoNLL) in, a JSON record of their entities by type as the output")


FLAGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
         "no_repeat_ngram_size", "seed", "postprocess", "postprocess_file", "retry_invalid", "metric")


def generation_flags(args: argparse.Namespace) -> list[str]:
    """The generation flags given (to refuse them where no generation model reads them)."""
    given = [f"--{name.replace('_', '-')}" for name in FLAGS if getattr(args, name, None) not in (None, False, [])]
    if getattr(args, "no_postprocess", False):
        given.append("--no-postprocess")
    if getattr(args, "target_column", "target") != "target":
        given.append("--target-column")
    if getattr(args, "entity_records", False):
        given.append("--entity-records")
    return given


def with_outputs(args: argparse.Namespace, examples: list[Example]) -> list[Example]:
    """The examples with their outputs where --target-column or --entity-records say."""
    if not args.entity_records:
        return read_targets(examples, args.target_column)
    from .data import load_task
    from .entity_records import entity_record_examples, record_types

    if not all("tokens" in e.meta for e in examples):
        raise ValueError("--entity-records reads tagged sentences (words and BIO tags); this data has none")
    tags = load_task(args.data, args.data_dir).labels if args.data and not Path(args.data).is_file() else None
    return entity_record_examples(examples, record_types(tags) if tags else None)


@dataclass
class Settings:
    """Everything about generating beyond the model: decoding options, the post-processing
    steps (None: raw text), retry, metrics."""

    decoding: dict[str, Any]
    max_new_tokens: int | None
    postprocess: list[Any] | None
    retry_invalid: bool
    metrics: list[str]

    def generate_options(self) -> dict[str, Any]:
        return {**self.decoding, "max_new_tokens": self.max_new_tokens}


def parse_step(text: str) -> str | dict[str, Any]:
    """``strip``, ``truncate:max_words=20,ellipsis=true`` or a YAML mapping ``{json: {...}}``."""
    entry = parse_flag_entry(text, "--postprocess", "truncate:max_words=20")
    if isinstance(entry, tuple):
        name, options = entry
        return {name: options}
    return entry


def read_step_file(path: str) -> list[Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--postprocess-file: no such file {file}")
    steps = read_yaml(file.read_text(encoding="utf-8"), str(file))
    if isinstance(steps, dict) and set(steps) == {"postprocess"}:
        steps = steps["postprocess"]
    if not isinstance(steps, list):
        raise ValueError(f"{file}: expected a YAML list of post-processing steps, e.g. [strip, {{truncate: "
                         "{max_words: 20}}]")
    return steps


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> Settings:
    """Flags over the saved settings over the defaults, every value checked."""
    from .postprocess import make_pipeline

    saved = saved or {}
    decoding = {**DecodingSection().options(), **(saved.get("decoding") or {})}
    for key in decoding:
        value = getattr(args, key, None)
        if value is not None:
            decoding[key] = value
    try:
        decoding = DecodingSection(**decoding).options()
    except ConfigError as exc:  # told as the flag that set it
        raise ValueError(re.sub(r"classifier\.decoding\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"),
                                str(exc))) from None
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    steps = None if args.no_postprocess else saved.get("postprocess")
    given = [*(read_step_file(args.postprocess_file) if args.postprocess_file else []),
             *(parse_step(s) for s in args.postprocess or [])]
    if given:
        if args.no_postprocess:
            raise ValueError("--no-postprocess drops post-processing; it cannot go with --postprocess steps")
        steps = given
    if steps:
        make_pipeline(steps)  # unknown steps or options fail here, before a model is loaded
    retry = bool(saved.get("retry_invalid")) if args.retry_invalid is None else args.retry_invalid
    if retry and not steps:
        raise ValueError("--retry-invalid retries outputs that post-processing rejects; give --postprocess steps")
    metrics = args.metric or saved.get("metrics") or list(DEFAULT_GENERATION_METRICS)
    return Settings(decoding, args.max_new_tokens, steps or None, retry, list(metrics))


def save_settings(model_dir: str | Path, settings: dict[str, Any]) -> Path:
    path = Path(model_dir) / SETTINGS_FILE
    with atomic_write(path) as handle:
        handle.write(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    return path


def load_settings(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / SETTINGS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ----------------------------------------------------------------------------- generating and scoring

@dataclass
class Generated:
    """The outputs for some examples: generated ``texts`` (None where unknown: after a retry)
    and, with post-processing, ``values`` (a value, or the PostProcessError in its place)."""

    texts: list[str | None]
    values: list[Any] | None


def generate_outputs(gen: Any, examples: Sequence[Example], settings: Settings) -> Generated:
    """Generate once; post-process with the settings' steps (the retry goes through
    ``PromptForGeneration.generate``, which keeps only the retried value)."""
    from .postprocess import make_pipeline

    options = settings.generate_options()
    if settings.postprocess is None:
        return Generated(list(gen.generate(examples, **options)), None)
    pipeline = make_pipeline(settings.postprocess)
    if settings.retry_invalid:
        values = gen.generate(examples, postprocess=pipeline, retry_invalid=True, **options)
        return Generated([None] * len(values), list(values))
    texts = gen.generate(examples, **options)
    processed = [pipeline.apply(text) for text in texts]
    return Generated(list(texts), [p.error if p.error is not None else p.value for p in processed])


def score_outputs(generated: Generated, references: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """Generation metrics as ``PromptForGeneration.evaluate`` computes them: post-processed
    JSON compared as text with sorted keys and fixed spacing (references holding JSON likewise), rejected
    outputs scored as empty answers, ``invalid`` their share."""
    from .generation import score_values
    from .generation_metrics import generation_scores

    if generated.values is None:
        return generation_scores(generated.texts, references, metrics)
    return score_values(generated.values, references, metrics)


def prediction_rows(examples: Sequence[Example], generated: Generated) -> list[dict[str, Any]]:
    from .generation import target_of
    from .postprocess import PostProcessError

    rows = []
    for i, example in enumerate(examples):
        row: dict[str, Any] = {"index": i, "text": example.text}
        if example.text_b is not None:
            row["text_b"] = example.text_b
        target = target_of(example)
        if target is not None:
            row["target"] = target
        text = generated.texts[i]
        if generated.values is None:
            row["prediction"] = text
        else:
            value = generated.values[i]
            bad = isinstance(value, PostProcessError)
            row["prediction"] = None if bad else value
            row["valid"] = not bad
            if bad:
                row["error"] = value.to_dict()
            if text is not None:
                row["output"] = text
        rows.append(row)
    return rows


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def print_outputs(rows: Sequence[dict[str, Any]], stream: IO[str] | None = None) -> None:
    """One line per example (to standard output by default): the text (line breaks as \\n), a
    post-processed value as JSON, or ``<invalid: step: message>``."""
    stream = stream or sys.stdout
    for row in rows:
        if row.get("valid") is False:
            error = row["error"]
            line = f"<invalid: {error['step']}: {error['message']}>"
        else:
            value = row["prediction"]
            line = (value.replace("\r", "\\r").replace("\n", "\\n") if isinstance(value, str)
                    else json.dumps(value, ensure_ascii=False))
        print(line, file=stream)


def report(scores: dict[str, Any]) -> str:
    """``exact_match 0.4200, token_f1 0.8123, invalid 0.0300 (n = 100)``."""
    parts = [f"{key} {scores[key]:.4f}" for key in SCORE_KEYS if key in scores]
    return ", ".join(parts) + f" (n = {scores['n']})"


def evaluate_split(gen: Any, examples: Sequence[Example], settings: dict[str, Any],
                   predictions: str | Path) -> dict[str, Any] | None:
    """``train``'s test split: predictions written, metrics printed and returned (None when the
    examples have no outputs)."""
    from .generation import target_of

    resolved = resolve_settings(_no_flags(), settings)
    generated = generate_outputs(gen, examples, resolved)
    write_rows(predictions, prediction_rows(examples, generated))
    references = [target_of(e) for e in examples]
    if any(r is None for r in references):
        print(f"the test split has examples without outputs: predictions in {predictions}, no metrics")
        return None
    scores = score_outputs(generated, references, resolved.metrics)  # type: ignore[arg-type]
    print("test " + report(scores))
    return scores


def _no_flags() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_generation_options(parser)
    return parser.parse_args([])


# ----------------------------------------------------------------------------- eval

def run_generation_eval(args: argparse.Namespace, gen: Any, examples: list[Example]) -> int:
    """``deltaprompt eval`` on a generation model folder."""
    from .cli import _write_text
    from .generation import target_of

    examples = with_outputs(args, examples)
    missing = sum(target_of(e) is None for e in examples)
    if missing:
        raise ValueError(f"{missing} of {len(examples)} examples have no output (column {args.target_column!r}); "
                         "evaluation needs them (deltaprompt generate writes outputs for unlabelled data)")
    settings = resolve_settings(args, load_settings(args.model_dir))
    started = time.perf_counter()
    generated = generate_outputs(gen, examples, settings)
    elapsed = time.perf_counter() - started
    scores = score_outputs(generated, [target_of(e) for e in examples], settings.metrics)  # type: ignore[misc]
    print(f"{args.model_dir}: generation model on {gen.model.plm.name}; {len(examples)} examples in {elapsed:.1f} s")
    print(report(scores))
    if args.output:
        write_rows(args.output, prediction_rows(examples, generated))
        print(f"predictions written to {args.output}")
    if args.metrics:
        summary = {**scores, "settings": dataclasses.asdict(settings), "data": args.data, "split": args.split}
        _write_text(Path(args.metrics), json.dumps(summary, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------- generate

def add_generate_command(commands: Any) -> None:
    from .cli import add_column_options
    from .tokenization import TRUNCATIONS

    generate = commands.add_parser("generate", help="generate text with a trained generation model or a prompt",
                                   description=GENERATE_DESCRIPTION)
    generate.add_argument("model_dir", nargs="?", help="a saved generation model folder (or use --model and a prompt)")
    prompt = generate.add_argument_group("a prompt on a base model, no training")
    prompt.add_argument("--model", help="hub id, local folder, or alias (default smollm2-135m)")
    prompt.add_argument("--template", help="template text; {mask} is the answer slot; \\n means a newline")
    prompt.add_argument("--template-file", help="read the template from a file instead")
    prompt.add_argument("--spec", help="a PromptSpec YAML file instead of a template")
    prompt.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    prompt.add_argument("--family", choices=("causal", "seq2seq"), help="override the detected model family")
    prompt.add_argument("--max-length", type=int, help="token limit of prompt + answer (default: the model's)")
    prompt.add_argument("--truncation", choices=TRUNCATIONS, default="longest_first",
                        help="which shortenable text gives way when a prompt is too long")
    inputs = generate.add_argument_group("inputs")
    inputs.add_argument("--data", help="task folder, task name, or a .jsonl/.csv/.tsv file (.txt: one text per line)")
    inputs.add_argument("--text", action="append", help="an input text (repeatable)")
    inputs.add_argument("--data-dir", help="where task names are looked up (default ../shared/data)")
    inputs.add_argument("--split", default="test", help="split of a task (default: test)")
    inputs.add_argument("--limit", type=int, help="use only the first N examples")
    add_column_options(generate)
    add_generation_options(generate)
    generate.add_argument("--evaluate", action="store_true", help="print generation metrics (the data needs outputs)")
    generate.add_argument("--show-prompt", action="store_true",
                          help="print the first example's prompt as the model reads it")
    generate.add_argument("--out", help="write JSON Lines here instead of printing the outputs")
    generate.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    generate.add_argument("--batch-size", type=int, help="examples per batch (default: as saved, or 8)")
    generate.set_defaults(run=run_generate)


def load_generator(args: argparse.Namespace, settings_max_new: int | None) -> tuple[Any, dict[str, Any] | None]:
    """The saved model (and its settings) or a new one from --model and the prompt."""
    from .cli import load_classifier, unescape
    from .generation import PromptForGeneration

    prompts = [flag for flag, value in (("--template", args.template), ("--template-file", args.template_file),
                                        ("--spec", args.spec)) if value]
    if args.model_dir:
        extra = prompts + [flag for flag, value in (("--model", args.model), ("--chat", args.chat),
                                                    ("--family", args.family), ("--max-length", args.max_length))
                           if value]
        if extra:
            raise ValueError(f"{extra[0]} applies with --model; a saved generation model has its own")
        gen = load_classifier(args)
        if not isinstance(gen, PromptForGeneration):
            raise ValueError(f"{args.model_dir} holds a {gen.kind} classifier, not a generation model; "
                             "use deltaprompt predict")
        return gen, load_settings(args.model_dir)
    if len(prompts) != 1:
        raise ValueError("give a saved generation model folder, or a prompt: exactly one of --template, "
                         f"--template-file, --spec (got {', '.join(prompts) or 'none'})")
    if args.spec:
        from .prompt_spec import PromptSpec

        template: Any = PromptSpec.load(args.spec)
    elif args.template:
        template = unescape(args.template)
    else:
        template = Path(args.template_file).read_text(encoding="utf-8").rstrip("\n")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    gen = PromptForGeneration(args.model or "smollm2-135m", template, max_length=args.max_length,
                              max_new_tokens=settings_max_new or 64, seed=args.seed or 0,
                              batch_size=args.batch_size or 8, chat=args.chat, truncation=args.truncation,
                              family=args.family, device=args.device)
    return gen, None


def read_generation_inputs(args: argparse.Namespace) -> list[Example]:
    from .cli import load_cli_examples

    if bool(args.data) == bool(args.text):
        raise ValueError("give the inputs as --data FILE/TASK or as --text (repeatable), one of them")
    if args.text:
        examples = [Example(text) for text in args.text]
    elif Path(args.data).suffix.lower() == ".txt":
        path = Path(args.data)
        if not path.is_file():
            raise FileNotFoundError(f"no such input file: {path}")
        examples = [Example(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        examples, _ = load_cli_examples(args)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be positive")
        examples = examples[: args.limit]
    if not examples:
        raise ValueError("no inputs")
    return with_outputs(args, examples)


def prompt_text(gen: Any, example: Example) -> str:
    """The prompt as the model reads it: the encoded ids, decoded (special tokens included)."""
    from .generation import _without_target

    [feature] = gen.model.encode([_without_target(example)])
    return gen.model.plm.tokenizer.decode(feature.prompt.input_ids)


def run_generate(args: argparse.Namespace) -> int:
    from .generation import target_of

    examples = read_generation_inputs(args)
    references = [target_of(e) for e in examples]
    if args.evaluate and any(r is None for r in references):
        missing = sum(r is None for r in references)
        raise ValueError(f"--evaluate: {missing} of {len(examples)} examples have no output "
                         f"(column {args.target_column!r})")
    started = time.perf_counter()
    gen, saved = load_generator(args, args.max_new_tokens)
    settings = resolve_settings(args, saved)
    source = args.model_dir or f"{args.model or 'smollm2-135m'} ({gen.model.plm.family})"
    print(f"{source}: loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.show_prompt:
        print("prompt of the first example:\n" + prompt_text(gen, examples[0]))
    started = time.perf_counter()
    generated = generate_outputs(gen, examples, settings)
    elapsed = time.perf_counter() - started
    rows = prediction_rows(examples, generated)
    if args.out:
        write_rows(args.out, rows)
        print(f"{len(rows)} outputs written to {args.out} in {elapsed:.1f} s")
    else:
        print_outputs(rows)
    if args.evaluate:
        print(report(score_outputs(generated, references, settings.metrics)))  # type: ignore[arg-type]
    return 0


__all__ = [
    "Generated",
    "Settings",
    "add_generate_command",
    "add_generation_options",
    "evaluate_split",
    "generate_outputs",
    "generation_flags",
    "parse_step",
    "prediction_rows",
    "resolve_settings",
    "run_generate",
    "run_generation_eval",
    "score_outputs",
]
