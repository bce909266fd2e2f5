"""The benchmark suite and its runner on a tiny GPT-2 and two tiny tasks: the matrix, ids that
hash the whole config, caching and resuming, the records, baselines that are unavailable or
fail, suite errors, the presets, and ``deltaprompt bench``."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

import deltaprompt.bench
from deltaprompt.bench import runner as runner_module
from deltaprompt.bench.runner import SuiteRunner, config_id, expand
from deltaprompt.bench.suite import load_suite, preset_names
from deltaprompt.cli import main
from deltaprompt.schema import ConfigError

from .conftest import import_benchmark

POSITIVE = ["the movie was great", "great acting and a wonderful plot", "a wonderful film", "the acting was great",
            "a great story", "wonderful acting", "a great film", "the plot was wonderful"]
NEGATIVE = ["a terrible boring film", "the plot was dull", "boring and terrible", "a dull terrible movie",
            "terrible acting", "a boring story", "the film was dull", "a terrible plot"]
TEST_POSITIVE = ["great movie", "a wonderful story", "great"]
TEST_NEGATIVE = ["a dull film", "terrible", "boring acting"]
RECORD_KEYS = {"id", "status", "error", "suite", "task", "method", "kind", "family", "calibrated", "k", "seed",
               "model", "metric", "scores", "params", "seconds", "peak_memory_mb", "memory_at_start_mb", "memory_kind",
               "classes", "predictions", "test_ids", "config", "environment", "started_at"}
ENVIRONMENT_KEYS = {"python", "torch", "transformers", "peft", "deltaprompt", "setfit", "git_commit", "device", "cpu",
                    "threads"}


def write_task(folder: Path, classes: list[str], train: list[dict], test: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.json").write_text(json.dumps(classes))
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train))
    (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in test))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Two tasks: sentiment (one text) and a sentence pair, 8 training examples per class, 6 test."""
    root = tmp_path_factory.mktemp("bench-data")
    write_task(root / "senti", ["negative", "positive"],
               [{"text": t, "label": "positive"} for t in POSITIVE]
               + [{"text": t, "label": "negative"} for t in NEGATIVE],
               [{"text": t, "label": "positive"} for t in TEST_POSITIVE]
               + [{"text": t, "label": "negative"} for t in TEST_NEGATIVE])
    write_task(root / "pair", ["entailment", "not_entailment"],
               [{"text": p, "text_b": p, "label": "entailment"} for p in POSITIVE]
               + [{"text": p, "text_b": n, "label": "not_entailment"} for p, n in zip(POSITIVE, NEGATIVE, strict=True)],
               [{"text": p, "text_b": p, "label": "entailment"} for p in TEST_POSITIVE]
               + [{"text": p, "text_b": n, "label": "not_entailment"}
                  for p, n in zip(TEST_POSITIVE, TEST_NEGATIVE, strict=True)])
    return root


def suite_dict(model_dir: str, data_dir: Path, **changes) -> dict:
    """The test suite: two tasks, K = 2, seeds 1 and 2, a test sample of 4, one epoch."""
    suite = {
        "name": "tiny",
        "model": model_dir,
        "data_dir": str(data_dir),
        "k": [2],
        "seeds": [1, 2],
        "test_limit": 4,
        "budget": {"epochs": 1, "batch_size": 4},
        "tasks": {
            "senti": {"template": "{text} It was {mask}", "label_words": {"negative": "terrible", "positive": "great"}},
            "pair": {"template": "{text} Question: {text_b} Answer: {mask}",
                     "label_words": {"entailment": "yes", "not_entailment": "no"}},
        },
        "methods": {
            "zero_shot": {"kind": "zero_shot"},
            "zero_shot_calibrated": {"kind": "zero_shot", "calibrate": True},
            "prompt_lora": {"kind": "prompt", "methods": [{"method": "lora", "r": 2}]},
            "head_finetune": {"kind": "head", "methods": ["finetune"]},
            "setfit": {"kind": "setfit"},
            "peft_lora": {"kind": "peft_lora", "r": 4},
        },
    }
    suite.update(changes)
    return suite


def write_suite(folder: Path, suite: dict) -> Path:
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- a fake baselines module

class FakeBaselines(types.ModuleType):
    """Stands in for deltaprompt.bench.baselines: setfit is "not installed"; peft_lora predicts
    the training prior (or raises, when ``fail`` is set)."""

    def __init__(self):
        super().__init__("deltaprompt.bench.baselines")
        self.fail = False
        self.built: list[tuple[str, dict, int]] = []

        class BaselineUnavailable(RuntimeError):
            pass

        self.BaselineUnavailable = BaselineUnavailable

    def make_baseline(self, kind, options, *, classes, plm_name, seed, device=None, progress=None):
        self.built.append((kind, dict(options), seed))
        if kind == "setfit":
            raise self.BaselineUnavailable("setfit is not installed: pip install setfit")
        if self.fail:
            raise ValueError("peft_lora broke")
        return PriorBaseline(classes)


class PriorBaseline:
    def __init__(self, classes):
        self.classes = tuple(classes)

    def fit(self, train, dev, budget):
        self.prior = np.array([1 + sum(e.label == c for e in train) for c in self.classes], dtype=float)
        self.budget = budget
        return self

    def predict_proba(self, examples):
        rows = np.tile(self.prior, (len(examples), 1))
        rows[:, 0] += np.arange(len(examples)) % 2  # not all rows alike
        return rows / rows.sum(1, keepdims=True)

    def parameter_count(self):
        return len(self.classes), 10 * len(self.classes)


@pytest.fixture
def fake_baselines(monkeypatch) -> FakeBaselines:
    fake = FakeBaselines()
    monkeypatch.setitem(sys.modules, "deltaprompt.bench.baselines", fake)
    monkeypatch.setattr(deltaprompt.bench, "baselines", fake, raising=False)
    return fake


@pytest.fixture(scope="module")
def completed(tmp_path_factory, model_dir, data_dir):
    """The whole test suite run once: (suite, results folder, result)."""
    out = tmp_path_factory.mktemp("bench-results")
    fake = FakeBaselines()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "deltaprompt.bench.baselines", fake)
        patch.setattr(deltaprompt.bench, "baselines", fake, raising=False)
        suite = load_suite(suite_dict(model_dir, data_dir))
        result = SuiteRunner(suite, out, progress=False, log=lambda message: None).run()
    return suite, out, result


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


# ----------------------------------------------------------------------------- the matrix and ids

def test_matrix_zero_shot_once_per_task_and_the_rest_per_k_and_seed(model_dir, data_dir):
    suite = load_suite(suite_dict(model_dir, data_dir))
    runs = expand(suite)
    cells = [(r.task, r.method, r.k, r.seed) for r in runs]
    assert cells[:2] == [("senti", "zero_shot", 0, None), ("senti", "zero_shot_calibrated", 0, None)]
    for task in ("senti", "pair"):
        for method in ("prompt_lora", "head_finetune", "setfit", "peft_lora"):
            assert [(k, s) for t, m, k, s in cells if (t, m) == (task, method)] == [(2, 1), (2, 2)]
    assert len(runs) == 2 * (2 + 4 * 2)
    assert len({r.id for r in runs}) == len(runs)
    for run in runs:
        assert run.id == config_id(run.config) and len(run.id) == 16
        assert run.config["k"] == run.k and run.config["seed"] == run.seed
        assert len(run.config["task"]["files"]) == 16
    lora = next(r for r in runs if r.method == "prompt_lora")
    assert lora.config["budget"] == {"epochs": 1, "batch_size": 4} and lora.config["dev"] is True
    assert lora.config["task"]["template"] == "{text} It was {mask}"
    zero = next(r for r in runs if r.method == "zero_shot")
    assert zero.config["budget"] is None and zero.config["dev"] is None
    head = next(r for r in runs if r.method == "head_finetune")
    assert "template" not in head.config["task"]  # a head model does not read the prompt

    only = expand(suite, only_tasks=["pair"], only_methods=["zero_shot", "peft_lora"])
    assert {(r.task, r.method) for r in only} == {("pair", "zero_shot"), ("pair", "peft_lora")}
    assert {r.id for r in only} <= {r.id for r in runs}  # filtering does not change ids
    with pytest.raises(ConfigError, match="--only-methods: 'lora' not in suite tiny; it has zero_shot"):
        expand(suite, only_methods=["lora"])

    seeds = sorted({r.seed for r in runs if r.seed is not None})
    first = expand(suite, only_seeds=seeds[:1])
    assert {r.seed for r in first} == {seeds[0], None}  # zero-shot runs have no seed and stay
    assert {r.id for r in first} == {r.id for r in runs if r.seed in (seeds[0], None)}
    with pytest.raises(ConfigError, match="--only-seeds: 999 not in suite tiny"):
        expand(suite, only_seeds=[999])


def test_ids_change_with_the_data_and_are_the_same_in_another_process(model_dir, data_dir, tmp_path):
    path = write_suite(tmp_path, suite_dict(model_dir, data_dir))
    here = [r.id for r in expand(load_suite(path))]
    code = ("import sys; from deltaprompt.bench.suite import load_suite; from deltaprompt.bench.runner import expand; "
            "print(' '.join(r.id for r in expand(load_suite(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "123", "HF_HUB_OFFLINE": "1"})
    assert done.stdout.split() == here

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    with (copy / "senti" / "test.jsonl").open("a") as handle:
        handle.write(json.dumps({"text": "one more", "label": "positive"}) + "\n")
    moved = expand(load_suite(suite_dict(model_dir, copy)))
    changed = {r.id for r in moved} - set(here)
    assert changed == {r.id for r in moved if r.task == "senti"}  # only the edited task's runs


# ----------------------------------------------------------------------------- the records

def test_records_hold_every_field_and_agree_with_their_predictions(completed):
    suite, out, result = completed
    saved = records(out)
    assert set(saved) == {r.id for r in expand(suite)} == set(result.executed)
    assert result.cached == [] and result.failed == []
    for run_id, record in saved.items():
        assert set(record) >= RECORD_KEYS, run_id
        assert record["id"] == run_id == config_id(record["config"])
        assert record["suite"] == "tiny" and record["model"] == Path(suite.model).name
        if record["status"] == "unavailable":
            continue
        assert record["status"] == "ok" and record["error"] is None, record.get("error")
        assert set(record["environment"]) >= ENVIRONMENT_KEYS
        predictions = record["predictions"]
        gold, predicted = np.array(predictions["gold"]), np.array(predictions["predicted"])
        probabilities = np.array(predictions["probabilities"])
        assert len(gold) == len(predicted) == len(probabilities) == record["test_size"] == 4  # test_limit
        assert record["scores"]["accuracy"] == pytest.approx(np.mean(gold == predicted))
        assert np.allclose(probabilities.sum(1), 1, atol=1e-3)
        assert (probabilities.argmax(1) == predicted).all()
        assert record["classes"] == (["negative", "positive"] if record["task"] == "senti"
                                     else ["entailment", "not_entailment"])
        assert 0 <= record["scores"]["macro_f1"] <= 1
        seconds = record["seconds"]
        # each figure is rounded to the millisecond on its own, so their sum may pass the
        # rounded total by up to 1.5 ms
        assert 0 <= seconds["train"] + seconds["eval"] <= seconds["total"] + 2e-3
        assert record["peak_memory_mb"] >= record["memory_at_start_mb"] > 0 and record["memory_kind"] == "rss"
        assert record["started_at"].endswith("Z")
    by_method = {}
    for record in saved.values():
        by_method.setdefault((record["task"], record["method"]), []).append(record)
    for task in ("senti", "pair"):  # one fixed test sample per task, whichever the method
        assert len({r["test_ids"] for r in saved.values() if r["task"] == task}) == 1
    for (_, method), group in by_method.items():
        params = group[0]["params"]
        if method.startswith("zero_shot"):
            assert params["trainable"] == 0 < params["total"]
            assert group[0]["k"] == 0 and group[0]["seed"] is None and group[0]["family"] == "zero-shot"
        elif method == "prompt_lora":
            assert 0 < params["trainable"] < params["total"] and group[0]["family"] == "prompt"
            assert group[0]["details"]["training"]["steps"] >= 1
        elif method == "head_finetune":
            assert params["trainable"] == params["total"] and group[0]["family"] == "head"
        elif method == "peft_lora":
            assert params == {"trainable": 2, "total": 20} and group[0]["family"] == "baseline"
    calibrated = by_method[("senti", "zero_shot_calibrated")][0]
    plain = by_method[("senti", "zero_shot")][0]
    assert calibrated["calibrated"] and not plain["calibrated"]
    assert calibrated["predictions"]["probabilities"] != plain["predictions"]["probabilities"]
    assert json.loads((out / "suite.json").read_text())["methods"]["setfit"] == {
        "kind": "setfit", "family": "baseline", "calibrated": False}
    assert yaml.safe_load((out / "suite.yaml").read_text())["methods"]["prompt_lora"]["methods"] == [
        {"method": "lora", "r": 2}]
    assert [r.id for r in expand(load_suite(out / "suite.yaml"))] == [r.id for r in expand(suite)]  # as run


def test_an_unavailable_baseline_is_recorded_with_its_message(completed):
    _, out, result = completed
    setfit = [r for r in records(out).values() if r["method"] == "setfit"]
    assert len(setfit) == 4 and len(result.unavailable) == 4
    for record in setfit:
        assert record["status"] == "unavailable" and record["scores"] is None
        assert record["error"] == "setfit is not installed: pip install setfit"


# ----------------------------------------------------------------------------- caching and resuming

def test_a_second_invocation_runs_nothing_and_a_changed_option_reruns_only_its_method(
        completed, fake_baselines, tmp_path, model_dir, data_dir):
    _, finished, _ = completed
    out = tmp_path / "results"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}

    again = SuiteRunner(load_suite(suite_dict(model_dir, data_dir)), out, progress=False, log=lambda m: None).run()
    assert again.executed == [] and len(again.cached) == len(before)
    assert fake_baselines.built == []  # not even built

    changed = suite_dict(model_dir, data_dir)
    changed["methods"]["prompt_lora"]["methods"] = [{"method": "lora", "r": 4}]
    result = SuiteRunner(load_suite(changed), out, progress=False, log=lambda m: None).run()
    ran = [result.records[i] for i in result.executed]
    assert sorted((r["task"], r["method"], r["seed"]) for r in ran) == [
        ("pair", "prompt_lora", 1), ("pair", "prompt_lora", 2),
        ("senti", "prompt_lora", 1), ("senti", "prompt_lora", 2)]
    assert all(r["config"]["method"]["methods"] == [{"method": "lora", "r": 4}] for r in ran)
    assert {p.name: p.read_bytes() for p in (out / "runs").glob("*.json") if p.name in before} == before


def _two_zero_shot_runs(model_dir, data_dir, out: Path) -> SuiteRunner:
    suite = suite_dict(model_dir, data_dir, tasks={"senti": suite_dict(model_dir, data_dir)["tasks"]["senti"]},
                       methods={"zero_shot": {"kind": "zero_shot"}, "calibrated": {"kind": "zero_shot", "calibrate": True}})
    return SuiteRunner(load_suite(suite), out, progress=False, log=lambda m: None)


def test_a_run_another_process_finished_meanwhile_is_not_run_again(monkeypatch, tmp_path, model_dir, data_dir):
    out = tmp_path / "results"
    runner = _two_zero_shot_runs(model_dir, data_dir, out)
    first, second = runner.runs
    real = runner_module.execute_run
    ran = []

    def meanwhile(run, context):  # while the first run goes, a second process records the other
        ran.append(run.id)
        record = real(run, context)
        if run.id == first.id:
            other = real(second, context)
            (out / "runs").mkdir(parents=True, exist_ok=True)
            runner.record_path(second).write_text(json.dumps(other))
        return record

    monkeypatch.setattr(runner_module, "execute_run", meanwhile)
    result = runner.run()
    assert ran == [first.id] and result.executed == [first.id] and second.id in result.cached


def _write_claim(path: Path, pid: int, host: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "since": 0.0}))


def test_a_run_another_live_process_claimed_is_left_to_it_and_shown_as_running(tmp_path, model_dir, data_dir):
    out = tmp_path / "results"
    runner = _two_zero_shot_runs(model_dir, data_dir, out)
    first, second = runner.runs
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_claim(runner.claim_path(first), other.pid, socket.gethostname())
        _write_claim(runner.claim_path(second), 1, "another-machine")  # cannot be checked: respected
        listing = runner.describe_plan()
        assert f"running (process {other.pid} on {socket.gethostname()})" in listing
        assert "running (process 1 on another-machine)" in listing
        result = runner.run()
    finally:
        other.kill()
        other.wait()
    assert result.executed == [] and result.claimed == [first.id, second.id]
    assert not runner.record_path(first).exists() and not runner.record_path(second).exists()
    assert json.loads(runner.claim_path(first).read_text())["pid"] == other.pid  # not removed: not ours


def test_bench_says_how_many_runs_it_left_to_another_process(tmp_path, model_dir, data_dir, capsys):
    path = write_suite(tmp_path, suite_dict(model_dir, data_dir))
    out = tmp_path / "results"
    arguments = ["bench", str(path), "--out", str(out), "--only-tasks", "senti", "--only-methods", "zero_shot"]
    (run,) = SuiteRunner(load_suite(path), out, only_tasks=["senti"], only_methods=["zero_shot"]).runs
    _write_claim(out / "runs" / f"{run.id}.claim", 1, "another-machine")
    assert main(arguments) == 0
    assert "0 run(s) ran (0 failed, 0 unavailable), 0 cached, 1 left to another process" in capsys.readouterr().out
    (out / "runs" / f"{run.id}.claim").unlink()  # that process is gone: its owner removes the claim
    assert main(arguments) == 0
    assert "1 run(s) ran" in capsys.readouterr().out and (out / "runs" / f"{run.id}.json").exists()


def test_a_claim_left_by_a_dead_process_is_taken_over_and_a_finished_run_leaves_no_claim(
        monkeypatch, tmp_path, model_dir, data_dir):
    out = tmp_path / "results"
    runner = _two_zero_shot_runs(model_dir, data_dir, out)
    first, second = runner.runs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_claim(runner.claim_path(first), gone.pid, socket.gethostname())  # a killed process's claim
    assert "running" not in runner.describe_plan()
    real = runner_module.execute_run
    holders = {}

    def watched(run, context):  # while a run goes, its claim names this process
        holders[run.id] = json.loads(runner.claim_path(run).read_text())
        return real(run, context)

    monkeypatch.setattr(runner_module, "execute_run", watched)
    result = runner.run()
    assert result.executed == [first.id, second.id] and result.claimed == []
    assert all(h["pid"] == os.getpid() and h["host"] == socket.gethostname() for h in holders.values())
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([f"{first.id}.json", f"{second.id}.json"])


def _claim_all(folder: str, names: list[str], ready, go) -> list[str]:
    ready.wait()
    go.wait()
    return [name for name in names if runner_module.take_claim(Path(folder) / name) is None]


@pytest.mark.parametrize("left_by", ["nobody", "a dead process"])
def test_two_processes_claiming_the_same_runs_never_both_get_one(tmp_path, left_by):
    """Both racing for fresh claims, and both taking over the same stale ones (a restart after
    a killed sitting): a run claimed by both would run twice."""
    import multiprocessing

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    context = multiprocessing.get_context("spawn")
    names = [f"run{i}.claim" for i in range(300)]
    with context.Manager() as manager, context.Pool(2) as pool:
        for round_number in range(3):  # the stale-claim race is narrow: give it several chances
            folder = tmp_path / f"round{round_number}"
            folder.mkdir()
            if left_by == "a dead process":
                for name in names:
                    _write_claim(folder / name, gone.pid, socket.gethostname())
            ready, go = manager.Barrier(2), manager.Event()
            pending = [pool.apply_async(_claim_all, (str(folder), names, ready, go)) for _ in range(2)]
            go.set()
            won = [p.get(timeout=120) for p in pending]
            assert not set(won[0]) & set(won[1])  # claimed by both: the run would have run twice
            assert sorted(won[0] + won[1]) == sorted(names)  # each run claimed by one of them


def test_a_killed_suite_resumes_without_redoing_finished_runs(monkeypatch, tmp_path, model_dir, data_dir):
    suite = suite_dict(model_dir, data_dir, tasks={"senti": suite_dict(model_dir, data_dir)["tasks"]["senti"]},
                       methods={"zero_shot": {"kind": "zero_shot"},
                                "prompt_lora": {"kind": "prompt", "methods": ["lora"]}})
    out = tmp_path / "results"
    real = runner_module.execute_run
    calls = []

    def killed_after_the_first(run, context):
        calls.append(run.id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped in the middle of the second run
        return real(run, context)

    monkeypatch.setattr(runner_module, "execute_run", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        SuiteRunner(load_suite(suite), out, progress=False, log=lambda m: None).run()
    first = out / "runs" / f"{calls[0]}.json"
    assert [p.name for p in (out / "runs").iterdir()] == [first.name]  # no half-written record
    saved = first.read_bytes()

    ran = []

    def counted(run, context):
        ran.append(run.id)
        return real(run, context)

    monkeypatch.setattr(runner_module, "execute_run", counted)
    runner = SuiteRunner(load_suite(suite), out, progress=False, log=lambda m: None)
    result = runner.run()
    everything = [r.id for r in runner.runs]
    assert len(everything) == 3 and calls[0] == everything[0]
    assert ran == result.executed == everything[1:]
    assert result.cached == [calls[0]]
    assert first.read_bytes() == saved
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted(everything)


def test_a_failed_run_is_kept_and_rerun_only_when_asked(fake_baselines, tmp_path, model_dir, data_dir):
    suite = load_suite(suite_dict(model_dir, data_dir, seeds=[1], tasks={
        "senti": suite_dict(model_dir, data_dir)["tasks"]["senti"]}, methods={"peft_lora": {"kind": "peft_lora"}}))
    out = tmp_path / "results"
    lines = []
    fake_baselines.fail = True
    result = SuiteRunner(suite, out, progress=False, log=lines.append).run()
    (record,) = result.records.values()
    assert record["status"] == "failed" and record["error"] == "ValueError: peft_lora broke"
    assert "peft_lora broke" in record["traceback"] and record["scores"] is None
    assert any(line.startswith("FAILED senti/peft_lora/k=2/seed=1: ValueError: peft_lora broke") for line in lines)
    assert fake_baselines.built[0] == ("peft_lora", {}, 1)

    fake_baselines.fail = False
    assert SuiteRunner(suite, out, progress=False, log=lines.append).run().executed == []
    retried = SuiteRunner(suite, out, progress=False, log=lines.append, retry_failed=True).run()
    assert [r["status"] for r in retried.records.values()] == ["ok"]
    assert records(out)[record["id"]]["status"] == "ok"


def test_a_model_built_from_a_config_is_named_and_marked_for_speed_only(tmp_path, model_dir, data_dir):
    suite = suite_dict(model_dir, data_dir, quality=False, tasks={
        "senti": suite_dict(model_dir, data_dir)["tasks"]["senti"]}, methods={"zero_shot": {"kind": "zero_shot"}},
        model={"architecture": "gpt2", "tokenizer": model_dir, "name": "gpt2-tiny-random",
               "config": {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 64}})
    out = tmp_path / "results"
    result = SuiteRunner(load_suite(suite), out, progress=False, log=lambda m: None).run()
    (record,) = result.records.values()
    assert record["status"] == "ok", record["error"]
    assert record["model"] == "gpt2-tiny-random" and record["quality"] is False
    assert record["params"]["total"] < 30_000  # the configured shape, not the saved model's
    assert record["config"]["model"]["config"]["n_embd"] == 16
    assert json.loads((out / "suite.json").read_text())["quality"] is False


# ----------------------------------------------------------------------------- suites: errors and presets

@pytest.mark.parametrize(("change", "message"), [
    ({"sedes": [1]}, "unknown key 'sedes'; did you mean 'seeds'?"),
    ({"methods": {"m": {"kind": "prompts"}}}, "methods.m: kind 'prompts'; kind must be one of zero_shot, prompt"),
    ({"methods": {"m": {"kind": "zero_shot", "methods": ["lora"]}}},
     "methods.m.methods applies to kind prompt or head or pet, not to kind zero_shot; kind zero_shot takes: calibrate"),
    ({"methods": {"m": {"kind": "prompt", "methds": ["lora"]}}},
     "methods.m: unknown key 'methds'; did you mean 'methods'?"),
    ({"methods": {"m": {"kind": "prompt", "methods": ["lorra"]}}},
     "methods.m.methods[0]: unknown delta method 'lorra'; did you mean 'lora'?"),
    ({"methods": {"m": {"kind": "icl", "selection": "nearest"}}},
     "methods.m.selection: expected 'random' or 'balanced' or 'knn' or null, got 'nearest'"),
    ({"methods": {"m": {"kind": "zero_shot", "training": {"epochs": 2}}}},
     "methods.m.training applies to kind prompt or head or pet, not to kind zero_shot"),
    ({"budget": {"seed": 3}}, "budget.seed: set by the runner for every run"),
    ({"budget": {"epoch": 3}}, "budget: unknown key 'epoch'; did you mean 'epochs'?"),
    ({"k": [0]}, "k: K values are whole numbers of at least 1, got 0"),
    ({"seeds": [1, 1]}, "seeds: a seed is listed twice"),
    ({"tasks": {"senti": {"template": "{text} It was", "label_words": {"a": "b"}}}},
     "tasks.senti.template: a prompt reads exactly one {mask}; this template has 0"),
    ({"tasks": {"senti": {"template": "{text} {mask}", "label_words": {"yes": True, "no": "no"}}}},
     'tasks.senti.label_words.yes: True is not a word; YAML reads yes/no/true/null unquoted as values: '
     'quote the word ("yes")'),
    ({"tasks": {"senti": {"label_words": {"negative": "bad", "positive": "good"}}}},
     "tasks.senti: method zero_shot (kind zero_shot) reads the task's prompt; give the task template"),
    ({"methods": {}}, "methods: the suite needs at least one method"),
    ({"model": {"architecture": "lama", "tokenizer": "x"}},
     "model.architecture: unknown model type 'lama'; did you mean 'llama'"),
    ({"methods": {"m": {"kind": "peft_lora", "rank": 8}}}, "methods.m: unknown key 'rank'"),
])
def test_bad_suites_are_refused_naming_the_key(tmp_path, model_dir, data_dir, change, message):
    base = suite_dict(model_dir, data_dir)
    base["methods"] = {"zero_shot": {"kind": "zero_shot"}}
    path = write_suite(tmp_path, {**base, **change})
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}")):
        load_suite(path)


def test_label_words_must_name_the_tasks_classes_and_yaml_errors_say_where(tmp_path, model_dir, data_dir):
    suite = suite_dict(model_dir, data_dir)
    suite["tasks"]["senti"]["label_words"] = {"negative": "terrible", "good": "great"}
    with pytest.raises(ConfigError, match=r"tasks.senti.label_words: the task's classes are "
                                          r"\['negative', 'positive'\]; "
                                          r"no label words for \['positive'\]; unknown classes \['good'\]"):
        expand(load_suite(suite))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntasks: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_suite(broken)
    with pytest.raises(FileNotFoundError, match="not a preset \\(gpu, paper, quick\\)"):
        load_suite("nonexistent")
    with pytest.raises(FileNotFoundError, match="tasks.senti: no task at .*; set the suite's data_dir"):
        expand(load_suite(suite_dict(model_dir, tmp_path / "nowhere")))


def test_the_presets_load_and_follow_the_protocols():
    assert preset_names() == ["gpu", "paper", "quick"]
    quick, paper, gpu = (load_suite(name) for name in ("quick", "paper", "gpu"))
    assert list(quick.tasks) == ["sst2", "rte"] and quick.seeds == [13] and quick.k == [16]
    assert quick.test_limit == 100 and quick.quality
    assert list(quick.methods) == ["zero_shot", "zero_shot_calibrated", "prompt_lora", "head_finetune", "setfit",
                                   "peft_lora"]

    assert list(paper.tasks) == ["sst2", "sst5", "mr", "agnews", "rte", "cb"]
    assert paper.seeds == [13, 21, 42, 87, 100] and paper.k == [16] and paper.dev
    assert paper.tasks["cb"].k_values(paper.k) == [8] and paper.tasks["sst2"].k_values(paper.k) == [16]
    kinds = {m.kind for m in paper.methods.values()}
    assert kinds == {"zero_shot", "icl", "prompt", "pet", "head", "setfit", "peft_lora"}
    delta = {spec if isinstance(spec, str) else spec["method"]
             for m in paper.methods.values() if m.kind == "prompt" for spec in m.methods}
    assert delta == {"finetune", "prompt_tuning", "p_tuning", "prefix", "lora", "adapter", "bitfit", "intrinsic"}
    assert set(paper.targets) == {"prompt_beats_head", "best_beats_setfit", "reports_parameters", "parameter_share"}
    assert paper.tasks["rte"].label_words == {"entailment": "yes", "not_entailment": "no"}

    assert gpu.quality is False and gpu.model.architecture == "llama"
    assert gpu.model.config["hidden_size"] == 2048 and gpu.model_name.startswith("llama-1b")
    assert not any(m.kind in ("setfit", "peft_lora") for m in gpu.methods.values())


def test_the_presets_use_the_few_shot_benchmarks_prompts():
    few_shot_methods = import_benchmark("few_shot_methods")
    paper = load_suite("paper")
    for name, prompt in few_shot_methods.PROMPTS.items():
        assert paper.tasks[name].template == prompt.template
        assert paper.tasks[name].label_words == prompt.label_words


# ----------------------------------------------------------------------------- the command

def test_bench_dry_run_lists_the_runs_and_what_is_cached(tmp_path, model_dir, data_dir, capsys):
    path = write_suite(tmp_path, suite_dict(model_dir, data_dir))
    out = tmp_path / "results"
    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--only-tasks", "senti"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("suite tiny (") and "10 runs, 0 cached, 10 to run" in listing[0]
    assert len(listing) == 11 and all(line.endswith("to run") for line in listing[1:])
    assert any("senti/prompt_lora/k=2/seed=2" in line for line in listing)
    assert not out.exists()  # a dry run writes nothing

    assert main(["bench", str(path), "--out", str(out), "--only-tasks", "senti", "--only-methods", "zero_shot"]) == 0
    ran = capsys.readouterr().out
    assert "senti/zero_shot/k=0/seed=-: accuracy" in ran and "1 run(s) ran (0 failed, 0 unavailable)" in ran

    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--only-tasks", "senti"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "10 runs, 1 cached, 9 to run" in listing[0]
    assert [line.split()[-2:] for line in listing if "senti/zero_shot/" in line] == [["cached", "(ok)"]]

    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--limit", "3",
                 "--only-methods", "zero_shot"]) == 0
    assert "2 runs, 0 cached, 2 to run" in capsys.readouterr().out  # another test sample: other ids

    assert main(["bench", str(path), "--out", str(out), "--only-methods", "lora"]) == 2
    assert "--only-methods: 'lora' not in suite tiny" in capsys.readouterr().err
