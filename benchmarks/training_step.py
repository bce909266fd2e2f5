"""Training step time and peak memory per delta method, through the real Trainer.

Every method trains on the same fixed batch: the first 8 SST-2 training sentences in the
template "Review: {text}\\nSentiment: {mask}" (label words "negative" / "positive"); the
classic baseline (``HeadClassifier``, every weight trained, a linear head on the last token)
reads the same prompt without the mask. A step is what ``Trainer`` does per batch: forward,
NLL, backward, gradient clipping, AdamW step, scheduler step.

- Step time: ``fit`` on the 8 examples (batch size 8, one step per epoch) with ``--short``
  and ``--long`` max_steps, alternately, in the same process; (long - short) / (long - short
  steps) cancels the set-up (Accelerator, encoding, optimiser creation). Also the median of
  a hand-written loop of the same step (no Accelerate, no DataLoader), per step.
- Peak memory: each method runs in a fresh process; on CPU, the peak resident set size
  (VmHWM, reset after loading) over the RSS right after loading the model and reading all
  its weights once, during building the classifier and a first ``fit`` of ``--memory-steps``
  steps. On CUDA, ``torch.cuda.max_memory_allocated`` over the memory allocated after
  loading.
- ``--rounds``: how many fresh processes per method; the methods take turns round by round
  so that a slow spell of the machine hits all of them.
- LoRA against plain transformers + PEFT on the same batch: the prompt strings tokenised
  with left padding, ``peft.get_peft_model`` with the same r/alpha/targets/dropout,
  ``model(**enc).logits[:, -1, label_ids]``, cross-entropy, backward, AdamW step; timed the
  same way (two lengths, difference), runs of the two interleaved. Target: ours within 5%.

    .venv/bin/python benchmarks/training_step.py                       # SmolLM2-135M, CPU
    .venv/bin/python benchmarks/training_step.py --methods lora bitfit --rounds 1
    .venv/bin/python benchmarks/training_step.py --device cuda --model-config llama-1b
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import _common as common

MODEL = common.SST2_MODEL
TEMPLATE = common.SST2_TEMPLATE
HEAD_TEMPLATE = "Review: {text}\nSentiment:"  # the same prompt for the head model, no mask
PLAIN_PROMPT = "Review: {text}\nSentiment:"
LABEL_WORDS = common.SST2_LABEL_WORDS
CLASSES = common.SST2_CLASSES
BATCH = 8
RUNS = common.METHOD_RUNS
ROW_NAMES = common.METHOD_ROW_NAMES
# ----------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak resident memory of this process from ``reset()`` on, in bytes.

    Linux: writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to
    the current RSS, and VmHWM is then the exact peak. Elsewhere a thread samples the RSS every
    2 ms (psutil), which can miss short peaks.
    """

    def __init__(self) -> None:
        self.method = "VmHWM (reset via /proc/self/clear_refs)"
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self._status_value("VmHWM")
        except (OSError, ValueError):
            self.method = "psutil RSS sampled every 2 ms"

    @staticmethod
    def _status_value(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise ValueError(key)

    @staticmethod
    def rss() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def reset(self) -> None:
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop = threading.Event()
        self._sampled = self.rss()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self._sampled = max(self._sampled, self.rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def peak(self) -> int:
        if self.method.startswith("VmHWM"):
            return self._status_value("VmHWM")
        return max(self._sampled, self.rss())


# ----------------------------------------------------------------------------- worker: one method

def fixed_batch(data_dir: Path) -> list[Any]:
    from deltaprompt import load_task

    task = load_task("sst2", data_dir)
    examples = task.load("train", limit=BATCH)
    if len(examples) < BATCH:
        raise SystemExit(f"SST-2 train has fewer than {BATCH} examples")
    return examples


def make_classifier(plm: Any, kind: str, spec: dict[str, Any]) -> Any:
    from deltaprompt.classifier import HeadClassifier, PromptClassifier

    if kind == "head":
        return HeadClassifier(plm, list(CLASSES), template=HEAD_TEMPLATE, methods=[spec], progress=False, seed=0)
    return PromptClassifier(plm, TEMPLATE, LABEL_WORDS, classes=CLASSES, methods=[spec], progress=False, seed=0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def autocast(device: str, mixed_precision: str) -> Any:
    """The autocast context ``--mixed-precision`` asks for, for the hand-written loops (the
    trainer gets it from Accelerate)."""
    import contextlib

    import torch

    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def fit_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"batch_size": BATCH, "progress": False, "cpu": args.device == "cpu",
            "mixed_precision": args.mixed_precision}


def timed_fits(fit: Any, short: int, long: int, repeats: int, device: str, label: str) -> dict[str, Any]:
    """``fit(steps)`` with the two lengths alternately (short first on even repeats, long first
    on odd ones); per-step estimates (long - short) / (long - short steps)."""
    runs: dict[int, list[float]] = {short: [], long: []}
    for r in range(repeats):
        for steps in ((short, long) if r % 2 == 0 else (long, short)):
            gc.collect()
            sync(device)
            start = time.perf_counter()
            fit(steps)
            sync(device)
            runs[steps].append(time.perf_counter() - start)
            common.log(f"    {label}: {steps} steps in {runs[steps][-1]:.2f} s")
    per_step = [(b - a) / (long - short) for a, b in zip(runs[short], runs[long], strict=True)]
    return {"runs_s": {str(k): [round(t, 4) for t in v] for k, v in runs.items()},
            "per_step_s": [round(t, 5) for t in per_step]}


def manual_loop(clf: Any, examples: list[Any], steps: int, warmup: int, device: str,
                mixed_precision: str = "no") -> list[float]:
    """The trainer's step written out by hand on the collated batch: forward, NLL, backward,
    clip to norm 1, AdamW step; seconds per step after ``warmup`` untimed steps."""
    import torch
    import torch.nn.functional as F

    model = clf.model
    batch = model.to_device(model.collate(model.encode(examples)))
    labels = torch.tensor([model.classes.index(e.label) for e in examples], device=model.device)
    parameters = list(model.trainable_parameters().values())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    model.train()
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        with autocast(device, mixed_precision):
            loss = F.nll_loss(model(batch).float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        float(loss.detach())
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.eval()
    del optimizer
    return [round(t, 5) for t in times]


def touch_weights(model: Any) -> None:
    """Read every weight once, so that the baseline RSS holds the whole model (weights a
    loader left memory-mapped would otherwise be paged in during the first step)."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.float().sum().item()


def run_method(args: argparse.Namespace, key: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from deltaprompt.structure import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = fixed_batch(args.data_dir)
    memory = PeakMemory()
    cuda = args.device.startswith("cuda")
    start = time.perf_counter()
    plm = common.build_plm(args.model_config, args.device)
    touch_weights(plm.model)
    load_s = time.perf_counter() - start
    gc.collect()
    sync(args.device)
    rss_after_load = memory.rss()
    memory.reset()
    if cuda:
        cuda_after_load = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    clf = make_classifier(plm, kind, spec)
    counts = count_parameters(clf.model)
    options = fit_options(args)
    common.log(f"  [{key}] {counts}; first fit ({args.memory_steps} steps) for peak memory ...")
    start = time.perf_counter()
    clf.fit(examples, max_steps=args.memory_steps, **options)
    sync(args.device)
    first_fit_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "key": key, "kind": kind, "spec": spec, "parameters": counts.to_dict(),
        "model_load_s": round(load_s, 3), "first_fit_s": round(first_fit_s, 3),
        "rss_after_load_mb": round(rss_after_load / 2**20, 1),
        "peak_rss_mb": round(memory.peak() / 2**20, 1),
        "peak_rss_growth_mb": round((memory.peak() - rss_after_load) / 2**20, 1),
        "rss_measure": memory.method,
        "train_loss_first_fit": round(clf.result.train_loss, 5) if clf.result else None,
    }
    if cuda:
        result["cuda_peak_growth_mb"] = round((torch.cuda.max_memory_allocated() - cuda_after_load) / 2**20, 1)
        result["cuda_after_load_mb"] = round(cuda_after_load / 2**20, 1)
    common.log(f"  [{key}] peak RSS growth {result['peak_rss_growth_mb']:.0f} MB"
               + (f", CUDA {result['cuda_peak_growth_mb']:.0f} MB" if cuda else ""))

    def fit(steps: int) -> None:
        clf.fit(examples, max_steps=steps, **options)

    result["trainer"] = timed_fits(fit, args.short, args.long, args.repeats, args.device, key)
    if args.manual_steps:
        result["manual_per_step_s"] = manual_loop(clf, examples, args.manual_steps, 1, args.device,
                                                  args.mixed_precision)
    seq = clf.model.collate(clf.model.encode(examples))["input_ids"].shape
    result["batch_shape"] = list(seq)
    return result


# ----------------------------------------------------------------------------- worker: LoRA vs plain PEFT

def run_lora_vs_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = fixed_batch(args.data_dir)
    ours_plm = common.build_plm(args.model_config, args.device)
    plain_plm = common.build_plm(args.model_config, args.device)  # its own copy: LoRA goes in in place
    family = ours_plm.family
    if family not in ("causal", "masked"):
        raise ValueError(f"the plain PEFT loop is written for causal and masked LMs, not {family}")
    clf = make_classifier(ours_plm, "prompt", {"method": "lora"})
    ours_config = clf.model.methods[0].peft_model.peft_config["default"]
    targets = ours_config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else targets
    plain_config = LoraConfig(r=ours_config.r, lora_alpha=ours_config.lora_alpha, lora_dropout=ours_config.lora_dropout,
                              target_modules=targets, bias=ours_config.bias)
    model = get_peft_model(plain_plm.model, plain_config)
    tokenizer = plain_plm.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Label-word ids: ours's, checked against the plain tokenisation for a causal LM (a
    # leading space: the word continues the text).
    label_ids = [ids[0] for ids in clf.model.label_words.token_ids]
    if any(len(ids) != 1 for ids in clf.model.label_words.token_ids):
        raise ValueError(f"label words are not single tokens: {clf.model.label_words.token_ids}")
    if family == "causal":
        tokenizer.padding_side = "left"  # the prediction is read at the last position
        prompts = [PLAIN_PROMPT.format(text=e.text) for e in examples]
        plain_label_ids = [tokenizer(" " + LABEL_WORDS[c], add_special_tokens=False)["input_ids"] for c in CLASSES]
        if plain_label_ids != [[i] for i in label_ids]:
            raise ValueError(f"label-word ids differ: ours {label_ids}, plain {plain_label_ids}")
    else:  # masked: the template with the tokenizer's mask token, read at the mask
        prompts = [TEMPLATE.format(text=e.text, mask=tokenizer.mask_token) for e in examples]

    def label_logits(enc: Any) -> Any:
        logits = model(**enc).logits
        if family == "causal":
            return logits[:, -1, label_ids]
        position = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(1)
        return logits[torch.arange(logits.size(0), device=logits.device), position][:, label_ids]

    device = args.device
    labels = torch.tensor([CLASSES.index(e.label) for e in examples], device=device)
    lr = clf.model.methods[0].config.lr  # ours trains LoRA at its config's rate
    options = fit_options(args)

    # Same computation? Token ids, trainable parameter count, and the loss before training
    # (LoRA's B starts at zero, so both are the base model there).
    ours_ids = [list(e.input_ids) for e in clf.model.encode(examples)]
    plain_ids = tokenizer(prompts)["input_ids"]
    with torch.no_grad():
        clf.model.eval()
        batch = clf.model.to_device(clf.model.collate(clf.model.encode(examples)))
        ours_loss = float(F.nll_loss(clf.model(batch).float(), labels))
        model.eval()
        enc = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
        plain_loss = float(F.cross_entropy(label_logits(enc).float(), labels))
    ours_trainable = sum(p.numel() for p in clf.model.trainable_parameters().values())
    plain_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    common.log(f"  identical token ids {sum(a == b for a, b in zip(ours_ids, plain_ids, strict=True))}/{len(examples)}, "
               f"initial loss ours {ours_loss:.6f} plain {plain_loss:.6f}, trainable {ours_trainable:,} / {plain_trainable:,}")

    def plain_run(steps: int) -> None:
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
        for _ in range(steps):
            enc = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
            with autocast(device, args.mixed_precision):
                loss = F.cross_entropy(label_logits(enc).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            float(loss.detach())  # read the loss, as the trainer does every step
        model.eval()

    def ours_run(steps: int) -> None:
        clf.fit(examples, max_steps=steps, **options)

    ours_run(1)  # warm-ups
    plain_run(1)
    short, long = args.short, args.long
    runs: dict[str, dict[int, list[float]]] = {"ours": {short: [], long: []}, "plain": {short: [], long: []}}
    functions = {"ours": ours_run, "plain": plain_run}
    for r in range(args.compare_repeats):
        order = ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]
        lengths = (short, long) if r % 2 == 0 else (long, short)
        for steps in lengths:
            for name in order:
                gc.collect()
                sync(device)
                start = time.perf_counter()
                functions[name](steps)
                sync(device)
                runs[name][steps].append(time.perf_counter() - start)
                common.log(f"    {name}: {steps} steps in {runs[name][steps][-1]:.2f} s")
    per_step = {
        name: [round((b - a) / (long - short), 5) for a, b in zip(v[short], v[long], strict=True)]
        for name, v in runs.items()
    }
    return {
        "lora": {"r": ours_config.r, "alpha": ours_config.lora_alpha, "dropout": ours_config.lora_dropout,
                 "target_modules": targets, "bias": ours_config.bias, "lr": lr},
        "label_word_ids": label_ids,
        "family": family,
        "read_at": "last position (left padding)" if family == "causal" else "mask position",
        "identical_token_ids": sum(a == b for a, b in zip(ours_ids, plain_ids, strict=True)),
        "examples": len(examples),
        "initial_loss": {"ours": round(ours_loss, 6), "plain": round(plain_loss, 6)},
        "trainable": {"ours": ours_trainable, "plain": plain_trainable},
        "runs_s": {name: {str(k): [round(t, 4) for t in v] for k, v in r.items()} for name, r in runs.items()},
        "per_step_s": per_step,
    }


def worker_main(args: argparse.Namespace) -> int:
    """Run one job in this (fresh) process and write its result as JSON to --worker-out."""
    job = json.loads(args.worker)
    try:
        if job["key"] == "lora_vs_plain":
            result = run_lora_vs_plain(args)
        else:
            result = run_method(args, job["key"], job["kind"], job["spec"])
        code = 0
    except (Exception, SystemExit) as exc:  # reported in the results, not fatal to the other methods
        traceback.print_exc()
        result = {"key": job["key"], "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    Path(args.worker_out).write_text(json.dumps(result))
    return code


# ----------------------------------------------------------------------------- orchestration

def spawn(args: argparse.Namespace, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="training-step-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job),
                   "--worker-out", str(out), "--data-dir", str(args.data_dir), "--device", args.device,
                   "--short", str(args.short), "--long", str(args.long), "--repeats", str(args.repeats),
                   "--memory-steps", str(args.memory_steps), "--manual-steps", str(args.manual_steps),
                   "--compare-repeats", str(args.compare_repeats), "--mixed-precision", args.mixed_precision]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.model_config:
            command += ["--model-config", args.model_config]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, timeout=timeout, check=False)
            code = done.returncode
        except subprocess.TimeoutExpired:
            return {"key": job["key"], "error": f"timed out after {timeout:.0f} s"}
        if out.is_file():
            result = json.loads(out.read_text())
        else:
            result = {"key": job["key"], "error": f"worker exited with code {code} and wrote nothing"}
        result["process_s"] = round(time.perf_counter() - start, 2)
        return result


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(key: str, kind: str, spec: dict[str, Any], rounds: list[dict[str, Any]], cuda: bool) -> dict[str, Any]:
    good = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {"key": key, "name": ROW_NAMES.get(key, key), "kind": kind, "spec": spec,
                           "rounds": rounds, "errors": [r["error"] for r in rounds if "error" in r]}
    if not good:
        return out
    steps = [t for r in good for t in r["trainer"]["per_step_s"]]
    manual = [t for r in good for t in r.get("manual_per_step_s", [])]
    peaks = [r["cuda_peak_growth_mb" if cuda else "peak_rss_growth_mb"] for r in good]
    out.update(
        parameters=good[0]["parameters"],
        step_s_median=round(median(steps), 4),
        step_s_all=steps,
        manual_step_s_median=round(median(manual), 4) if manual else None,
        peak_memory_growth_mb_median=round(median(peaks), 1),
        peak_memory_growth_mb_all=peaks,
        memory_measure="torch.cuda.max_memory_allocated" if cuda else good[0]["rss_measure"],
        batch_shape=good[0]["batch_shape"],
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    if args.threads:
        machine["torch_threads"] = args.threads  # what the worker processes use
    common.log(f"machine: {common.machine_line(machine)}")
    selected = [run for run in RUNS if run[0] in args.methods]
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in selected}
    started = time.perf_counter()
    for r in range(args.rounds):
        # Each round a different method goes first (a rotation), each in a fresh process.
        order = selected[r % len(selected):] + selected[: r % len(selected)]
        for key, kind, spec in order:
            common.log(f"\n== round {r + 1}/{args.rounds}: {key} ({kind}, {spec})")
            result = spawn(args, {"key": key, "kind": kind, "spec": spec}, args.timeout)
            if "error" in result:
                common.log(f"  FAILED: {result['error']}")
            raw[key].append(result)
    cuda = args.device.startswith("cuda")
    rows = [aggregate(key, kind, spec, raw[key], cuda) for key, kind, spec in selected]
    reference = next((row for row in rows if row["key"] == "finetune" and "step_s_median" in row), None)
    for row in rows:
        if reference and "step_s_median" in row:
            row["step_vs_finetune"] = round(row["step_s_median"] / reference["step_s_median"], 3)
            base = reference["peak_memory_growth_mb_median"]
            row["memory_vs_finetune"] = round(row["peak_memory_growth_mb_median"] / base, 3) if base > 0 else None

    compare = None
    if args.compare_lora:
        common.log(f"\n== LoRA: ours vs plain transformers + PEFT, {args.compare_repeats} interleaved repeats")
        compare = spawn(args, {"key": "lora_vs_plain"}, args.timeout)
        if "error" in compare:
            common.log(f"  FAILED: {compare['error']}")
        else:
            ours = median(compare["per_step_s"]["ours"])
            plain = median(compare["per_step_s"]["plain"])
            compare["ours_step_s_median"] = round(ours, 4)
            compare["plain_step_s_median"] = round(plain, 4)
            compare["ours_over_plain"] = round(ours / plain, 3)
            compare["target_max_ratio"] = 1 + args.lora_target
            compare["pass"] = ours / plain <= 1 + args.lora_target
    machine["loadavg_at_end"] = common.load_average()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("worker", "worker_out")}
    return {
        "benchmark": "training_step",
        "model": args.model_config or MODEL,
        "template": TEMPLATE,
        "head_template": HEAD_TEMPLATE,
        "batch": f"the first {BATCH} SST-2 training sentences",
        "settings": settings,
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
        "methods": rows,
        "lora_vs_plain": compare,
    }


def _int(n: int) -> str:
    return f"{n:,}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def render_markdown(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    cuda = s["device"].startswith("cuda")
    memory_label = "Peak CUDA memory growth (MB)" if cuda else "Peak RSS growth (MB)"
    rows = []
    for row in payload["methods"]:
        if "step_s_median" not in row:
            rows.append([row["name"], "-", "-", "-", "-", "-", "-", "-", "-",
                         f"failed: {row['errors'][0] if row['errors'] else '?'}"])
            continue
        p = row["parameters"]
        rows.append([
            row["name"], _int(p["trainable"]), _int(p["total"]), f"{p['percent']:.3g}%",
            f"{row['step_s_median']:.3f}", _ratio(row.get("step_vs_finetune")),
            "-" if row["manual_step_s_median"] is None else f"{row['manual_step_s_median']:.3f}",
            f"{row['peak_memory_growth_mb_median']:,.0f}", _ratio(row.get("memory_vs_finetune")),
            f"{len(row['step_s_all'])} estimates" + (f"; {len(row['errors'])} failed round(s)" if row["errors"] else ""),
        ])
    table = common.markdown_table(
        ["Method", "Trainable params", "Total params", "Trainable", "Step (s, median)", "Step vs full FT",
         "Hand loop step (s)", memory_label, "Memory vs full FT", "Runs"],
        rows,
    )
    notes = [
        f"Model {payload['model']} ({s['device']}), the same batch for every method: {payload['batch']} "
        f"(padded to {next((r['batch_shape'] for r in payload['methods'] if 'batch_shape' in r), '?')} tokens), "
        f"template `{payload['template']!r}`; the head model reads `{payload['head_template']!r}`.",
        f"Step: `fit` through `Trainer` with max_steps {s['short']} and {s['long']} on the same data, "
        f"alternately, {s['repeats']} pair(s) per process, {s['rounds']} fresh process(es) per method with the "
        f"methods taking turns; per pair (t{s['long']} - t{s['short']}) / {s['long'] - s['short']}; median of all "
        f"pairs. Hand loop: forward, NLL, backward, clip, AdamW written out (no Accelerate/DataLoader), median of "
        f"{s['manual_steps']} steps per process after 1 warm-up.",
        ("Memory: torch.cuda.max_memory_allocated over the allocation after loading" if cuda else
         "Memory: peak RSS (VmHWM, reset after loading) over the RSS after loading the model and reading its "
         "weights once")
        + f", during building the classifier and a first fit of {s['memory_steps']} steps, in a fresh process; "
        "median over processes. It includes gradients, AdamW's two moments, activations"
        + (" (live tensors: blocks PyTorch's allocator keeps cached are not counted)." if cuda else
           " and the allocator's slack (glibc keeps freed memory)."),
        "Methods at their configs' defaults (P-Tuning with 20 prepended encoded tokens): "
        + "; ".join(f"{r['key']}: {json.dumps(r['spec'])}" for r in payload["methods"]) + ".",
        f"Timings are noisy ({'short GPU steps: launch overhead and clocks vary' if cuda else 'other jobs share the CPU'}; "
        f"load average at start {payload['machine'].get('loadavg_at_start')}, at end "
        f"{payload['machine'].get('loadavg_at_end')}); medians of interleaved runs are reported, every run is in the JSON.",
        f"Machine: {common.machine_line(payload['machine'])}; total wall time {payload['wall_s']:.0f} s.",
    ]
    text = (f"### Training step per method ({payload['model']}, {s['device']}, batch of {BATCH})\n\n"
            f"{table}\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    c = payload.get("lora_vs_plain")
    if c:
        if "error" in c:
            text += f"\n### LoRA: ours vs plain transformers + PEFT\n\nfailed: {c['error']}\n"
        else:
            lora = c["lora"]
            table2 = common.markdown_table(
                ["Loop", "Step (s, median)", "Ours / plain", "Target", "Result"],
                [["ours (`PromptClassifier(methods=['lora']).fit`)", f"{c['ours_step_s_median']:.3f}",
                  f"**{c['ours_over_plain']:.3f}**", f"<= {c['target_max_ratio']:.2f}", common.mark(c["pass"])],
                 [f"plain transformers + PEFT (full-vocabulary logits, {c['read_at']})", f"{c['plain_step_s_median']:.3f}",
                  "-", "-", "-"]],
            )
            notes2 = [
                f"LoRA r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, targets {lora['target_modules']}, "
                f"bias {lora['bias']!r}, AdamW lr {lora['lr']:g}; trainable parameters ours "
                f"{c['trainable']['ours']:,}, plain {c['trainable']['plain']:,}.",
                f"Same batch: token ids identical for {c['identical_token_ids']}/{c['examples']} examples; loss before "
                f"training ours {c['initial_loss']['ours']:.6f}, plain {c['initial_loss']['plain']:.6f}.",
                f"Per-step estimates (s) from {s['compare_repeats']} interleaved repeats of max_steps {s['short']} and "
                f"{s['long']}: ours {c['per_step_s']['ours']}, plain {c['per_step_s']['plain']}.",
                "Ours also clips the gradient norm and steps the LR schedule each step; the plain loop tokenises "
                "each step and computes the LM head over the whole vocabulary at every position.",
            ]
            text += ("\n### LoRA step: ours vs plain transformers + PEFT\n\n" + table2 + "\n"
                     + "\n".join(f"- {n}" for n in notes2) + "\n")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding sst2/ (default: $DELTAPROMPT_DATA or ../shared/data)")
    parser.add_argument("--methods", nargs="+", default=[key for key, _, _ in RUNS],
                        choices=[key for key, _, _ in RUNS], help="rows to measure (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--model-config", choices=common.MODEL_CONFIGS, default=None,
                        help="a randomly initialised model of this shape instead of SmolLM2-135M")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    parser.add_argument("--short", type=int, default=2, help="max_steps of the shorter fit (default 2)")
    parser.add_argument("--long", type=int, default=6, help="max_steps of the longer fit (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="(short, long) pairs per process (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per method (default 2)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of the first fit (memory) (default 2)")
    parser.add_argument("--manual-steps", type=int, default=3, help="hand-loop steps per process (0: none)")
    parser.add_argument("--no-compare-lora", dest="compare_lora", action="store_false",
                        help="skip LoRA vs plain transformers + PEFT")
    parser.add_argument("--compare-repeats", type=int, default=4, help="interleaved repeats of that comparison")
    parser.add_argument("--lora-target", type=float, default=0.05, help="ours may be this much slower (0.05)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker process")
    parser.add_argument("--output-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--name", default="training_step", help="results file stem")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("short", "long", "repeats", "rounds", "memory_steps", "compare_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.long <= args.short:
        parser.error("--long must be larger than --short")
    if args.manual_steps < 0:
        parser.error("--manual-steps cannot be negative")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error("--device must be cpu or cuda[:N]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    args.data_dir = args.data_dir or common.default_data_dir()
    common.require_task(args.data_dir, "sst2")
    why = common.cannot_run(args.model_config, args.device)
    if why:
        print(f"{why}\nNothing was measured and no results were written.")
        return 0
    payload = run(args)
    return common.publish(args.output_dir, args.name, payload, render_markdown(payload))


if __name__ == "__main__":
    sys.exit(main())
