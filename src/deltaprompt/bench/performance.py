"""The performance benchmarks' results (``benchmarks/results/*.json``) as rows against their targets.

Encoding throughput, zero-shot throughput, the training step and the ICL prefix cache each write
their own JSON shape; this file reads them into one ``PerfRow`` per measured figure, beside the
baseline measured in the same run and the target the earlier issues set, so the report shows
them in one table. A benchmark without a readable file becomes a "not measured" row, never a
silent gap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .blocks import Table, TableCell, _count, _percent

# The targets of the earlier issues, as benchmarks/README.md states them; a results file that
# records its own target overrides these.
PERF_TARGETS = {"encoding": 10.0, "zero_shot_longest": 1.2, "zero_shot_512": 5.0, "lora_vs_plain": 1.05}
PERF_BENCHMARKS = {
    "encoding_throughput": "Template encoding throughput",
    "zero_shot_throughput": "Zero-shot inference throughput",
    "training_step": "Training step time and memory",
    "icl_prefix_cache": "In-context learning, shared prefix cache",
}


@dataclass
class PerfRow:
    """One measured figure against its baseline in the same run, beside its target."""

    benchmark: str
    measure: str
    ours: str
    baseline: str
    ratio: float | None
    ratio_text: str
    target: str
    passed: bool | None
    source: str


def _machine(record: dict) -> str:
    machine = record.get("machine") or {}
    commit = str(machine.get("git_commit") or "unknown commit")
    return (f"{machine.get('cpu_model', '?')}, torch {machine.get('torch', '?')} "
            f"({machine.get('torch_threads', '?')} threads), {commit}, {machine.get('date_utc', '?')}")


def _rate(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.2f} ex/s" if float(value) < 100 else f"{float(value):,.0f} ex/s"


def _perf_encoding(record: dict, source: str) -> list[PerfRow]:
    rows = []
    default = record.get("settings", {}).get("target", PERF_TARGETS["encoding"])
    for result in record["results"]:
        target = float(result.get("target") or default)
        ratio = float(result["speedup_best"])
        rows.append(PerfRow(
            "encoding_throughput", f"encoding, {result['tokenizer']} tokenizer ({result.get('family', '?')})",
            _rate(result["ours"]["examples_per_s_best"]),
            f"{_rate(result['per_example_pad_max']['examples_per_s_best'])} (per-example, pad to 512)",
            ratio, f"{ratio:.2f}x faster", f"≥ {target:g}x", ratio >= target, source))
    return rows


def _perf_zero_shot(record: dict, source: str) -> list[PerfRow]:
    results, speedups, targets = record["results"], record["speedups"], record.get("targets") or {}
    rows = []
    for key, baseline_key, label, default in (
        ("ours_vs_longest", "longest", "plain transformers, pad to longest", PERF_TARGETS["zero_shot_longest"]),
        ("ours_vs_max_length", "max_length", "plain transformers, pad to 512", PERF_TARGETS["zero_shot_512"]),
    ):
        if key not in speedups:
            continue
        ratio, target = float(speedups[key]), float(targets.get(key, default))
        rows.append(PerfRow(
            "zero_shot_throughput", f"zero-shot, {record.get('model', '?')}, vs {label}",
            _rate(results["ours"]["examples_per_s_best"]),
            f"{_rate(results[baseline_key]['examples_per_s_best'])} ({label})",
            ratio, f"{ratio:.2f}x faster", f"≥ {target:g}x", ratio >= target, source))
    return rows


def _perf_training(record: dict, source: str) -> tuple[list[PerfRow], Table | None]:
    rows = []
    compare = record.get("lora_vs_plain")
    if compare and compare.get("ours_over_plain") is not None:
        ratio = float(compare["ours_over_plain"])
        target = float(compare.get("target_max_ratio") or PERF_TARGETS["lora_vs_plain"])
        rows.append(PerfRow(
            "training_step", f"LoRA step, {record.get('model', '?')}, vs plain transformers + PEFT",
            f"{compare['ours_step_s_median']:.3f} s/step", f"{compare['plain_step_s_median']:.3f} s/step (plain PEFT)",
            ratio, f"{ratio:.2f}x the time", f"≤ {target:g}x", ratio <= target, source))
    methods = record.get("methods") or []
    table = None
    if methods:
        settings = record.get("settings") or {}
        table_rows: list[list[TableCell | str]] = []
        for method in methods:
            params = method.get("parameters") or {}
            step, memory = method.get("step_s_median"), method.get("peak_memory_growth_mb_median")
            step_ratio, memory_ratio = method.get("step_vs_finetune"), method.get("memory_vs_finetune")
            table_rows.append([
                method.get("name") or method.get("key", "?"),
                TableCell(_count(params.get("trainable")), note=f"({_percent(params.get('percent'))})", css="num"),
                TableCell("–" if step is None else f"{step:.3f}", css="num"),
                TableCell("–" if step_ratio is None else f"{step_ratio:.2f}x", css="num"),
                TableCell("–" if memory is None else f"{memory:,.0f}", css="num"),
                TableCell("–" if memory_ratio is None else f"{memory_ratio:.2f}x", css="num"),
                "; ".join(map(str, method.get("errors") or [])) or "",
            ])
        table = Table([f"Method ({record.get('model') or settings.get('model_config') or '?'}, "
                       f"{settings.get('device', 'cpu')})", "Trainable", "Step (s, median)", "× full fine-tuning",
                       "Peak memory growth (MB)", "× full fine-tuning", "Errors"], table_rows)
    return rows, table


def _perf_icl(record: dict, source: str) -> list[PerfRow]:
    results = record["results"]
    ratio = float(record["speedup_best"])
    return [PerfRow(
        "icl_prefix_cache", f"ICL, {record.get('model', '?')}, {record.get('prefix_tokens', '?')}-token shared prefix",
        f"{_rate(results['cached']['examples_per_s_best'])} (cached)",
        f"{_rate(results['full']['examples_per_s_best'])} (full prompt recomputed)",
        ratio, f"{ratio:.2f}x faster", "none stated (issue 4: benchmark the gain)", None, source)]


def collect_performance(perf_dir: str | Path | None) -> tuple[list[PerfRow], list[tuple[str, Table]], list[str]]:
    """Rows for every results file of the four performance benchmarks, the training step
    tables, and notes; a benchmark without a readable file is a row saying "not measured"."""
    rows: list[PerfRow] = []
    tables: list[tuple[str, Table]] = []
    notes: list[str] = []
    found: dict[str, list[tuple[Path, dict]]] = {name: [] for name in PERF_BENCHMARKS}
    unreadable: dict[str, str] = {}
    directory = Path(perf_dir) if perf_dir else None
    if directory is None or not directory.is_dir():
        notes.append(f"No performance results folder ({directory or 'none given'}); pass --perf DIR.")
    else:
        for path in sorted(directory.glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                unreadable[path.name] = f"{path.name}: unreadable ({exc})"
                continue
            if isinstance(record, dict) and record.get("benchmark") in found:
                found[record["benchmark"]].append((path, record))
    for name, files in found.items():
        if not files:
            # A file named after the benchmark that could not be read says why it is not measured.
            why = [unreadable.pop(file) for file in sorted(unreadable) if file.startswith(name)]
            rows.append(PerfRow(name, PERF_BENCHMARKS[name], "not measured", "–", None, "–", "–", None,
                                "; ".join(why) or "no results file"))
            continue
        for path, record in files:
            source = f"{path.name}: {_machine(record)}"
            try:
                if name == "encoding_throughput":
                    rows += _perf_encoding(record, source)
                elif name == "zero_shot_throughput":
                    rows += _perf_zero_shot(record, source)
                elif name == "training_step":
                    new_rows, table = _perf_training(record, source)
                    rows += new_rows
                    if table is not None:
                        tables.append((source, table))
                else:
                    rows += _perf_icl(record, source)
            except (KeyError, TypeError, ValueError) as exc:
                rows.append(PerfRow(name, PERF_BENCHMARKS[name], "not measured", "–", None, "–", "–", None,
                                    f"{path.name}: unreadable ({type(exc).__name__}: {exc})"))
    return rows, tables, notes + list(unreadable.values())


def default_perf_dir() -> Path | None:
    """``benchmarks/results`` of the checkout this package runs from, when there is one."""
    root = Path(__file__).resolve().parents[3]
    candidate = root / "benchmarks" / "results"
    return candidate if (root / "pyproject.toml").is_file() and candidate.is_dir() else None
