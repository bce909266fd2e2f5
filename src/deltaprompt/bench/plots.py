"""The report's figures, drawn with matplotlib and returned as PNG bytes in ``Figure`` blocks.

Accuracy against K, the parameter-efficiency frontier, time and memory per method, one run's
confusion matrix and the zero-shot reliability diagram each read the same ``ReportData`` as the
tables, so a plot cannot show runs the tables leave out. They sit apart from ``report.py``
because they are the only part that needs matplotlib (imported when a plot is drawn, with a
message saying how to install it) and the longest part to read.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .blocks import Figure, ReportData, _metric_name, _score, _seed
from .stats import Results, Run, TaskSummary, aggregate, method_average, reliability

PLOTS = ("accuracy-vs-k", "parameter-efficiency", "time-memory", "confusion", "reliability")


def _matplotlib():
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("the report's plots need matplotlib: pip install matplotlib") from exc
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    return matplotlib, MplFigure, FigureCanvasAgg


def _new_figure(width: float, height: float):
    """A figure on the Agg canvas, without pyplot's global state (safe in threads and servers)."""
    _, mpl_figure, canvas = _matplotlib()
    figure = mpl_figure(figsize=(width, height), dpi=100)
    canvas(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    matplotlib, _, _ = _matplotlib()
    palette = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


MARKERS = {"prompt": "o", "head": "s", "baseline": "D", "zero-shot": "^"}


def plot_accuracy_vs_k(data: ReportData) -> Figure:
    figure_block = Figure("accuracy-vs-k", "Accuracy vs K", "The task metric against K (examples per class), "
                          "mean ± std over seeds; methods that do not train on K as horizontal lines.")
    cells = aggregate(data.results.ok_runs)
    if not cells:
        figure_block.missing = "no successful run"
        return figure_block
    columns = min(3, len(data.tasks))
    rows = math.ceil(len(data.tasks) / columns)
    figure = _new_figure(4.2 * columns + 1.8, 3.2 * rows)
    colours = _colours(data.methods)
    handles: dict[str, Any] = {}
    for index, task in enumerate(data.tasks):
        axes = figure.add_subplot(rows, columns, index + 1)
        ks_all = sorted({key[2] for key in cells if key[0] == task and key[2] > 0})
        trained = [m for m in data.methods if any(key[0] == task and key[1] == m and key[2] > 0 for key in cells)]
        # Methods side by side around each K, so that equal scores do not hide one another.
        width = 0.025 * ((ks_all[-1] - ks_all[0]) if len(ks_all) > 1 else ks_all[0]) if ks_all else 0.0
        for method in data.methods:
            mine = sorted((key[2], cell) for key, cell in cells.items() if key[0] == task and key[1] == method)
            if not mine:
                continue
            style = dict(color=colours[method], label=method)
            if [k for k, _ in mine] == [0]:
                handles[method] = axes.axhline(mine[0][1].mean, linestyle="--", linewidth=1.4, **style)
                continue
            shift = (trained.index(method) - (len(trained) - 1) / 2) * width if method in trained else 0.0
            ks = [k + shift for k, _ in mine]
            means = [c.mean for _, c in mine]
            stds = [c.std or 0.0 for _, c in mine]
            handles[method] = axes.errorbar(ks, means, yerr=stds, marker=MARKERS.get(data.families.get(method), "o"),
                                            capsize=3, linewidth=1.6, **style)
        axes.set_title(task)
        if ks_all:
            axes.set_xticks(ks_all)
        if len(ks_all) == 1:
            axes.set_xlim(ks_all[0] * 0.8, ks_all[0] * 1.2)
        axes.set_xlabel("K per class")
        axes.set_ylabel(_metric_name(data.summaries[task].metric) if task in data.summaries else "score")
        axes.grid(alpha=0.3)
    figure.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.tight_layout()
    figure_block.png = _png(figure)
    return figure_block


def _pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats with as few or fewer trainable parameters."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier


def plot_parameter_efficiency(data: ReportData) -> Figure:
    block = Figure("parameter-efficiency", "Accuracy vs trainable parameters",
                   "Mean task metric over tasks against trainable parameters (log scale), one point per method; "
                   "the line is the Pareto frontier (no method does better with fewer parameters). Methods that "
                   "train nothing are horizontal lines.")
    points, flat = {}, {}
    for method in data.methods:
        value, n = method_average(data.summaries, method, data.tasks)
        trainable = [run.trainable for run in data.main_runs(method) if run.trainable is not None]
        if value is None or not trainable:
            continue
        count = float(np.mean(trainable))
        (points if count > 0 else flat)[method] = (count, value, n)
    if not points and not flat:
        block.missing = "no run reports trainable parameters"
        return block
    figure = _new_figure(7.5, 4.8)
    axes = figure.add_subplot(1, 1, 1)
    colours = _colours(data.methods)
    for method, (count, value, n) in points.items():
        axes.scatter([count], [value], color=colours[method], marker=MARKERS.get(data.families.get(method), "o"),
                     s=60, zorder=3)
        label = method if n == len(data.tasks) else f"{method} ({n}/{len(data.tasks)} tasks)"
        axes.annotate(label, (count, value), textcoords="offset points", xytext=(6, 4), fontsize=8)
    frontier = _pareto([(c, v) for c, v, _ in points.values()])
    if len(frontier) > 1:
        xs, ys = zip(*frontier, strict=True)
        axes.plot(xs, ys, drawstyle="steps-post", color="#444444", linewidth=1, linestyle="-", zorder=2,
                  label="Pareto frontier")
    for method, (_, value, _) in flat.items():
        axes.axhline(value, color=colours[method], linestyle="--", linewidth=1.2, label=f"{method} (0 trainable)")
    if points:
        axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (log scale)")
    axes.set_ylabel("mean over tasks")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, frameon=True, framealpha=0.85, loc="best")
    figure.tight_layout()
    block.png = _png(figure)
    return block


def plot_time_memory(data: ReportData) -> Figure:
    block = Figure("time-memory", "Training time and peak memory",
                   "Mean over the table's runs (tasks and seeds) of the wall time (training, then evaluation) "
                   "and of the peak memory.")
    rows = []
    for method in data.methods:
        runs = data.main_runs(method)
        if not runs:
            continue
        train = float(np.mean([run.seconds.get("train", 0.0) for run in runs]))
        evaluation = float(np.mean([run.seconds.get("eval", 0.0) for run in runs]))
        memory = [run.peak_memory_mb for run in runs if run.peak_memory_mb is not None]
        rows.append((method, train, evaluation, float(np.mean(memory)) if memory else None))
    if not rows:
        block.missing = "no successful run"
        return block
    kinds = sorted({run.memory_kind for m in data.methods for run in data.main_runs(m) if run.memory_kind})
    figure = _new_figure(11, 0.45 * len(rows) + 1.6)
    colours = _colours(data.methods)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    names = [r[0] for r in rows]
    positions = np.arange(len(rows))
    left.barh(positions, [r[1] for r in rows], color=[colours[n] for n in names], label="training")
    left.barh(positions, [r[2] for r in rows], left=[r[1] for r in rows], color=[colours[n] for n in names],
              alpha=0.4, label="evaluation")
    left.set_yticks(positions, names)
    left.invert_yaxis()
    left.set_xlabel("seconds per run")
    left.legend(fontsize=8, frameon=False)
    memory_values = [r[3] if r[3] is not None else 0.0 for r in rows]
    right.barh(positions, memory_values, color=[colours[n] for n in names])
    right.set_yticks(positions, [name if row[3] is not None else f"{name} (not recorded)"
                                 for name, row in zip(names, rows, strict=True)])
    right.invert_yaxis()
    right.set_xlabel("peak memory, MB" + (f" ({', '.join(kinds)})" if kinds else ""))
    for axes in (left, right):
        axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    block.png = _png(figure)
    return block


def select_run(results: Results, spec: str | None, summaries: dict[str, TaskSummary] | None = None) -> Run:
    """The run for the confusion matrix: a run id (or a unique prefix), ``task/method/k/seed``
    (seed ``none`` for a seed-independent run), or by default the best trained run on the
    first task."""
    usable = [run for run in results.ok_runs if run.has_predictions]
    if spec:
        by_id = [run for run in usable if run.id.startswith(spec)]
        if len(by_id) == 1:
            return by_id[0]
        parts = spec.split("/")
        if len(parts) == 4:
            task, method, k, seed = parts
            wanted_seed = None if seed.lower() in ("none", "null", "-", "") else int(seed)
            for run in usable:
                if (run.task, run.method, str(run.k), run.seed) == (task, method, k, wanted_seed):
                    return run
        choices = ", ".join(f"{r.id} = {r.task}/{r.method}/{r.k}/{_seed(r).replace('–', 'none')}" for r in usable[:8])
        raise ValueError(f"--confusion {spec!r} matches {'several runs' if len(by_id) > 1 else 'no successful run'}"
                         f" with predictions; give a run id or task/method/k/seed, e.g. {choices}")
    if not usable:
        raise ValueError("no successful run with predictions")
    tasks = list(summaries) if summaries else results.task_order
    first = next((t for t in tasks if any(r.task == t for r in usable)), usable[0].task)
    on_task = [run for run in usable if run.task == first]
    trained = [run for run in on_task if run.family != "zero-shot" and run.k > 0] or on_task
    return max(trained, key=lambda run: (run.score() or 0.0, -(run.seed or 0)))


def plot_confusion(data: ReportData, spec: str | None) -> Figure:
    block = Figure("confusion", "Confusion matrix", "")
    try:
        run = select_run(data.results, spec, data.summaries)
    except ValueError as exc:
        if spec:
            raise
        block.missing = str(exc)
        return block
    classes = list(run.classes) or [str(i) for i in range(int(max(run.gold.max(), run.predicted.max())) + 1)]
    size = len(classes)
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (run.gold, run.predicted), 1)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.0, 0.75 * size + 2.5)
    figure = _new_figure(side + 1.0, side)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                      color="white" if shares[i, j] > 0.6 else "#222222")
    axes.set_xticks(range(size), classes, rotation=30, ha="right")
    axes.set_yticks(range(size), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(f"{run.task} / {run.method} / K={run.k} / seed {_seed(run)}", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the gold class")
    figure.tight_layout()
    block.png = _png(figure)
    block.caption = (f"Run {run.id}: {run.describe()}, {_metric_name(run.metric)} {_score(run.score())}. "
                     "Counts; colour is the share of each gold class (rows sum to 1).")
    return block


def plot_reliability(data: ReportData) -> Figure:
    block = Figure("reliability", "Reliability diagram",
                   "Zero-shot top-class probability against accuracy in 10 equal-width bins, without and with "
                   "contextual calibration; ECE (expected calibration error) in the legend. The diagonal is perfect "
                   "calibration.")
    pairs = []
    for task in data.tasks:
        runs = [run for run in data.results.ok_runs if run.task == task and run.kind == "zero_shot"
                and run.probabilities is not None and run.gold is not None]
        runs.sort(key=lambda r: data.methods.index(r.method) if r.method in data.methods else len(data.methods))
        plain = next((r for r in runs if not r.calibrated), None)
        calibrated = next((r for r in runs if r.calibrated), None)
        if plain and calibrated:
            pairs.append((task, plain, calibrated))
    if not pairs:
        block.missing = ("not measured: no task has zero-shot runs both without and with calibration "
                         "(kind zero_shot, calibrated false and true)")
        return block
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    figure = _new_figure(4.0 * columns, 3.9 * rows)
    for index, (task, plain, calibrated) in enumerate(pairs):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot([0, 1], [0, 1], linestyle=":", color="#888888", linewidth=1)
        for run, colour, label in ((plain, "#d62728", "uncalibrated"), (calibrated, "#1f77b4", "calibrated")):
            confidence, accuracy, counts, ece = reliability(run, bins=10)
            filled = counts > 0
            axes.plot(confidence[filled], accuracy[filled], marker="o", color=colour, linewidth=1.5,
                      label=f"{label} ({run.method}), ECE {ece:.3f}")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("confidence (top-class probability)")
        axes.set_ylabel("accuracy")
        axes.set_title(task)
        axes.legend(fontsize=7, loc="upper left", frameon=False)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    block.png = _png(figure)
    return block
