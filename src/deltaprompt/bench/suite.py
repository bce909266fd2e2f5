"""The benchmark suite: which model, tasks, methods, K values and seeds ``deltaprompt bench`` runs.

A suite is a YAML file (or a shipped preset: ``quick``, ``paper``, ``gpu``)::

    name: quick
    model: smollm2-135m                  # load_plm name/path/alias, or a model built from a config
    k: [16]                              # examples per class in train (and again in dev)
    seeds: [13]
    test_limit: 100                      # fixed random sample of the test split (seed 0); null: all
    dev: true                            # LM-BFF: K per class dev set, disjoint from train
    budget: {epochs: 5, batch_size: 8}   # TrainConfig settings shared by every trained method
    tasks:
      sst2: {template: "Review: {text}\\nSentiment: {mask}",
             label_words: {negative: negative, positive: positive}}
    methods:
      zero_shot: {kind: zero_shot}
      prompt_lora: {kind: prompt, methods: [{method: lora}]}
      head_finetune: {kind: head, methods: [finetune]}
      setfit: {kind: setfit, model: minilm-l6}

Everything is checked when the suite is read, before a model is loaded: unknown keys (with
the closest valid name), options that do not belong to a method's kind, templates, label
words, delta methods and training settings. Errors name the key and say what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from ..config import check_methods, read_yaml
from ..head import POOLINGS
from ..schema import ConfigError, from_dict, relocated
from ..template import Template, TemplateError
from ..trainer import TrainConfig
from ..verbalizer import parse_label_words

MethodKind = Literal["zero_shot", "prompt", "head", "icl", "pet", "setfit", "peft_lora"]
METHOD_KINDS: tuple[str, ...] = get_args(MethodKind)
BASELINE_KINDS = ("setfit", "peft_lora")
# Kinds that train weights: each of their runs gets a freshly loaded model and the budget.
TRAINED_KINDS = ("prompt", "head", "pet", "setfit", "peft_lora")
# Kinds whose runs depend on neither K nor the seed: one run per task.
SEEDLESS_KINDS = ("zero_shot",)
# How the report groups methods (markers and colours).
FAMILIES: dict[str, str] = {
    "zero_shot": "zero-shot",
    "icl": "zero-shot",  # no weight trains: demonstrations in the prompt
    "prompt": "prompt",
    "pet": "prompt",
    "head": "head",
    "setfit": "baseline",
    "peft_lora": "baseline",
}
# The options each kind takes besides ``kind`` (baseline kinds take their own, checked when built).
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "zero_shot": ("calibrate",),
    "prompt": ("methods", "verbalizer", "calibrate", "training"),
    "head": ("methods", "template", "pooling", "dropout", "training"),
    "icl": ("shots", "selection", "calibrate"),
    "pet": ("methods", "final", "unlabelled", "generations", "final_epochs", "temperature", "training"),
}
# TrainConfig fields the runner sets itself for every run.
RUNNER_SETTINGS = ("seed", "output_dir", "progress", "cpu", "resume")
PRESETS_PACKAGE = "deltaprompt.bench"


# ----------------------------------------------------------------------------- sections

@dataclass
class ModelConfig:
    """A model built from a transformers config with random weights (speed and memory only):
    ``architecture`` is the config's model type (llama, gpt2, roberta, t5...), ``tokenizer`` a
    name/path/alias whose tokenizer it reads with, ``config`` the config's values (its
    ``vocab_size`` defaults to the tokenizer's size), ``name`` what the report calls it."""

    architecture: str
    tokenizer: str
    config: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        from transformers import CONFIG_MAPPING

        if self.architecture not in CONFIG_MAPPING:
            close = difflib.get_close_matches(self.architecture, list(CONFIG_MAPPING), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (a transformers model type, e.g. llama, gpt2)"
            raise ConfigError(f"model.architecture: unknown model type {self.architecture!r}{hint}")

    @property
    def display_name(self) -> str:
        return self.name or f"{self.architecture} (random weights)"


@dataclass
class TaskSpec:
    """One task: the prompt its prompt-based methods read and how it is scored.

    ``template``: one ``{mask}``, fields ``{text}``/``{text_b}``; ``label_words``: {class: word
    or [words]} for every class of the task. ``metric``: the task's main score. ``k``: K values
    for this task instead of the suite's (a task with a rare class: CB's 16 "neutral" training
    examples give K = 8 train + 8 dev). ``path``: the task folder (default: the name under the
    suite's ``data_dir``). ``patterns``: more (template, label words) pairs for PET."""

    template: str | None = None
    label_words: dict[str, Any] | None = None
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    k: int | list[int] | None = None
    path: str | None = None
    patterns: list[dict[str, Any]] | None = None

    def check(self, where: str) -> None:
        if self.template is not None:
            _check_prompt_template(self.template, f"{where}.template")
        if self.label_words is not None:
            _check_label_words(self.label_words, f"{where}.label_words")
        if self.k is not None:
            self.k = _k_list(self.k, f"{where}.k")
        for i, pattern in enumerate(self.patterns or []):
            spot = f"{where}.patterns[{i}]"
            if not isinstance(pattern, dict) or set(pattern) != {"template", "label_words"}:
                raise ConfigError(f"{spot}: expected a mapping with template and label_words, got {pattern!r}")
            _check_prompt_template(pattern["template"], f"{spot}.template")
            _check_label_words(pattern["label_words"], f"{spot}.label_words")

    def k_values(self, suite_k: list[int]) -> list[int]:
        if self.k is None:
            return list(suite_k)
        return [self.k] if isinstance(self.k, int) else list(self.k)


@dataclass
class MethodSpec:
    """One row of the results table. ``kind`` decides which options apply:

    - ``zero_shot``: the task's prompt, no training (``calibrate``: contextual calibration);
    - ``prompt``: a ``PromptClassifier`` trained with delta ``methods`` (``[finetune]``: prompt
      fine-tuning, LM-BFF), ``verbalizer`` (manual, soft, ...), ``calibrate`` after training;
    - ``head``: a ``HeadClassifier`` (classic fine-tuning; ``methods`` default ``[finetune]``),
      ``template`` without a mask (default: the text, or the model's pair format), ``pooling``,
      ``dropout``;
    - ``icl``: in-context learning with ``shots`` demonstrations (``selection``: random,
      balanced, knn) from the K-per-class training set, ``calibrate``;
    - ``pet``: PET/iPET with the task's template and ``patterns``: ``methods`` of the pattern
      models, ``final`` classifier (head or prompt), ``unlabelled`` examples from the rest of
      the train split, ``generations`` (iPET), ``final_epochs``, ``temperature``;
    - ``setfit``, ``peft_lora``: baselines from ``deltaprompt.bench.baselines``; every other key
      is the baseline's own option (checked when it is built).

    ``training``: TrainConfig settings for this method over the suite's ``budget``.
    """

    kind: MethodKind
    calibrate: bool | None = None
    methods: list[str | dict[str, Any]] | None = None
    verbalizer: str | dict[str, Any] | None = None
    template: str | None = None
    pooling: Literal["cls", "mean", "last"] | None = None
    dropout: float | None = None
    shots: int | None = None
    selection: Literal["random", "balanced", "knn"] | None = None
    final: Literal["head", "prompt"] | None = None
    unlabelled: int | None = None
    generations: int | None = None
    final_epochs: int | None = None
    temperature: float | None = None
    training: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # a baseline's own options

    @property
    def family(self) -> str:
        return FAMILIES[self.kind]

    @property
    def trained(self) -> bool:
        return self.kind in TRAINED_KINDS

    @property
    def seedless(self) -> bool:
        return self.kind in SEEDLESS_KINDS

    def to_dict(self) -> dict[str, Any]:
        """The method as declared (unset options left out): what its runs' ids hash."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("kind", "options") or value is None:
                continue
            out[f.name] = value
        out.update(self.options)
        return out


@dataclass
class Suite:
    """A whole benchmark suite; see the module docstring. ``quality: false`` marks a suite
    whose scores mean nothing (random weights): the report shows its speed and memory only.
    ``device``: cpu, cuda, cuda:1 (default: cuda when there is one). ``targets``: what the
    report measures the results against (free-form, read by the report)."""

    name: str
    tasks: dict[str, TaskSpec]
    methods: dict[str, MethodSpec]
    model: str | ModelConfig = "smollm2-135m"
    description: str = ""
    data_dir: str | None = None
    k: list[int] = field(default_factory=lambda: [16])
    seeds: list[int] = field(default_factory=lambda: [13])
    test_limit: int | None = None
    dev: bool = True
    budget: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    quality: bool = True
    targets: dict[str, Any] | None = None
    source: str | None = field(default=None, compare=False)  # the file it was read from

    @property
    def model_name(self) -> str:
        """The model as the report names it."""
        if isinstance(self.model, ModelConfig):
            return self.model.display_name
        path = Path(self.model)
        return path.name if path.is_dir() else self.model

    def to_dict(self) -> dict[str, Any]:
        """The suite as plain data (what ``suite.yaml`` of a results folder holds)."""
        return {
            "name": self.name,
            "description": self.description,
            "model": dataclasses.asdict(self.model) if isinstance(self.model, ModelConfig) else self.model,
            "data_dir": self.data_dir,
            "k": list(self.k),
            "seeds": list(self.seeds),
            "test_limit": self.test_limit,
            "dev": self.dev,
            "budget": dict(self.budget),
            "device": self.device,
            "quality": self.quality,
            "tasks": {name: {k: v for k, v in dataclasses.asdict(t).items() if v is not None}
                      for name, t in self.tasks.items()},
            "methods": {name: m.to_dict() for name, m in self.methods.items()},
            "targets": self.targets,
        }


# ----------------------------------------------------------------------------- checks

def _check_prompt_template(text: Any, where: str) -> None:
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a template string, got {text!r}")
    try:
        masks = Template(text).num_masks
    except (TemplateError, ValueError) as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None
    if masks != 1:
        raise ConfigError(f"{where}: a prompt reads exactly one {{mask}}; this template has {masks}")


def _check_label_words(words: Any, where: str) -> None:
    if not isinstance(words, dict) or not words:
        raise ConfigError(f"{where}: expected a mapping {{class: word or [words]}}, got {words!r}")
    for cls, value in words.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool) or item is None:
                raise ConfigError(
                    f"{where}.{cls}: {item!r} is not a word; YAML reads yes/no/true/null unquoted as "
                    'values: quote the word ("yes")'
                )
    try:
        parse_label_words(words)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _k_list(value: Any, where: str) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    if not values:
        raise ConfigError(f"{where}: give at least one K (examples per class)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{where}: K values are whole numbers of at least 1, got {v!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: a K value is listed twice: {values}")
    return values


def check_budget(budget: dict[str, Any], where: str) -> None:
    """The keys and values of TrainConfig settings (the runner sets seed, output_dir, progress,
    cpu and resume itself)."""
    if not isinstance(budget, dict):
        raise ConfigError(f"{where}: expected a mapping of training settings, got {budget!r}")
    for key in budget:
        if key in RUNNER_SETTINGS:
            raise ConfigError(
                f"{where}.{key}: set by the runner for every run (the seed is the run's seed); remove it"
            )
    from_dict(TrainConfig, dict(budget), where)


def _method_spec(name: str, raw: Any) -> MethodSpec:
    where = f"methods.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with a kind ({', '.join(METHOD_KINDS)}), got {raw!r}")
    kind = raw.get("kind")
    if kind not in METHOD_KINDS:
        given = "no kind" if kind is None else f"kind {kind!r}"
        raise ConfigError(f"{where}: {given}; kind must be one of {', '.join(METHOD_KINDS)}")
    if kind in BASELINE_KINDS:
        options = {k: v for k, v in raw.items() if k not in ("kind", "training")}
        _check_baseline_options(kind, options, where)
        spec = from_dict(MethodSpec, {"kind": kind, "training": raw.get("training")}, where)
        spec.options = options
    else:
        allowed = KIND_OPTIONS[kind]
        for key in raw:
            if key == "kind" or key in allowed:
                continue
            owners = [k for k, keys in KIND_OPTIONS.items() if key in keys]
            if owners:
                raise ConfigError(f"{where}.{key} applies to kind {' or '.join(owners)}, not to kind {kind}; "
                                  f"kind {kind} takes: {', '.join(allowed)}")
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"kind {kind} takes: {', '.join(allowed)}"
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}")
        spec = from_dict(MethodSpec, dict(raw), where)
    if spec.methods is not None:
        try:
            check_methods(spec.methods)
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    if spec.kind == "head" and spec.template is not None:
        try:
            masks = Template(spec.template).num_masks
        except (TemplateError, ValueError) as exc:
            raise ConfigError(f"{where}.template: {str(exc).splitlines()[0]}") from None
        if masks:
            raise ConfigError(f"{where}.template: a head classifier reads no {{mask}}; remove it")
    if spec.pooling is not None and spec.pooling not in POOLINGS:  # pragma: no cover - the Literal checks it
        raise ConfigError(f"{where}.pooling: one of {POOLINGS}")
    if spec.dropout is not None and not 0 <= spec.dropout < 1:
        raise ConfigError(f"{where}.dropout must be in [0, 1), got {spec.dropout}")
    for key in ("shots", "unlabelled", "final_epochs"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise ConfigError(f"{where}.{key} must be at least 1, got {value}")
    if spec.generations is not None and spec.generations < 0:
        raise ConfigError(f"{where}.generations cannot be negative, got {spec.generations}")
    if spec.temperature is not None and not spec.temperature > 0:
        raise ConfigError(f"{where}.temperature must be positive, got {spec.temperature}")
    if spec.training is not None:
        if not spec.trained:
            raise ConfigError(f"{where}.training: kind {spec.kind} trains nothing; remove it")
        check_budget(spec.training, f"{where}.training")
    return spec


BASELINE_OPTIONS = {"setfit": "SetFitOptions", "peft_lora": "PeftLoraOptions"}


def _check_baseline_options(kind: str, options: dict[str, Any], where: str) -> None:
    """A baseline's options against the dataclass its module declares for them (a typo would
    otherwise only fail once the suite reaches that run)."""
    try:
        from . import baselines
    except ImportError:  # pragma: no cover - checked again when the baseline is built
        return
    cls = getattr(baselines, BASELINE_OPTIONS[kind], None)
    if cls is None or not dataclasses.is_dataclass(cls):  # pragma: no cover
        return
    from_dict(cls, dict(options), where)


def build_suite(raw: Any, where: str = "suite", base: Path | None = None) -> Suite:
    """A checked ``Suite`` from plain data; every error is a one-line ConfigError naming the key.
    ``base``: the folder relative paths (data_dir, task paths, a model folder) are read from."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a suite is a mapping (name, model, tasks, methods, ...), got {type(raw).__name__}")
    raw = dict(raw)
    try:
        return _build(raw, base)
    except ConfigError as exc:
        raise relocated(exc, "suite", where) from None


def _build(raw: dict[str, Any], base: Path | None) -> Suite:
    known = [f.name for f in dataclasses.fields(Suite) if f.name != "source"]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {key!r}; {hint}")
    for key in ("name", "tasks", "methods"):
        if not raw.get(key):
            what = {"name": "a name", "tasks": "at least one task", "methods": "at least one method"}[key]
            raise ConfigError(f"{key}: the suite needs {what}")
    tasks_raw, methods_raw = raw.pop("tasks"), raw.pop("methods")
    if not isinstance(tasks_raw, dict):
        raise ConfigError(f"tasks: expected a mapping {{task name: {{template, label_words, ...}}}}, got {tasks_raw!r}")
    if not isinstance(methods_raw, dict):
        raise ConfigError(f"methods: expected a mapping {{row name: {{kind, ...}}}}, got {methods_raw!r}")
    model = raw.pop("model", "smollm2-135m")
    if isinstance(model, dict):
        model = from_dict(ModelConfig, model, "model")
        if base is not None and (base / model.tokenizer).is_dir():
            model.tokenizer = str(base / model.tokenizer)
    elif not isinstance(model, str) or not model:
        raise ConfigError(
            f"model: a name, folder or alias, or a mapping {{architecture, tokenizer, config}}; got {model!r}"
        )
    elif base is not None and (base / model / "config.json").is_file():
        model = str(base / model)
    if raw.get("budget") is None:
        raw["budget"] = {}
    check_budget(raw["budget"], "budget")
    suite = from_dict(Suite, {**raw, "tasks": {}, "methods": {}}, "suite")
    suite.model = model
    suite.k = _k_list(suite.k, "k")
    if not suite.seeds:
        raise ConfigError("seeds: give at least one seed")
    if len(set(suite.seeds)) != len(suite.seeds):
        raise ConfigError(f"seeds: a seed is listed twice: {suite.seeds}")
    if suite.test_limit is not None and suite.test_limit < 1:
        raise ConfigError(f"test_limit must be at least 1 (or null for the whole test split), got {suite.test_limit}")
    if base is not None and suite.data_dir and not Path(suite.data_dir).expanduser().is_absolute():
        suite.data_dir = str(base / Path(suite.data_dir).expanduser())
    for name, task_raw in tasks_raw.items():
        task = from_dict(TaskSpec, {} if task_raw is None else task_raw, f"tasks.{name}")
        task.check(f"tasks.{name}")
        if base is not None and task.path and not Path(task.path).expanduser().is_absolute():
            task.path = str(base / Path(task.path).expanduser())
        suite.tasks[str(name)] = task
    for name, method_raw in methods_raw.items():
        suite.methods[str(name)] = _method_spec(str(name), method_raw)
    _check_tasks_fit_methods(suite)
    if isinstance(suite.model, ModelConfig):
        for name, method in suite.methods.items():
            if method.kind == "peft_lora" and not method.options.get("model"):
                raise ConfigError(
                    f"methods.{name}: peft_lora loads a pretrained model by name and this suite's model is "
                    "built from a config; give the method a model: option (or leave it out of this suite)"
                )
    return suite


def _check_tasks_fit_methods(suite: Suite) -> None:
    """Prompt-based kinds need each task's template and label words."""
    for method_name, method in suite.methods.items():
        if method.kind not in ("zero_shot", "prompt", "icl", "pet"):
            continue
        for task_name, task in suite.tasks.items():
            missing = [k for k in ("template", "label_words") if getattr(task, k) is None]
            if missing:
                raise ConfigError(
                    f"tasks.{task_name}: method {method_name} (kind {method.kind}) reads the task's prompt; "
                    f"give the task {' and '.join(missing)}"
                )


# ----------------------------------------------------------------------------- loading

def preset_names() -> list[str]:
    folder = resources.files(PRESETS_PACKAGE) / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_suite(source: str | Path | dict[str, Any]) -> Suite:
    """A suite from a preset name (quick, paper, gpu), a YAML file, or plain data. Relative
    paths in a file are relative to its folder."""
    if isinstance(source, dict):
        return build_suite(source)
    text_source = str(source)
    path = Path(source)
    if path.is_file():
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))
        suite = build_suite(raw, str(path), path.resolve().parent)
        suite.source = str(path)
        return suite
    if text_source in preset_names():
        preset = resources.files(PRESETS_PACKAGE) / "presets" / f"{text_source}.yaml"
        suite = build_suite(read_yaml(preset.read_text(encoding="utf-8"), f"preset {text_source}"),
                            f"preset {text_source}")
        suite.source = f"preset:{text_source}"
        return suite
    raise FileNotFoundError(
        f"no suite {text_source!r}: not a preset ({', '.join(preset_names())}) and no such YAML file"
    )


__all__ = [
    "BASELINE_KINDS",
    "FAMILIES",
    "METHOD_KINDS",
    "MethodSpec",
    "ModelConfig",
    "Suite",
    "TaskSpec",
    "build_suite",
    "check_budget",
    "load_suite",
    "preset_names",
]
