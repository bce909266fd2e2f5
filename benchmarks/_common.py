"""Helpers shared by the benchmark scripts (not part of the library).

Scripts run as ``.venv/bin/python benchmarks/<name>.py``; Python then puts this folder on
``sys.path``, so they import this module as ``_common``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def default_data_dir() -> Path:
    """``DELTAPROMPT_DATA`` if set, else ``../shared/data`` next to the repository root."""
    from deltaprompt.data import default_data_dir as library_default

    return library_default()


def require_task(data_dir: Path, task: str = "sst2") -> Path:
    """The task folder, or a clean exit (code 0, nothing written) when the data is absent."""
    folder = Path(data_dir) / task
    if not (folder / "labels.json").is_file():
        print(
            f"benchmark data not found: {folder} (expected {folder / 'labels.json'}).\n"
            "Point --data-dir (or the DELTAPROMPT_DATA environment variable) at the folder "
            f"holding {task}/. Nothing was measured and no results were written."
        )
        sys.exit(0)
    return folder


def sst2_task(data_dir: Path, classes: Sequence[str]) -> Any:
    """The SST-2 task, refusing a folder whose labels are not the ones the benchmark's label
    words are written for."""
    from deltaprompt import load_task

    task = load_task("sst2", data_dir)
    if tuple(task.labels) != tuple(classes):
        raise SystemExit(f"expected SST-2 labels {tuple(classes)}, got {task.labels}")
    return task


def load_model(name: str) -> tuple[Any, float]:
    """A PLM by name and the seconds loading took, or a one-line exit when it cannot load."""
    from deltaprompt import load_plm

    log(f"loading {name} ...")
    start = time.perf_counter()
    try:
        plm = load_plm(name)
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise SystemExit(f"cannot load {name}: {exc}") from None
    return plm, time.perf_counter() - start


MODEL_CONFIGS = ("roberta-base", "roberta-large", "llama-1b")


def build_plm(model_config: str | None, device: str) -> Any:
    """The real SmolLM2 (``model_config`` None), or a randomly initialised model of a known
    shape built from a transformers config: speed and memory do not depend on the weights, and
    no larger pretrained model can be had offline."""
    import torch

    from deltaprompt import load_plm
    from deltaprompt.plm import PLM, resolve

    if model_config is None:
        return load_plm(SST2_MODEL, device=device)
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    if model_config.startswith("roberta"):
        # MiniLM's WordPiece tokenizer (uncased BERT vocabulary) stands in for RoBERTa's BPE:
        # its ids fit RoBERTa's 50,265-row table and it has a mask token.
        tokenizer = AutoTokenizer.from_pretrained(resolve("minilm-l6"))
        size = {} if model_config == "roberta-base" else {
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
        }
        config = RobertaConfig(pad_token_id=tokenizer.pad_token_id, **size)
        model_class: Any = RobertaForMaskedLM
    elif model_config == "llama-1b":
        tokenizer = AutoTokenizer.from_pretrained(resolve(SST2_MODEL))  # SmolLM2's Llama-style BPE
        config = LlamaConfig(  # the shape of Llama 3.2 1B
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
            rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
        )
        model_class = LlamaForCausalLM
    else:
        raise ValueError(f"unknown model config {model_config!r}; choose from {', '.join(MODEL_CONFIGS)}")
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class(config)
    model.eval()
    return PLM.from_model(model, tokenizer, name=f"config:{model_config}")


def model_available(model_config: str | None) -> str | None:
    """None when the model (or the tokenizer a config needs) can be loaded, else why not."""
    from deltaprompt.plm import resolve

    alias = "minilm-l6" if model_config and model_config.startswith("roberta") else SST2_MODEL
    try:
        folder = Path(resolve(alias))
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        return str(exc)
    if not folder.is_dir():
        return f"{folder} is not a folder"
    return None


def cannot_run(model_config: str | None, device: str) -> str | None:
    """Why a benchmark on this model and device cannot run here (model, tokenizer or CUDA
    missing), or None: the script then exits cleanly instead of failing half-way."""
    missing = model_available(model_config)
    if missing:
        return f"model not available: {missing}"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "--device cuda, but torch sees no CUDA device"
    return None


def log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- timing

def time_runs(function: Callable[[], Any], repeats: int, label: str = "") -> tuple[list[float], Any]:
    """Call ``function`` ``repeats`` times; wall-clock seconds of each call and the last result.

    The previous run's result is dropped and garbage collected before each run (untimed), so a
    run does not pay for collecting its predecessor's objects. The collector stays enabled.
    """
    times: list[float] = []
    result = None
    for r in range(repeats):
        result = None
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        if label:
            log(f"  {label}: run {r + 1}/{repeats}: {times[-1]:.3f} s")
    return times, result


def time_interleaved(
    functions: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Like ``time_runs`` for several functions, alternating them run by run (A, B, A, B...)
    so that a slow spell of the machine hits all of them rather than one."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    results: dict[str, Any] = dict.fromkeys(functions)
    for r in range(repeats):
        for name, function in functions.items():
            results[name] = None
            gc.collect()
            start = time.perf_counter()
            results[name] = function()
            times[name].append(time.perf_counter() - start)
            log(f"  {name}: run {r + 1}/{repeats}: {times[name][-1]:.3f} s")
    return times, results


def summarise(times: Sequence[float], count: int) -> dict[str, Any]:
    """Seconds per run and examples/s, from the best (fastest) and the median run."""
    best, median = min(times), statistics.median(times)
    return {
        "runs_s": [round(t, 6) for t in times],
        "best_s": round(best, 6),
        "median_s": round(median, 6),
        "examples": count,
        "examples_per_s_best": round(count / best, 2),
        "examples_per_s_median": round(count / median, 2),
    }


# ----------------------------------------------------------------------------- machine info

def git_commit() -> str | None:
    """``git rev-parse HEAD``, or None (no git, not a repository, or no commit yet)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or len(commit) != 40:
        return None
    return commit + ("-dirty" if git_modified() else "")


def git_modified() -> list[str]:
    """Tracked files with uncommitted changes (the measured code is the working tree)."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import tokenizers

        tokenizers_version = tokenizers.__version__
    except ImportError:
        tokenizers_version = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers_version,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
        "git_modified_files": git_modified(),
        "loadavg_at_start": load_average(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        (f"{info['cuda_device']}, " if info.get("cuda_device") else "")
        + f"{info['cpu_model']}, {info['cpus_usable']} usable CPUs (of {info['cpu_count']}), "
        f"torch {info['torch']} with {info['torch_threads']} threads, transformers "
        f"{info['transformers']}, Python {info['python']}, commit {info['git_commit'] or 'n/a'}, "
        f"{info['date_utc']}, load average at start {info.get('loadavg_at_start')}"
        + (f", at end {info['loadavg_at_end']}" if info.get("loadavg_at_end") else "")
    )


# ----------------------------------------------------------------------------- output

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write(json_path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    atomic_write(md_path, markdown)
    return json_path, md_path


def run_pending(keys: Sequence[str], payload: dict[str, Any], run: Callable[[str], dict[str, Any]], out_dir: Path,
                name: str, markdown: Callable[[dict[str, Any]], str], merge_file: bool = False) -> None:
    """Run each key not yet in ``payload["runs"]`` (timed into its ``seconds``) and write the
    results after every run, so a killed benchmark loses at most the run in progress.
    ``merge_file``: take in runs another process wrote to the same file meanwhile, before each
    run (so a run that process finished is not redone) and before each write (so it is kept).
    The file's ``machine`` block is its last writer's, so each run also records the commit,
    threads and time of the process that ran it (``ran_by``)."""
    path = out_dir / f"{name}.json"

    def written() -> dict[str, Any]:
        return json.loads(path.read_text(encoding="utf-8")).get("runs", {}) if merge_file and path.is_file() else {}

    for key in keys:
        payload["runs"] = {**written(), **payload["runs"]}
        if key in payload["runs"]:
            continue
        log(f"{key} ...")
        started = time.perf_counter()
        result = run(key)
        result["seconds"] = round(time.perf_counter() - started, 1)
        machine = payload["machine"]
        result["ran_by"] = {field: machine.get(field) for field in ("git_commit", "git_modified_files", "torch_threads")}
        result["ran_by"]["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        payload["runs"] = {**written(), **payload["runs"], key: result}
        payload["machine"]["loadavg_at_end"] = load_average()
        write_results(out_dir, name, payload, markdown(payload))
        log(f"{key}: {json.dumps({k: v for k, v in result.items() if isinstance(v, int | float)})}")


def publish(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> int:
    """Write a benchmark's results, print its table and where it went; the script's exit code."""
    json_path, md_path = write_results(out_dir, name, payload, markdown)
    log("\n" + markdown)
    log(f"wrote {json_path} and {md_path}")
    return 0


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ----------------------------------------------------------------------------- training benchmarks

# The SST-2 prompt both training benchmarks use, and their rows: (row key, classifier kind,
# method spec). Each method at its config's defaults, except that P-Tuning prepends 20
# encoded soft tokens (as prompt tuning does): the template has none of its own to encode.
SST2_MODEL = "smollm2-135m"
SST2_TEMPLATE = "Review: {text}\nSentiment: {mask}"
SST2_LABEL_WORDS = {"negative": "negative", "positive": "positive"}
SST2_CLASSES = ("negative", "positive")
METHOD_RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("finetune", "prompt", {"method": "finetune"}),
    ("prompt_tuning", "prompt", {"method": "prompt_tuning"}),
    ("p_tuning", "prompt", {"method": "p_tuning", "num_tokens": 20}),
    ("prefix", "prompt", {"method": "prefix"}),
    ("lora", "prompt", {"method": "lora"}),
    ("adapter", "prompt", {"method": "adapter"}),
    ("bitfit", "prompt", {"method": "bitfit"}),
    ("intrinsic", "prompt", {"method": "intrinsic"}),
    ("head_finetune", "head", {"method": "finetune"}),
]
METHOD_ROW_NAMES = {
    "finetune": "finetune (prompt-oriented, all weights)",
    "head_finetune": "classic head fine-tuning (all weights + linear head)",
}
