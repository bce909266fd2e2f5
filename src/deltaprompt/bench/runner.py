"""Runs a suite's matrix (tasks x methods x K x seeds) and keeps one record per run.

Every run is defined by a config (model, task with a fingerprint of its files, method, K,
seed, test sample, training budget, dev flag, device, deltaprompt version); its id is the
first 16 hex digits of the sha256 of that config as canonical JSON. The record of a finished
run is written atomically to ``OUT/runs/<id>.json`` as soon as the run ends, so:

- running the suite again runs only what is missing or changed (a changed method option gives
  that method's runs new ids; the other runs keep theirs);
- a suite killed half-way resumes without redoing finished runs;
- runs that failed are run again only with ``retry_failed``; runs of a baseline whose package
  is missing are recorded as ``unavailable`` (the report says so) and not retried.

A run: K examples per class from the train split (and, with ``dev``, K more per class as the
dev set: LM-BFF's ``few_shot_split``), a fixed random sample (seed 0) of ``test_limit`` test
examples, a freshly loaded model for every run that trains (delta methods change the model;
zero-shot and ICL runs share one), then the classifier's probabilities on the test sample.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Example, Task, few_shot_split, load_task
from ..files import atomic_write
from ..metrics import Evaluation
from ..schema import ConfigError, from_dict
from ..trainer import TrainConfig
from .suite import ModelConfig, Suite, TaskSpec

RUNS = "runs"
OK, FAILED, UNAVAILABLE = "ok", "failed", "unavailable"
FINISHED = (OK, UNAVAILABLE)  # statuses a rerun skips (failed ones: only with retry_failed)
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- ids

def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces (what ids hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_id(config: dict[str, Any]) -> str:
    """A run's id: sha256 of its config as canonical JSON, 16 hex digits."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:16]


def task_fingerprint(folder: Path) -> str:
    """sha256 (16 hex) of the bytes of a task's labels.json, train.jsonl and test.jsonl: runs
    on edited data get new ids."""
    digest = hashlib.sha256()
    for name in ("labels.json", "train.jsonl", "test.jsonl"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"task folder {folder} has no {name}; a benchmark task needs labels.json, "
                                    "train.jsonl and test.jsonl")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def test_ids(examples: Sequence[Example]) -> str:
    """sha256 (16 hex) of the test texts in order: runs with the same value predicted the same
    examples, so their predictions can be paired."""
    return hashlib.sha256(canonical_json([[e.text, e.text_b] for e in examples]).encode("utf-8")).hexdigest()[:16]


def resolve_device(device: str | None) -> str:
    """The suite's device, or cuda when there is one, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- the matrix

@dataclass(frozen=True)
class Run:
    """One cell of the matrix; ``config`` is everything that defines it, ``id`` its hash."""

    id: str
    task: str
    method: str
    kind: str
    k: int
    seed: int | None
    config: dict[str, Any] = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.task}/{self.method}/k={self.k}/seed={'-' if self.seed is None else self.seed}"


PROMPT_KINDS = ("zero_shot", "prompt", "icl", "pet")  # kinds that read the task's template and label words


def open_task(suite: Suite, name: str) -> Task:
    """The task folder a suite's task names (its ``path``, else the name under ``data_dir``),
    with label words checked against the task's classes."""
    spec = suite.tasks[name]
    try:
        task = load_task(spec.path or name, suite.data_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"tasks.{name}: {str(exc).split('; give')[0]}; set the suite's data_dir (or the task's path), "
            "or the DELTAPROMPT_DATA environment variable"
        ) from None
    patterns = [(f"patterns[{i}].label_words", p["label_words"]) for i, p in enumerate(spec.patterns or [])]
    for where, words in [("label_words", spec.label_words), *patterns]:
        if words is None:
            continue
        missing, extra = sorted(set(task.labels) - set(words)), sorted(set(words) - set(task.labels))
        if missing or extra:
            raise ConfigError(
                f"tasks.{name}.{where}: the task's classes are {list(task.labels)}"
                + (f"; no label words for {missing}" if missing else "")
                + (f"; unknown classes {extra}" if extra else "")
            )
    return task


def budget_of(suite: Suite, method: str) -> dict[str, Any]:
    """The training settings of a trained method's runs: the suite's budget, then its own."""
    return {**suite.budget, **(suite.methods[method].training or {})}


def expand(
    suite: Suite,
    only_tasks: Sequence[str] | None = None,
    only_methods: Sequence[str] | None = None,
    device: str | None = None,
    only_seeds: Sequence[int] | None = None,
) -> list[Run]:
    """Every run of the suite in order (task, then method, K and seed), with its config and id.
    Zero-shot runs are one per task (K 0, no seed) and kept whatever ``only_seeds`` says, so a
    long suite can be run one seed at a time and report every method early."""
    from .. import __version__

    filters = (("--only-tasks", only_tasks, suite.tasks), ("--only-methods", only_methods, suite.methods))
    for flag, names, known in filters:
        unknown = [n for n in names or () if n not in known]
        if unknown:
            raise ConfigError(f"{flag}: {', '.join(map(repr, unknown))} not in suite {suite.name}; "
                              f"it has {', '.join(known)}")
    unknown_seeds = [s for s in only_seeds or () if s not in suite.seeds]
    if unknown_seeds:
        raise ConfigError(f"--only-seeds: {', '.join(map(str, unknown_seeds))} not in suite {suite.name}; "
                          f"it has {', '.join(map(str, suite.seeds))}")
    device_type = resolve_device(device or suite.device).split(":")[0]
    model = dataclasses.asdict(suite.model) if isinstance(suite.model, ModelConfig) else suite.model
    runs = []
    for task_name in suite.tasks:
        if only_tasks and task_name not in only_tasks:
            continue
        spec = suite.tasks[task_name]
        task = open_task(suite, task_name)
        base_task = {"name": task_name, "classes": list(task.labels), "metric": spec.metric,
                     "files": task_fingerprint(task.path)}
        for method_name, method in suite.methods.items():
            if only_methods and method_name not in only_methods:
                continue
            task_config = dict(base_task)
            if method.kind in PROMPT_KINDS:
                task_config.update(template=spec.template, label_words=spec.label_words)
            if method.kind == "pet":
                task_config["patterns"] = spec.patterns
            seeds = [s for s in suite.seeds if not only_seeds or s in only_seeds]
            cells = [(0, None)] if method.seedless else [(k, s) for k in spec.k_values(suite.k) for s in seeds]
            for k, seed in cells:
                config = {
                    "model": model,
                    "task": task_config,
                    "method": {"name": method_name, **method.to_dict()},
                    "k": k,
                    "seed": seed,
                    "test_limit": suite.test_limit,
                    "dev": suite.dev if method.trained else None,
                    "budget": budget_of(suite, method_name) if method.trained else None,
                    "device": device_type,
                    "deltaprompt": __version__,
                }
                runs.append(Run(config_id(config), task_name, method_name, method.kind, k, seed, config))
    return runs


# ----------------------------------------------------------------------------- memory

def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory of a run. CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak.
    CPU: the process's peak resident set size: Linux's VmHWM after resetting it to the current
    RSS (writing 5 to /proc/self/clear_refs); where that cannot be reset, VmRSS sampled every
    20 ms by a thread (it can miss shorter peaks)."""

    def __init__(self, device: str):
        self.kind = "cuda" if device.startswith("cuda") else "rss"
        self.device = device
        self._high_water = False
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.at_start: float | None = None

    def start(self) -> None:
        """Reset the peak; ``at_start`` is then what is in use already (MiB)."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.at_start = torch.cuda.memory_allocated(self.device) / 2**20
            return
        rss = _status_kb("VmRSS")
        self.at_start = None if rss is None else rss / 1024
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._high_water = _status_kb("VmHWM") is not None
        except OSError:
            self._high_water = False
        if not self._high_water:
            self._sampled = _status_kb("VmRSS") or 0
            self._stop = threading.Event()

            def sample() -> None:
                while not self._stop.wait(0.02):
                    self._sampled = max(self._sampled, _status_kb("VmRSS") or 0)

            self._thread = threading.Thread(target=sample, daemon=True, name="peak-memory")
            self._thread.start()

    def stop(self) -> float | None:
        """Peak in MiB since ``start`` (None where it cannot be measured)."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._high_water:
            peak = _status_kb("VmHWM")
            return None if peak is None else peak / 1024
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        peak = max(self._sampled, _status_kb("VmRSS") or 0)
        return peak / 1024 if peak else None


def release_memory() -> None:
    """Collect garbage and hand freed memory back (malloc_trim, the CUDA cache), so that a
    run's peak starts from what is really in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- environment

def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(arguments: list[str], folder: Path) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """The commit of the checkout this package runs from and whether tracked files differ from
    it; (None, None) for an installed package (no checkout) or without git."""
    checkout = Path(__file__).resolve().parents[3]
    if not (checkout / ".git").exists():
        return None, None
    commit = _git(["rev-parse", "HEAD"], checkout)
    if not commit or len(commit) != 40:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], checkout)
    return commit, None if status is None else bool(status)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """Versions, commit and machine of this invocation (recorded in every run)."""
    import torch
    import transformers

    from .. import __version__

    commit, dirty = git_state()
    device_name = device
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": _version("peft"),
        "deltaprompt": __version__,
        "setfit": _version("setfit"),
        "sentence_transformers": _version("sentence-transformers"),
        "git_commit": commit,
        "git_dirty": dirty,
        "device": device_name,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------- models and data

def load_model(spec: str | ModelConfig, device: str) -> Any:
    """A fresh PLM: by name/path/alias, or built from a transformers config with random
    weights (seed 0, so every run starts from the same ones)."""
    from ..plm import load_plm

    if isinstance(spec, str):
        return load_plm(spec, device=device)
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from ..plm import _AUTO_CLASSES, PLM, _quiet_transformers, detect_family, resolve

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(resolve(spec.tokenizer))
    values = {"vocab_size": len(tokenizer), **spec.config}
    config = AutoConfig.for_model(spec.architecture, **values)
    family = detect_family(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):
            model = _AUTO_CLASSES[family].from_config(config)
    model.eval()
    return PLM.from_model(model, tokenizer, family, name=spec.display_name)


@dataclass
class TaskData:
    task: Task
    classes: tuple[str, ...]
    train: list[Example]  # the whole train split (few-shot samples are drawn from it)
    test: list[Example]  # the fixed test sample
    test_ids: str


@dataclass
class RunData:
    classes: tuple[str, ...]
    train: list[Example]
    dev: list[Example] | None
    test: list[Example]
    pool: list[Example]  # the whole train split (PET's unlabelled data comes from it)
    test_ids: str


def test_sample(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """A fixed random sample (seed 0) of ``limit`` examples, the same for every run; all of them
    when there are no more than ``limit``."""
    if limit is None or len(examples) <= limit:
        return list(examples)
    return random.Random(0).sample(list(examples), limit)


class RunContext:
    """What runs of one invocation share: the suite, the device, the environment record, each
    task's data, and the model zero-shot runs use."""

    def __init__(self, suite: Suite, device: str | None = None):
        self.suite = suite
        self.device = resolve_device(device or suite.device)
        self._environment: dict[str, Any] | None = None
        self._tasks: dict[str, TaskData] = {}
        self._shared: Any = None
        self.after_training = False  # the last run trained a model that may still await collection

    @property
    def environment(self) -> dict[str, Any]:
        if self._environment is None:
            self._environment = environment(self.device)
        return self._environment

    def task_data(self, name: str) -> TaskData:
        if name not in self._tasks:
            task = open_task(self.suite, name)
            test = test_sample(task.load("test"), self.suite.test_limit)
            self._tasks[name] = TaskData(task, task.labels, task.load("train"), test, test_ids(test))
        return self._tasks[name]

    def run_data(self, run: Run) -> RunData:
        data = self.task_data(run.task)
        train: list[Example] = []
        dev: list[Example] | None = None
        if run.seed is not None:
            use_dev = bool(run.config.get("dev"))
            train, dev = few_shot_split(data.train, run.k, run.seed, data.classes,
                                        dev_per_class=run.k if use_dev else 0)
        return RunData(data.classes, train, dev or None, data.test, data.train, data.test_ids)

    def shared_model(self) -> Any:
        """The untouched model that runs without training share."""
        if self._shared is None:
            self._shared = load_model(self.suite.model, self.device)
        return self._shared

    def release_shared(self) -> None:
        self._shared = None

    def fresh_model(self) -> Any:
        return load_model(self.suite.model, self.device)


# ----------------------------------------------------------------------------- one run

@dataclass
class Outcome:
    """What a kind's run gives back; the runner turns it into a record."""

    probabilities: np.ndarray  # (test examples, classes)
    trainable: int
    total: int
    train_seconds: float
    eval_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def train_config(run: Run, context: RunContext, budget: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of a trained run: the task's metric for model selection, the budget,
    and the run's seed."""
    spec: TaskSpec = context.suite.tasks[run.task]
    values = {"metric": spec.metric, **(run.config["budget"] if budget is None else budget),
              "seed": run.seed if run.seed is not None else 0, "progress": False,
              "cpu": context.device == "cpu"}
    return from_dict(TrainConfig, values, f"budget of {run.method}")


def inference_batch_size(context: RunContext) -> int:
    return int(context.suite.budget.get("eval_batch_size", 32))


def _classifier_outcome(classifier: Any, data: RunData, started: float, trained: bool,
                        details: dict[str, Any] | None = None) -> Outcome:
    train_seconds = time.perf_counter() - started
    begun = time.perf_counter()
    evaluation = classifier.evaluate(data.test)
    eval_seconds = time.perf_counter() - begun
    count = classifier.parameter_count()
    result = getattr(classifier, "result", None)
    info = dict(details or {})
    if result is not None:
        info["training"] = {"steps": result.steps, "epochs": result.epochs, "best_metric": result.best_metric,
                            "best_step": result.best_step, "stopped_early": result.stopped_early,
                            "train_loss": result.train_loss}
    return Outcome(np.asarray(evaluation.probabilities, dtype=float), count.trainable if trained else 0,
                   count.total, train_seconds, eval_seconds, info)


def run_zero_shot(run: Run, context: RunContext, data: RunData) -> Outcome:
    from ..classifier import PromptClassifier

    spec, method = context.suite.tasks[run.task], context.suite.methods[run.method]
    plm = context.shared_model()
    started = time.perf_counter()
    classifier = PromptClassifier(plm, spec.template, spec.label_words, classes=data.classes,
                                  batch_size=inference_batch_size(context), progress=False,
                                  calibrate=bool(method.calibrate))
    return _classifier_outcome(classifier, data, started, trained=False)


def run_icl(run: Run, context: RunContext, data: RunData) -> Outcome:
    from ..icl import ICLClassifier

    spec, method = context.suite.tasks[run.task], context.suite.methods[run.method]
    plm = context.shared_model()
    started = time.perf_counter()
    classifier = ICLClassifier(plm, spec.template, spec.label_words, classes=data.classes,
                               demonstrations=data.train, shots=method.shots or 4,
                               selection=method.selection or "random", seed=run.seed or 0,
                               batch_size=inference_batch_size(context), progress=False,
                               calibrate=bool(method.calibrate))
    return _classifier_outcome(classifier, data, started, trained=False)


def run_prompt(run: Run, context: RunContext, data: RunData) -> Outcome:
    from ..classifier import PromptClassifier

    spec, method = context.suite.tasks[run.task], context.suite.methods[run.method]
    plm = context.fresh_model()
    started = time.perf_counter()
    classifier = PromptClassifier(plm, spec.template, spec.label_words, classes=data.classes,
                                  verbalizer=method.verbalizer, batch_size=inference_batch_size(context),
                                  progress=False, methods=method.methods, seed=run.seed or 0)
    classifier.fit(data.train, data.dev, train_config(run, context))
    if method.calibrate:
        classifier.calibrate()
    return _classifier_outcome(classifier, data, started, trained=True)


def run_head(run: Run, context: RunContext, data: RunData) -> Outcome:
    from ..classifier import HeadClassifier

    method = context.suite.methods[run.method]
    plm = context.fresh_model()
    started = time.perf_counter()
    classifier = HeadClassifier(plm, data.classes, template=method.template, pooling=method.pooling,
                                dropout=0.1 if method.dropout is None else method.dropout,
                                batch_size=inference_batch_size(context), progress=False,
                                methods=method.methods if method.methods is not None else ["finetune"],
                                seed=run.seed or 0)
    classifier.fit(data.train, data.dev, train_config(run, context))
    return _classifier_outcome(classifier, data, started, trained=True)


def run_pet(run: Run, context: RunContext, data: RunData) -> Outcome:
    from dataclasses import replace

    from ..pet import PET, unlabelled_pool

    spec, method = context.suite.tasks[run.task], context.suite.methods[run.method]
    plm = context.fresh_model()
    started = time.perf_counter()
    config = train_config(run, context)
    final = replace(config, epochs=method.final_epochs) if method.final_epochs else None
    patterns = [(spec.template, spec.label_words), *[(p["template"], p["label_words"]) for p in spec.patterns or []]]
    pet = PET(plm, patterns, classes=data.classes, methods=method.methods, final=method.final or "head",
              train_config=config, final_config=final, temperature=method.temperature or 2.0,
              generations=method.generations or 0, keep_models=False, seed=run.seed or 0,
              batch_size=inference_batch_size(context), progress=False)
    pool = unlabelled_pool(data.pool, data.train + (data.dev or []), method.unlabelled or 400, run.seed or 0)
    classifier = pet.fit(data.train, pool, data.dev)
    details = {"pet": {"patterns": len(patterns), "unlabelled": len(pool),
                       "weights": [round(float(w), 4) for w in pet.weights]}}
    return _classifier_outcome(classifier, data, started, trained=True, details=details)


def run_baseline(run: Run, context: RunContext, data: RunData) -> Outcome:
    # Imported here: the rest of the runner works without the baselines' packages.
    from .baselines import make_baseline

    suite, method = context.suite, context.suite.methods[run.method]
    if isinstance(suite.model, ModelConfig) and not method.options.get("model"):
        raise ValueError(f"{run.kind} loads a pretrained model by name; this suite's model is built from a config")
    started = time.perf_counter()
    baseline = make_baseline(run.kind, dict(method.options), classes=data.classes,
                             plm_name=suite.model if isinstance(suite.model, str) else "",
                             seed=run.seed or 0, device=context.device, progress=False)
    baseline.fit(data.train, data.dev, dict(run.config["budget"] or {}))
    train_seconds = time.perf_counter() - started
    begun = time.perf_counter()
    probabilities = np.asarray(baseline.predict_proba(data.test), dtype=float)
    eval_seconds = time.perf_counter() - begun
    expected = (len(data.test), len(data.classes))
    if probabilities.shape != expected:
        raise ValueError(f"{run.kind}: predict_proba gave shape {probabilities.shape}, expected {expected}")
    trainable, total = baseline.parameter_count()
    return Outcome(probabilities, int(trainable), int(total), train_seconds, eval_seconds)


KIND_RUNNERS: dict[str, Callable[[Run, RunContext, RunData], Outcome]] = {
    "zero_shot": run_zero_shot,
    "icl": run_icl,
    "prompt": run_prompt,
    "head": run_head,
    "pet": run_pet,
    "setfit": run_baseline,
    "peft_lora": run_baseline,
}


def _is_unavailable(exc: BaseException) -> bool:
    module = sys.modules.get(f"{__package__}.baselines")
    cls = getattr(module, "BaselineUnavailable", None)
    return isinstance(cls, type) and isinstance(exc, cls)


def execute_run(run: Run, context: RunContext) -> dict[str, Any]:
    """Run one cell and return its record (status ok, unavailable or failed: an exception is
    recorded, not raised; an interrupt is raised and nothing is recorded)."""
    suite = context.suite
    method = suite.methods[run.method]
    spec = suite.tasks[run.task]
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    start = time.perf_counter()
    record: dict[str, Any] = {
        "id": run.id, "status": None, "error": None, "suite": suite.name, "task": run.task,
        "method": run.method, "kind": run.kind, "family": method.family, "calibrated": bool(method.calibrate),
        "k": run.k, "seed": run.seed, "model": suite.model_name, "metric": spec.metric, "quality": suite.quality,
        "scores": None, "params": None, "seconds": None, "peak_memory_mb": None, "memory_at_start_mb": None,
        "memory_kind": "cuda" if context.device.startswith("cuda") else "rss",
        "classes": None, "predictions": None, "test_ids": None, "test_size": None,
        "config": run.config, "environment": context.environment, "started_at": started_at,
    }
    memory = PeakMemory(context.device)
    measuring = False
    outcome: Outcome | None = None
    try:
        data = context.run_data(run)
        record.update(classes=list(data.classes), test_ids=data.test_ids, test_size=len(data.test))
        # A trained run's peak is its own model's, not the shared one's too; a run after a trained
        # one starts once that run's model is collected. (A collection costs ~0.5 s: only then.)
        if method.trained:
            context.release_shared()
            release_memory()
        elif context.after_training:
            release_memory()
        context.after_training = method.trained
        memory.start()
        measuring = True
        record["memory_at_start_mb"] = None if memory.at_start is None else round(memory.at_start, 1)
        outcome = KIND_RUNNERS[run.kind](run, context, data)
        peak = memory.stop()
        measuring = False
        probabilities = outcome.probabilities
        predicted = probabilities.argmax(1)
        gold = [data.classes.index(e.label) for e in data.test]  # type: ignore[arg-type]
        evaluation = Evaluation(data.classes, [e.label for e in data.test],  # type: ignore[misc]
                                [data.classes[i] for i in predicted], probabilities)
        record.update(
            status=OK,
            scores={"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1},
            params={"trainable": outcome.trainable, "total": outcome.total},
            peak_memory_mb=None if peak is None else round(peak, 1),
            predictions={"gold": gold, "predicted": [int(i) for i in predicted],
                         "probabilities": np.round(probabilities, 4).tolist()},
        )
        if outcome.details:
            record["details"] = outcome.details
    except Exception as exc:  # recorded, and the suite goes on with the next run
        if measuring:
            memory.stop()
        if _is_unavailable(exc):
            record.update(status=UNAVAILABLE, error=str(exc))
        else:
            record.update(status=FAILED, error=traceback.format_exception_only(exc)[-1].strip(),
                          traceback="".join(traceback.format_exception(exc)))
    total = time.perf_counter() - start
    record["seconds"] = {"train": round(outcome.train_seconds, 3) if outcome else None,
                         "eval": round(outcome.eval_seconds, 3) if outcome else None,
                         "total": round(total, 3)}
    return record


# ----------------------------------------------------------------------------- the suite

def read_record(path: Path) -> dict[str, Any] | None:
    """A run's record, or None when there is none (or it cannot be read: the run is redone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# A run in progress is claimed by a file beside its record (``runs/<id>.claim``): two
# processes on one results folder (the documented way to use two cores) then never run the
# same run twice. A claim whose process is gone (killed) is taken over.
CLAIM_SUFFIX = ".claim"
UNREADABLE_CLAIM_GRACE_S = 60.0  # a claim file is written right after it is created


def _process_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill would terminate it there: trust the claim
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_claim(path: Path) -> dict[str, Any] | None:
    """The claim at ``path`` when a live process holds it, else None (no claim, or a stale one)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    holder = read_record(path)
    if holder is None:  # being written now, or left half-written by a crash
        return {"pid": None, "host": None} if age < UNREADABLE_CLAIM_GRACE_S else None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return holder if _process_alive(holder["pid"]) else None
    return holder  # another machine's process: it cannot be checked from here


@contextlib.contextmanager
def _takeover_lock(folder: Path):
    """Serialise takeovers of stale claims across processes on this machine.

    Without it two processes that both judged a claim stale could each remove it, the second
    removing the first's new claim, and both would run the run. ``flock`` is released by the
    OS when its holder dies, so a killed process never leaves the folder locked; the lock is
    on the folder itself, so no lock file is left beside the records.
    """
    try:
        import fcntl
    except ImportError:  # Windows: claims are never judged stale there (see _process_alive)
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _create_claim(path: Path) -> bool:
    """Create the claim file if there is none (atomic: O_EXCL); True when this process made it."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(mine) + "\n")
    return True


def take_claim(path: Path) -> dict[str, Any] | None:
    """Claim a run for this process. None when it is ours now, else the live claim holding it."""
    if _create_claim(path):
        return None
    with _takeover_lock(path.parent):
        holder = live_claim(path)  # judged again under the lock: another process may have taken it over
        if holder is not None:
            return holder
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale: its process is gone
        if _create_claim(path):
            return None
    return live_claim(path) or {"pid": None, "host": None}


def release_claim(path: Path) -> None:
    """Remove this process's claim (never another's)."""
    holder = read_record(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def describe_claim(holder: dict[str, Any]) -> str:
    if holder.get("pid") is None:
        return "another process"
    return f"process {holder['pid']} on {holder.get('host')}"


@dataclass
class PlannedRun:
    run: Run
    status: str | None  # the recorded status, None when the run has no record
    will_run: bool


@dataclass
class SuiteResult:
    """Ids of the runs this invocation ran (and how they ended) and of those it skipped."""

    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)  # left to the other process running them
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


def _default_log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)


class SuiteRunner:
    """Runs a suite into ``out_dir`` (``runs/<id>.json`` per run, ``suite.yaml``, ``suite.json``).
    ``only_tasks``/``only_methods``/``only_seeds`` restrict the matrix; ``retry_failed`` reruns failed runs;
    ``progress``: a progress bar over the runs (None: only on a terminal); ``log``: where the
    one line per run goes."""

    def __init__(
        self,
        suite: Suite,
        out_dir: str | os.PathLike,
        *,
        only_tasks: Sequence[str] | None = None,
        only_methods: Sequence[str] | None = None,
        only_seeds: Sequence[int] | None = None,
        retry_failed: bool = False,
        device: str | None = None,
        progress: bool | None = None,
        log: Log | None = None,
    ):
        self.suite = suite
        self.out_dir = Path(out_dir)
        self.retry_failed = retry_failed
        self.device = resolve_device(device or suite.device)
        self.runs = expand(suite, only_tasks, only_methods, self.device, only_seeds)
        self.progress = progress
        self.log = log or _default_log

    def record_path(self, run: Run) -> Path:
        return self.out_dir / RUNS / f"{run.id}.json"

    def claim_path(self, run: Run) -> Path:
        return self.out_dir / RUNS / f"{run.id}{CLAIM_SUFFIX}"

    def plan(self) -> list[PlannedRun]:
        """Every run with its recorded status and whether ``run`` would run it."""
        planned = []
        for run in self.runs:
            record = read_record(self.record_path(run))
            status = None if record is None else record.get("status")
            planned.append(PlannedRun(run, status, self._will_run(status)))
        return planned

    def _will_run(self, status: str | None) -> bool:
        return status not in FINISHED and not (status == FAILED and not self.retry_failed)

    def describe_plan(self) -> str:
        """The runs as a table: which are cached, which would run (``bench --dry-run``)."""
        planned = self.plan()
        todo = sum(p.will_run for p in planned)
        lines = [f"suite {self.suite.name} ({self.suite.model_name}, {self.device}): {len(planned)} runs, "
                 f"{len(planned) - todo} cached, {todo} to run -> {self.out_dir}"]
        width = max((len(p.run.label) for p in planned), default=0)
        for p in planned:
            holder = live_claim(self.claim_path(p.run)) if p.will_run else None
            if holder is not None:
                state = f"running ({describe_claim(holder)})"
            elif p.will_run:
                state = "to run" if p.status is None else f"to run ({p.status} before)"
            else:
                state = f"cached ({p.status})" if p.status != FAILED else "failed (rerun with --retry-failed)"
            lines.append(f"  {p.run.id}  {p.run.label:<{width}}  {state}")
        return "\n".join(lines)

    def write_suite(self) -> None:
        """``suite.yaml`` (the suite as run) and ``suite.json`` (what the report reads)."""
        import yaml

        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = self.suite.to_dict()
        with atomic_write(self.out_dir / "suite.yaml") as handle:
            handle.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        summary = {
            "name": self.suite.name,
            "description": self.suite.description,
            "model": self.suite.model_name,
            "quality": self.suite.quality,
            "targets": self.suite.targets,
            "tasks": {name: {"metric": t.metric, "k": t.k_values(self.suite.k)}
                      for name, t in self.suite.tasks.items()},
            "methods": {name: {"kind": m.kind, "family": m.family, "calibrated": bool(m.calibrate)}
                        for name, m in self.suite.methods.items()},
            "seeds": list(self.suite.seeds),
            "test_limit": self.suite.test_limit,
            "source": self.suite.source,
        }
        with atomic_write(self.out_dir / "suite.json") as handle:
            handle.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")

    def run(self) -> SuiteResult:
        """Run what is missing; write each record as soon as its run ends."""
        from tqdm.auto import tqdm

        result = SuiteResult()
        planned = self.plan()
        todo = [p.run for p in planned if p.will_run]
        result.cached = [p.run.id for p in planned if not p.will_run]
        self.write_suite()
        (self.out_dir / RUNS).mkdir(exist_ok=True)  # where the claims and records go
        self.log(f"suite {self.suite.name}: {len(planned)} runs, {len(result.cached)} cached, {len(todo)} to run")
        context = RunContext(self.suite, self.device)
        bar = tqdm(total=len(todo), desc=f"bench {self.suite.name}", unit="run",
                   disable=(not self.progress) if self.progress is not None else None)
        # What is alive now (imported libraries, the data) outlives every run: frozen, the
        # collections between runs scan only the runs' own objects (seconds less per run).
        gc.collect()
        gc.freeze()
        try:
            for run in todo:
                bar.set_postfix_str(run.label)
                claim = self.claim_path(run)
                holder = take_claim(claim)
                if holder is not None:
                    result.claimed.append(run.id)
                    self.log(f"{run.label}: skipped, {describe_claim(holder)} is running it")
                    bar.update()
                    continue
                try:
                    # Read after claiming: another process on the same folder may have finished it.
                    done = read_record(self.record_path(run))
                    if done is not None and not self._will_run(done.get("status")):
                        result.cached.append(run.id)
                        bar.update()
                        continue
                    record = execute_run(run, context)
                    with atomic_write(self.record_path(run)) as handle:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                finally:
                    release_claim(claim)
                result.executed.append(run.id)
                result.records[run.id] = record
                self.log(self.describe_record(run, record))
                if record["status"] == FAILED:
                    result.failed.append(run.id)
                elif record["status"] == UNAVAILABLE:
                    result.unavailable.append(run.id)
                bar.update()
        finally:
            gc.unfreeze()
            bar.close()
        if result.claimed:
            self.log(f"{len(result.claimed)} run(s) left to the process(es) running them; run again after "
                     f"they end to catch any they did not finish (a claim is under {self.out_dir / RUNS})")
        if result.failed:
            self.log(f"{len(result.failed)} run(s) FAILED (records under {self.out_dir / RUNS}); "
                     "fix the cause and run again with --retry-failed")
        return result

    @staticmethod
    def describe_record(run: Run, record: dict[str, Any]) -> str:
        seconds = record["seconds"]["total"]
        if record["status"] == OK:
            metric = record["metric"]
            return f"{run.label}: {metric} {record['scores'][metric]:.4f}, {seconds:.1f} s"
        if record["status"] == UNAVAILABLE:
            return f"{run.label}: unavailable: {record['error']}"
        return f"FAILED {run.label}: {record['error']} ({seconds:.1f} s)"


def run_suite(suite: Suite, out_dir: str | os.PathLike, **options: Any) -> SuiteResult:
    """``SuiteRunner(suite, out_dir, **options).run()``."""
    return SuiteRunner(suite, out_dir, **options).run()


__all__ = [
    "FAILED",
    "OK",
    "UNAVAILABLE",
    "PeakMemory",
    "PlannedRun",
    "Run",
    "RunContext",
    "SuiteResult",
    "SuiteRunner",
    "canonical_json",
    "config_id",
    "environment",
    "execute_run",
    "expand",
    "load_model",
    "run_suite",
    "task_fingerprint",
    "test_ids",
    "test_sample",
]
