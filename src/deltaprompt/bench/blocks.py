"""The pieces the report is made of, shared by the report, its plots and the performance tables.

The blocks (headings, paragraphs, tables, figures) are what both renderings draw, ``ReportData``
is what every section and plot reads, and the number formats keep a figure written the same way
wherever it appears. They live apart from ``report.py`` so that ``plots.py`` and
``performance.py`` can build blocks without importing the report that imports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .stats import Cell, Results, Run, TaskSummary

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


# ----------------------------------------------------------------------------- blocks

@dataclass
class TableCell:
    """A table cell: text, optionally bold, with a mark (significance, ✔/✘) and a small note."""

    text: str
    bold: bool = False
    mark: str = ""
    note: str = ""
    title: str = ""
    css: str = ""
    data: dict[str, str] = field(default_factory=dict)


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str
    css: str = ""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[TableCell | str]]
    css: str = ""


@dataclass
class Figure:
    """A plot: PNG bytes, or None with the reason it could not be drawn."""

    name: str
    alt: str
    caption: str
    png: bytes | None = None
    missing: str = ""


Block = Heading | Paragraph | Bullets | Table | Figure


# ----------------------------------------------------------------------------- formatting

def _score(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _mean_std(cell: Cell) -> str:
    return f"{cell.mean:.3f} ± {cell.std:.3f}" if cell.std is not None else f"{cell.mean:.3f}"


def _seeds_note(cell: Cell) -> str:
    return "(no seed)" if cell.seed_independent else f"({cell.n})"


def _count(value: float | int | None) -> str:
    return "–" if value is None else f"{int(round(value)):,}"


def _percent(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}%" if value < 10 else f"{value:.1f}%"


def _metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _seed(run: Run) -> str:
    return "–" if run.seed is None else str(run.seed)


# ----------------------------------------------------------------------------- context

@dataclass
class ReportData:
    """What every section reads: the runs, the main table's cells and tests."""

    results: Results
    summaries: dict[str, TaskSummary]
    tasks: list[str]
    methods: list[str]
    families: dict[str, str]
    kinds: dict[str, str]
    k: int | None
    n_resamples: int
    seed: int

    @property
    def quality(self) -> bool:
        """False for a speed/memory-only suite (random weights): its scores mean nothing."""
        return self.results.suite.get("quality") is not False and all(run.quality for run in self.results.runs)

    @property
    def expected_tasks(self) -> list[str]:
        """The suite's declared tasks (a target over "6 tasks" needs all of them), else those run."""
        return self.results.declared.get("tasks") or self.tasks

    def main_runs(self, method: str) -> list[Run]:
        return [run for s in self.summaries.values() if method in s.cells for run in s.cells[method].runs]
