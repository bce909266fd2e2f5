"""Benchmark statistics: run records read back, mean ± std over seeds, and a paired bootstrap.

A few-shot score moves by several points from one seed to the next and by a point or two
from one test sample to another, so a results table without spreads and tests reads
differences into noise. The bootstrap here resamples the test examples, the same indices
for every seed, and averages the difference over the seeds both methods ran: it answers
"would this ordering survive another test set drawn like this one?".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("accuracy", "macro_f1")
STATUSES = ("ok", "failed", "unavailable")
REQUIRED = ("task", "method", "status")


@dataclass(eq=False)
class Run:
    """One run record (``RESULTS_DIR/runs/<id>.json``) with its predictions as arrays."""

    id: str
    status: str
    task: str
    method: str
    kind: str = ""
    family: str = ""
    calibrated: bool = False
    k: int = 0
    seed: int | None = None
    model: str = ""
    metric: str = "accuracy"
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    trainable: int | None = None
    total: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    classes: tuple[str, ...] = ()
    gold: np.ndarray | None = None
    predicted: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    test_ids: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    quality: bool = True               # False: a speed/memory-only suite (random weights), scores mean nothing
    path: Path | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], path: Path | None = None) -> Run:
        """Build from the JSON contract; a missing required field is a ValueError naming it."""
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        missing = [name for name in REQUIRED if record.get(name) in (None, "")]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        if record["status"] not in STATUSES:
            raise ValueError(f"status {record['status']!r} is not one of {list(STATUSES)}")
        params = record.get("params") or {}
        predictions = record.get("predictions") or {}
        gold, predicted = predictions.get("gold"), predictions.get("predicted")
        probabilities = predictions.get("probabilities")
        if gold is not None and predicted is not None and len(gold) != len(predicted):
            raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
        metric = record.get("metric") or "accuracy"
        if metric not in METRICS:
            raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")
        seed = record.get("seed")
        return cls(
            id=str(record.get("id") or (path.stem if path else "")),
            status=record["status"],
            task=str(record["task"]),
            method=str(record["method"]),
            kind=str(record.get("kind") or ""),
            family=str(record.get("family") or ""),
            calibrated=bool(record.get("calibrated")),
            k=int(record.get("k") or 0),
            seed=None if seed is None else int(seed),
            model=str(record.get("model") or ""),
            metric=metric,
            error=record.get("error"),
            scores={key: float(value) for key, value in (record.get("scores") or {}).items() if value is not None},
            trainable=None if params.get("trainable") is None else int(params["trainable"]),
            total=None if params.get("total") is None else int(params["total"]),
            seconds={key: float(value) for key, value in (record.get("seconds") or {}).items() if value is not None},
            peak_memory_mb=None if record.get("peak_memory_mb") is None else float(record["peak_memory_mb"]),
            memory_kind=record.get("memory_kind"),
            classes=tuple(record.get("classes") or ()),
            gold=None if gold is None else np.asarray(gold, dtype=np.int64),
            predicted=None if predicted is None else np.asarray(predicted, dtype=np.int64),
            probabilities=None if probabilities is None else np.asarray(probabilities, dtype=np.float64),
            test_ids=record.get("test_ids"),
            environment=dict(record.get("environment") or {}),
            started_at=record.get("started_at"),
            quality=record.get("quality") is not False,
            path=path,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def has_predictions(self) -> bool:
        return self.gold is not None and self.predicted is not None

    def score(self, metric: str | None = None) -> float | None:
        """The recorded score of ``metric`` (default: the task's own metric)."""
        return self.scores.get(metric or self.metric)

    @property
    def trainable_percent(self) -> float | None:
        if self.trainable is None or not self.total:
            return None
        return 100.0 * self.trainable / self.total

    @property
    def cell(self) -> tuple[str, str, int, int | None]:
        return (self.task, self.method, self.k, self.seed)

    def describe(self) -> str:
        seed = "no seed" if self.seed is None else f"seed {self.seed}"
        return f"{self.task} / {self.method} / K={self.k} / {seed}"


@dataclass(frozen=True)
class Problem:
    """A file under runs/ that could not be read; the report lists it."""

    path: Path
    reason: str


@dataclass
class Results:
    """Everything read from a results folder."""

    directory: Path
    runs: list[Run]                    # the newest record of each (task, method, k, seed)
    superseded: list[Run]              # older records of a cell that a newer one replaced
    problems: list[Problem]
    suite: dict[str, Any]              # suite.json (name, targets, model), {} when absent
    task_order: list[str]
    method_order: list[str]
    declared: dict[str, list[str]]     # suite.yaml's tasks and methods, as declared

    @property
    def ok_runs(self) -> list[Run]:
        return [run for run in self.runs if run.ok]

    @property
    def not_ok_runs(self) -> list[Run]:
        return [run for run in self.runs if not run.ok]


def _declared(directory: Path, suite: dict[str, Any]) -> dict[str, list[str]]:
    """Task and method names in the order suite.yaml (else suite.json) declares them: the
    report's order."""
    path = directory / "suite.yaml"
    if path.is_file():
        from ..config import read_yaml

        data = read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    else:
        data = suite
    out: dict[str, list[str]] = {}
    for key in ("tasks", "methods"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, dict):
            out[key] = [str(name) for name in value]
        elif isinstance(value, list):
            out[key] = [str(item if not isinstance(item, dict) else item.get("name", "")) for item in value]
        else:
            out[key] = []
    return out


def missing_runs(results: Results) -> list[tuple[str, str, int | None, int | None]]:
    """(task, method, K, seed) of every run the suite declares that has no record, failed or
    not: a (task, method) cell with fewer seeds than declared must not read as complete.
    K and seed come from ``suite.json`` (each task's K values, the seeds, each method's kind);
    without them, and for seedless kinds (zero-shot), one record of the pair is enough and
    the missing run is reported as (task, method, None, None)."""
    from .suite import SEEDLESS_KINDS

    suite = results.suite
    tasks = suite.get("tasks") if isinstance(suite.get("tasks"), dict) else {}
    methods = suite.get("methods") if isinstance(suite.get("methods"), dict) else {}
    seeds = suite.get("seeds") if isinstance(suite.get("seeds"), list) else []
    pairs = {(run.task, run.method) for run in results.runs}
    cells = {run.cell for run in results.runs}
    missing: list[tuple[str, str, int | None, int | None]] = []
    for task in results.declared.get("tasks", []):
        task_spec = tasks.get(task)
        k_values = task_spec.get("k") if isinstance(task_spec, dict) else None
        for method in results.declared.get("methods", []):
            method_spec = methods.get(method)
            kind = method_spec.get("kind") if isinstance(method_spec, dict) else None
            if kind is None or kind in SEEDLESS_KINDS or not k_values or not seeds:
                if (task, method) not in pairs:
                    missing.append((task, method, None, None))
                continue
            missing += [(task, method, k, seed) for k in k_values for seed in seeds
                        if (task, method, k, seed) not in cells]
    return missing


def _ordered(declared: Sequence[str], seen: Iterable[str]) -> list[str]:
    seen = list(dict.fromkeys(seen))
    return [name for name in declared if name in seen] + sorted(name for name in seen if name not in declared)


def load_results(results_dir: str | Path) -> Results:
    """Read ``runs/*.json``, ``suite.json`` and ``suite.yaml``. Unreadable files are kept as
    problems, older records of the same (task, method, k, seed) as superseded: nothing is
    dropped without the report saying so."""
    directory = Path(results_dir)
    runs_dir = directory / "runs"
    if not runs_dir.is_dir():
        raise FileNotFoundError(
            f"{runs_dir} does not exist: point at the folder given to `deltaprompt bench SUITE --out DIR`"
        )
    runs: list[Run] = []
    problems: list[Problem] = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            runs.append(Run.from_record(json.loads(path.read_text(encoding="utf-8")), path))
        except (OSError, ValueError, TypeError) as exc:
            problems.append(Problem(path, f"{type(exc).__name__}: {exc}"))
    newest: dict[tuple, Run] = {}
    superseded: list[Run] = []
    for run in sorted(runs, key=lambda r: (r.started_at or "", r.id)):
        if run.cell in newest:
            superseded.append(newest[run.cell])
        newest[run.cell] = run
    kept = [run for run in runs if newest.get(run.cell) is run]
    suite: dict[str, Any] = {}
    suite_path = directory / "suite.json"
    if suite_path.is_file():
        try:
            loaded = json.loads(suite_path.read_text(encoding="utf-8"))
            suite = loaded if isinstance(loaded, dict) else {}
        except ValueError as exc:
            problems.append(Problem(suite_path, f"not valid JSON: {exc}"))
    declared = _declared(directory, suite)
    return Results(
        directory=directory,
        runs=kept,
        superseded=superseded,
        problems=problems,
        suite=suite,
        task_order=_ordered(declared["tasks"], (run.task for run in kept)),
        method_order=_ordered(declared["methods"], (run.method for run in kept)),
        declared=declared,
    )


# ----------------------------------------------------------------------------- aggregation

@dataclass(frozen=True)
class Cell:
    """One (task, method, k): the metric of every seed, and its mean and sample std."""

    task: str
    method: str
    k: int
    metric: str
    seeds: tuple[int | None, ...]
    values: tuple[float, ...]
    runs: tuple[Run, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof 1); None with a single seed, where it is undefined."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def seed_independent(self) -> bool:
        return self.seeds == (None,)


def aggregate(runs: Iterable[Run], metric: str | None = None) -> dict[tuple[str, str, int], Cell]:
    """Mean ± std over seeds per (task, method, k) of the successful runs. ``metric`` overrides
    each run's task metric. A seed-independent run (seed None) counts once however often it
    was recorded."""
    groups: dict[tuple[str, str, int], dict[int | None, Run]] = {}
    for run in runs:
        if not run.ok or run.score(metric) is None:
            continue
        groups.setdefault((run.task, run.method, run.k), {}).setdefault(run.seed, run)
    cells = {}
    for key, by_seed in groups.items():
        seeds = sorted(by_seed, key=lambda s: (s is not None, s or 0))
        chosen = tuple(by_seed[s] for s in seeds)
        cells[key] = Cell(
            task=key[0], method=key[1], k=key[2], metric=metric or chosen[0].metric, seeds=tuple(seeds),
            values=tuple(float(r.score(metric)) for r in chosen), runs=chosen,
        )
    return cells


# ----------------------------------------------------------------------------- significance

@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap of method A against method B on one task."""

    task: str
    method_a: str
    method_b: str
    metric: str
    difference: float          # mean over paired seeds of metric(A) - metric(B)
    p_value: float             # two-sided, (1 + extreme) / (1 + resamples)
    low: float                 # confidence interval of the difference (percentile)
    high: float
    pairs: tuple[tuple[int | None, int | None], ...]
    n_examples: int
    n_resamples: int

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def pair_runs(runs_a: Sequence[Run], runs_b: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Pairs for the test: the seeds both ran; a seed-independent run pairs with every seed of
    the other side. Refuses runs without predictions or scored on different test examples."""
    def by_seed(runs: Sequence[Run], side: str) -> dict[int | None, Run]:
        out: dict[int | None, Run] = {}
        for run in runs:
            if not run.ok or not run.has_predictions:
                raise ValueError(f"{run.describe()} ({side}) has no predictions to compare (status {run.status})")
            if run.seed in out:
                raise ValueError(f"{side} has two runs for seed {run.seed}: {out[run.seed].id} and {run.id}")
            out[run.seed] = run
        if not out:
            raise ValueError(f"no runs for {side}")
        return out

    a, b = by_seed(runs_a, "A"), by_seed(runs_b, "B")
    if list(a) == [None]:
        pairs = [(a[None], run) for run in b.values()]
    elif list(b) == [None]:
        pairs = [(run, b[None]) for run in a.values()]
    else:
        shared = sorted(set(a) & set(b), key=lambda s: (s is not None, s or 0))
        if not shared:
            raise ValueError(f"no seed in common: A ran seeds {sorted(a, key=str)}, B ran {sorted(b, key=str)}")
        pairs = [(a[s], b[s]) for s in shared]
    first = pairs[0][0]
    for run in (run for pair in pairs for run in pair):
        if run.test_ids != first.test_ids:
            raise ValueError(
                f"{run.describe()} was scored on other test examples than {first.describe()} "
                f"(test_ids {run.test_ids} vs {first.test_ids}): compare runs of the same test set"
            )
        if len(run.gold) != len(first.gold) or not np.array_equal(run.gold, first.gold):
            raise ValueError(f"{run.describe()} and {first.describe()} have the same test_ids but other gold labels")
        if run.classes != first.classes:
            raise ValueError(f"{run.describe()} has classes {run.classes}, {first.describe()} {first.classes}")
    return pairs


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n): how often each example is drawn in each resample (with replacement)."""
    draws = rng.integers(0, n, size=(size, n))
    flat = (np.arange(size)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.float32)


def _macro_f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 over the last two axes (gold, predicted) of ``counts``, as metrics.macro_f1:
    the mean over the classes that occur in gold or predictions."""
    true_positive = np.diagonal(counts, axis1=-2, axis2=-1)
    denominator = counts.sum(-2) + counts.sum(-1)
    present = denominator > 0
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive, dtype=np.float64),
                   where=present)
    return np.divide(f1.sum(-1), present.sum(-1), out=np.zeros(f1.shape[:-1]), where=present.sum(-1) > 0)


def _statistic(pairs: list[tuple[Run, Run]], metric: str):
    """A function from resample counts (R, N) to the statistic per resample (R,)."""
    n = len(pairs[0][0].gold)
    if metric == "accuracy":
        # Linear in the examples: average the per-example correctness difference over the pairs first.
        per_example = np.mean([(a.predicted == a.gold).astype(np.float64) - (b.predicted == b.gold)
                               for a, b in pairs], axis=0).astype(np.float32)
        return lambda weights: (weights @ per_example).astype(np.float64) / n
    if metric == "macro_f1":
        runs = [run for pair in pairs for run in pair]                       # A0, B0, A1, B1, ...
        largest = max(int(max(run.gold.max(), run.predicted.max())) for run in runs)
        classes = max(len(runs[0].classes), largest + 1)
        codes = np.stack([run.gold * classes + run.predicted for run in runs])  # (2P, N)
        one_hot = np.zeros((n, len(runs) * classes * classes), dtype=np.float32)
        one_hot[np.arange(n)[:, None], np.arange(len(runs)) * classes * classes + codes.T] = 1.0

        def macro(weights: np.ndarray) -> np.ndarray:
            counts = (weights @ one_hot).reshape(len(weights), len(pairs), 2, classes, classes)
            f1 = _macro_f1_from_counts(counts.astype(np.float64))                # (R, P, 2)
            return (f1[..., 0] - f1[..., 1]).mean(-1)
        return macro
    raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")


def paired_bootstrap(
    runs_a: Sequence[Run], runs_b: Sequence[Run], *, metric: str | None = None, n_resamples: int = 1000,
    seed: int = 0, confidence: float = 0.95,
) -> Comparison:
    """Paired bootstrap of A - B over test examples, jointly with the seeds both ran.

    Statistic: the mean over paired seeds of metric(A) - metric(B). Each resample draws N test
    indices with replacement, the same for every seed. p-value (two-sided): the share of
    resampled differences at least as far from the observed one as the observed one is from
    zero, (1 + count) / (1 + n_resamples); the interval is the percentile interval."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    pairs = pair_runs(runs_a, runs_b)
    metric = metric or pairs[0][0].metric
    n = len(pairs[0][0].gold)
    if n == 0:
        raise ValueError(f"{pairs[0][0].describe()} has no test examples")
    statistic = _statistic(pairs, metric)
    observed = float(statistic(np.ones((1, n), dtype=np.float32))[0])
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, 4_000_000 // n))       # bounds memory; each block is vectorised
    samples = np.concatenate([
        statistic(_resample_counts(rng, n, min(block, n_resamples - start)))
        for start in range(0, n_resamples, block)
    ])
    extreme = int(np.sum(np.abs(samples - observed) >= abs(observed) - 1e-12))
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    first_a, first_b = pairs[0]
    return Comparison(
        task=first_a.task, method_a=first_a.method, method_b=first_b.method, metric=metric,
        difference=observed, p_value=(1 + extreme) / (1 + n_resamples), low=float(low), high=float(high),
        pairs=tuple((a.seed, b.seed) for a, b in pairs), n_examples=n, n_resamples=n_resamples,
    )


# ----------------------------------------------------------------------------- the main table

def pick_k(available: Iterable[int], wanted: int | None = None) -> int:
    """The K a method's cell shows: ``wanted`` if it ran it, else the largest K below it (a
    task capped at fewer examples per class, zero-shot's 0), else the smallest; without
    ``wanted`` the largest K it ran."""
    ks = sorted(set(available))
    if not ks:
        raise ValueError("no K to pick from")
    if wanted is None:
        return ks[-1]
    below = [k for k in ks if k <= wanted]
    return below[-1] if below else ks[0]


@dataclass
class TaskSummary:
    """One task's column: each method's cell, the best method, and tests against the best."""

    task: str
    metric: str
    cells: dict[str, Cell]
    best: str | None
    comparisons: dict[str, Comparison] = field(default_factory=dict)    # best vs method
    untested: dict[str, str] = field(default_factory=dict)              # method -> why no test
    alpha: float = 0.05

    def is_best(self, method: str) -> bool:
        return self.best is not None and method in self.cells and math.isclose(
            self.cells[method].mean, self.cells[self.best].mean, rel_tol=0, abs_tol=1e-12)

    def significantly_worse(self, method: str) -> bool:
        comparison = self.comparisons.get(method)
        return comparison is not None and comparison.difference > 0 and comparison.significant(self.alpha)


def summarise(
    runs: Iterable[Run], *, k: int | None = None, tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
) -> dict[str, TaskSummary]:
    """Per task: each method's cell at its K (``pick_k``), the best mean, and a paired
    bootstrap of the best against every other method (marks at p < ``alpha``)."""
    runs = list(runs)
    cells = aggregate(runs)
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(run.task for run in runs))
    methods = list(methods) if methods is not None else list(dict.fromkeys(run.method for run in runs))
    summaries: dict[str, TaskSummary] = {}
    for task in tasks:
        chosen: dict[str, Cell] = {}
        for method in methods:
            ks = [key[2] for key in cells if key[0] == task and key[1] == method]
            if ks:
                chosen[method] = cells[(task, method, pick_k(ks, k))]
        metric = next(iter(chosen.values())).metric if chosen else "accuracy"
        best = max(chosen, key=lambda m: chosen[m].mean) if chosen else None
        summary = TaskSummary(task=task, metric=metric, cells=chosen, best=best, alpha=alpha)
        for method, cell in chosen.items():
            if method == best or summary.is_best(method):
                continue
            try:
                summary.comparisons[method] = paired_bootstrap(
                    chosen[best].runs, cell.runs, metric=metric, n_resamples=n_resamples, seed=seed)
            except ValueError as exc:
                summary.untested[method] = str(exc)
        summaries[task] = summary
    return summaries


def method_average(summaries: dict[str, TaskSummary], method: str,
                   tasks: Sequence[str] | None = None) -> tuple[float | None, int]:
    """Mean over tasks of the method's per-task mean, and how many tasks it covers."""
    tasks = list(tasks) if tasks is not None else list(summaries)
    values = [summaries[t].cells[method].mean for t in tasks if t in summaries and method in summaries[t].cells]
    return (float(np.mean(values)) if values else None), len(values)


def reliability(run: Run, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Reliability of the top-class probability: per equal-width bin the mean confidence,
    accuracy and count, and the expected calibration error (count-weighted |acc - conf|)."""
    if run.probabilities is None or run.gold is None:
        raise ValueError(f"{run.describe()} has no probabilities")
    confidence = run.probabilities.max(1)
    correct = (run.probabilities.argmax(1) == run.gold).astype(np.float64)
    which = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(accuracy[filled] - mean_confidence[filled])) / counts.sum())
    return mean_confidence, accuracy, counts, ece
