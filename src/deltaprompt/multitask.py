"""Prompted multi-task training (T0 / FLAN style, at our scale), then zero-shot on a left-out task.

Several labelled tasks, each read through its own template (or ``PromptSpec``) and label words,
are mixed into one training stream for one PLM with delta methods applied once (LoRA, prefix,
adapters, BitFit or all weights); a task left out of the mixture is then classified zero-shot
through its own template on the trained PLM, beside the same template on the untouched PLM::

    tasks = [MixtureTask("sst2", sst2_train, "Review: {text}\\nSentiment: {mask}", {...}), ...]
    mixture = TaskMixture(tasks, strategy="temperature", temperature=2.0)
    mixture.probabilities                      # {"sst2": 0.41, "agnews": 0.59}
    model = MultitaskModel(plm, tasks, methods=["lora"])
    train_mixture(model, mixture, TrainConfig(max_steps=300, batch_size=8))
    model.classifier(held_template, held_words).evaluate(held_examples)

    leave_one_out(tasks, "mr", plm, methods=["lora"], output_dir="runs/loo-mr")   # all of it

Sampling (``TaskMixture``): each training batch comes from one task, drawn with probability
proportional to a rate per task: its size (``proportional``), size^(1/T) (``temperature``: T = 1
is proportional, large T tends to uniform), min(size, K)^(1/T) (``capped``: T5's examples-
proportional mixing with cap K) or 1 (``uniform``); a task's ``weight`` multiplies its rate.
Batches are single-task because each task has its own template and classes.

Sharing: every method but the template-rewriting ones (prompt tuning, P-Tuning) changes the PLM
in place (LoRA layers, adapter hooks, parametrisations, unfrozen weights) or adds an input
transform (prefix), so ``MultitaskModel`` applies the methods once to itself and gives each
task's ``PromptModel`` (built on the same PLM without methods) its own list of input
transforms; any prompt on that PLM then sees the trained delta. Soft tokens written in a task's
template train too, per task (they do not carry over to a left-out task).

Training reuses ``Trainer`` unchanged (accelerate, learning rate per role, warm-up and schedule,
clipping, checkpoints and resume, logs): the mixture's batches are drawn beforehand, and each
one travels to the trainer as one ``Example`` carrying the batch (``batch_example``); the
trainer runs with one such item per step. Its per-epoch shuffle only reorders independent
draws, so the mixture's proportions are what trains.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import random
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import artifacts
from .classifier import PromptClassifier
from .data import Example
from .delta import MethodSpec, make_method, make_methods, template_rewriters
from .files import atomic_write
from .metrics import Evaluation
from .model import Batch, PromptModel, TaskModel, seeded
from .plm import PLM
from .schema import ConfigError
from .structure import count_parameters
from .template import Template
from .tokenization import PromptTokenizer, Truncation
from .trainer import TrainConfig, Trainer, TrainResult
from .verbalizer import Verbalizer, make_verbalizer

Strategy = Literal["proportional", "temperature", "capped", "uniform"]
STRATEGIES: tuple[str, ...] = ("proportional", "temperature", "capped", "uniform")
BATCH_KEY = "mixture_batch"  # meta key of an Example that carries a whole single-task batch
DELTA_KIND = "multitask_delta"
_TASK_PREFIX = "tasks."  # parameter names of per-task soft tokens inside a MultitaskModel


@dataclass
class MixtureTask:
    """One labelled task of the mixture: its training ``examples``, its ``template`` (text or
    ``Template``; a ``PromptSpec`` via ``spec.template()``) and ``label_words`` (anything
    ``Verbalizer`` takes, or a ``Verbalizer``; ``classes`` orders a list of words). ``weight``
    multiplies the task's sampling rate. ``test``: the examples scored when the task is held out
    (default: ``examples``)."""

    name: str
    examples: list[Example]
    template: Template | str
    label_words: Any
    classes: Sequence[str] | None = None
    weight: float = 1.0
    test: list[Example] | None = None

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ConfigError(f"task name {self.name!r}: give a non-empty name without dots")
        if self.weight <= 0:
            raise ConfigError(f"task {self.name!r}: weight must be positive, got {self.weight}")

    def verbalizer(self) -> Verbalizer:
        if isinstance(self.label_words, Verbalizer):
            return self.label_words
        return make_verbalizer(None, self.label_words, self.classes)


def check_mixing(strategy: str, temperature: float | None, cap: int | None) -> None:
    """Refuse a strategy without the knob it needs, or a knob it does not use."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"mixing strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if strategy == "temperature" and temperature is None:
        raise ConfigError("strategy temperature needs a temperature T (rates size^(1/T); 1 is proportional)")
    if temperature is not None and strategy not in ("temperature", "capped"):
        raise ConfigError(f"temperature applies to strategy temperature or capped, not {strategy}")
    if temperature is not None and temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if strategy == "capped" and cap is None:
        raise ConfigError("strategy capped needs a cap K: each task counts as at most K examples")
    if cap is not None and strategy != "capped":
        raise ConfigError(f"cap applies to strategy capped, not {strategy}")
    if cap is not None and cap < 1:
        raise ConfigError(f"cap must be at least 1, got {cap}")


class TaskMixture:
    """Which task each training batch comes from: seeded draws in fixed proportions.

    ``strategy`` picks the per-task rate (see the module docstring); ``temperature`` applies to
    ``temperature`` (required) and ``capped`` (default 1); ``cap`` (K, in examples) to ``capped``.
    """

    def __init__(self, tasks: Sequence[MixtureTask], strategy: Strategy = "proportional",
                 temperature: float | None = None, cap: int | None = None):
        if not tasks:
            raise ConfigError("a mixture needs at least one task")
        names = [t.name for t in tasks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"task {twice[0]!r} is in the mixture twice; give each task a distinct name")
        empty = [t.name for t in tasks if not t.examples]
        if empty:
            raise ConfigError(f"task {empty[0]!r} has no training examples")
        check_mixing(strategy, temperature, cap)
        self.tasks = list(tasks)
        self.strategy, self.temperature, self.cap = strategy, temperature, cap

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def sizes(self) -> dict[str, int]:
        return {t.name: len(t.examples) for t in self.tasks}

    def rate(self, task: MixtureTask) -> float:
        size = float(len(task.examples))
        if self.strategy == "uniform":
            base = 1.0
        elif self.strategy == "proportional":
            base = size
        else:
            capped = min(size, self.cap) if self.cap is not None else size
            base = capped ** (1.0 / (self.temperature or 1.0))
        return task.weight * base

    @property
    def probabilities(self) -> dict[str, float]:
        """Each task's probability of supplying a batch (they sum to 1)."""
        rates = [self.rate(t) for t in self.tasks]
        total = sum(rates)
        return {t.name: r / total for t, r in zip(self.tasks, rates, strict=True)}

    def draw(self, count: int, seed: int) -> list[str]:
        """``count`` task names, independent draws in the mixture's proportions; same seed, same list."""
        names, probabilities = zip(*self.probabilities.items(), strict=True)
        return random.Random(seed).choices(names, weights=probabilities, k=count)

    def batches(self, count: int, batch_size: int, seed: int) -> list[tuple[str, list[Example]]]:
        """``count`` single-task batches: the task of each from ``draw``, its examples read in
        order from a seeded permutation of that task's examples, reshuffled on every pass."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        streams = {t.name: _stream(t.examples, random.Random(f"{seed}/{t.name}")) for t in self.tasks}
        return [(name, [next(streams[name]) for _ in range(batch_size)]) for name in self.draw(count, seed)]

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "temperature": self.temperature, "cap": self.cap,
                "sizes": self.sizes, "weights": {t.name: t.weight for t in self.tasks},
                "probabilities": self.probabilities}


def _stream(examples: Sequence[Example], rng: random.Random) -> Any:
    while True:
        order = list(examples)
        rng.shuffle(order)
        yield from order


def batch_example(task: str, examples: Sequence[Example]) -> Example:
    """One whole single-task batch as one ``Example`` (what the trainer iterates over)."""
    return Example(task, meta={BATCH_KEY: tuple(examples)})


class MultitaskModel(TaskModel):
    """One PLM, delta methods applied once, one ``PromptModel`` view per task (``tasks[name]``).

    ``forward`` takes a single-task batch (its ``"task"`` entry, an index into ``names``) and
    returns that task's (B, C_task) class log-probabilities, so classes may differ per task.
    ``methods``: delta methods (None: every PLM weight trains, as ``Classifier.fit`` does).
    """

    def __init__(self, plm: PLM, tasks: Sequence[MixtureTask], methods: Sequence[MethodSpec] | MethodSpec | None = None,
                 max_length: int | None = None, truncation: Truncation = "longest_first", seed: int = 0):
        super().__init__(plm)
        built = make_methods(methods if methods is not None else ["finetune"])
        rewriters = template_rewriters(built)
        if rewriters:
            raise ConfigError(
                f"{', '.join(rewriters)} trains one template's soft tokens; in a mixture every task has its own "
                "template. Use lora, prefix, adapter, bitfit, intrinsic or finetune (soft blocks written in a "
                "task's template train per task)"
            )
        self.names = [t.name for t in tasks]
        self.max_length, self.truncation, self.seed = max_length, truncation, seed
        self.tasks = nn.ModuleDict()
        with warnings.catch_warnings():  # soft tokens of the templates train with the mixture
            warnings.filterwarnings("ignore", message="the template has randomly initialised soft tokens")
            for i, task in enumerate(tasks):
                self.tasks[task.name] = self._view(task.template, task.verbalizer(), seed + 1 + i)
        with seeded(seed):
            self.setup_methods(built)
        for view in self.tasks.values():
            self._shorten(view)
            if view.soft_prompt is not None:
                self.claim(view.soft_prompt.parameters(), "soft")
            if view.head is not None:  # a soft or prototype verbalizer's head, per task
                self.claim(view.head.parameters(), "head")

    def _view(self, template: Template | str, verbalizer: Verbalizer, seed: int) -> PromptModel:
        view = PromptModel(self.plm, template, verbalizer, max_length=self.max_length, truncation=self.truncation,
                           seed=seed)
        view.input_transforms = self.input_transforms  # the same list: a prefix added later reaches every view
        return view

    def _shorten(self, view: PromptModel) -> None:
        """Leave room for prefix positions in a view's tokenizer (the prefix method does this for
        the task model it is applied to; views are built beside it)."""
        room = sum(getattr(m.config, "num_virtual_tokens", 0) for m in self.methods if m.name == "prefix")
        tokenizer: PromptTokenizer = view.prompt_tokenizer
        if room and isinstance(tokenizer.max_length, int):
            tokenizer.max_length = max(1, tokenizer.max_length - room)

    @property
    def classes(self) -> tuple[str, ...]:
        raise ValueError("a mixture has classes per task: read model.tasks[name].classes")

    # -- data: one feature per single-task batch
    def encode(self, examples: Sequence[Example]) -> list[tuple[int, list[Any]]]:
        out = []
        for n, example in enumerate(examples):
            batch = example.meta.get(BATCH_KEY)
            if batch is None or example.text not in self.tasks:
                raise ValueError(f"item {n} is not a batch of a mixture task; build items with batch_example(task, examples)")
            out.append((self.names.index(example.text), self.tasks[example.text].encode(list(batch))))
        return out

    def collate(self, features: Sequence[tuple[int, list[Any]]]) -> Batch:
        tasks = {index for index, _ in features}
        if len(tasks) != 1:
            raise ValueError(f"a batch must come from one task; got tasks {sorted(self.names[i] for i in tasks)}")
        (index,) = tasks
        batch = self.tasks[self.names[index]].collate([f for _, encoded in features for f in encoded])
        return {**batch, "task": torch.tensor(index)}

    @staticmethod
    def length(feature: tuple[int, list[Any]]) -> int:
        return max(PromptModel.length(f) for f in feature[1])

    def targets(self, examples: Sequence[Example], features: Sequence[Any], what: str) -> list[Any]:
        return [self.tasks[e.text].targets(list(e.meta[BATCH_KEY]), f[1], f"{what} ({e.text})")
                for e, f in zip(examples, features, strict=True)]

    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor:
        return torch.tensor([i for batch in targets for i in batch], dtype=torch.long)

    def forward(self, batch: Batch) -> torch.Tensor:
        index = int(batch["task"])
        return self.tasks[self.names[index]]({k: v for k, v in batch.items() if k != "task"})

    # -- after training
    def classifier(self, template: Template | str, label_words: Any, *, classes: Sequence[str] | None = None,
                   batch_size: int = 16) -> SharedDeltaClassifier:
        """A classifier reading ``template`` on this trained PLM, delta included (for evaluating;
        to keep one, ``save_delta`` then ``load_delta`` on the base model)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the template has randomly initialised soft tokens")
            clf = SharedDeltaClassifier(self.plm, template, label_words, classes=classes, batch_size=batch_size,
                                        max_length=self.max_length, truncation=self.truncation, seed=self.seed)
        clf.model.input_transforms = self.input_transforms
        self._shorten(clf.model)
        clf.model.eval()
        return clf

    def delta_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors by name: the shared delta (as a ``PromptModel`` with the same
        methods names them) and each task's template soft tokens (``tasks.<name>.soft_prompt...``)."""
        return {n: p.detach() for n, p in self.trained_state().items()}

    def describe(self) -> dict[str, Any]:
        return {
            "kind": DELTA_KIND,
            "base_model": {"name": self.plm.name, "family": self.plm.family, "fingerprint": self.base_fingerprint,
                           "head_pretrained": self.plm.head_pretrained},
            "methods": [m.describe() for m in self.methods],
            "tasks": {name: {"template": view.source_template.text, "classes": list(view.classes)}
                      for name, view in self.tasks.items()},
            "max_length": self.max_length,
            "truncation": self.truncation,
            "seed": self.seed,
        }


class SharedDeltaClassifier(PromptClassifier):
    """A prompt on a multi-task model's trained PLM. Its delta belongs to the multi-task model
    (a prefix is not even in the PLM), so it cannot be saved on its own."""

    def save(self, directory: str | Path) -> Path:
        raise ValueError("this classifier shares a multi-task model's delta: save that with save_delta(model, "
                         "folder), then load_delta(folder, base_plm, template, label_words) gives one to save")

    def fit(self, *args: Any, **kwargs: Any) -> SharedDeltaClassifier:
        raise ValueError("this classifier shares a multi-task model's delta; train a classifier from "
                         "load_delta(...) instead, which owns its copy")


# ----------------------------------------------------------------------------- training

def mixture_steps(mixture: TaskMixture, config: TrainConfig) -> int:
    """Batches to draw: ``max_steps`` optimiser steps (times gradient accumulation), or else
    ``epochs`` passes over as many examples as the tasks hold together."""
    if config.max_steps is not None:
        return config.max_steps * config.gradient_accumulation_steps
    return config.epochs * math.ceil(sum(mixture.sizes.values()) / config.batch_size)


def train_mixture(model: MultitaskModel, mixture: TaskMixture, config: TrainConfig | None = None,
                  seed: int | None = None) -> tuple[TrainResult, Counter[str]]:
    """Train ``model`` on batches drawn from ``mixture`` (``seed``: of the draws; default the
    config's); returns the trainer's result and how many batches each task supplied."""
    config = config or TrainConfig()
    if set(mixture.names) - set(model.names):
        missing = sorted(set(mixture.names) - set(model.names))
        raise ValueError(f"the model has no view for tasks {missing}; build it with the mixture's tasks")
    seed = config.seed if seed is None else seed
    plan = mixture.batches(mixture_steps(mixture, config), config.batch_size, seed)
    if config.output_dir:
        _check_plan(Path(config.output_dir), mixture, config, seed, len(plan))
    # One drawn batch per trainer item; epochs and max_steps are already in the plan's length.
    inner = replace(config, batch_size=1, epochs=1, max_steps=None)
    result = Trainer(model, inner).fit([batch_example(name, examples) for name, examples in plan])
    return result, Counter(name for name, _ in plan)


def _check_plan(directory: Path, mixture: TaskMixture, config: TrainConfig, seed: int, count: int) -> None:
    """The trainer resumes from its checkpoints, which only fit the same drawn batches: record
    what drew them, and refuse a folder holding another mixture's run."""
    key = {"mixture": mixture.describe(), "batch_size": config.batch_size, "batches": count, "seed": seed,
           "examples": {t.name: hashlib.sha256(repr(t.examples).encode()).hexdigest()[:16] for t in mixture.tasks}}
    path = directory / "mixture.json"
    if path.exists() and config.resume and json.loads(path.read_text()) != json.loads(json.dumps(key)):
        raise ValueError(f"{directory} holds a run on another mixture (tasks, data, sizes or batches differ); "
                         "use another output_dir, or training.resume: false to start over there")
    with atomic_write(path) as handle:
        json.dump(key, handle, indent=1)


# ----------------------------------------------------------------------------- saving

def save_delta(model: MultitaskModel, directory: str | Path) -> Path:
    """Write the trained delta (``weights.safetensors``) and how it was built
    (``deltaprompt.json``) to a folder, atomically."""
    return artifacts.write(directory, model.describe(), dict(model.delta_state()))


def load_delta(directory: str | Path, plm: PLM, template: Template | str, label_words: Any, *,
               classes: Sequence[str] | None = None, batch_size: int = 16) -> PromptClassifier:
    """A ``PromptClassifier`` for any template on the base model ``plm`` (untouched, the one
    trained on: its fingerprint is checked) with a saved multi-task delta applied; save it with
    ``clf.save`` to get an ordinary classifier folder."""
    description, tensors = artifacts.read(directory)
    if description.get("kind") != DELTA_KIND:
        raise artifacts.ArtifactError(f"{directory} is not a multi-task delta (kind {description.get('kind')!r})")
    artifacts.check_base(description, plm.model)
    methods = [make_method(dict(m), f"{directory} methods") for m in description["methods"]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the template has randomly initialised soft tokens")
        clf = PromptClassifier(plm, template, label_words, classes=classes, batch_size=batch_size,
                               max_length=description["max_length"], truncation=description["truncation"],
                               methods=methods, seed=description["seed"])
    shared = {n: t for n, t in tensors.items() if not n.startswith(_TASK_PREFIX)}
    state = clf.model.trained_state()
    missing = sorted(n for n in set(state) - set(shared) if not n.startswith("soft_prompt."))
    unexpected = sorted(set(shared) - set(state))
    if missing or unexpected:
        raise artifacts.ArtifactError(
            f"{directory}: the saved delta does not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); was it saved by another version of deltaprompt?")
    with torch.no_grad():
        for name, parameter in state.items():
            if name in shared:
                parameter.copy_(shared[name].to(parameter.device, parameter.dtype))
    clf.model.eval()
    return clf


# ----------------------------------------------------------------------------- leave one out

@dataclass
class MultitaskResult:
    """What a leave-one-out run measured (``score``/``baseline``: n, accuracy, macro_f1)."""

    held_out: str
    mixture: dict[str, Any]
    steps_drawn: dict[str, int]
    methods: list[dict[str, Any]]
    parameters: dict[str, Any]
    score: dict[str, float | int] | None
    baseline: dict[str, float | int] | None
    train_loss: float
    steps: int
    seconds: float
    template: str = ""
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def markdown(self) -> str:
        probabilities, sizes = self.mixture["probabilities"], self.mixture["sizes"]
        knobs = ", ".join(f"{k} {self.mixture[k]}" for k in ("temperature", "cap") if self.mixture[k] is not None)
        methods = ", ".join(_method_text(m) for m in self.methods)
        lines = [
            f"# Multi-task prompted training, `{self.held_out}` left out" if self.held_out else
            "# Multi-task prompted training",
            "",
            f"Mixing: {self.mixture['strategy']}" + (f" ({knobs})" if knobs else "") + f". Methods: {methods}; "
            f"trainable {self.parameters['trainable']:,} of {self.parameters['total']:,} parameters "
            f"({self.parameters['percent']:.3f}%). {self.steps} steps, final train loss {self.train_loss:.4f}, "
            f"{self.seconds:.0f} s.",
            "",
            "| task | training examples | probability | batches drawn |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {name} | {sizes[name]} | {p:.4f} | {self.steps_drawn.get(name, 0)} |"
                  for name, p in probabilities.items()]
        if self.score is not None and self.baseline is not None:
            lines += [
                "",
                f"Held-out task `{self.held_out}`, template `{self.template}`, {self.score['n']} examples:",
                "",
                "| model | accuracy | macro-F1 |",
                "|---|---:|---:|",
                f"| untouched PLM (plain zero-shot) | {self.baseline['accuracy']:.4f} | {self.baseline['macro_f1']:.4f} |",
                f"| after multi-task training | {self.score['accuracy']:.4f} | {self.score['macro_f1']:.4f} |",
                f"| change | {self.score['accuracy'] - self.baseline['accuracy']:+.4f} | "
                f"{self.score['macro_f1'] - self.baseline['macro_f1']:+.4f} |",
            ]
        return "\n".join(lines) + "\n"

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """``result.json`` and ``result.md`` in ``directory``, each written atomically."""
        directory = Path(directory)
        paths = directory / "result.json", directory / "result.md"
        with atomic_write(paths[0]) as handle:
            json.dump(self.to_dict(), handle, indent=2)
            handle.write("\n")
        with atomic_write(paths[1]) as handle:
            handle.write(self.markdown())
        return paths


def _method_text(description: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in description.items() if k != "method" and v is not None)
    return f"{description['method']}({options})" if options else str(description["method"])


def leave_one_out(
    tasks: Sequence[MixtureTask],
    held_out: str | None,
    plm: PLM,
    methods: Sequence[MethodSpec] | MethodSpec | None = ("lora",),
    config: TrainConfig | None = None,
    *,
    strategy: Strategy = "proportional",
    temperature: float | None = None,
    cap: int | None = None,
    output_dir: str | Path | None = None,
    seed: int = 0,
    max_length: int | None = None,
    truncation: Truncation = "longest_first",
) -> MultitaskResult:
    """Train on every task but ``held_out``, then score ``held_out`` zero-shot through its own
    template on the trained PLM and on the untouched one (measured first). ``plm`` is trained in
    place. With ``output_dir``: ``result.json``, ``result.md``, the delta in ``delta/`` (see
    ``load_delta``) and the trainer's checkpoints and log in ``train/`` (a rerun resumes).
    ``held_out`` None trains on all tasks and scores nothing."""
    names = [t.name for t in tasks]
    if held_out is not None and held_out not in names:
        raise ConfigError(f"leave_out: no task {held_out!r}; {closest_task(held_out, names)}")
    left = next((t for t in tasks if t.name == held_out), None)
    mixture = TaskMixture([t for t in tasks if t.name != held_out], strategy, temperature, cap)
    config = config or TrainConfig()
    if output_dir is not None and config.output_dir is None:
        config = replace(config, output_dir=str(Path(output_dir) / "train"))
    started = time.perf_counter()
    baseline = None
    if left is not None:
        untouched = PromptClassifier(plm, left.template, left.verbalizer(), batch_size=config.eval_batch_size,
                                     max_length=max_length, truncation=truncation, seed=seed)
        baseline = _score(untouched.evaluate(left.test if left.test is not None else left.examples))
    model = MultitaskModel(plm, mixture.tasks, methods, max_length=max_length, truncation=truncation, seed=seed)
    result, drawn = train_mixture(model, mixture, config, seed)
    score = None
    if left is not None:
        held = model.classifier(left.template, left.verbalizer(), batch_size=config.eval_batch_size)
        score = _score(held.evaluate(left.test if left.test is not None else left.examples))
    template = "" if left is None else (left.template.text if isinstance(left.template, Template) else left.template)
    out = MultitaskResult(
        held_out=held_out or "", mixture=mixture.describe(), steps_drawn=dict(drawn),
        methods=[m.describe() for m in model.methods], parameters=count_parameters(model).to_dict(),
        score=score, baseline=baseline, train_loss=result.train_loss, steps=result.steps,
        seconds=round(time.perf_counter() - started, 2), template=template,
    )
    if output_dir is not None:
        out.outputs = {"delta": str(Path(output_dir) / "delta"), "result": str(Path(output_dir) / "result.json")}
        save_delta(model, Path(output_dir) / "delta")
        out.save(output_dir)
    return out


def _score(evaluation: Evaluation) -> dict[str, float | int]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in evaluation.summary().items()}


def closest_task(name: str, names: Sequence[str]) -> str:
    """A hint for a task name that is not in ``names``."""
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {close[0]!r}?" if close else f"tasks: {', '.join(names)}"
