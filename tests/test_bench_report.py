"""The benchmark report on constructed run records: tables, marks, targets, plots, and the page
as a real headless browser renders it."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from deltaprompt.bench import report as report_module  # noqa: E402
from deltaprompt.bench.browser import find_browser, render_dom, screenshot  # noqa: E402
from deltaprompt.bench.performance import collect_performance  # noqa: E402
from deltaprompt.bench.plots import PLOTS, select_run  # noqa: E402
from deltaprompt.bench.report import build_blocks, evaluate_targets, render_html, write_report  # noqa: E402
from deltaprompt.bench.stats import load_results, missing_runs  # noqa: E402
from deltaprompt.metrics import confusion_matrix, macro_f1  # noqa: E402

N = 40
CLASSES = ("negative", "positive")
# task -> method -> (kind, family, {seed: accuracy}); seed None: a seed-independent run.
PLAN = {
    "alpha": {
        "prompt_lora": ("prompt", "prompt", {13: 0.90, 21: 0.85}),
        "head_finetune": ("head", "head", {13: 0.60, 21: 0.70}),
        "setfit": ("setfit", "baseline", {13: 0.80, 21: 0.80}),
        "zero_shot": ("zero_shot", "zero-shot", {None: 0.70}),
        "zero_shot_calibrated": ("zero_shot", "zero-shot", {None: 0.75}),
    },
    "beta": {
        "prompt_lora": ("prompt", "prompt", {13: 0.70, 21: 0.75}),
        "head_finetune": ("head", "head", {13: 0.55, 21: 0.65}),
        "setfit": ("setfit", "baseline", {13: 0.85, 21: 0.80}),
        "zero_shot": ("zero_shot", "zero-shot", {None: 0.60}),
        "zero_shot_calibrated": ("zero_shot", "zero-shot", {None: 0.65}),
    },
}
TRAINABLE = {"prompt_lora": 5_000, "head_finetune": 1_000_000, "setfit": 22_000_000, "zero_shot": 0,
             "zero_shot_calibrated": 0}
TARGETS = {
    "prompt_beats_head": {"description": "prompt methods beat head fine-tuning on at least 2 of 2 tasks",
                          "methods": ["prompt_lora"], "baseline": "head_finetune", "min_tasks": 2},
    "best_beats_setfit": {"description": "the best deltaprompt method beats SetFit on the average",
                          "baseline": "setfit"},
    "parameter_share": {"description": "LoRA trains under 1% of the parameters", "methods": ["prompt_lora"],
                        "max_percent": 1.0},
    "beats_peft": {"description": "the best deltaprompt method beats PEFT LoRA on the average",
                   "baseline": "peft_lora"},
}


def make_record(task: str, method: str, kind: str, family: str, seed: int | None, accuracy: float | None, *,
                status: str = "ok", error: str | None = None, calibrated: bool = False) -> dict:
    """A run record as the runner writes it, with predictions that give exactly ``accuracy``:
    the wrong examples are the first ones of a fixed per-task order, so a worse method is
    wrong wherever a better one is (a strongly paired case)."""
    order = np.random.default_rng(sum(map(ord, task))).permutation(N)
    gold = np.arange(N) % 2
    config = {"task": task, "method": method, "seed": seed, "kind": kind}
    record = {
        "id": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16],
        "status": status, "error": error, "suite": "synthetic", "task": task, "method": method, "kind": kind,
        "family": family, "calibrated": calibrated, "k": 0 if kind == "zero_shot" else 16, "seed": seed,
        "model": "tiny", "metric": "accuracy", "classes": list(CLASSES),
        "test_ids": hashlib.sha256(task.encode()).hexdigest()[:16], "config": config,
        "environment": {"python": "3.11.7", "torch": "2.13.0", "deltaprompt": "0.1.0",
                        "git_commit": "0123456789abcdef0123456789abcdef01234567", "device": "cpu"},
        "started_at": "2026-11-22T22:30:00Z",
    }
    if status != "ok":
        return record
    predicted = gold.copy()
    wrong = order[: round((1 - accuracy) * N)]
    predicted[wrong] = 1 - gold[wrong]
    confidence = 0.55 + 0.4 * ((np.arange(N) * 7) % 10) / 10 if not calibrated else np.full(N, 0.7)
    probabilities = np.where(predicted[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
    counts = confusion_matrix([CLASSES[g] for g in gold], [CLASSES[p] for p in predicted], CLASSES)
    record.update({
        "scores": {"accuracy": float((predicted == gold).mean()), "macro_f1": macro_f1(counts)},
        "params": {"trainable": TRAINABLE[method], "total": max(1_000_000, TRAINABLE[method] + 700_000)},
        "seconds": {"train": 0.0 if kind == "zero_shot" else 10.0 + len(method), "eval": 2.0, "total": 12.0},
        "peak_memory_mb": 100.0 + len(method) * 10, "memory_kind": "rss",
        "predictions": {"gold": gold.tolist(), "predicted": predicted.tolist(),
                        "probabilities": np.round(probabilities, 4).tolist()},
    })
    return record


def write_results(folder: Path, *, targets: dict | None = None) -> Path:
    """2 tasks x 3 trained methods x 2 seeds, zero-shot with and without calibration, a failed
    run and an unavailable baseline."""
    runs = folder / "runs"
    runs.mkdir(parents=True)
    records = []
    for task, methods in PLAN.items():
        for method, (kind, family, by_seed) in methods.items():
            for seed, accuracy in by_seed.items():
                records.append(make_record(task, method, kind, family, seed, accuracy,
                                           calibrated=method.endswith("calibrated")))
        records.append(make_record(task, "peft_lora", "peft_lora", "baseline", 13, None, status="unavailable",
                                   error="peft_lora needs the peft package: pip install peft"))
    records.append(make_record("alpha", "prompt_tuning", "prompt", "prompt", 13, None, status="failed",
                               error="training diverged: loss is NaN at step 3"))
    for record in records:
        (runs / f"{record['id']}.json").write_text(json.dumps(record))
    (runs / "broken.json").write_text("{not json")
    (folder / "suite.json").write_text(json.dumps({"name": "synthetic", "targets": targets, "model": "tiny"}))
    methods = ["zero_shot", "zero_shot_calibrated", "prompt_lora", "prompt_tuning", "head_finetune", "setfit",
               "peft_lora"]
    (folder / "suite.yaml").write_text("name: synthetic\ntasks:\n  alpha: {}\n  beta: {}\nmethods:\n"
                                       + "".join(f"  {m}: {{}}\n" for m in methods))
    return folder


def write_perf(folder: Path) -> Path:
    """Performance results in the benchmark scripts' formats: one target met, one missed."""
    folder.mkdir(parents=True)
    machine = {"cpu_model": "Test CPU", "torch": "2.13.0", "torch_threads": 1, "git_commit": "abc1234",
               "date_utc": "2026-11-22T00:00:00Z"}
    (folder / "encoding_throughput.json").write_text(json.dumps({
        "benchmark": "encoding_throughput", "settings": {"target": 10.0}, "machine": machine,
        "results": [{"tokenizer": "tok-a", "family": "causal", "ours": {"examples_per_s_best": 12000.0},
                     "per_example_pad_max": {"examples_per_s_best": 1000.0}, "speedup_best": 12.0, "target": 10.0},
                    {"tokenizer": "tok-b", "family": "masked", "ours": {"examples_per_s_best": 8000.0},
                     "per_example_pad_max": {"examples_per_s_best": 1000.0}, "speedup_best": 8.0, "target": 10.0}]}))
    (folder / "training_step.json").write_text(json.dumps({
        "benchmark": "training_step", "model": "tiny", "settings": {"device": "cpu"}, "machine": machine,
        "methods": [{"key": "finetune", "name": "finetune", "parameters": {"trainable": 100, "percent": 100.0},
                     "step_s_median": 4.0, "peak_memory_growth_mb_median": 2000.0, "step_vs_finetune": 1.0,
                     "memory_vs_finetune": 1.0},
                    {"key": "lora", "name": "lora", "parameters": {"trainable": 1, "percent": 0.34},
                     "step_s_median": 2.5, "peak_memory_growth_mb_median": 800.0, "step_vs_finetune": 0.62,
                     "memory_vs_finetune": 0.4}],
        "lora_vs_plain": {"ours_step_s_median": 2.4, "plain_step_s_median": 2.0, "ours_over_plain": 1.2,
                          "target_max_ratio": 1.05}}))
    (folder / "icl_prefix_cache.json").write_text("{truncated")
    return folder


class _Cells(HTMLParser):
    """The main table's cells: (task, method) -> (text, bold)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], list] = {}
        self.current: tuple[str, str] | None = None
        self.depth_bold = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-task" in attrs:
            self.current = (attrs["data-task"], attrs["data-method"])
            self.cells[self.current] = ["", False]
        elif tag == "b" and self.current:
            self.cells[self.current][1] = True

    def handle_endtag(self, tag):
        if tag == "td":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.cells[self.current][0] += data


def table_cells(page: str) -> dict[tuple[str, str], tuple[str, bool]]:
    parser = _Cells()
    parser.feed(page)
    return {key: (" ".join(text.split()), bold) for key, (text, bold) in parser.cells.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results = write_results(root / "results", targets=TARGETS)
    perf = write_perf(root / "perf")
    files = write_report(results, root / "out", perf_dir=perf, n_resamples=400)
    return results, files


def test_main_table_has_means_stds_bold_best_and_marks(built):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    cells = table_cells(page)
    # by hand: alpha prompt_lora 0.90/0.85 -> 0.875 ± 0.035; head 0.60/0.70 -> 0.650 ± 0.071
    assert cells[("alpha", "prompt_lora")] == ("0.875 ± 0.035 (2)", True)
    assert cells[("alpha", "head_finetune")][0] == "0.650 ± 0.071 \u25bc (2)"
    assert cells[("alpha", "setfit")] == ("0.800 ± 0.000 (2)", False)
    assert cells[("alpha", "zero_shot")][0].startswith("0.700") and "(no seed)" in cells[("alpha", "zero_shot")][0]
    assert cells[("beta", "setfit")] == ("0.825 ± 0.035 (2)", True)
    assert cells[("beta", "prompt_lora")][1] is False
    assert "\u25bc" in cells[("beta", "head_finetune")][0]
    # average over the two tasks: setfit (0.800 + 0.825) / 2 = 0.8125 is the best
    assert cells[("average", "setfit")] == ("0.812", True)
    assert cells[("average", "prompt_lora")] == ("0.800", False)
    assert ("alpha", "prompt_tuning") not in cells  # failed everywhere: listed below, not a table row


def test_failed_and_unavailable_runs_are_listed_with_their_reason(built):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    failures = page[page.index('class="failures"'):]
    failures = failures[: failures.index("</table>")]
    assert "training diverged: loss is NaN at step 3" in failures
    assert failures.count("peft_lora needs the peft package: pip install peft") == 2
    assert "unavailable" in failures and "failed" in failures
    assert "broken.json" in failures and "unreadable" in failures


def test_a_declared_seed_without_a_record_is_listed_as_not_run(tmp_path):
    """A cell with fewer seeds than the suite declares must not read as complete: every
    missing (task, method, K, seed) is listed, and seedless zero-shot needs one record."""
    results_dir = write_results(tmp_path / "results")
    kinds = {"zero_shot": "zero_shot", "zero_shot_calibrated": "zero_shot", "prompt_lora": "prompt",
             "prompt_tuning": "prompt", "head_finetune": "head", "setfit": "setfit", "peft_lora": "peft_lora"}
    (results_dir / "suite.json").write_text(json.dumps({
        "name": "synthetic", "model": "tiny", "seeds": [13, 21, 42],
        "tasks": {"alpha": {"metric": "accuracy", "k": [16]}, "beta": {"metric": "accuracy", "k": [16]}},
        "methods": {name: {"kind": kind} for name, kind in kinds.items()},
    }))
    expected = {(task, method, 16, 42) for task in ("alpha", "beta") for method in ("prompt_lora", "head_finetune",
                                                                                 "setfit", "peft_lora")}
    expected |= {(task, "peft_lora", 16, 21) for task in ("alpha", "beta")}  # seed 13 is 'unavailable'
    expected |= {("alpha", "prompt_tuning", 16, 21), ("alpha", "prompt_tuning", 16, 42)}  # 13 failed
    expected |= {("beta", "prompt_tuning", 16, seed) for seed in (13, 21, 42)}
    assert set(missing_runs(load_results(results_dir))) == expected
    files = write_report(results_dir, tmp_path / "out", n_resamples=50)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "| not run | alpha | prompt_lora | 16 | 42 |" in markdown
    assert "| not run | alpha | zero_shot |" not in markdown


def test_html_is_self_contained_with_one_inline_png_per_plot(built):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(PLOTS)
    for encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    for name in PLOTS:
        assert f'id="plot-{name}"' in page
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "url(" not in page
    assert "0123456789abcdef0123456789abcdef01234567" in page  # the commit the runs were produced at


def test_markdown_has_the_same_numbers_and_png_files(built):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "**0.875 ± 0.035** (2)" in markdown
    assert "**0.825 ± 0.035** (2)" in markdown
    assert "0.650 ± 0.071 \u25bc (2)" in markdown
    for text, _ in table_cells(page).values():
        number = re.match(r"[\d.]+( ± [\d.]+)?", text)
        if number:
            assert number.group(0) in markdown
    for name in PLOTS:
        assert f"]({name}.png)" in markdown
        assert (files.html.parent / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "training diverged: loss is NaN at step 3" in markdown


def test_targets_are_measured_honestly(built):
    results_dir, files = built
    page = files.html.read_text(encoding="utf-8")
    status = dict(re.findall(r'data-target="([^"]+)".*?data-status="([^"]+)"', page, flags=re.S))
    assert status == {"prompt_beats_head": "met", "best_beats_setfit": "missed", "parameter_share": "met",
                      "beats_peft": "not measured"}
    targets = page[page.index('class="targets"'):]
    assert "\u2714 met" in targets and "\u2718 missed" in targets
    assert "prompt_lora 0.800 vs setfit 0.812" in targets  # the best method's average against SetFit's
    assert "pip install peft" in targets  # why the PEFT target could not be measured
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "\u2718 missed" in markdown and "not measured" in markdown


def test_targets_missed_and_unmeasured_on_other_results(tmp_path):
    results_dir = write_results(tmp_path / "results")
    data = report_module._prepare(load_results(results_dir), None, 200, 0)
    outcome = {t.name: t.status for t in evaluate_targets({
        "head_beats_prompt": {"methods": ["head_finetune"], "baseline": "prompt_lora", "min_tasks": 1},
        "three_of_two": {"methods": ["prompt_lora"], "baseline": "head_finetune", "min_tasks": 3},
        "tiny_share": {"methods": ["prompt_lora", "head_finetune"], "max_percent": 1.0},
        "missing_method": {"methods": ["nonexistent"], "max_percent": 1.0},
        "explicit": {"type": "reports_parameters"},
        "prose": "be fast",
    }, data)}
    assert outcome == {"head_beats_prompt": "missed", "three_of_two": "missed", "tiny_share": "missed",
                       "missing_method": "not measured", "explicit": "met", "prose": "not evaluated"}


def test_performance_rows_against_targets(tmp_path):
    rows, tables, notes = collect_performance(write_perf(tmp_path / "perf"))
    by_measure = {row.measure: row for row in rows}
    encoding = [row for row in rows if row.benchmark == "encoding_throughput"]
    assert [row.passed for row in encoding] == [True, False]
    assert encoding[1].ratio == pytest.approx(8.0) and encoding[1].target == "≥ 10x"
    lora = next(row for row in rows if row.measure.startswith("LoRA step"))
    assert lora.passed is False and lora.target == "≤ 1.05x"
    zero = [row for row in rows if row.benchmark == "zero_shot_throughput"]
    assert len(zero) == 1 and zero[0].ours == "not measured"
    icl = [row for row in rows if row.benchmark == "icl_prefix_cache"]
    assert icl[0].ours == "not measured" and "unreadable" in icl[0].source
    assert len(tables) == 1 and len(tables[0][1].rows) == 2
    assert by_measure["encoding, tok-a tokenizer (causal)"].passed is True
    rows, _, notes = collect_performance(tmp_path / "nowhere")
    assert {row.ours for row in rows} == {"not measured"} and notes


def test_performance_section_marks_misses(built):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    perf = page[page.index('class="perf"'):]
    perf = perf[: perf.index("</table>")]
    assert perf.count("\u2718 missed") == 2 and perf.count("\u2714 met") == 1
    assert "not measured" in perf


def test_confusion_run_selection(tmp_path):
    results = load_results(write_results(tmp_path / "results"))
    default = select_run(results, None)
    assert (default.task, default.method, default.seed) == ("alpha", "prompt_lora", 13)
    chosen = select_run(results, "beta/setfit/16/21")
    assert (chosen.task, chosen.method, chosen.seed) == ("beta", "setfit", 21)
    assert select_run(results, chosen.id).id == chosen.id
    assert select_run(results, "alpha/zero_shot/0/none").method == "zero_shot"
    with pytest.raises(ValueError, match="task/method/k/seed"):
        select_run(results, "alpha/nothing/16/13")


def test_cli_report(tmp_path, capsys):
    from deltaprompt.cli import main

    results = write_results(tmp_path / "results")
    assert main(["report", str(results), "--out", str(tmp_path / "out"), "--resamples", "100",
                 "--confusion", "beta/head_finetune/16/21", "--perf", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out
    assert "beta / head_finetune / K=16 / seed 21" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------------------- in a real browser

BROWSER = find_browser()
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium browser (apt-get install -y chromium)")


def coloured_pixels(png: Path) -> int:
    """Pixels whose channels differ by more than 40 (not white, grey or black)."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int(((pixels.max(-1) - pixels.min(-1)) > 40).sum())


@needs_browser
def test_browser_renders_the_table(built):
    _, files = built
    dom = render_dom(files.html)
    cells = table_cells(dom)
    assert cells[("alpha", "prompt_lora")] == ("0.875 ± 0.035 (2)", True)
    assert cells[("beta", "setfit")] == ("0.825 ± 0.035 (2)", True)
    assert cells[("alpha", "head_finetune")][1] is False
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == len(PLOTS)


@needs_browser
def test_browser_renders_the_images(built, tmp_path):
    _, files = built
    page = files.html.read_text(encoding="utf-8")
    control = tmp_path / "control.html"
    control.write_text(re.sub(r"<img [^>]*>", "", page), encoding="utf-8")
    size = (1200, 3000)  # the table, the lists and the first plots
    with ThreadPoolExecutor(2) as pool:  # two browser processes side by side
        shot, control_shot = pool.map(lambda args: screenshot(args[0], args[1], window_size=size),
                                      [(files.html, tmp_path / "report.png"), (control, tmp_path / "control.png")])
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == size
    total = size[0] * size[1]
    # The plots are colour; the page around them is black, white and grey (a few green/red marks).
    assert coloured_pixels(shot) > 0.01 * total
    assert coloured_pixels(control_shot) < 0.002 * total


def test_page_text_is_escaped(tmp_path):
    results = write_results(tmp_path / "results")
    record = make_record("alpha", "<script>alert(1)</script>", "prompt", "prompt", 13, None, status="failed",
                         error="<b>bad</b> & worse")
    (results / "runs" / "evil.json").write_text(json.dumps(record))
    title, blocks = build_blocks(load_results(results), n_resamples=50, plots=False)
    page = render_html(title, blocks)
    assert "<script" not in page
    assert html.escape("<b>bad</b> & worse") in page


def test_png_plots_decode(built):
    from PIL import Image

    _, files = built
    for name in PLOTS:
        with Image.open(io.BytesIO((files.html.parent / f"{name}.png").read_bytes())) as image:
            assert image.size[0] > 200 and image.size[1] > 150
