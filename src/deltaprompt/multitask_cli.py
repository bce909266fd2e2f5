"""``deltaprompt multitask CONFIG.yaml [--leave-out TASK]``: prompted multi-task training from a
YAML file, then zero-shot on the left-out task (``deltaprompt.multitask``)::

    model:   {name: smollm2-135m}
    tasks:
      sst2:  {data: sst2, template: "Review: {text}\\nSentiment: {mask}",
              label_words: {negative: terrible, positive: great}, shots: 64}
      agnews: {data: agnews, spec: {task: "Classify the news topic.", input: "{text}"},
               label_words: {world: world, sports: sports, business: business, sci/tech: science}}
      mr:    {data: mr, template: "{text} It was {mask}", label_words: {negative: bad, positive: good}}
    mixing:  {strategy: temperature, temperature: 2}     # proportional, temperature, capped (cap: K), uniform
    methods: [{method: lora, r: 8}]
    training: {max_steps: 300, batch_size: 8, delta_lr: 1e-3}
    leave_out: mr                                       # or --leave-out mr
    eval_limit: 500
    output_dir: runs/loo-mr
    seed: 13

Everything is checked before a model loads; unknown keys are refused with the closest valid name.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    LABEL_WORD_FILES,
    MethodEntry,
    ModelSection,
    check_methods,
    load_base_model,
    read_config_file,
)
from .data import load_task, sample_per_class
from .multitask import (
    STRATEGIES,
    MixtureTask,
    MultitaskResult,
    Strategy,
    check_mixing,
    closest_task,
    leave_one_out,
)
from .schema import ConfigError, from_dict, relocated
from .template import Template, TemplateError
from .tokenization import Truncation
from .trainer import TrainConfig


@dataclass
class TaskEntry:
    """One task: ``data`` (a task name under ``data_dir`` or a folder in the benchmark layout),
    ``template`` or a PromptSpec mapping ``spec``, ``label_words`` (as in a run config; a list
    follows labels.json's order), ``shots`` (sample that many training examples per class),
    ``weight`` (multiplies the task's sampling rate), ``split`` (trained on, default train)."""

    data: str | None = None
    template: str | None = None
    spec: dict[str, Any] | None = None
    label_words: str | dict[str, Any] | list[Any] | None = None
    shots: int | None = None
    weight: float = 1.0
    split: str = "train"

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data is required: a task name (sst2) or a task folder")
        if (self.template is None) == (self.spec is None):
            raise ConfigError("give exactly one of template and spec")
        if self.label_words is None:
            raise ConfigError("label_words is required: {class: word or [words]}")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"shots must be at least 1, got {self.shots}")
        if self.weight <= 0:
            raise ConfigError(f"weight must be positive, got {self.weight}")
        masks = self.prompt().num_masks
        if masks != 1:
            raise ConfigError(f"the prompt must have exactly one {{mask}}; it has {masks}")

    def prompt(self) -> Template:
        from .prompt_spec import PromptSpec

        try:
            if self.spec is not None:
                return PromptSpec.from_dict(self.spec, "spec").template()
            return Template(str(self.template))
        except (TemplateError, ValueError) as exc:
            raise ConfigError(f"{'spec' if self.spec is not None else 'template'}: {str(exc).splitlines()[0]}") from None


@dataclass
class MixingSection:
    strategy: Strategy = "proportional"
    temperature: float | None = None
    cap: int | None = None


@dataclass
class MultitaskConfig:
    """The whole run; see the module docstring. ``eval_split``/``eval_limit``: what the held-out
    task is scored on; ``max_length``/``truncation`` as in a classifier."""

    model: ModelSection = field(default_factory=ModelSection)
    tasks: dict[str, Any] = field(default_factory=dict)
    mixing: MixingSection = field(default_factory=MixingSection)
    methods: list[MethodEntry] | MethodEntry | None = None
    training: TrainConfig = field(default_factory=TrainConfig)
    leave_out: str | None = None
    output_dir: str | None = None
    seed: int = 13
    data_dir: str | None = None
    eval_split: str = "test"
    eval_limit: int | None = None
    max_length: int | None = None
    truncation: Truncation = "longest_first"

    def __post_init__(self) -> None:
        if not isinstance(self.tasks, dict) or not self.tasks:
            raise ConfigError("tasks: give at least two tasks, {name: {data, template, label_words}, ...}")
        self.tasks = {str(name): entry if isinstance(entry, TaskEntry) else from_dict(TaskEntry, entry or {}, f"tasks.{name}")
                      for name, entry in self.tasks.items()}
        for name in self.tasks:
            if "." in name:
                raise ConfigError(f"tasks.{name}: a task name cannot contain dots")
        if isinstance(self.methods, (str, dict)):
            self.methods = [self.methods]
        if self.methods is not None:
            check_methods(self.methods)
        if self.leave_out is not None and self.leave_out not in self.tasks:
            raise ConfigError(f"leave_out: no task {self.leave_out!r}; {closest_task(self.leave_out, list(self.tasks))}")
        mixed = [t for t in self.tasks if t != self.leave_out]
        if not mixed:
            raise ConfigError("tasks: nothing left to train on once leave_out is taken out")
        try:
            check_mixing(self.mixing.strategy, self.mixing.temperature, self.mixing.cap)
        except ConfigError as exc:
            raise ConfigError(f"mixing: {exc}") from None
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be at least 1, got {self.eval_limit}")


def load_multitask_config(path: str | Path, leave_out: str | None = None) -> MultitaskConfig:
    """Read and check a multi-task config; ``leave_out`` overrides the file's. Relative task
    folders, model folders and label-word files are read from the file's folder."""
    path = Path(path)
    raw = _resolve_paths(read_config_file(path), path.resolve().parent)
    if leave_out is not None:
        raw["leave_out"] = leave_out
    sections = ("model", "mixing", "training")
    raw = {k: ({} if v is None and k in sections else v) for k, v in raw.items()}
    try:
        return from_dict(MultitaskConfig, raw, "config")
    except ConfigError as exc:
        raise relocated(exc, "config", str(path)) from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    raw = dict(raw)
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str) and (base / model["name"] / "config.json").is_file():
        raw["model"] = {**model, "name": str(base / model["name"])}
    if isinstance(raw.get("data_dir"), str) and not Path(raw["data_dir"]).is_absolute():
        raw["data_dir"] = str(base / raw["data_dir"])
    tasks = raw.get("tasks")
    if isinstance(tasks, dict):
        resolved = {}
        for name, entry in tasks.items():
            if isinstance(entry, dict):
                entry = dict(entry)
                data, words = entry.get("data"), entry.get("label_words")
                if isinstance(data, str) and (base / data / "labels.json").is_file():
                    entry["data"] = str(base / data)
                if isinstance(words, str) and words.endswith(LABEL_WORD_FILES) and (base / words).is_file():
                    entry["label_words"] = str(base / words)
            resolved[name] = entry
        raw["tasks"] = resolved
    return raw


def mixture_tasks(config: MultitaskConfig) -> list[MixtureTask]:
    """Each task's training examples (``shots`` per class, drawn with the seed) and, for the
    task left out, its evaluation examples."""
    out = []
    for name, entry in config.tasks.items():
        task = load_task(str(entry.data), config.data_dir)
        train = task.load(entry.split)
        if entry.shots is not None:
            train = sample_per_class(train, entry.shots, config.seed, labels=task.labels)
        test = task.load(config.eval_split, config.eval_limit) if name == config.leave_out else None
        out.append(MixtureTask(name, train, entry.prompt(), entry.label_words, classes=task.labels,
                               weight=entry.weight, test=test))
    return out


def run_multitask(config: MultitaskConfig, output_dir: str | Path) -> MultitaskResult:
    tasks = mixture_tasks(config)
    plm = load_base_model(config.model)
    mixing = config.mixing
    return leave_one_out(tasks, config.leave_out, plm, config.methods, config.training,
                         strategy=mixing.strategy, temperature=mixing.temperature, cap=mixing.cap,
                         output_dir=output_dir, seed=config.seed, max_length=config.max_length,
                         truncation=config.truncation)


def add_multitask_command(commands: Any) -> None:
    parser = commands.add_parser(
        "multitask",
        help="prompted multi-task training, then zero-shot on a task left out",
        description="Trains one PLM's delta methods on a mixture of prompted tasks (each with its own "
        f"template and label words; mixing: {', '.join(STRATEGIES)}), then scores the left-out task "
        "zero-shot with its own template, beside the same template on the untouched model. Writes "
        "OUTPUT/result.json, OUTPUT/result.md and the trained delta in OUTPUT/delta.",
    )
    parser.add_argument("config", help="the multi-task config (.yaml)")
    parser.add_argument("--leave-out", help="the task to hold out (overrides leave_out in the config)")
    parser.add_argument("--output-dir", help="where results go (default: output_dir of the config)")
    parser.set_defaults(run=run_multitask_command)


def run_multitask_command(args: argparse.Namespace) -> int:
    config = load_multitask_config(args.config, args.leave_out)
    output = args.output_dir or config.output_dir
    if not output:
        raise ValueError("no output folder: set output_dir in the config or pass --output-dir")
    config = dataclasses.replace(config, output_dir=str(output))
    result = run_multitask(config, output)
    print(result.markdown())
    print(f"results in {Path(output) / 'result.md'}; the delta in {Path(output) / 'delta'}")
    return 0
