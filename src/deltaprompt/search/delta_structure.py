"""Automatic delta-structure search: which delta methods, where, and how big, under a budget.

Each Optuna trial picks a structure from the space (a method or a combination of up to
``max_methods``; per method its size and, for LoRA, which modules in which layers) and becomes
a normal ``methods`` list. The classifier is built with it and its trainable parameters are
counted *before* anything trains: a structure over the parameter cap is pruned with the
reason recorded and never trained. The others train as any run does (the run config's
``training`` section, on the few-shot train split) and score on the dev split; after every dev
evaluation the score goes to Optuna's pruner (the median rule by default), which stops trials
that trail the others at the same step.

The study lives in ``OUT/study.db`` (SQLite): running the search again continues it, without
repeating finished trials, until ``trials`` structures have trained (an over-budget proposal or
a repeat of an earlier structure costs no training and does not count; the sampler is told how
far over the cap a proposal was, so it learns where the budget lies). The cheap baselines,
each candidate method alone at its default size (LoRA r=8, prompt tuning with 20 tokens,
BitFit, default adapters...), run first as trials flagged ``baseline``, so the report says
whether the search beat them. Output: ``search.json`` / ``search.md`` (structures ranked by
dev score with trainable parameters and time), ``best.yaml`` (the chosen structure as a run
config for ``deltaprompt train``), ``frontier.png`` (dev score against trainable parameters) and
``trials/NNNN/`` (each trial's config and scores).

    search:                          # in the run config; every key optional
      methods: [lora, adapter, bitfit, prefix, prompt_tuning]
      max_methods: 2                 # combinations of up to two methods
      space: {lora: {r: [2, 4, 8], modules: [qv, all], layers: [all, top-half]}}
      budget_params: 0.5%            # or an absolute count: 12000, 1.5M
      budget_seconds: 3600           # stop starting trials after this long
      trials: 40
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config import RunConfig, RunData, build_classifier, load_run_data
from ..delta import config_class, make_method, method_class
from ..files import atomic_write
from ..schema import ConfigError, to_dict
from ..structure import ParameterCount, count_parameters, human
from ..trainer import TrainConfig, Trainer

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from ..classifier import Classifier
    from ..model import TaskModel
    from ..plm import PLM

DEFAULT_METHODS = ("lora", "adapter", "bitfit", "prefix", "prompt_tuning")
# Sizes worth trying per method; each option's own default is always added (the baseline).
DEFAULT_SPACE: dict[str, dict[str, list[Any]]] = {
    "lora": {"r": [1, 2, 4, 8, 16, 32], "modules": ["qv", "attention", "all"],
             "layers": ["all", "top-half", "bottom-half"]},
    "adapter": {"bottleneck": [2, 4, 8, 16, 32, 64], "variant": ["pfeiffer", "houlsby"]},
    "prefix": {"num_virtual_tokens": [1, 2, 5, 10, 20]},
    "prompt_tuning": {"num_tokens": [1, 5, 10, 20, 50]},
    "intrinsic": {"dimension": [100, 200, 500, 1000, 2000]},
    "p_tuning": {"num_tokens": [1, 5, 10, 20]},
}
# LoRA's "where", resolved against the model into a ``target_modules`` regex.
LORA_MODULES = ("qv", "attention", "all")  # query/value projections, every attention projection, every linear layer
LORA_LAYERS = ("all", "top-half", "bottom-half")
PSEUDO_OPTIONS = {"lora": {"modules": "qv", "layers": "all"}}
STUDY_NAME = "delta-structure"
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
# Proposals the sampler may make per trial still to train: over-budget and repeated structures
# cost nothing, but a space that is nearly all over the budget must not loop for ever.
PROPOSALS_PER_TRIAL = 10
_LAYER = re.compile(r"^(?P<stack>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")  # the first numbered block in a name
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


# ----------------------------------------------------------------------------- budget

@dataclass(frozen=True)
class ParameterBudget:
    """A cap on trainable parameters: ``value`` parameters, or ``value`` percent of the base
    model's parameters when ``relative``."""

    value: float
    relative: bool = False

    def cap(self, total: int) -> int:
        """The cap in parameters for a model of ``total`` parameters."""
        return math.floor(total * self.value / 100) if self.relative else int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{int(self.value):,}"


_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9}


def parse_budget(text: str | int | float) -> ParameterBudget:
    """``"0.5%"`` (of the model's parameters), ``12000``, ``"12k"``, ``"1.5M"``."""
    hint = "write a percentage of the model's parameters (0.5%) or a count (12000, 12k, 1.5M)"
    if isinstance(text, bool):
        raise ValueError(f"parameter budget {text!r}: {hint}")
    if isinstance(text, (int, float)):
        raw, relative, number = str(text), False, float(text)
    else:
        raw = text.strip().replace("_", "").replace(",", "")
        relative = raw.endswith("%")
        body = raw[:-1].strip() if relative else raw
        scale = 1.0
        if not relative and body[-1:].lower() in _SUFFIX:
            scale, body = _SUFFIX[body[-1].lower()], body[:-1]
        try:
            number = float(body) * scale
        except ValueError:
            raise ValueError(f"parameter budget {text!r} is not a number: {hint}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"parameter budget {text!r} must be positive: {hint}")
    if relative and number > 100:
        raise ValueError(f"parameter budget {text!r} is more than the whole model (100%)")
    if not relative and number != int(number):
        raise ValueError(f"parameter budget {raw!r} is not a whole number of parameters")
    return ParameterBudget(number, relative)


# ----------------------------------------------------------------------------- search space

@dataclass
class SearchSection:
    """The ``search`` section of a run config; see the module docstring.

    ``methods``: candidate delta methods; ``max_methods``: the largest combination tried (1:
    single methods only; methods that cannot be combined are never paired). ``space``: per
    method, option -> list of values, over ``DEFAULT_SPACE`` (any option of the method's
    config; LoRA also takes ``modules``: qv, attention, all, and ``layers``: all, top-half,
    bottom-half). ``budget_params``: the trainable-parameter cap; ``budget_seconds``: no trial
    starts after this many seconds of this run. ``trials``: structures to train (complete,
    stopped by the pruner or failed; over-budget proposals and repeats do not count, up to
    ``PROPOSALS_PER_TRIAL`` proposals per trial). ``pruner``: median (stop trials whose
    dev score trails the median at the same step) or none. ``baselines``: run each method alone
    at its default size first. ``save_models``: keep every trained trial's classifier."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    max_methods: int = 2
    space: dict[str, Any] | None = None
    budget_params: str | int | float | None = None
    budget_seconds: float | None = None
    trials: int = 40
    pruner: Literal["median", "none"] = "median"
    baselines: bool = True
    seed: int = 0
    save_models: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("search.methods is empty; list delta methods to choose from, e.g. [lora, bitfit]")
        for i, name in enumerate(self.methods):
            try:
                method_class(name)
            except ConfigError as exc:
                raise ConfigError(f"search.methods[{i}]: {exc}") from None
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"search.methods lists a method twice: {self.methods}")
        if self.max_methods < 1:
            raise ConfigError(f"search.max_methods must be at least 1, got {self.max_methods}")
        if self.trials < 1:
            raise ConfigError(f"search.trials must be at least 1, got {self.trials}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError(f"search.budget_seconds must be positive, got {self.budget_seconds}")
        if self.budget_params is not None:
            try:
                parse_budget(self.budget_params)
            except ValueError as exc:
                raise ConfigError(f"search.budget_params: {exc}") from None
        for name, options in (self.space or {}).items():
            if name not in self.methods:
                raise ConfigError(f"search.space.{name}: {name} is not among search.methods {self.methods}")
            if not isinstance(options, dict):
                raise ConfigError(f"search.space.{name}: expected option: [values], got {options!r}")
            for option, values in options.items():
                self._check_option(name, option, values)
        if not self.combinations():
            raise ConfigError("search: no combination of search.methods can be trained together")

    def _check_option(self, name: str, option: str, values: Any) -> None:
        where = f"search.space.{name}.{option}"
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: expected a non-empty list of values, got {values!r}")
        pseudo = PSEUDO_OPTIONS.get(name, {})
        if option in pseudo:
            allowed = LORA_MODULES if option == "modules" else LORA_LAYERS
            for value in values:
                if value not in allowed:
                    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
            return
        fields = [f.name for f in dataclasses.fields(config_class(name))]
        if option not in fields:
            raise ConfigError(f"{where}: {name} has no option {option!r}; options: {', '.join(fields + list(pseudo))}")
        for value in values:
            make_method({"method": name, option: value}, where)  # a wrong value fails here, not in trial 17

    def choices(self) -> dict[str, dict[str, list[Any]]]:
        """Per candidate method, each searched option's values, its default among them."""
        out: dict[str, dict[str, list[Any]]] = {}
        for name in self.methods:
            options = {**DEFAULT_SPACE.get(name, {}), **((self.space or {}).get(name) or {})}
            out[name] = {}
            for option, values in options.items():
                values = list(values)
                default = option_default(name, option)
                if default not in values:
                    values.append(default)
                out[name][option] = values
        return out

    def combinations(self) -> list[tuple[str, ...]]:
        """Every set of up to ``max_methods`` candidates that can be combined, in listed order."""
        out = []
        for size in range(1, min(self.max_methods, len(self.methods)) + 1):
            for combo in itertools.combinations(self.methods, size):
                classes = [method_class(n) for n in combo]
                if not any(other.name in cls.incompatible for cls in classes for other in classes):
                    out.append(combo)
        return out

    def budget(self) -> ParameterBudget | None:
        return None if self.budget_params is None else parse_budget(self.budget_params)


def option_default(method: str, option: str) -> Any:
    """The value a method takes when the option is not given (its config's default)."""
    pseudo = PSEUDO_OPTIONS.get(method, {})
    if option in pseudo:
        return pseudo[option]
    return getattr(config_class(method)(), option)


def _encode(value: Any) -> Any:
    """Optuna's categorical choices are scalars: lists and mappings travel as JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _decode(encoded: Any, values: Sequence[Any]) -> Any:
    return next(v for v in values if _encode(v) == encoded)


def suggest_structure(trial: optuna.Trial, section: SearchSection) -> list[dict[str, Any]]:
    """The trial's structure: ``[{method: name, option: value, ...}, ...]`` (LoRA's ``modules``
    and ``layers`` still symbolic; ``resolve_structure`` turns them into target modules)."""
    choices = section.choices()
    combo = trial.suggest_categorical("methods", ["+".join(c) for c in section.combinations()])
    structure = []
    for name in str(combo).split("+"):
        entry: dict[str, Any] = {"method": name}
        for option, values in choices[name].items():
            picked = trial.suggest_categorical(f"{name}.{option}", [_encode(v) for v in values])
            entry[option] = _decode(picked, values)
        structure.append(entry)
    return structure


def baseline_params(section: SearchSection) -> dict[str, dict[str, Any]]:
    """Optuna parameters of each candidate method alone at its default size, by method name."""
    out = {}
    for name, options in section.choices().items():
        if (name,) in section.combinations():
            out[name] = {"methods": name, **{f"{name}.{o}": _encode(option_default(name, o)) for o in options}}
    return out


def describe_structure(structure: Sequence[dict[str, Any]]) -> str:
    """``lora(r=4, modules=all, layers=top-half) + bitfit``."""
    parts = []
    for entry in structure:
        options = ", ".join(f"{k}={'default' if v is None else _encode(v)}" for k, v in entry.items() if k != "method")
        parts.append(f"{entry['method']}({options})" if options else str(entry["method"]))
    return " + ".join(parts)


# ----------------------------------------------------------------------------- where: LoRA targets

def lora_targets(model: nn.Module, modules: str, layers: str) -> str | None:
    """A regex naming exactly the linear layers LoRA adapts (PEFT full-matches it against module
    names): ``modules`` qv (query/value projections), attention (every projection in an
    attention block) or all (every linear layer of the numbered blocks), in ``layers`` all,
    top-half or bottom-half of each stack. None: the method's default (qv everywhere)."""
    from ..delta.lora.model import _projection_types, attention_projections

    if modules not in LORA_MODULES or layers not in LORA_LAYERS:
        raise ValueError(f"LoRA modules must be one of {LORA_MODULES} and layers one of {LORA_LAYERS}")
    if modules == "qv" and layers == "all":
        return None
    suffixes = set(attention_projections(model)) if modules == "qv" else set()
    found: list[tuple[str, int, str]] = []
    depth: dict[str, int] = {}
    for name, module in model.named_modules():
        match = _LAYER.match(name)
        if not match or not isinstance(module, _projection_types()):
            continue  # embeddings, LM head, pooler: outside the numbered blocks
        stack, index, rest = match["stack"], int(match["index"]), match["rest"]
        depth[stack] = max(depth.get(stack, 0), index + 1)
        if modules == "qv" and rest.rsplit(".", 1)[-1] not in suffixes:
            continue
        if modules == "attention" and not _ATTENTION.search(rest):
            continue
        found.append((stack, index, rest))
    kept = [(s, i, r) for s, i, r in found if _in_layers(i, depth[s], layers)]
    if not kept:
        raise ValueError(f"no linear layers match LoRA modules={modules}, layers={layers} in {type(model).__name__}")
    return _compact_regex(kept)


def _in_layers(index: int, depth: int, layers: str) -> bool:
    half = max(1, depth // 2)
    if layers == "top-half":
        return index >= depth - half
    if layers == "bottom-half":
        return index < half
    return True


def _compact_regex(names: Sequence[tuple[str, int, str]]) -> str:
    """``stack\\.(?:2|3)\\.(?:attn\\.c_attn)`` per stack when the names are a full layers x
    modules grid there (they are, for these choices), else the names one by one."""
    parts = []
    for stack in dict.fromkeys(s for s, _, _ in names):
        rows = {(i, r) for s, i, r in names if s == stack}
        indices = sorted({i for i, _ in rows})
        rests = sorted({r for _, r in rows})
        if len(rows) == len(indices) * len(rests):
            layers, modules = "|".join(map(str, indices)), "|".join(map(re.escape, rests))
            parts.append(rf"{re.escape(stack)}\.(?:{layers})\.(?:{modules})")
        else:
            parts += [re.escape(f"{stack}.{i}.{r}") for i, r in sorted(rows)]
    return parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"


def resolve_structure(structure: Sequence[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """The structure as method specs ``make_methods`` and run configs take."""
    out = []
    for entry in structure:
        entry = dict(entry)
        if entry["method"] == "lora":
            targets = lora_targets(model, entry.pop("modules", "qv"), entry.pop("layers", "all"))
            if targets is not None:
                entry["target_modules"] = targets
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- one trial

@dataclass
class TrialRun:
    """What a trial trains: the classifier built with the structure, already counted (and
    within the budget), the data and training settings, and ``report(score, step)``, which
    passes a dev score to the pruner and raises ``optuna.TrialPruned`` when it says stop."""

    number: int
    label: str
    methods: list[dict[str, Any]]
    classifier: Classifier
    parameters: ParameterCount
    data: RunData
    training: TrainConfig
    report: Callable[[float, int], None]
    baseline: str | None = None


Evaluate = Callable[[TrialRun], float]


class ReportingTrainer(Trainer):
    """The Trainer, calling ``on_evaluate(score, step)`` after each dev evaluation (every epoch,
    or every ``eval_every`` steps), so a search can prune a trial while it trains."""

    def __init__(self, model: TaskModel, config: TrainConfig, on_evaluate: Callable[[float, int], None]):
        super().__init__(model, config)
        self.on_evaluate = on_evaluate

    def _evaluate(self, model: TaskModel, features: Sequence[Any], labels: Sequence[Any],  # type: ignore[override]
                  state: dict[str, Any], log: Any, history: list[dict[str, Any]]) -> float:
        metric = super()._evaluate(model, features, labels, state, log, history)
        self.on_evaluate(metric, state["step"])
        return metric


def train_trial(run: TrialRun) -> float:
    """Train the trial's classifier on the train split; its best dev score (the trainer keeps
    the best weights)."""
    trainer = ReportingTrainer(run.classifier.model, run.training, run.report)
    result = trainer.fit(run.data.train, run.data.dev)
    run.classifier.result = result
    if result.best_metric is None:
        raise ValueError("training gave no dev score; the search needs a dev split")
    return float(result.best_metric)


# ----------------------------------------------------------------------------- results

@dataclass
class StructureTrial:
    """One trial as the report shows it. ``state``: complete, pruned, fail or running;
    ``reason``: why it was pruned or failed; ``duplicate_of``: an earlier trial of the same
    structure whose outcome it reused instead of training again."""

    number: int
    state: str
    label: str
    methods: list[dict[str, Any]] | None
    trainable: int | None
    percent: float | None
    score: float | None
    seconds: float | None
    baseline: str | None = None
    reason: str | None = None
    over_budget: bool = False
    duplicate_of: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        """Whether this trial trained its structure (what ``SearchSection.trials`` counts)."""
        return not self.over_budget and self.duplicate_of is None

    @classmethod
    def from_frozen(cls, trial: optuna.trial.FrozenTrial) -> StructureTrial:
        attrs = trial.user_attrs
        return cls(
            number=trial.number, state=trial.state.name.lower(), label=attrs.get("label", "?"),
            methods=attrs.get("methods"), trainable=attrs.get("trainable"), percent=attrs.get("percent"),
            score=trial.value if trial.state.name == "COMPLETE" else attrs.get("score"), seconds=attrs.get("seconds"),
            baseline=attrs.get("baseline"),
            reason=attrs.get("reason") or ("interrupted" if trial.state.name == "FAIL" else None),
            over_budget=bool(attrs.get("over_budget")),
            duplicate_of=attrs.get("duplicate_of"), history=list(attrs.get("history") or []),
        )


@dataclass
class DeltaSearch:
    """What ``search_delta_structures`` found, read back from the whole study (earlier runs
    included). ``ranked``: trained structures, best dev score first (ties: fewer parameters)."""

    model: str
    metric: str
    train_size: int
    dev_size: int
    total_parameters: int
    budget: str | None
    cap: int | None
    budget_seconds: float | None
    trials: list[StructureTrial]
    seconds: float = 0.0

    @property
    def ranked(self) -> list[StructureTrial]:
        done = [t for t in self.trials if t.state == "complete" and t.duplicate_of is None and t.score is not None]
        return sorted(done, key=lambda t: (-(t.score or 0.0), t.trainable or 0, t.number))

    @property
    def best(self) -> StructureTrial | None:
        ranked = self.ranked
        return ranked[0] if ranked else None

    @property
    def best_baseline(self) -> StructureTrial | None:
        return next((t for t in self.ranked if t.baseline), None)

    @property
    def frontier(self) -> list[StructureTrial]:
        """Trained structures no other beats with as few or fewer parameters, cheapest first."""
        out: list[StructureTrial] = []
        for trial in sorted(self.ranked, key=lambda t: (t.trainable or 0, -(t.score or 0.0))):
            if not out or (trial.score or 0.0) > (out[-1].score or 0.0):
                out.append(trial)
        return out

    def verdict(self) -> str:
        best, baseline = self.best, self.best_baseline
        if best is None:
            return "no structure finished training"
        if baseline is None:
            return "no baseline finished training, so the search cannot be compared with one"
        gain = (best.score or 0.0) - (baseline.score or 0.0)
        unit = f"; one dev example is {1 / self.dev_size:.3f}" if self.dev_size else ""
        if best.baseline:
            return f"the search did not pay off: the best structure is the baseline {best.label}{unit}"
        if gain <= 0:
            return (f"the search did not beat the best baseline ({baseline.label}, {baseline.score:.4f}); the "
                    f"chosen structure ties it with {best.trainable:,} trainable parameters instead of "
                    f"{baseline.trainable:,}{unit}")
        return (f"the search gained {gain:+.4f} {self.metric} over the best baseline ({baseline.label}, "
                f"{baseline.score:.4f}){unit}")

    def to_dict(self) -> dict[str, Any]:
        best, baseline = self.best, self.best_baseline
        return {
            "method": "delta-structure search (Optuna)",
            "model": self.model, "metric": self.metric,
            "train_size": self.train_size, "dev_size": self.dev_size,
            "total_parameters": self.total_parameters, "budget_params": self.budget, "cap": self.cap,
            "budget_seconds": self.budget_seconds,
            "best": best.number if best else None,
            "best_baseline": baseline.number if baseline else None,
            "verdict": self.verdict(),
            "ranked": [t.number for t in self.ranked],
            "frontier": [t.number for t in self.frontier],
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "seconds": round(self.seconds, 2),
        }

    def report(self, top: int | None = None) -> str:
        """Markdown: the ranked table, the verdict, and what was not trained and why."""
        first = [t for t in self.trials if t.duplicate_of is None]  # a repeat reuses an earlier outcome
        over = sum(t.over_budget for t in first)
        counts = {s: sum(t.state == s and not t.over_budget for t in first) for s in ("complete", "pruned", "fail")}
        budget = "none" if self.cap is None else f"{self.cap:,} trainable parameters"
        if self.budget is not None and self.budget.endswith("%"):
            budget = f"{self.budget} of the model = {budget}"
        lines = [
            "# Delta-structure search", "",
            f"Model {self.model} ({human(self.total_parameters)} parameters); {self.metric} on {self.dev_size} dev "
            f"examples after training on {self.train_size}. Parameter budget: {budget}"
            + (f"; time budget {self.budget_seconds:g} s" if self.budget_seconds else "") + ".",
            f"{len(self.trials)} trials: {sum(counts.values())} structures trained ({counts['complete']} complete, "
            f"{counts['pruned']} stopped early by the pruner, {counts['fail']} failed), {over} over budget (not "
            f"trained), {len(self.trials) - len(first)} repeats of an earlier structure (its outcome reused).", "",
            f"| rank | dev {self.metric} | trainable | % of model | seconds | structure |",
            "|---:|---:|---:|---:|---:|:---|",
        ]
        frontier = {t.number for t in self.frontier}
        for rank, t in enumerate(self.ranked[:top] if top else self.ranked, 1):
            flags = [f"baseline {t.baseline}"] * bool(t.baseline) + ["frontier"] * (t.number in frontier)
            note = f" ({', '.join(flags)})" if flags else ""
            lines.append(f"| {rank} | {t.score:.4f} | {t.trainable:,} | {t.percent:.4f} | "
                         f"{t.seconds or 0:.1f} | `{t.label}`{note} (trial {t.number}) |")
        lines += ["", f"Verdict: {self.verdict()}."]
        best = self.best
        if best is not None:
            lines.append(f"Chosen: `{best.label}` (trial {best.number}), written to best.yaml.")
        skipped = [t for t in self.trials if t.state in ("pruned", "fail") and t.duplicate_of is None]
        if skipped:
            lines += ["", "## Not trained to the end", ""]
            lines += [f"- trial {t.number} `{t.label}`{' (baseline)' if t.baseline else ''}: {t.reason or t.state}"
                      for t in skipped]
        return "\n".join(lines) + "\n"

    def chosen_config(self, base: RunConfig, output_dir: str | None = None) -> dict[str, Any] | None:
        """The run config of the best structure (``deltaprompt train`` reads it), or None."""
        best = self.best
        if best is None or best.methods is None:
            return None
        training = replace(base.training, output_dir=None)
        return to_dict(replace(base, methods=best.methods, training=training, output_dir=output_dir))

    def plot(self, path: str | Path) -> Path | None:
        """Dev score against trainable parameters (log scale), baselines marked, the frontier
        drawn, the cap as a dashed line; None when nothing trained."""
        ranked = self.ranked
        if not ranked:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        searched = [t for t in ranked if not t.baseline]
        baselines = [t for t in ranked if t.baseline]
        axes.scatter([t.trainable for t in searched], [t.score for t in searched], s=22, alpha=0.7, label="searched")
        axes.scatter([t.trainable for t in baselines], [t.score for t in baselines], marker="D", s=40,
                     color="tab:red", label="baseline (default size)")
        for t in baselines:
            axes.annotate(t.baseline, (t.trainable, t.score), fontsize=7, xytext=(4, 3), textcoords="offset points")
        frontier = self.frontier
        axes.step([t.trainable for t in frontier], [t.score for t in frontier], where="post", color="tab:green",
                  label="frontier")
        if self.cap is not None:
            axes.axvline(self.cap, linestyle="--", color="grey", label=f"budget {self.budget}")
        axes.set_xscale("log")
        axes.set_xlabel("trainable parameters")
        axes.set_ylabel(f"dev {self.metric}")
        axes.set_title(f"Delta structures on {self.model}")
        axes.legend(fontsize=8, loc="best")
        target = Path(path)
        with atomic_write(target, "wb") as handle:
            figure.savefig(handle, format="png", bbox_inches="tight", metadata={"Software": None})
        return target

    def save(self, directory: str | Path, base: RunConfig | None = None) -> dict[str, Path]:
        """``search.json``, ``search.md``, ``best.yaml`` (with ``base``) and ``frontier.png``
        (when matplotlib is installed), each written atomically."""
        import yaml

        out = Path(directory)
        written = {"json": out / "search.json", "markdown": out / "search.md"}
        _write(written["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        _write(written["markdown"], self.report())
        chosen = self.chosen_config(base, str(out / "best-run")) if base is not None else None
        if chosen is not None:
            written["config"] = out / "best.yaml"
            header = f"# chosen by the delta-structure search: {self.best.label if self.best else ''}\n"
            _write(written["config"], header + yaml.safe_dump(chosen, sort_keys=False, allow_unicode=True))
        try:
            plotted = self.plot(out / "frontier.png")
        except ModuleNotFoundError:  # matplotlib is optional (the bench extra)
            plotted = None
        if plotted is not None:
            written["plot"] = plotted
        return written


def _write(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


# ----------------------------------------------------------------------------- the search

def copy_plm(plm: PLM) -> PLM:
    """A private copy for one trial: delta methods change the model they are applied to."""
    return copy.deepcopy(plm)


def search_delta_structures(
    config: RunConfig,
    section: SearchSection,
    output_dir: str | Path,
    *,
    plm: PLM | None = None,
    data: RunData | None = None,
    evaluate: Evaluate = train_trial,
    sampler: optuna.samplers.BaseSampler | None = None,
    on_trial: Callable[[StructureTrial], None] | None = None,
) -> DeltaSearch:
    """Search delta structures for the run ``config`` (model, data, classifier, training) over
    ``section``'s space, storing the study in ``output_dir/study.db`` and continuing it if it is
    there. ``plm``: the base model, already loaded (default: the config's, loaded once and copied
    for each trial); ``data``: the run's data (default: ``load_run_data``); ``evaluate``: how a
    trial within budget is scored (default ``train_trial``; tests pass a known function);
    ``sampler``: Optuna's (default TPE, seeded); ``on_trial``: called after each trial."""
    import optuna

    from ..config import load_base_model

    started = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_run_data(config)
    if not data.dev:
        raise ValueError("the search scores structures on the dev split, and this run has none; set data.shots "
                         "(a dev set is drawn beside the training examples) or data.dev")
    pristine = plm if plm is not None else load_base_model(config.model)
    total = count_parameters(pristine.model).total
    budget = section.budget()
    cap = budget.cap(total) if budget is not None else None
    if cap is not None and cap < 1:
        raise ValueError(f"the parameter budget {budget} of a {total:,}-parameter model allows no parameter at all")
    training = replace(config.training, output_dir=None, progress=False)
    settings = {"space": section.choices(), "combinations": ["+".join(c) for c in section.combinations()],
                "budget_params": str(budget) if budget else None, "model": config.model.name,
                "metric": training.metric}
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)
    _check_settings(study, settings, out)
    _fail_interrupted(study)
    existing = study.get_trials(deepcopy=False)
    study.sampler = sampler or optuna.samplers.TPESampler(seed=section.seed + len(existing))  # no replayed draws
    study.pruner = optuna.pruners.MedianPruner() if section.pruner == "median" else optuna.pruners.NopPruner()
    if section.baselines:
        _enqueue_baselines(study, section)

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except (ValueError, RuntimeError) as exc:  # the study records the trial as failed and goes on
            trial.set_user_attr("reason", f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            raise

    def run_trial(trial: optuna.Trial) -> float:
        baseline = trial.user_attrs.get("baseline")
        structure = suggest_structure(trial, section)
        label = describe_structure(structure)
        trial.set_user_attr("label", label)
        methods = resolve_structure(structure, pristine.model)
        trial.set_user_attr("methods", methods)
        folder = out / "trials" / f"{trial.number:04d}"
        run_config = replace(config, methods=methods, training=training, output_dir=str(folder / "run"))
        _write(folder / "config.yaml",
               _yaml(to_dict(replace(run_config, training=replace(config.training, output_dir=None)))))
        earlier = _same_structure(study, methods, trial.number)
        if earlier is not None:
            try:
                score = _reuse(trial, earlier)
            finally:
                _write_scores(folder, trial, trial.user_attrs.get("score"))
            return score
        classifier = build_classifier(run_config, copy_plm(pristine), data.classes)
        count = count_parameters(classifier.model)
        trial.set_user_attr("trainable", count.trainable)
        trial.set_user_attr("percent", round(100 * count.trainable / total, 6))
        if cap is not None:  # > 0: infeasible; TPE ranks infeasible trials by how far over they are
            trial.set_constraint("trainable_over_cap", count.trainable - cap)
        if cap is not None and count.trainable > cap:
            reason = f"over the budget: {count.trainable:,} trainable parameters > {cap:,}"
            trial.set_user_attr("over_budget", True)
            trial.set_user_attr("reason", reason)
            _write_scores(folder, trial, None)
            raise optuna.TrialPruned(reason)

        history: list[dict[str, Any]] = []

        def report(score: float, step: int) -> None:
            trial.report(score, step)
            history.append({"step": step, "score": score})
            trial.set_user_attr("score", max(score, trial.user_attrs.get("score", score)))
            if not baseline and trial.should_prune():  # baselines always train to the end
                trial.set_user_attr("reason", f"stopped by the {section.pruner} pruner at step {step} "
                                              f"(dev {training.metric} {score:.4f})")
                raise optuna.TrialPruned(f"pruned at step {step}")

        run = TrialRun(trial.number, label, methods, classifier, count, data, training, report, baseline)
        began = time.perf_counter()
        try:
            score = float(evaluate(run))
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - began, 3))
            trial.set_user_attr("history", history)
        trial.set_user_attr("score", score)
        _write_scores(folder, trial, score)
        if section.save_models:
            classifier.save(folder / "model")
        return score

    def notify(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(StructureTrial.from_frozen(frozen))

    def trained() -> int:
        return sum(_trained(t) for t in study.get_trials(deepcopy=False))

    def stop_when_enough(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if trained() >= section.trials:
            study.stop()

    remaining = section.trials - trained()
    if remaining > 0:
        proposals = remaining * PROPOSALS_PER_TRIAL
        study.optimize(objective, n_trials=proposals, timeout=section.budget_seconds,
                       catch=(ValueError, RuntimeError), callbacks=[notify, stop_when_enough])
        if trained() < section.trials and time.perf_counter() - started < (section.budget_seconds or math.inf):
            warnings.warn(f"only {trained()} of {section.trials} structures trained: the other proposals of the "
                          f"last {proposals} were over the budget or repeats; raise budget_params or widen the space",
                          stacklevel=2)
    result = DeltaSearch(
        model=str(config.model.name), metric=training.metric, train_size=len(data.train), dev_size=len(data.dev),
        total_parameters=total, budget=str(budget) if budget else None, cap=cap,
        budget_seconds=section.budget_seconds,
        trials=[StructureTrial.from_frozen(t) for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED],
        seconds=time.perf_counter() - started,
    )
    result.save(out, config)
    return result


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _write_scores(folder: Path, trial: optuna.Trial, score: float | None) -> None:
    attrs = dict(trial.user_attrs)
    _write(folder / "scores.json", json.dumps({"trial": trial.number, "score": score, **attrs}, indent=2) + "\n")


def _check_settings(study: optuna.Study, settings: dict[str, Any], out: Path) -> None:
    """A stored study continues only with the space, budget, model and metric it began with:
    its earlier trials would not be comparable otherwise."""
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        return
    changed = [k for k in settings if stored.get(k) != json.loads(json.dumps(settings[k]))]
    if changed:
        raise ValueError(f"{out / 'study.db'} holds a search with other {', '.join(changed)}; "
                         "restore them to continue it, or give another output folder to start a new search")


def _fail_interrupted(study: optuna.Study) -> None:
    """Trials left running by a process that was killed: a search runs one trial at a time, so
    a running trial found at the start is dead. They are marked failed (and not counted again)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)


def _enqueue_baselines(study: optuna.Study, section: SearchSection) -> None:
    """Queue each baseline that has no trial yet that finished or waits (an interrupted one runs again)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    have = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=states)}
    for name, params in baseline_params(section).items():
        if name not in have:
            study.enqueue_trial(params, user_attrs={"baseline": name})


def _trained(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial trained a structure (not over the budget, not a repeat)."""
    return (trial.state.name in FINISHED and not trial.user_attrs.get("over_budget")
            and trial.user_attrs.get("duplicate_of") is None)


def _same_structure(study: optuna.Study, methods: list[dict[str, Any]],
                    number: int) -> optuna.trial.FrozenTrial | None:
    """An earlier finished trial of the same structure, whose outcome stands for this one."""
    from optuna.trial import TrialState

    key = json.dumps(methods, sort_keys=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if trial.number != number and json.dumps(trial.user_attrs.get("methods"), sort_keys=True) == key:
            return trial
    return None


def _reuse(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> float:
    import optuna

    for key in ("trainable", "percent", "over_budget", "reason", "score"):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    trial.set_user_attr("duplicate_of", earlier.number)
    if earlier.state.name == "PRUNED":
        raise optuna.TrialPruned(f"same structure as trial {earlier.number}")
    return float(earlier.value)  # type: ignore[arg-type]


__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SPACE",
    "DeltaSearch",
    "Evaluate",
    "ParameterBudget",
    "ReportingTrainer",
    "SearchSection",
    "StructureTrial",
    "TrialRun",
    "baseline_params",
    "describe_structure",
    "lora_targets",
    "parse_budget",
    "resolve_structure",
    "search_delta_structures",
    "suggest_structure",
    "train_trial",
]
