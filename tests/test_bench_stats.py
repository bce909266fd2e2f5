"""Benchmark statistics: mean ± std over seeds by hand, and the paired bootstrap on cases whose
answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deltaprompt.bench.stats import (
    Run,
    _resample_counts,
    _statistic,
    aggregate,
    load_results,
    pair_runs,
    paired_bootstrap,
    pick_k,
    reliability,
    summarise,
)
from deltaprompt.metrics import confusion_matrix, macro_f1


def record(method: str, seed: int | None, gold, predicted, *, task: str = "t", k: int = 16, classes=("a", "b"),
           metric: str = "accuracy", test_ids: str = "ids-1", status: str = "ok", started_at: str = "2026-01-01",
           score: float | None = None, probabilities=None) -> dict:
    """A run record as the runner writes it; scores computed from the predictions."""
    gold, predicted = list(map(int, gold)), list(map(int, predicted))
    counts = confusion_matrix([classes[g] for g in gold], [classes[p] for p in predicted], classes)
    accuracy = float(np.mean(np.equal(gold, predicted))) if gold else 0.0
    scores = {"accuracy": accuracy if score is None else score, "macro_f1": macro_f1(counts)}
    return {
        "id": f"{task}-{method}-{k}-{seed}-{started_at}", "status": status, "error": None if status == "ok" else "x",
        "task": task, "method": method, "kind": "prompt", "family": "prompt", "calibrated": False, "k": k,
        "seed": seed, "model": "tiny", "metric": metric, "scores": scores,
        "params": {"trainable": 10, "total": 1000}, "seconds": {"train": 1.0, "eval": 1.0, "total": 2.0},
        "peak_memory_mb": 1.0, "memory_kind": "rss", "classes": list(classes),
        "predictions": {"gold": gold, "predicted": predicted,
                        "probabilities": probabilities if probabilities is not None else
                        [[float(p == c) for c in range(len(classes))] for p in predicted]},
        "test_ids": test_ids, "config": {}, "environment": {}, "started_at": started_at,
    }


def run(*args, **kwargs) -> Run:
    return Run.from_record(record(*args, **kwargs))


def with_accuracy(method: str, seed: int | None, accuracy: float, n: int = 20, **kwargs) -> Run:
    gold = np.arange(n) % 2
    predicted = gold.copy()
    wrong = round((1 - accuracy) * n)
    predicted[:wrong] = 1 - gold[:wrong]
    return run(method, seed, gold, predicted, **kwargs)


def test_mean_and_sample_std_over_seeds_by_hand():
    runs = [with_accuracy("m", 13, 0.8), with_accuracy("m", 21, 0.9), with_accuracy("m", 42, 0.7),
            with_accuracy("z", None, 0.6, k=0), with_accuracy("z", None, 0.6, k=0),  # seed-free: counts once
            Run.from_record(record("m", 87, [0], [0], status="failed"))]             # not a seed of the mean
    cells = aggregate(runs)
    cell = cells[("t", "m", 16)]
    assert cell.seeds == (13, 21, 42) and cell.n == 3
    assert cell.mean == pytest.approx(0.8)
    assert cell.std == pytest.approx(math.sqrt((0.0**2 + 0.1**2 + 0.1**2) / 2))  # ddof 1: 0.1
    zero = cells[("t", "z", 0)]
    assert zero.n == 1 and zero.seed_independent and zero.std is None and zero.mean == pytest.approx(0.6)
    assert aggregate(runs, metric="macro_f1")[("t", "m", 16)].metric == "macro_f1"


def test_paired_bootstrap_known_difference():
    n = 100
    gold = np.arange(n) % 2
    half_wrong = gold.copy()
    half_wrong[: n // 2] = 1 - gold[: n // 2]
    a = [run("A", s, gold, gold) for s in (13, 21)]
    b = [run("B", s, gold, half_wrong) for s in (13, 21)]
    result = paired_bootstrap(a, b, n_resamples=1000, seed=0)
    assert result.difference == pytest.approx(0.5)
    assert result.p_value < 0.01 and result.p_value == pytest.approx(1 / 1001)
    assert 0.3 < result.low < 0.5 < result.high < 0.7
    assert result.pairs == ((13, 13), (21, 21)) and result.n_examples == n and result.n_resamples == 1000
    backwards = paired_bootstrap(b, a, n_resamples=1000, seed=0)
    assert backwards.difference == pytest.approx(-0.5) and backwards.p_value < 0.01


def test_paired_bootstrap_identical_methods():
    gold = np.arange(30) % 3
    predicted = (gold + (np.arange(30) % 4 == 0)) % 3
    a = [run("A", s, gold, predicted, classes=("a", "b", "c")) for s in (1, 2)]
    b = [run("B", s, gold, predicted, classes=("a", "b", "c")) for s in (1, 2)]
    for metric in ("accuracy", "macro_f1"):
        result = paired_bootstrap(a, b, metric=metric, n_resamples=300)
        assert result.difference == 0.0 and result.p_value == 1.0
        assert result.low == 0.0 and result.high == 0.0


def test_paired_bootstrap_macro_f1():
    classes = ("a", "b", "c")
    gold = np.arange(90) % 3
    majority = np.zeros(90, dtype=int)  # predicts class a for everything
    a = [run("A", s, gold, gold, classes=classes, metric="macro_f1") for s in (1, 2)]
    b = [run("B", s, gold, majority, classes=classes, metric="macro_f1") for s in (1, 2)]
    result = paired_bootstrap(a, b, n_resamples=500)  # the runs' own metric: macro-F1
    assert result.metric == "macro_f1"
    by_hand = 1.0 - macro_f1(confusion_matrix([classes[g] for g in gold], ["a"] * 90, classes))
    assert result.difference == pytest.approx(by_hand)  # 1 - (2*30/(90+30))/3 = 5/6
    assert result.difference == pytest.approx(5 / 6)
    assert result.p_value < 0.01 and result.low > 0.7


def test_vectorised_resamples_equal_a_loop():
    """The per-resample confusion counts (resample weights @ one-hot) give the same macro-F1
    and accuracy differences as computing each resample's metric one by one."""
    rng = np.random.default_rng(5)
    classes = ("a", "b", "c", "d")
    gold = rng.integers(0, 4, 50)
    pairs = pair_runs([run("A", s, gold, np.where(rng.random(50) < 0.7, gold, rng.integers(0, 4, 50)),
                           classes=classes) for s in (1, 2, 3)],
                      [run("B", s, gold, np.where(rng.random(50) < 0.5, gold, rng.integers(0, 4, 50)),
                           classes=classes) for s in (1, 2, 3)])
    weights = _resample_counts(np.random.default_rng(11), 50, 7)
    indices = np.random.default_rng(11).integers(0, 50, size=(7, 50))
    for metric in ("macro_f1", "accuracy"):
        vectorised = _statistic(pairs, metric)(weights)
        for r in range(7):
            i = indices[r]

            def score(x: Run, i=i, metric=metric) -> float:
                if metric == "accuracy":
                    return float(np.mean(x.gold[i] == x.predicted[i]))
                return macro_f1(confusion_matrix([classes[g] for g in x.gold[i]], [classes[p] for p in x.predicted[i]],
                                                 classes))
            expected = np.mean([score(a) - score(b) for a, b in pairs])
            assert vectorised[r] == pytest.approx(expected, abs=1e-6)


def test_seed_independent_runs_pair_with_every_seed():
    zero = with_accuracy("zero", None, 0.5, k=0)
    trained = [with_accuracy("T", 13, 0.9), with_accuracy("T", 21, 0.7)]
    result = paired_bootstrap(trained, [zero], n_resamples=200)
    assert result.pairs == ((13, None), (21, None))
    assert result.difference == pytest.approx(((0.9 - 0.5) + (0.7 - 0.5)) / 2)


def test_only_shared_seeds_are_paired():
    a = [with_accuracy("A", s, 0.9) for s in (13, 21, 42)]
    b = [with_accuracy("B", s, 0.8) for s in (21, 42, 87)]
    assert paired_bootstrap(a, b, n_resamples=50).pairs == ((21, 21), (42, 42))
    with pytest.raises(ValueError, match="no seed in common"):
        paired_bootstrap(a[:1], b, n_resamples=50)


def test_mismatched_test_ids_are_refused():
    a = [with_accuracy("A", 13, 0.9, test_ids="one")]
    b = [with_accuracy("B", 13, 0.8, test_ids="other")]
    with pytest.raises(ValueError, match="test_ids"):
        paired_bootstrap(a, b)
    c = [with_accuracy("C", 13, 0.8, n=10, test_ids="one")]
    with pytest.raises(ValueError, match="gold"):
        paired_bootstrap(a, c)  # same test_ids but another test set: refused too


def test_bootstrap_is_reproducible_and_counts_resamples():
    a = [with_accuracy("A", s, 0.75, n=40) for s in (1, 2)]
    b = [with_accuracy("B", s, 0.7, n=40) for s in (1, 2)]
    b[1].predicted[-3:] = 1 - b[1].predicted[-3:]
    first = paired_bootstrap(a, b, n_resamples=250, seed=3)
    assert first == paired_bootstrap(a, b, n_resamples=250, seed=3)
    assert first.n_resamples == 250
    assert (first.p_value * 251) == pytest.approx(round(first.p_value * 251))  # (1 + count) / (1 + R)


def test_summarise_best_and_significance_marks():
    runs = ([with_accuracy("best", s, 1.0, n=60) for s in (1, 2)]
            + [with_accuracy("close", s, 0.983, n=60) for s in (1, 2)]  # one example worse: not significant
            + [with_accuracy("poor", s, 0.5, n=60) for s in (1, 2)]
            + [with_accuracy("zero", None, 0.6, n=60, k=0)]
            + [with_accuracy("poor", s, 0.9, n=60, k=4) for s in (1, 2)])  # another K: not in the table
    summary = summarise(runs, n_resamples=500)["t"]
    assert summary.best == "best" and summary.is_best("best")
    assert summary.cells["poor"].k == 16 and summary.cells["zero"].k == 0
    assert summary.significantly_worse("poor") and summary.significantly_worse("zero")
    assert not summary.significantly_worse("close") and not summary.significantly_worse("best")
    assert summarise(runs, k=4, n_resamples=50)["t"].cells["poor"].k == 4


def test_pick_k():
    assert pick_k([0]) == 0
    assert pick_k([4, 16]) == 16
    assert pick_k([8], wanted=16) == 8       # a task capped at fewer examples per class
    assert pick_k([4, 16, 32], wanted=16) == 16
    assert pick_k([32], wanted=16) == 32


def test_reliability_ece_by_hand():
    probabilities = [[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]]
    r = run("z", None, [0, 1, 1, 1], [0, 0, 1, 1], probabilities=probabilities)
    confidence, accuracy, counts, ece = reliability(r, bins=10)
    assert counts[9] == 2 and counts[6] == 2 and counts.sum() == 4
    assert accuracy[9] == pytest.approx(0.5) and accuracy[6] == pytest.approx(1.0)
    assert ece == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.65))


def test_load_results(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    old = record("m", 13, [0, 1], [0, 0], started_at="2026-01-01T00:00:00Z")
    new = record("m", 13, [0, 1], [0, 1], started_at="2026-01-02T00:00:00Z")
    (runs / "a.json").write_text(json.dumps(old))
    (runs / "b.json").write_text(json.dumps(new))
    (runs / "c.json").write_text(json.dumps({"status": "ok"}))
    (runs / "d.json").write_text("[")
    (tmp_path / "suite.yaml").write_text("tasks: {t: {}, u: {}}\nmethods: {z: {}, m: {}}\n")
    results = load_results(tmp_path)
    assert [r.started_at for r in results.runs] == ["2026-01-02T00:00:00Z"]  # the newest record of a cell
    assert [r.started_at for r in results.superseded] == ["2026-01-01T00:00:00Z"]
    assert sorted(p.path.name for p in results.problems) == ["c.json", "d.json"]
    assert "missing field" in next(p.reason for p in results.problems if p.path.name == "c.json")
    assert results.declared == {"tasks": ["t", "u"], "methods": ["z", "m"]}
    assert results.method_order == ["m"] and results.task_order == ["t"]
    with pytest.raises(FileNotFoundError, match="deltaprompt bench"):
        load_results(tmp_path / "nowhere")
