"""The benchmark report: one self-contained HTML page and the same tables as Markdown.

Both renderings come from one list of blocks (headings, paragraphs, tables, figures), so the
Markdown can never say something the page does not. The page needs no network and no
JavaScript: CSS is inline and every plot is a base64 PNG, so it can be mailed, archived or
opened from a CI artefact as it is. This file holds the sections (results table, targets,
significance, runs left out), the two renderings and ``write_report``; the figures come from
``plots.py``, the performance benchmark results from ``performance.py``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .blocks import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    ReportData,
    Table,
    TableCell,
    _count,
    _mean_std,
    _metric_name,
    _percent,
    _score,
    _seed,
    _seeds_note,
)
from .performance import collect_performance
from .plots import (
    plot_accuracy_vs_k,
    plot_confusion,
    plot_parameter_efficiency,
    plot_reliability,
    plot_time_memory,
)
from .stats import (
    Results,
    Run,
    TaskSummary,
    load_results,
    method_average,
    missing_runs,
    paired_bootstrap,
    summarise,
)

MET, MISSED, NOT_MEASURED, NOT_EVALUATED = "met", "missed", "not measured", "not evaluated"
CHECK, CROSS = "\u2714", "\u2718"
WORSE = "\u25bc"  # significantly worse than the task's best


def _cell(value: TableCell | str) -> TableCell:
    return value if isinstance(value, TableCell) else TableCell(str(value))


CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;color:#222;background:#fff;margin:24px auto;
max-width:1180px;padding:0 16px;line-height:1.45;font-size:15px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:32px}
h3{font-size:16px;margin-top:22px}
table{border-collapse:collapse;margin:10px 0 6px;font-size:14px}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#f0f0f0}tbody th{font-weight:normal;background:#fafafa;white-space:nowrap}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.n{color:#777;font-size:12px}.mark{color:#555;font-size:12px}
.met{color:#1b7f3b;font-weight:bold}.missed{color:#b3261e;font-weight:bold}.unmeasured{color:#777}
.note{color:#555;font-size:13px}figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:13px;margin-top:4px}ul{margin-top:4px}
"""


def _html_cell(value: TableCell | str, tag: str = "td") -> str:
    cell = _cell(value)
    attributes = "".join(f' data-{html.escape(k)}="{html.escape(v)}"' for k, v in cell.data.items())
    if cell.css:
        attributes += f' class="{html.escape(cell.css)}"'
    if cell.title:
        attributes += f' title="{html.escape(cell.title)}"'
    if tag == "th":
        attributes += ' scope="row"'
    body = html.escape(cell.text)
    if cell.bold:
        body = f"<b>{body}</b>"
    if cell.mark:
        body += f' <span class="mark">{html.escape(cell.mark)}</span>'
    if cell.note:
        body += f' <span class="n">{html.escape(cell.note)}</span>'
    return f"<{tag}{attributes}>{body}</{tag}>"


def render_html(title: str, blocks: Sequence[Block]) -> str:
    """One page, no script, no external URL: CSS inline, plots as data: URIs."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            slug = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
            parts.append(f'<h{block.level} id="{slug}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, Paragraph):
            css = f' class="{block.css}"' if block.css else ""
            parts.append(f"<p{css}>{html.escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            css = f' class="{block.css}"' if block.css else ""
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + _html_cell(row[0], "th") + "".join(_html_cell(c) for c in row[1:]) + "</tr>"
                for row in block.rows
            )
            parts.append(f"<table{css}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            if block.png is None:
                parts.append(f'<p class="note unmeasured">{html.escape(block.alt)}: {html.escape(block.missing)}</p>')
                continue
            data = base64.b64encode(block.png).decode("ascii")
            parts.append(
                f'<figure id="plot-{block.name}">'
                f'<img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _md_cell(value: TableCell | str) -> str:
    cell = _cell(value)
    text = _md_escape(cell.text)
    if cell.bold:
        text = f"**{text}**"
    if cell.mark:
        text += f" {_md_escape(cell.mark)}"
    if cell.note:
        text += f" {_md_escape(cell.note)}"
    return text


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The same blocks as Markdown; figures refer to ``<name>.png`` beside the file."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [_md_escape(block.text).replace("\\|", "|"), ""]
        elif isinstance(block, Bullets):
            lines += [f"- {_md_escape(item)}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_escape(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            if block.png is None:
                lines += [f"{block.alt}: {_md_escape(block.missing)}", ""]
            else:
                lines += [f"![{block.alt}]({block.name}.png)", "", f"*{_md_escape(block.caption)}*", ""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- context

def _prepare(results: Results, k: int | None, n_resamples: int, seed: int) -> ReportData:
    ok = results.ok_runs
    tasks = [t for t in results.task_order if any(r.task == t for r in ok)]
    methods = [m for m in results.method_order if any(r.method == m for r in ok)]
    summaries = summarise(ok, k=k, tasks=tasks, methods=methods, n_resamples=n_resamples, seed=seed)
    families = {run.method: run.family for run in results.runs}
    kinds = {run.method: run.kind for run in results.runs}
    return ReportData(results, summaries, tasks, methods, families, kinds, k, n_resamples, seed)


# ----------------------------------------------------------------------------- sections

def _overview(data: ReportData) -> list[Block]:
    results = data.results
    runs = results.runs
    statuses = Counter(run.status for run in runs)
    models = sorted({run.model for run in runs if run.model})
    ks = sorted({run.k for run in runs if run.k})
    seeds = sorted({run.seed for run in runs if run.seed is not None})
    suite = results.suite.get("name") or "(unnamed suite)"
    text = (
        f"Suite {suite}: {len(runs)} run records ({statuses.get('ok', 0)} ok, {statuses.get('failed', 0)} failed, "
        f"{statuses.get('unavailable', 0)} unavailable) for {len(data.tasks)} task(s) and {len(data.methods)} "
        f"method(s) with results. Model: {', '.join(models) or '–'}; K per class: {', '.join(map(str, ks)) or '0'}; "
        f"seeds: {', '.join(map(str, seeds)) or 'none'}. Results folder: {results.directory}."
    )
    blocks: list[Block] = [Paragraph(text)]
    if not data.quality:
        blocks.append(Paragraph("Speed and memory only: this suite runs a model with random weights, so its scores "
                                "mean nothing; read the time and memory plots.", css="missed"))
    return blocks


def _environment(data: ReportData) -> list[Block]:
    runs = data.results.runs
    if not runs:
        return [Heading("Environment"), Paragraph("No run records.")]
    keys = ("deltaprompt", "python", "torch", "transformers", "peft", "setfit", "device", "cpu", "threads")
    parts = []
    for key in keys:
        values = Counter(str(run.environment.get(key)) for run in runs if run.environment.get(key) not in (None, ""))
        if values:
            parts.append(f"{key} " + ", ".join(v if len(values) == 1 else f"{v} ({n} runs)"
                                               for v, n in values.most_common()))
    commits = Counter(str(run.environment.get("git_commit") or "unknown") for run in runs)
    commit_text = "; ".join(f"{c} ({n} run{'s' if n != 1 else ''})" for c, n in commits.most_common())
    dates = sorted(run.started_at for run in runs if run.started_at)
    when = f"Runs started {dates[0]} to {dates[-1]}." if dates else ""
    return [
        Heading("Environment"),
        Paragraph("Versions: " + "; ".join(parts) + "." if parts else "Versions: not recorded."),
        Paragraph(f"Git commit(s) the runs were produced at: {commit_text}. {when}".strip()),
    ]


def _trainable_text(runs: Sequence[Run]) -> TableCell:
    values = [(run.trainable, run.trainable_percent) for run in runs if run.trainable is not None]
    if not values:
        return TableCell("not reported", css="unmeasured")
    largest = max(values, key=lambda v: v[0])
    differs = len({v[0] for v in values}) > 1
    return TableCell(("up to " if differs else "") + _count(largest[0]), note=f"({_percent(largest[1])})",
                     css="num")


def _main_table(data: ReportData) -> list[Block]:
    blocks: list[Block] = [Heading("Results")]
    if not data.tasks:
        return blocks + [Paragraph("No successful run: nothing to tabulate (see the list of runs below).")]
    header = ["Method", "Family"] + [
        f"{task} ({_metric_name(data.summaries[task].metric)})" for task in data.tasks
    ] + ["Average", "Trainable params"]
    averages = {m: method_average(data.summaries, m, data.tasks) for m in data.methods}
    complete = {m: v for m, (v, n) in averages.items() if v is not None and n == len(data.tasks)}
    best_average = max(complete.values()) if complete else None
    rows: list[list[TableCell | str]] = []
    for method in data.methods:
        row: list[TableCell | str] = [TableCell(method, data={"method": method}), data.families.get(method, "")]
        for task in data.tasks:
            summary = data.summaries[task]
            cell = summary.cells.get(method)
            if cell is None:
                row.append(TableCell("–", css="num unmeasured", data={"task": task, "method": method}))
                continue
            worse = summary.significantly_worse(method)
            comparison = summary.comparisons.get(method)
            title = (f"{summary.best} − {method}: {comparison.difference:+.3f} "
                     f"[{comparison.low:+.3f}, {comparison.high:+.3f}], p = {comparison.p_value:.3g}"
                     if comparison else summary.untested.get(method, ""))
            other_k = cell.k not in (0, _main_k(summary))
            row.append(TableCell(
                _mean_std(cell), bold=summary.is_best(method), mark=WORSE if worse else "",
                note=_seeds_note(cell) + (f" K={cell.k}" if other_k else ""),
                title=title, css="num", data={"task": task, "method": method, "k": str(cell.k)}))
        value, n = averages[method]
        note = "" if n == len(data.tasks) else f"({n} of {len(data.tasks)} tasks)"
        row.append(TableCell(_score(value), bold=value is not None and method in complete
                             and math.isclose(value, best_average, abs_tol=1e-12),
                             note=note, css="num", data={"task": "average", "method": method}))
        row.append(_trainable_text(data.main_runs(method)))
        rows.append(row)
    blocks.append(Table(header, rows, css="main"))
    ks = sorted({c.k for s in data.summaries.values() for c in s.cells.values()})
    which_k = "largest K" if data.k is None else f"K = {data.k} or the largest below"
    blocks.append(Bullets([
        f"Mean ± sample standard deviation over seeds of each task's metric on its test set; the number of "
        f"seeds in brackets ((no seed): the run does not depend on the seed). K per class shown: "
        f"{', '.join(map(str, ks))} (each method's {which_k}; "
        f"a K after the seed count marks a cell at another K than the task's usual one).",
        "Bold: the best mean on the task (and the best average among methods run on every task).",
        f"{WORSE}: significantly worse than the task's best (paired bootstrap over test examples and the seeds "
        f"both ran, {data.n_resamples} resamples, two-sided p < {_alpha(data)}); the numbers are in the "
        "significance table below.",
        "Average: the mean over tasks of the per-task means. Trainable params: the largest count over tasks "
        "(percentage of the model's parameters).",
    ]))
    return blocks


def _alpha(data: ReportData) -> float:
    return next(iter(data.summaries.values())).alpha if data.summaries else 0.05


def _main_k(summary: TaskSummary) -> int:
    """The K most cells of a task show (a cell at another K gets a note)."""
    ks = Counter(c.k for c in summary.cells.values() if c.k)
    return ks.most_common(1)[0][0] if ks else 0


def _significance_table(data: ReportData) -> list[Block]:
    rows: list[list[TableCell | str]] = []
    for task in data.tasks:
        summary = data.summaries[task]
        for method in data.methods:
            if method in summary.comparisons:
                c = summary.comparisons[method]
                worse = summary.significantly_worse(method)
                rows.append([task, summary.best or "", method, TableCell(f"{c.difference:+.3f}", css="num"),
                             TableCell(f"[{c.low:+.3f}, {c.high:+.3f}]", css="num"),
                             TableCell(f"{c.p_value:.3g}", mark=WORSE if worse else "", css="num"),
                             f"{len(c.pairs)} × {c.n_examples}"])
            elif method in summary.untested:
                rows.append([task, summary.best or "", method, "–", "–", "not tested",
                             summary.untested[method]])
    if not rows:
        return []
    return [
        Heading("Significance against each task's best"),
        Table(["Task", "Best", "Method", "Best − method", "95% interval", "p", "Seeds × test examples"], rows),
    ]


def _not_in_table(data: ReportData) -> list[Block]:
    """Every record that is not a number in the table, with its reason: nothing is dropped quietly."""
    results = data.results
    rows: list[list[TableCell | str]] = []
    for run in results.runs:
        if not run.ok:
            rows.append([TableCell(run.status, css="missed" if run.status == "failed" else "unmeasured"),
                         run.task, run.method, str(run.k), _seed(run), run.error or "(no reason recorded)", run.id])
        elif run.score() is None:
            rows.append(["no score", run.task, run.method, str(run.k), _seed(run),
                         f"the record has no {run.metric} score", run.id])
        elif not run.has_predictions:
            rows.append(["no predictions", run.task, run.method, str(run.k), _seed(run),
                         "in the table, but left out of significance tests and plots that need predictions", run.id])
    for run in results.superseded:
        rows.append(["superseded", run.task, run.method, str(run.k), _seed(run),
                     "an older record of the same task, method, K and seed; the newest one is used", run.id])
    for problem in results.problems:
        rows.append(["unreadable", "", "", "", "", problem.reason, problem.path.name])
    for task, method, k, seed in missing_runs(results):
        rows.append(["not run", task, method, "" if k is None else str(k), "" if seed is None else str(seed),
                     "declared in the suite, no run record yet", ""])
    blocks: list[Block] = [Heading("Runs not in the table")]
    if not rows:
        return blocks + [Paragraph("None: every run finished and is in the table.")]
    return blocks + [Table(["Status", "Task", "Method", "K", "Seed", "Reason", "Run"], rows, css="failures")]


# ----------------------------------------------------------------------------- targets

@dataclass
class TargetResult:
    name: str
    description: str
    status: str          # met | missed | not measured | not evaluated
    measured: str

    @property
    def mark(self) -> str:
        return {MET: CHECK, MISSED: CROSS}.get(self.status, "")


def _target_kind(spec: dict[str, Any]) -> str | None:
    if spec.get("type"):
        return str(spec["type"])
    if "max_percent" in spec:
        return "trainable_share"
    if "min_tasks" in spec:
        return "wins_on_tasks"
    if "baseline" in spec:
        return "beats_on_average"
    return None


def _select(spec: Any, data: ReportData, exclude: Iterable[str] = ()) -> list[str]:
    """Methods named by a target: a list of names, "family:X" / "kind:X", or {family: X}.
    Default: every method that is not an outside baseline."""
    exclude = set(exclude)
    known = data.results.method_order
    if spec is None:
        return [m for m in known if data.families.get(m) != "baseline" and m not in exclude]
    if isinstance(spec, str):
        if ":" in spec:
            key, _, value = spec.partition(":")
            spec = {key.strip(): value.strip()}
        else:
            spec = [spec]
    if isinstance(spec, dict):
        selected = []
        for key, wanted in spec.items():
            wanted = {wanted} if isinstance(wanted, str) else set(wanted)
            table = data.families if key == "family" else data.kinds if key == "kind" else None
            if table is None:
                raise ValueError(f"a target selects methods by 'family' or 'kind', not {key!r}")
            selected += [m for m in known if table.get(m) in wanted]
        return [m for m in dict.fromkeys(selected) if m not in exclude]
    return [str(m) for m in spec if str(m) not in exclude]


def _why_missing(data: ReportData, method: str) -> str:
    reasons = sorted({run.error or run.status for run in data.results.runs if run.method == method and not run.ok})
    if reasons:
        return f"{method}: " + "; ".join(reasons)
    return f"{method}: no results"


def _wins_on_tasks(name: str, spec: dict, data: ReportData) -> TargetResult:
    baseline = str(spec["baseline"])
    methods = _select(spec.get("methods"), data, exclude=[baseline])
    tasks = list(spec["tasks"]) if isinstance(spec.get("tasks"), list) else data.expected_tasks
    needed = int(spec.get("min_tasks", len(tasks)))
    wins, significant, lines, unmeasured = 0, 0, [], []
    for task in tasks:
        summary = data.summaries.get(task)
        cells = summary.cells if summary else {}
        candidates = [m for m in methods if m in cells]
        if baseline not in cells or not candidates:
            missing = baseline if baseline not in cells else "/".join(methods)
            unmeasured.append(f"{task} ({missing} not measured)")
            continue
        best = max(candidates, key=lambda m: cells[m].mean)
        won = cells[best].mean > cells[baseline].mean
        wins += won
        note = ""
        try:
            comparison = paired_bootstrap(cells[best].runs, cells[baseline].runs, metric=summary.metric,
                                          n_resamples=data.n_resamples, seed=data.seed)
            if comparison.difference > 0 and comparison.significant():
                significant += 1
                note = ", significant"
            else:
                note = f", p = {comparison.p_value:.2g}"
        except ValueError:
            note = ", not tested"
        lines.append(f"{task}: {best} {cells[best].mean:.3f} vs {cells[baseline].mean:.3f} "
                     f"{CHECK if won else CROSS}{note}")
    measured = len(tasks) - len(unmeasured)
    summary_text = f"won {wins} of {measured} measured task(s) ({significant} significantly; {needed} needed)"
    if unmeasured:
        summary_text += "; not measured: " + ", ".join(unmeasured)
    if wins >= needed:
        status = MET
    elif wins + len(unmeasured) >= needed and unmeasured:
        status = NOT_MEASURED
    else:
        status = MISSED
    if measured == 0:
        status = NOT_MEASURED
    return TargetResult(name, spec.get("description", f"{'/'.join(methods)} beat {baseline} on ≥ {needed} tasks"),
                        status, summary_text + (". " + "; ".join(lines) if lines else ""))


def _beats_on_average(name: str, spec: dict, data: ReportData) -> TargetResult:
    baseline = str(spec["baseline"])
    methods = _select(spec.get("methods"), data, exclude=[baseline])
    tasks = list(spec["tasks"]) if isinstance(spec.get("tasks"), list) else data.expected_tasks
    description = spec.get("description", f"the best of {', '.join(methods)} beats {baseline} on the task average")

    def average(method: str) -> float | None:
        value, n = method_average(data.summaries, method, tasks)
        return value if n == len(tasks) else None

    base = average(baseline)
    if base is None:
        covered = method_average(data.summaries, baseline, tasks)[1]
        return TargetResult(name, description, NOT_MEASURED,
                            f"{baseline} has results on {covered} of {len(tasks)} task(s). "
                            f"{_why_missing(data, baseline)}")
    candidates = {m: v for m in methods if (v := average(m)) is not None}
    if not candidates:
        return TargetResult(name, description, NOT_MEASURED,
                            f"no method of {', '.join(methods)} has results on all {len(tasks)} task(s)")
    best = max(candidates, key=candidates.get)
    status = MET if candidates[best] > base else MISSED
    return TargetResult(name, description, status,
                        f"best: {best} {candidates[best]:.3f} vs {baseline} {base:.3f} "
                        f"(mean over {len(tasks)} task(s), difference {candidates[best] - base:+.3f})")


def _trainable_share(name: str, spec: dict, data: ReportData) -> TargetResult:
    limit = float(spec.get("max_percent", 1.0))
    methods = _select(spec.get("methods"), data)
    parts, over, unmeasured = [], [], []
    for method in methods:
        shares = [run.trainable_percent for run in data.results.ok_runs if run.method == method]
        shares = [s for s in shares if s is not None]
        if not shares:
            unmeasured.append(method)
            parts.append(f"{method} not measured")
            continue
        share = max(shares)
        if share >= limit:
            over.append(method)
        parts.append(f"{method} {_percent(share)} {CHECK if share < limit else CROSS}")
    status = MISSED if over else NOT_MEASURED if unmeasured or not methods else MET
    return TargetResult(name, spec.get("description", f"{', '.join(methods)} train under {limit:g}% of the model"),
                        status, f"largest share over runs (limit {limit:g}%): " + ", ".join(parts))


def _reports_parameters(name: str, spec: dict, data: ReportData) -> TargetResult:
    runs = data.results.ok_runs
    lacking = sorted({run.method for run in runs if run.trainable is None or run.total is None})
    if not runs:
        return TargetResult(name, spec.get("description", "every method reports trainable parameters"),
                            NOT_MEASURED, "no successful run")
    return TargetResult(name, spec.get("description", "every method reports trainable parameters"),
                        MISSED if lacking else MET,
                        f"missing in: {', '.join(lacking)}" if lacking else f"all {len(runs)} successful runs")


TARGET_KINDS = {
    "wins_on_tasks": _wins_on_tasks,
    "beats_on_average": _beats_on_average,
    "trainable_share": _trainable_share,
    "reports_parameters": _reports_parameters,
}


def evaluate_targets(targets: Any, data: ReportData) -> list[TargetResult]:
    """Each target of suite.json measured from the results: met, missed, or not measured
    (runs missing), never assumed. Shapes (the kind is inferred from the keys, or ``type``):
    ``{methods, baseline, min_tasks}`` wins on tasks; ``{baseline[, methods]}`` the best method
    beats the baseline on the task average; ``{methods, max_percent}`` trainable share."""
    if not targets:
        return []
    items = targets.items() if isinstance(targets, dict) else (
        (str(t.get("name", f"target {i + 1}")), t) for i, t in enumerate(targets))
    out = []
    for name, spec in items:
        if not isinstance(spec, dict):
            out.append(TargetResult(name, str(spec), NOT_EVALUATED, "no rule to measure it by (a plain text)"))
            continue
        kind = _target_kind(spec)
        rule = TARGET_KINDS.get(kind or "")
        if rule is None:
            out.append(TargetResult(name, str(spec.get("description", name)), NOT_EVALUATED,
                                    f"unknown target kind {kind!r} (known: {', '.join(TARGET_KINDS)})"))
            continue
        try:
            out.append(rule(name, spec, data))
        except (KeyError, ValueError, TypeError) as exc:
            out.append(TargetResult(name, str(spec.get("description", name)), NOT_EVALUATED,
                                    f"malformed target: {type(exc).__name__}: {exc}"))
    return out


def _targets_section(data: ReportData) -> list[Block]:
    blocks: list[Block] = [Heading("Targets")]
    targets = data.results.suite.get("targets")
    if not targets:
        return blocks + [Paragraph("The suite declares no targets.")]
    rows: list[list[TableCell | str]] = []
    results = evaluate_targets(targets, data)
    if not data.quality:
        results = [TargetResult(r.name, r.description, NOT_MEASURED, "a speed/memory-only suite (random weights)")
                   for r in results]
    for result in results:
        css = {MET: "met", MISSED: "missed"}.get(result.status, "unmeasured")
        text = f"{result.mark} {result.status}".strip()
        rows.append([TableCell(result.name, data={"target": result.name}), result.description,
                     TableCell(text, css=css, data={"status": result.status}), result.measured])
    return blocks + [Table(["Target", "Description", "Result", "Measured"], rows, css="targets")]


# ----------------------------------------------------------------------------- performance benchmarks

def _performance_section(perf_dir: str | Path | None) -> list[Block]:
    blocks: list[Block] = [Heading("Performance benchmarks")]
    if perf_dir is None:
        return blocks + [Paragraph("Not collected: no performance results folder was given (--perf DIR).")]
    rows, tables, notes = collect_performance(perf_dir)
    table_rows: list[list[TableCell | str]] = []
    for row in rows:
        result = (TableCell(f"{CHECK} met", css="met") if row.passed is True
                  else TableCell(f"{CROSS} missed", css="missed") if row.passed is False
                  else TableCell("not measured" if row.ours == "not measured" else "no target", css="unmeasured"))
        result.data = {"benchmark": row.benchmark}
        table_rows.append([row.measure, TableCell(row.ours, css="num"), row.baseline,
                           TableCell(row.ratio_text, bold=row.ratio is not None, css="num"), row.target, result,
                           row.source])
    blocks.append(Paragraph(
        f"From {perf_dir}: each figure against its baseline measured in the same run (the ratio is the number to "
        "compare across machines), with the target the earlier issues set (benchmarks/README.md)."))
    blocks.append(Table(["Measure", "Ours", "Baseline", "Ratio", "Target", "Result", "Run"], table_rows, css="perf"))
    for source, table in tables:
        blocks += [Heading("Training step per method", 3), Paragraph(f"{source}. Full fine-tuning is the "
                   "baseline of each ratio (issue 3 asks for the ratio, no target)."), table]
    if notes:
        blocks.append(Bullets(notes))
    return blocks


# ----------------------------------------------------------------------------- the report

@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    images: list[Path]


def build_blocks(results: Results, *, confusion: str | None = None, perf_dir: str | Path | None = None,
                 k: int | None = None, n_resamples: int = 1000, seed: int = 0,
                 plots: bool = True) -> tuple[str, list[Block]]:
    """The report as blocks (title, blocks), shared by the HTML and the Markdown."""
    data = _prepare(results, k, n_resamples, seed)
    title = f"Benchmark report: {results.suite.get('name') or results.directory.name}"
    blocks: list[Block] = []
    blocks += _overview(data)
    blocks += _environment(data)
    blocks += _main_table(data)
    blocks += _not_in_table(data)
    blocks += _targets_section(data)
    if plots:
        blocks.append(Heading("Plots"))
        blocks += [plot_accuracy_vs_k(data), plot_parameter_efficiency(data), plot_time_memory(data),
                   plot_confusion(data, confusion), plot_reliability(data)]
    blocks += _significance_table(data)  # long (tasks x methods): after the plots
    blocks += _performance_section(perf_dir)
    return title, blocks


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, *, confusion: str | None = None,
                 perf_dir: str | Path | None = None, k: int | None = None, n_resamples: int = 1000,
                 seed: int = 0) -> ReportFiles:
    """Write ``report.html`` (self-contained) and ``report.md`` with its plots as PNG files to
    ``out_dir`` (default ``RESULTS_DIR/report``). ``confusion``: a run id or task/method/k/seed;
    ``perf_dir``: performance benchmark results (None: that section says not collected);
    ``k``: the K the main table shows (default: each method's largest)."""
    results = load_results(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    title, blocks = build_blocks(results, confusion=confusion, perf_dir=perf_dir, k=k,
                                 n_resamples=n_resamples, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for block in blocks:
        if isinstance(block, Figure) and block.png is not None:
            path = out / f"{block.name}.png"
            with atomic_write(path, "wb") as handle:
                handle.write(block.png)
            images.append(path)
    html_path, markdown_path = out / "report.html", out / "report.md"
    with atomic_write(html_path) as handle:
        handle.write(render_html(title, blocks))
    with atomic_write(markdown_path) as handle:
        handle.write(render_markdown(title, blocks))
    return ReportFiles(html_path, markdown_path, images)
