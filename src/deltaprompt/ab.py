"""A/B tests of prompt variants: which prompt is better, with evidence.

Prompt variants scored on the same examples are *paired*: every example is answered by each
variant, so the tests compare them example by example, which is far more sensitive than
comparing two accuracies as if they came from different samples.

- ``mcnemar``: accuracy. Only the examples where exactly one variant is right carry
  information (b: A right, B wrong; c: A wrong, B right). Exact two-sided binomial test of
  b against c when b + c < 25, chi-square with continuity correction otherwise.
- ``paired_bootstrap``: any metric (accuracy, macro-F1, your own function). Resamples the
  examples with replacement, the same indices for both variants.
- ``metric_interval``: each variant's own confidence interval (Wilson for accuracy).
- ``compare_variants``: all of it for two or more variants, with Holm's correction when
  there are more than two, plain verdicts and a per-example diff of the disagreements.
- ``load_variants`` / ``evaluate_variants``: variants from YAML, evaluated zero-shot on one
  loaded model (``deltaprompt ab VARIANTS.yaml --data ...``).

    report = compare_variants({"plain": preds_a, "instructed": preds_b}, gold)
    print(report.verdict())      # instructed better than plain (p = 0.003)
    print(report.diff(limit=10).to_markdown())
"""

from __future__ import annotations

import difflib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as distributions

# The vectorised resampling of the benchmark report: per-resample example counts, and
# macro-F1 from resampled confusion counts.
from .bench.stats import _macro_f1_from_counts, _resample_counts
from .data import Example, as_examples
from .files import atomic_write
from .metrics import confusion_matrix, macro_f1
from .plm import PLM
from .schema import ConfigError
from .tokenization import Truncation

METRICS = ("accuracy", "macro_f1")
TESTS = ("auto", "mcnemar", "bootstrap")
EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant pairs
MetricFn = Callable[[Sequence[str], Sequence[str]], float]
Metric = str | MetricFn


# ----------------------------------------------------------------------------- tests

@dataclass(frozen=True)
class TestResult:
    """One paired test of variant A against variant B.

    ``statistic``: McNemar's chi-square, min(b, c) for the exact test, the observed difference
    for the bootstrap. ``difference``: metric(B) - metric(A), so positive means B is better.
    ``b``/``c`` (McNemar): examples A got right and B wrong / A wrong and B right. ``low``/``high``
    (bootstrap): percentile interval of the difference."""

    __test__ = False  # a result, not a pytest test class

    name: str
    statistic: float
    p_value: float
    n: int
    b: int | None = None
    c: int | None = None
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    resamples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact: bool | None = None,
            correction: bool = True) -> TestResult:
    """McNemar's test on paired right/wrong answers.

    ``exact``: None picks the exact binomial test when b + c < 25 (where the chi-square
    approximation is poor), else chi-square with 1 degree of freedom; ``correction``: Edwards'
    continuity correction, (|b - c| - 1)^2 / (b + c), floored at 0. No discordant pair: p = 1."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b_.shape:
        raise ValueError(f"McNemar needs two equally long lists of right/wrong, got {a.shape} and {b_.shape}")
    n = int(a.size)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    discordant = b + c
    exact = discordant < EXACT_BELOW if exact is None else exact
    difference = (c - b) / n if n else 0.0
    if exact:
        name = "McNemar exact"
        statistic = float(min(b, c))
        p = min(1.0, 2.0 * float(distributions.binom.cdf(min(b, c), discordant, 0.5))) if discordant else 1.0
    else:
        name = "McNemar chi-square" + (" (corrected)" if correction else "")
        excess = max(abs(b - c) - (1 if correction else 0), 0)
        statistic = excess**2 / discordant if discordant else 0.0
        p = float(distributions.chi2.sf(statistic, 1)) if discordant else 1.0
    return TestResult(name, float(statistic), p, n, b=b, c=c, difference=difference)


def score(gold: Sequence[str], predictions: Sequence[str], metric: Metric = "accuracy") -> float:
    """The metric of one prediction list; macro-F1 as ``metrics.macro_f1`` (classes that occur)."""
    if callable(metric):
        return float(metric(list(gold), list(predictions)))
    _check_metric(metric)
    if len(gold) != len(predictions):
        raise ValueError(f"{len(gold)} gold labels but {len(predictions)} predictions")
    if metric == "accuracy":
        return float(np.mean([g == p for g, p in zip(gold, predictions, strict=True)])) if gold else 0.0
    classes = sorted(set(gold) | set(predictions))
    return macro_f1(confusion_matrix(gold, predictions, classes))


def paired_bootstrap(gold: Sequence[str], predictions_a: Sequence[str], predictions_b: Sequence[str],
                     metric: Metric = "accuracy", resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> TestResult:
    """Paired bootstrap of metric(B) - metric(A): each resample draws N example indices with
    replacement, the same for both variants (vectorised for accuracy and macro-F1; a callable
    ``metric(gold, predicted)`` is called once per resample and variant).

    p-value (two-sided): twice the share of resampled differences on the far side of zero,
    with a +1 correction, 2 (1 + min(#{d* <= 0}, #{d* >= 0})) / (1 + resamples), capped at 1.
    It is the percentile interval inverted: up to the +1 correction and ties at zero,
    p < 1 - confidence exactly when that interval (``low``, ``high``) leaves out zero, so a
    verdict and the interval reported beside it agree. Identical predictions give p = 1."""
    gold, (a, b) = _aligned(gold, [predictions_a, predictions_b])
    observed = score(gold, b, metric) - score(gold, a, metric)
    samples = _resampled_scores(gold, [a, b], metric, resamples, seed)
    differences = samples[:, 1] - samples[:, 0]
    tail = min(int(np.sum(differences <= 0)), int(np.sum(differences >= 0)))
    low, high = _percentiles(differences, confidence)
    return TestResult("paired bootstrap", observed, min(1.0, 2.0 * (1 + tail) / (1 + resamples)), len(gold),
                      difference=observed, low=low, high=high, resamples=resamples)


def metric_interval(gold: Sequence[str], predictions: Sequence[str], metric: Metric = "accuracy",
                    confidence: float = 0.95, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Confidence interval of one variant's metric: Wilson's score interval for accuracy (good
    at small n and near 0 or 1, where the normal approximation is not), a percentile bootstrap
    over the examples for any other metric."""
    gold, (predictions,) = _aligned(gold, [predictions])
    if metric == "accuracy":
        right = sum(g == p for g, p in zip(gold, predictions, strict=True))
        return wilson_interval(right, len(gold), confidence)
    samples = _resampled_scores(gold, [predictions], metric, resamples, seed)[:, 0]
    return _percentiles(samples, confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    _check_confidence(confidence)
    z = float(distributions.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes a bound is exactly 0 or 1; computed, it is off by a rounding error.
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control, no independence assumed):
    the k-th smallest is multiplied by (m - k + 1), kept monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def format_p(p: float) -> str:
    """'p = 0.0386' (3 significant digits) or 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"


def _check_metric(metric: Metric) -> None:
    if not callable(metric) and metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)} (or give a function(gold, predicted))")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _metric_name(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def _aligned(gold: Sequence[str], predictions: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    gold = list(gold)
    if not gold:
        raise ValueError("no examples to compare")
    lists = [list(p) for p in predictions]
    for p in lists:
        if len(p) != len(gold):
            raise ValueError(f"{len(gold)} gold labels but {len(p)} predictions")
    return gold, lists


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    _check_confidence(confidence)
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def _resampled_scores(gold: list[str], predictions: list[list[str]], metric: Metric, resamples: int,
                      seed: int) -> np.ndarray:
    """(resamples, variants): the metric of each variant on each bootstrap resample. The
    resamples depend on ``seed`` and N only, so every metric sees the same ones."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    _check_metric(metric)
    n = len(gold)
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, 4_000_000 // n))  # bounds memory; each block is vectorised
    sizes = [min(block, resamples - start) for start in range(0, resamples, block)]
    if callable(metric):
        g = np.asarray(gold, dtype=object)
        ps = [np.asarray(p, dtype=object) for p in predictions]
        rows = []
        for size in sizes:
            for draw in rng.integers(0, n, size=(size, n)):  # the draws _resample_counts makes
                rows.append([float(metric(g[draw].tolist(), p[draw].tolist())) for p in ps])
        return np.asarray(rows, dtype=np.float64)
    weighted = _weighted_scores(gold, predictions, metric)
    return np.concatenate([weighted(_resample_counts(rng, n, size)) for size in sizes])


def _weighted_scores(gold: list[str], predictions: list[list[str]], metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from example weights (R, N) (how often each example was drawn) to each
    variant's metric (R, V)."""
    n, v = len(gold), len(predictions)
    if metric == "accuracy":
        correct = np.array([[g == p[i] for p in predictions] for i, g in enumerate(gold)], dtype=np.float32)  # (N, V)
        return lambda weights: (weights @ correct).astype(np.float64) / n
    classes = sorted(set(gold).union(*predictions))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    gold_codes = np.array([index[g] for g in gold]) * k
    codes = np.stack([gold_codes + np.array([index[x] for x in p]) for p in predictions])  # (V, N)
    one_hot = np.zeros((n, v * k * k), dtype=np.float32)
    one_hot[np.arange(n)[:, None], np.arange(v) * k * k + codes.T] = 1.0
    return lambda weights: _macro_f1_from_counts((weights @ one_hot).reshape(len(weights), v, k, k).astype(np.float64))


# ----------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class VariantResult:
    """One variant's metric with its confidence interval, and both standard scores."""

    name: str
    value: float
    low: float
    high: float
    n: int
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "low": self.low, "high": self.high, "n": self.n,
                **self.scores}


@dataclass(frozen=True)
class PairResult:
    """Variant ``a`` against ``b``: the test, Holm's adjusted p (= p with two variants), the
    verdict."""

    a: str
    b: str
    test: TestResult
    p_adjusted: float
    significant: bool
    verdict: str

    @property
    def difference(self) -> float:
        """metric(b) - metric(a)."""
        return float(self.test.difference or 0.0)

    @property
    def better(self) -> str | None:
        """The significantly better variant, if any."""
        if not self.significant:
            return None
        return self.b if self.difference > 0 else self.a

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "difference": self.difference, "test": self.test.to_dict(),
                "p_value": self.test.p_value, "p_adjusted": self.p_adjusted, "significant": self.significant,
                "better": self.better, "verdict": self.verdict}


def _verdict(a: str, b: str, difference: float, p: float, alpha: float, n: int) -> tuple[bool, str]:
    if p < alpha and difference != 0:
        better, worse = (b, a) if difference > 0 else (a, b)
        return True, f"{better} better than {worse} ({format_p(p)})"
    return False, f"no significant difference between {a} and {b} at n = {n}"


@dataclass(frozen=True)
class Diff:
    """The examples where variants disagree: each variant's prediction and whether it was right.
    ``records`` holds the first ``limit`` of them (all with limit None); ``total`` counts all;
    ``counts`` per pair: how often A was right and B wrong, and B right and A wrong."""

    variants: tuple[str, ...]
    n: int
    total: int
    records: list[dict[str, Any]]
    counts: list[dict[str, Any]]

    def summary(self) -> str:
        """One line with two variants; with more, a headline and a line per pair."""
        parts = [f"{c['a']} right, {c['b']} wrong: {c['a_right_b_wrong']}; "
                 f"{c['b']} right, {c['a']} wrong: {c['b_right_a_wrong']}" for c in self.counts]
        headline = f"{self.total} of {self.n} examples where the variants disagree"
        if len(parts) == 1:
            return f"{headline} ({parts[0]})"
        return "\n".join([headline + ":", *(f"- {part}" for part in parts)])

    def to_markdown(self) -> str:
        lines = ["## Where the variants disagree", "", self.summary(), ""]
        if not self.records:
            return "\n".join(lines)
        has_text = any("text" in r for r in self.records)
        names = " | ".join(_cell(v) for v in self.variants)
        lines.append(f"| # | gold | {names} |" + (" text |" if has_text else ""))
        lines.append("|---:|---|" + "---|" * len(self.variants) + ("---|" if has_text else ""))
        for r in self.records:
            marks = " | ".join(f"{_cell(r['predictions'][v])} {'✓' if r['correct'][v] else '✗'}"
                               for v in self.variants)
            text = f" | {_cell(_shorten(r.get('text', '')))} |" if has_text else " |"
            lines.append(f"| {r['index']} | {_cell(r['gold'])} | {marks}{text}")
        if len(self.records) < self.total:
            lines += ["", f"{self.total - len(self.records)} more not shown."]
        return "\n".join(lines)

    def to_text(self) -> str:
        lines = [self.summary()]
        for r in self.records:
            answers = "  ".join(f"{v}: {r['predictions'][v]} {'right' if r['correct'][v] else 'wrong'}"
                                for v in self.variants)
            text = f"  {_shorten(r['text'])!r}" if "text" in r else ""
            lines.append(f"  #{r['index']} gold {r['gold']}  {answers}{text}")
        if len(self.records) < self.total:
            lines.append(f"  ... {self.total - len(self.records)} more")
        return "\n".join(lines)


def _shorten(text: str, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return " ".join(str(value).split()).replace("|", "\\|")


@dataclass
class ABReport:
    """The result of ``compare_variants``: ``variants`` (name -> metric and interval), ``pairs``
    (every pair, in variant order), the predictions they came from, and ``meta`` (what was
    evaluated, for the JSON file). ``correction`` is "holm" with more than two variants."""

    metric: str
    n: int
    alpha: float
    confidence: float
    correction: str | None
    variants: dict[str, VariantResult]
    pairs: list[PairResult]
    gold: list[str]
    predictions: dict[str, list[str]]
    texts: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def pair(self, a: str, b: str) -> PairResult:
        for pair in self.pairs:
            if {pair.a, pair.b} == {a, b}:
                return pair
        raise KeyError(f"no pair {a!r} / {b!r}; variants: {list(self.variants)}")

    def verdict(self) -> str:
        """One line per pair: "B better than A (p = 0.003)" or "no significant difference ..."."""
        return "\n".join(pair.verdict for pair in self.pairs)

    def diff(self, examples: Sequence[Example | str] | None = None, limit: int | None = 20) -> Diff:
        """The examples where the variants' predictions differ (texts from ``examples`` or the
        ones evaluated), in example order; at most ``limit`` records (None: all)."""
        if examples is not None and len(examples) != self.n:
            raise ValueError(f"{len(examples)} examples for a report on {self.n}")
        texts = ([e.text if isinstance(e, Example) else str(e) for e in examples] if examples is not None
                 else self.texts)
        names = list(self.variants)
        records = []
        for i, gold in enumerate(self.gold):
            answers = {v: self.predictions[v][i] for v in names}
            if len(set(answers.values())) == 1:
                continue
            record: dict[str, Any] = {"index": i, "gold": gold, "predictions": answers,
                                      "correct": {v: answers[v] == gold for v in names}}
            if texts is not None:
                record["text"] = texts[i]
            records.append(record)
        def only(right: str, wrong: str) -> int:
            return sum(r["correct"][right] and not r["correct"][wrong] for r in records)

        counts = [{"a": p.a, "b": p.b, "a_right_b_wrong": only(p.a, p.b), "b_right_a_wrong": only(p.b, p.a)}
                  for p in self.pairs]
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be at least 0, got {limit}")
        shown = records if limit is None else records[:limit]
        return Diff(tuple(names), self.n, len(records), shown, counts)

    def _header(self) -> str:
        corrected = f"; p-values Holm-adjusted over {len(self.pairs)} pairs" if self.correction else ""
        return (f"{_metric_name(self.metric)} on {self.n} examples, {self.confidence:.0%} intervals, "
                f"alpha {self.alpha:g}{corrected}")

    def to_text(self) -> str:
        """The tables and verdicts as aligned plain text (what ``deltaprompt ab`` prints)."""
        width = max(7, *(len(v) for v in self.variants))
        ci = f"{self.confidence:.0%} CI"
        lines = [self._header(), "", f"{'variant':<{width}}  {self.metric:>10}  {ci}"]
        for v in self.variants.values():
            lines.append(f"{v.name:<{width}}  {v.value:>10.3f}  [{v.low:.3f}, {v.high:.3f}]")
        lines.append("")
        for p in self.pairs:
            extra = f", adjusted {format_p(p.p_adjusted)}" if self.correction else ""
            discordant = (f", only {p.a} right {p.test.b}, only {p.b} right {p.test.c}" if p.test.b is not None
                          else "")
            lines.append(f"{p.a} vs {p.b}: {p.test.name}, {p.b} - {p.a} = {p.difference:+.3f}{discordant}, "
                         f"{format_p(p.test.p_value)}{extra}")
        return "\n".join([*lines, "", self.verdict()])

    def to_markdown(self, diff_limit: int | None = 0) -> str:
        """Variant table, pair table and verdicts; with ``diff_limit`` (N, or None for all) the
        diff view too."""
        ci = f"{self.confidence:.0%} CI"
        lines = ["# A/B test", "", self._header() + ".", "",
                 f"| variant | {_cell(_metric_name(self.metric))} | {ci} |", "|---|---:|---|"]
        lines += [f"| {_cell(v.name)} | {v.value:.3f} | [{v.low:.3f}, {v.high:.3f}] |" for v in self.variants.values()]
        adjusted = " p (Holm) |" if self.correction else ""
        lines += ["", f"| A | B | B − A | test | p |{adjusted} verdict |",
                  "|---|---|---:|---|---:|" + ("---:|" if self.correction else "") + "---|"]
        for p in self.pairs:
            holm_cell = f" {p.p_adjusted:.3g} |" if self.correction else ""
            lines.append(f"| {_cell(p.a)} | {_cell(p.b)} | {p.difference:+.3f} | {p.test.name} | {p.test.p_value:.3g} |"
                         f"{holm_cell} {_cell(p.verdict)} |")
        lines += ["", "**Verdict**", "", *(f"- {p.verdict}" for p in self.pairs)]
        if diff_limit is None or diff_limit > 0:
            lines += ["", self.diff(limit=diff_limit).to_markdown()]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the results, the predictions, the full diff and ``meta``."""
        diff = self.diff(limit=None)
        return {
            "metric": _metric_name(self.metric), "n": self.n, "alpha": self.alpha, "confidence": self.confidence,
            "correction": self.correction, "verdict": self.verdict(),
            "variants": [v.to_dict() for v in self.variants.values()],
            "pairs": [p.to_dict() for p in self.pairs],
            "diff": {"total": diff.total, "counts": diff.counts, "records": diff.records},
            "gold": self.gold, "predictions": self.predictions,
            **({"texts": self.texts} if self.texts is not None else {}),
            "meta": self.meta,
        }

    def save(self, directory: str | Path, diff_limit: int | None = None) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` (with the diff view, all of it by default),
        each atomically."""
        folder = Path(directory)
        paths = folder / "report.json", folder / "report.md"
        with atomic_write(paths[0]) as handle:
            handle.write(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        with atomic_write(paths[1]) as handle:
            handle.write(self.to_markdown(diff_limit=diff_limit))
        return paths


def compare_variants(predictions: Mapping[str, Sequence[str]], gold: Sequence[str], metric: Metric = "accuracy",
                     alpha: float = 0.05, test: str = "auto", *, confidence: float = 0.95, resamples: int = 10000,
                     seed: int = 0, texts: Sequence[str] | None = None,
                     meta: Mapping[str, Any] | None = None) -> ABReport:
    """Compare two or more variants' predictions on the same examples.

    Each variant gets its metric and interval (``metric_interval``); every pair (in the order
    given) is tested: ``test="auto"`` is McNemar for accuracy and the paired bootstrap for any
    other metric; "mcnemar" (accuracy only) and "bootstrap" force one. With more than two
    variants the p-values are Holm-adjusted over all pairs, so "better than" holds for the
    whole table at ``alpha``, and the verdicts quote the adjusted p."""
    _check_metric(metric)
    if test not in TESTS:
        raise ValueError(f"test {test!r} is not one of {list(TESTS)}")
    if test == "mcnemar" and metric != "accuracy":
        raise ValueError(f"McNemar's test compares right/wrong answers, i.e. accuracy; for {_metric_name(metric)} "
                         "use test='bootstrap'")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if len(predictions) < 2:
        raise ValueError(f"an A/B test needs at least two variants, got {list(predictions)}")
    names = [str(name) for name in predictions]
    gold, lists = _aligned(gold, list(predictions.values()))
    by_name = dict(zip(names, lists, strict=True))
    if texts is not None and len(texts) != len(gold):
        raise ValueError(f"{len(texts)} texts for {len(gold)} examples")
    use_mcnemar = metric == "accuracy" and test != "bootstrap"
    variants = {}
    for name in names:
        low, high = metric_interval(gold, by_name[name], metric, confidence, resamples, seed)
        scores = {m: score(gold, by_name[name], m) for m in METRICS}
        variants[name] = VariantResult(name, score(gold, by_name[name], metric), low, high, len(gold), scores)
    results = []
    for a, b in combinations(names, 2):
        if use_mcnemar:
            correct = [[g == p for g, p in zip(gold, by_name[v], strict=True)] for v in (a, b)]
            results.append(mcnemar(*correct))
        else:
            results.append(paired_bootstrap(gold, by_name[a], by_name[b], metric, resamples, seed, confidence))
    correction = "holm" if len(names) > 2 else None
    adjusted = holm([r.p_value for r in results]) if correction else [r.p_value for r in results]
    pairs = []
    for (a, b), result, p in zip(combinations(names, 2), results, adjusted, strict=True):
        significant, verdict = _verdict(a, b, result.difference or 0.0, p, alpha, len(gold))
        pairs.append(PairResult(a, b, result, p, significant, verdict))
    return ABReport(metric=metric if isinstance(metric, str) else _metric_name(metric), n=len(gold), alpha=alpha,
                    confidence=confidence, correction=correction, variants=variants, pairs=pairs, gold=gold,
                    predictions=by_name, texts=list(texts) if texts is not None else None, meta=dict(meta or {}))


# ----------------------------------------------------------------------------- variants from YAML

TOP_KEYS = ("model", "label_words", "calibrate", "chat", "variants")
VARIANT_KEYS = ("template", "spec", "spec_file", "label_words", "chat", "calibrate")


@dataclass
class Variant:
    """One prompt to compare: a deltaprompt ``template`` or a ``spec`` (a PromptSpec used as a
    classification template, through the model's chat template with ``chat``), its label
    words, and whether to apply contextual calibration."""

    name: str
    label_words: Any
    template: str | None = None
    spec: Any = None
    chat: bool = False
    calibrate: bool = False

    def build_template(self, tokenizer: Any = None) -> Any:
        """The classification template for this model's tokenizer."""
        if self.template is not None:
            return self.template
        return self.spec.template(tokenizer, chat=self.chat)

    def describe(self) -> dict[str, Any]:
        from .verbalizer import parse_label_words

        prompt = {"template": self.template} if self.template is not None else {"spec": self.spec.to_dict()}
        words = {c: list(w) for c, w in parse_label_words(self.label_words).items()}
        return {**prompt, "label_words": words, "chat": self.chat, "calibrate": self.calibrate}


@dataclass
class VariantSet:
    """Variants read from YAML, with the file's default model (None: the caller's choice)."""

    variants: list[Variant]
    model: str | None = None
    source: str | None = None

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]


def _unknown_key(where: str, key: str, allowed: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
    return ConfigError(f"{where}: unknown key {key!r}; {hint}")


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _names_a_file(path_or_text: str | Path) -> bool:
    """A Path, or one line ending in .yaml/.yml or naming an existing file (else: YAML text)."""
    if isinstance(path_or_text, Path):
        return True
    if "\n" in path_or_text:
        return False
    try:
        return path_or_text.endswith((".yaml", ".yml")) or Path(path_or_text).is_file()
    except OSError:  # too long to be a file name
        return False


def load_variants(path_or_text: str | Path, base_dir: str | Path | None = None) -> VariantSet:
    """Variants from a YAML file (or YAML text): ``variants:`` maps each name to a template
    string, or to ``template`` / ``spec`` (a PromptSpec mapping) / ``spec_file`` (relative to
    the YAML file, else to ``base_dir``) with optional ``label_words``, ``chat`` and
    ``calibrate``; top-level ``model``, ``label_words``, ``calibrate`` and ``chat`` are
    defaults. Errors name the variant and the key."""
    from .config import read_yaml
    from .template import Template, TemplateError
    from .verbalizer import parse_label_words

    source = None
    if _names_a_file(path_or_text):
        file = Path(path_or_text)
        if not file.is_file():
            raise FileNotFoundError(f"no such variants file: {file}")
        source, text, base = str(file), file.read_text(encoding="utf-8"), file.parent
    else:
        text, base = path_or_text, Path(base_dir or ".")
    where = source or "variants"
    raw = read_yaml(text, where)
    if not isinstance(raw, Mapping) or "variants" not in raw:
        raise ConfigError(f"{where}: expected a mapping with 'variants:' (name: template or name: {{spec: ...}})")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown_key(where, key, TOP_KEYS)
    entries = raw["variants"]
    if not isinstance(entries, Mapping) or len(entries) < 2:
        raise ConfigError(f"{where}: variants must map at least two names to prompts (an A/B test needs two)")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}: model: expected a name or path, got {model!r}")
    defaults = {"label_words": raw.get("label_words"), "chat": _flag(raw.get("chat", False), f"{where}: chat"),
                "calibrate": _flag(raw.get("calibrate", False), f"{where}: calibrate")}
    variants, classes_of = [], {}
    for name, entry in entries.items():
        at = f"{where}: variant {name!r}"
        if isinstance(entry, str):
            entry = {"template": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: expected a template string or a mapping with template/spec/spec_file")
        for key in entry:
            if key not in VARIANT_KEYS:
                raise _unknown_key(at, key, VARIANT_KEYS)
        given = [key for key in ("template", "spec", "spec_file") if key in entry]
        if len(given) != 1:
            raise ConfigError(f"{at}: give exactly one of template, spec, spec_file (got {given or 'none'})")
        # The top-level chat default is for spec variants; a template is used as written.
        chat = _flag(entry.get("chat", defaults["chat"] and "template" not in entry), f"{at}: chat")
        calibrate = _flag(entry.get("calibrate", defaults["calibrate"]), f"{at}: calibrate")
        words = entry.get("label_words", defaults["label_words"])
        if words is None:
            raise ConfigError(f"{at}: no label_words (give them for the variant or at the top level)")
        try:
            classes_of[name] = tuple(parse_label_words(words))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{at}: label_words: {exc}") from None
        variant = Variant(str(name), words, chat=chat, calibrate=calibrate)
        if "template" in entry:
            if chat:
                raise ConfigError(f"{at}: chat: true applies to spec variants; a template is used as written "
                                  "(write the chat markup into it, or use spec)")
            if not isinstance(entry["template"], str):
                raise ConfigError(f"{at}: template: expected a string, got {entry['template']!r}")
            try:
                parsed = Template(entry["template"])
            except TemplateError as exc:
                raise ConfigError(f"{at}: template: {exc}") from None
            if parsed.num_masks != 1:
                raise ConfigError(f"{at}: template: a classification template has exactly one {{mask}}, "
                                  f"this one has {parsed.num_masks}")
            variant.template = entry["template"]
        else:
            variant.spec = _load_spec(entry, base, at)
        variants.append(variant)
    first = next(iter(classes_of))
    for name, classes in classes_of.items():
        if set(classes) != set(classes_of[first]):
            raise ConfigError(f"{where}: variant {name!r} has classes {list(classes)} but variant {first!r} has "
                              f"{list(classes_of[first])}; variants are compared on the same classes")
    return VariantSet(variants, model, source)


def _load_spec(entry: Mapping[str, Any], base: Path, at: str) -> Any:
    from .prompt_spec import PromptSpec

    try:
        if "spec" in entry:
            if not isinstance(entry["spec"], Mapping):
                raise ConfigError(f"expected a mapping of PromptSpec fields, got {entry['spec']!r}")
            spec = PromptSpec.from_dict(dict(entry["spec"]))
        else:
            path = base / str(entry["spec_file"])
            if not path.is_file():
                raise FileNotFoundError(f"spec_file: no such file {path}")
            spec = PromptSpec.load(path)
        spec.template()  # refuses chain-of-thought / self-check specs, which need generation
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{at}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        key = "spec" if "spec" in entry else "spec_file"
        raise ConfigError(f"{at}: {key}: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}") from None
    return spec


def sample_examples(examples: Sequence[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A fixed random sample of ``limit`` examples drawn with ``seed``, kept in their original
    order (all of them when there are no more)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or len(examples) <= limit:
        return list(examples)
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]


def evaluate_variants(variants: VariantSet | Sequence[Variant] | str | Path,
                      examples: Iterable[Example | str | Mapping[str, Any]], plm: PLM | str, *,
                      classes: Sequence[str] | None = None, metric: Metric = "accuracy", alpha: float = 0.05,
                      test: str = "auto", confidence: float = 0.95, resamples: int = 10000, seed: int = 0,
                      batch_size: int = 16, max_length: int | None = None, truncation: Truncation = "longest_first",
                      progress: bool | None = None) -> ABReport:
    """Evaluate each variant zero-shot on the same labelled examples and compare them.

    One PLM (a loaded ``PLM`` or a name, loaded once) serves every variant: each builds its
    own ``PromptClassifier`` around it (calibrated with ``calibrate: true``). ``classes``: the
    task's classes (checked against each variant's label words). ``meta`` of the report holds
    each variant's description, the classification template used and its seconds."""
    from .classifier import PromptClassifier
    from .plm import load_plm

    if isinstance(variants, str | Path):
        variants = load_variants(variants)
    variant_list = list(variants.variants if isinstance(variants, VariantSet) else variants)
    if len(variant_list) < 2:
        raise ValueError(f"an A/B test needs at least two variants, got {[v.name for v in variant_list]}")
    examples = as_examples(examples)
    if not examples:
        raise ValueError("no examples to evaluate the variants on")
    unlabelled = [i for i, e in enumerate(examples) if e.label is None]
    if unlabelled:
        raise ValueError(f"an A/B test needs labelled examples; examples {unlabelled[:5]} have no label")
    if isinstance(plm, str):
        plm = load_plm(plm)
    predictions, described, seconds = {}, {}, {}
    for variant in variant_list:
        try:
            template = variant.build_template(plm.tokenizer)
            classifier = PromptClassifier(plm, template, variant.label_words, classes=classes, batch_size=batch_size,
                                          max_length=max_length, truncation=truncation, progress=progress)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"variant {variant.name!r}: {exc}") from exc
        unknown = sorted({e.label for e in examples} - set(classifier.classes))  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"labels {unknown} of the examples are not classes of variant {variant.name!r} "
                             f"{list(classifier.classes)}")
        started = time.perf_counter()
        if variant.calibrate:
            classifier.calibrate()
        predictions[variant.name] = classifier.predict(examples)
        seconds[variant.name] = round(time.perf_counter() - started, 3)
        text = template if isinstance(template, str) else template.text
        described[variant.name] = {**variant.describe(), "classification_template": text}
        del classifier
    texts = [e.text if e.text_b is None else f"{e.text} / {e.text_b}" for e in examples]
    meta = {"model": plm.name, "family": plm.family, "variants": described, "seconds": seconds}
    return compare_variants(predictions, [e.label for e in examples], metric, alpha, test,  # type: ignore[misc]
                            confidence=confidence, resamples=resamples, seed=seed, texts=texts, meta=meta)
