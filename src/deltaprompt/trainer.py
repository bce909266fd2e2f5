"""One trainer for every method: Hugging Face Accelerate underneath, so the same loop runs on
CPU, one GPU, mixed precision, gradient accumulation, and multi-GPU DDP/FSDP/DeepSpeed under
``accelerate launch``.

    examples --encode once--> dataset --seeded per-epoch order--> batches --model--> class
    log-probs --NLL--> AdamW (a learning rate per parameter role) --> warm-up + schedule

A run with ``output_dir`` writes resumable checkpoints (trainable weights, optimiser, scheduler,
random states; each written to a temporary folder, then renamed), the best weights on the dev
metric, ``log.csv`` and TensorBoard events. Started again with the same config, it continues
from its last checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from .data import Example, as_examples
from .files import atomic_write
from .model import TaskModel

logger = logging.getLogger(__name__)
Metric = Literal["accuracy", "macro_f1", "f1"]  # f1: entity-level F1 of token tasks
Schedule = Literal["linear", "cosine", "constant"]
CHECKPOINTS = "checkpoints"
BEST = "best.safetensors"
STATE = "trainer_state.json"


@dataclass
class TrainConfig:
    """How to train. Learning rates are per parameter role: ``lr`` for PLM weights (full
    fine-tuning; LM-BFF used 1e-5), ``soft_lr`` for soft prompts and prompt encoders,
    ``delta_lr`` for delta modules whose method sets no rate of its own, ``head_lr`` for a
    classification head. ``eval_every``: steps between dev evaluations (None: each epoch);
    ``patience``: evaluations without improvement before stopping early (None: never).
    ``save_every``: steps between resumable checkpoints (None: at each evaluation, or each
    epoch without a dev set); checkpoints need ``output_dir``."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5
    soft_lr: float = 3e-2
    delta_lr: float = 1e-3
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: Schedule = "linear"
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    metric: Metric = "accuracy"
    patience: int | None = None
    load_best: bool = True
    seed: int = 42
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    output_dir: str | None = None
    save_every: int | None = None
    keep_checkpoints: int = 1
    resume: bool = True
    log_every: int = 10
    tensorboard: bool = True
    progress: bool | None = None
    cpu: bool = False
    find_unused_parameters: bool = True  # DDP: a PLM's unused LM head (head models) needs it

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every",
                    "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "save_every", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or null), got {value}")
        for name in ("lr", "soft_lr", "delta_lr", "head_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay cannot be negative, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive (or null), got {self.max_grad_norm}")


@dataclass
class TrainResult:
    """``train_loss``: mean loss since the last log row; ``history``: one row per dev evaluation."""

    steps: int
    epochs: int
    train_loss: float
    best_metric: float | None
    best_step: int | None
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops rather than train on garbage."""


class AuxiliaryLoss(Protocol):
    """An extra loss added to the task loss at every training step, e.g. PET's language-modelling
    loss on unlabelled text (``deltaprompt.pet.MaskedLMAuxiliary``). ``start`` runs once per
    ``fit`` before the first step; ``__call__`` returns the step's loss, already weighted.
    ``draw`` counts micro-batches from the start of the run (restored on resume), so the extra
    loss can draw its data and randomness from (seed, draw) and a resumed run sees what an
    uninterrupted one would."""

    def start(self, model: TaskModel, config: TrainConfig) -> None: ...

    def __call__(self, model: TaskModel, draw: int) -> torch.Tensor: ...


class EpochOrder(Sampler[int]):
    """A fresh permutation each epoch from (seed, epoch) alone: no global random state is
    consumed, so a resumed run sees exactly the order an uninterrupted one would."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class Trainer:
    """Trains a ``TaskModel`` (``PromptModel`` or ``HeadModel``) with its delta methods applied.

    Only parameters with ``requires_grad`` train; each gets its role's learning rate (or its
    method's own). The model keeps its trained weights (the best dev checkpoint when a dev set
    is given and ``load_best``) after ``fit``.
    """

    def __init__(self, model: TaskModel, config: TrainConfig | None = None, auxiliary: AuxiliaryLoss | None = None):
        self.model = model
        self.config = config or TrainConfig()
        self.auxiliary = auxiliary  # an extra loss each step (single process only, see AuxiliaryLoss)
        self.output_dir = Path(self.config.output_dir) if self.config.output_dir else None

    # -- setup
    def _targets(self, targets: torch.Tensor, count: int) -> torch.Tensor:
        """Soft labels: one probability distribution over the classes per training example."""
        targets = torch.as_tensor(targets).detach().float().cpu()
        expected = (count, len(self.model.classes))
        if tuple(targets.shape) != expected:
            raise ValueError(f"targets must have shape (examples, classes) = {expected}, got {tuple(targets.shape)}")
        if not torch.isfinite(targets).all() or (targets < 0).any():
            raise ValueError("targets must be finite and non-negative (a probability distribution per example)")
        sums = targets.sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            bad = int((sums - 1).abs().argmax())
            raise ValueError(f"each row of targets must sum to 1; row {bad} sums to {float(sums[bad]):.4f}")
        return targets

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """One AdamW group per (learning rate, decay): biases, norms and soft prompts do not decay."""
        config = self.config
        rates = {"plm": config.lr, "soft": config.soft_lr, "delta": config.delta_lr, "head": config.head_lr}
        groups: dict[tuple[float, bool], dict[str, Any]] = {}
        for name, parameter in self.model.named_parameters():
            if not parameter.requires_grad:
                continue
            role, own_lr = self.model.role_of(name, parameter)
            lr = own_lr if own_lr is not None else rates[role]
            decay = parameter.ndim >= 2 and role != "soft"
            group = groups.setdefault((lr, decay), {
                "params": [], "names": [], "lr": lr, "weight_decay": config.weight_decay if decay else 0.0,
            })
            group["params"].append(parameter)
            group["names"].append(name)
        if not groups:
            raise ValueError(
                "nothing to train: every parameter is frozen. Give the classifier delta methods "
                "(e.g. methods=['lora']), soft tokens in the template, or methods=['finetune']"
            )
        return list(groups.values())

    def fit(self, train: Sequence[Example], dev: Sequence[Example] | None = None,
            targets: torch.Tensor | None = None) -> TrainResult:
        """Train on ``train`` (hard labels: NLL of the gold class) or, with ``targets``, on soft
        labels: an (examples, classes) tensor of probabilities, one row per training example, whose
        labels may then be None (loss: cross-entropy between the target distribution and the
        model's class distribution, as in knowledge distillation). ``dev`` always has labels."""
        config = self.config
        started = time.perf_counter()
        train = as_examples(train)
        if not train:
            raise ValueError("no training examples")
        dev = as_examples(dev) if dev is not None else None
        soft = targets is not None

        accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            cpu=config.cpu,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)],
        )
        set_seed(config.seed)
        model = self.model
        features = model.encode(train)
        dev_features = model.encode(dev) if dev else None
        train_labels = self._targets(targets, len(train)) if soft else model.targets(train, features, "training")
        dev_labels = model.targets(dev, dev_features, "dev") if dev else None

        def collate(rows: list[int]) -> dict[str, Any]:
            labels = train_labels[rows] if soft else model.collate_targets([train_labels[i] for i in rows])
            return {**model.collate([features[i] for i in rows]), "labels": labels}
        loader = DataLoader(
            list(range(len(features))),
            batch_size=config.batch_size,
            sampler=EpochOrder(len(features), config.seed),
            collate_fn=collate,
            generator=torch.Generator().manual_seed(config.seed),  # leaves the global generator alone
        )
        groups = self._parameter_groups()
        for group in groups:
            group.pop("names")
        optimizer = torch.optim.AdamW(groups)
        loader = accelerator.prepare(loader)
        steps_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
        total_steps = config.max_steps or config.epochs * steps_per_epoch
        # accelerate advances a scheduler once per process at each step: count in those units.
        scheduler = get_scheduler(
            "constant_with_warmup" if config.schedule == "constant" else config.schedule,
            optimizer,
            num_warmup_steps=int(config.warmup_ratio * total_steps) * accelerator.num_processes,
            num_training_steps=total_steps * accelerator.num_processes,
        )
        wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        auxiliary = self.auxiliary
        if auxiliary is not None:
            if accelerator.num_processes > 1:
                raise ValueError(
                    "an auxiliary loss runs the PLM outside the distributed model's forward pass, which DDP "
                    "cannot synchronise; train with an auxiliary loss in a single process"
                )
            auxiliary.start(model, config)
        self._accelerator = accelerator
        self._register_checkpoint_hooks(accelerator)

        state: dict[str, Any] = {"step": 0, "epoch": 0, "batches": 0, "best_metric": None, "best_loss": None, "best_step": None,
                                 "bad_evals": 0, "stopped_early": False, "loss_sum": 0.0, "loss_count": 0}  # loss since the last log row
        history: list[dict[str, Any]] = []
        if self.output_dir and config.resume:
            resumed = self._resume(accelerator)
            if resumed:
                history = resumed.pop("history", [])
                state.update(resumed)
        log = _Log(self.output_dir, config.tensorboard, accelerator.is_main_process, state["step"])
        bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
                   disable=not accelerator.is_main_process
                   or ((not config.progress) if config.progress is not None else None))
        each_epoch = config.eval_every is None
        metric: float | None = None

        def evaluate() -> None:
            nonlocal metric
            if dev_features is not None:
                metric = self._evaluate(model, dev_features, dev_labels, state, log, history)
                bar.set_postfix(self._postfix(state, metric))

        try:
            while state["step"] < total_steps and not state["stopped_early"]:
                loader.set_epoch(state["epoch"])
                batches = accelerator.skip_first_batches(loader, state["batches"]) if state["batches"] else loader
                wrapped.train()
                for batch in batches:
                    labels = batch.pop("labels")
                    with accelerator.accumulate(wrapped):
                        if soft:  # cross-entropy against a distribution (F.cross_entropy takes probabilities)
                            loss = F.cross_entropy(wrapped(batch).float(), labels)
                        else:
                            loss = model.loss(wrapped(batch), labels)
                        if auxiliary is not None:
                            with accelerator.autocast():
                                extra = auxiliary(model, state["epoch"] * len(loader) + state["batches"])
                            loss = loss + extra.float()
                        accelerator.backward(loss)
                        loss_value = self._checked_loss(accelerator, loss, state)
                        if accelerator.sync_gradients and config.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    state["batches"] += 1
                    state["loss_sum"] += loss_value
                    state["loss_count"] += 1
                    if not accelerator.sync_gradients:
                        continue
                    state["step"] += 1
                    step = state["step"]
                    bar.update(1)
                    if step % config.log_every == 0:
                        log.write(step, {"epoch": state["epoch"], "train_loss": _mean_loss(state),
                                         "lr": scheduler.get_last_lr()[0]})
                        bar.set_postfix(self._postfix(state, metric))
                        # The next row averages anew; until it has a batch, the last row's mean stands.
                        state["last_loss"] = _mean_loss(state)
                        state["loss_sum"], state["loss_count"] = 0.0, 0
                    epoch_done = state["batches"] >= len(loader)
                    if epoch_done:
                        break
                    evaluated = not each_epoch and step % config.eval_every == 0  # type: ignore[operator]
                    if evaluated:
                        evaluate()
                    if evaluated or (config.save_every and step % config.save_every == 0):
                        self._checkpoint(accelerator, state, history)
                    if state["stopped_early"] or step >= total_steps:
                        break
                if state["batches"] >= len(loader):  # the epoch ran to its end
                    state["epoch"] += 1
                    state["batches"] = 0
                    step = state["step"]
                    if each_epoch or step % config.eval_every == 0:  # type: ignore[operator]
                        evaluate()
                    if each_epoch or config.save_every is None or step % config.save_every == 0:
                        self._checkpoint(accelerator, state, history)
        finally:
            bar.close()
            log.close()
        self._checkpoint(accelerator, state, history)
        if dev_features is not None and config.load_best and state["best_step"] is not None:
            self._load_best(model)
        accelerator.wait_for_everyone()
        model.eval()
        return TrainResult(
            steps=state["step"],
            epochs=state["epoch"],
            train_loss=_mean_loss(state),
            best_metric=state["best_metric"],
            best_step=state["best_step"],
            stopped_early=state["stopped_early"],
            seconds=time.perf_counter() - started,
            history=history,
        )

    @staticmethod
    def _postfix(state: dict[str, Any], metric: float | None) -> dict[str, str]:
        out = {"loss": f"{_mean_loss(state):.4f}"}
        if metric is not None:
            out["dev"] = f"{metric:.4f}"
        return out

    @staticmethod
    def _checked_loss(accelerator: Accelerator, loss: torch.Tensor, state: dict[str, Any]) -> float:
        """This process's loss as a float, read once per step: the one wait for the GPU comes
        after backward is queued and before the optimiser moves a weight. Every process sees every
        loss, so all of them stop together when one diverges."""
        losses = accelerator.gather(loss.detach().float().reshape(1)).tolist()
        bad = [value for value in losses if not math.isfinite(value)]
        if bad:
            raise TrainingDiverged(
                f"the loss became {bad[0]} at step {state['step'] + 1} "
                f"(epoch {state['epoch']}, batch {state['batches']}); lower the learning rate, use "
                "fp32/bf16 instead of fp16, or check the data. Nothing after the last checkpoint was kept."
            )
        return losses[accelerator.process_index]

    # -- evaluation
    def _evaluate(self, model: TaskModel, features: Sequence[Any], labels: Sequence[Any],
                  state: dict[str, Any], log: _Log, history: list[dict[str, Any]]) -> float:
        """Every process evaluates the whole dev set (few-shot dev sets are small), so all
        ranks take the same early-stopping and best-checkpoint decisions without messages."""
        config = self.config
        metrics = model.dev_metrics(features, labels, config.eval_batch_size)
        if config.metric not in metrics:
            known = sorted(k for k in metrics if k != "loss")
            raise ValueError(f"metric {config.metric!r} is not one this model measures; use one of {known}")
        metric, dev_loss = metrics[config.metric], metrics["loss"]
        # Few-shot dev metrics saturate; on a tie the lower dev loss wins.
        best = state["best_metric"]
        improved = best is None or metric > best or (metric == best and dev_loss < state["best_loss"])
        if improved:
            state["best_metric"], state["best_loss"], state["best_step"] = metric, dev_loss, state["step"]
            state["bad_evals"] = 0
            self._save_best(model)
        else:
            state["bad_evals"] += 1
            if config.patience is not None and state["bad_evals"] >= config.patience:
                state["stopped_early"] = True
                logger.info("early stop at step %d: no dev improvement in %d evaluations", state["step"],
                            config.patience)
        row = {"epoch": state["epoch"], f"dev_{config.metric}": metric, "dev_loss": dev_loss}
        log.write(state["step"], row)
        history.append({"step": state["step"], **row})
        return metric

    def _save_best(self, model: TaskModel) -> None:
        weights = {n: p.detach().cpu().clone() for n, p in model.trainable_parameters().items()}
        self._best = weights
        if self.output_dir and self._accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.output_dir / f".{BEST}.tmp"
            save_file({n: t.contiguous() for n, t in weights.items()}, str(tmp))
            os.replace(tmp, self.output_dir / BEST)

    def _load_best(self, model: TaskModel) -> None:
        best = getattr(self, "_best", None)
        if best is None and self.output_dir and (self.output_dir / BEST).exists():
            best = load_file(str(self.output_dir / BEST))
        if best is None:
            return
        _load_trainable(model, best)

    # -- checkpoints
    def _register_checkpoint_hooks(self, accelerator: Accelerator) -> None:
        """Checkpoints hold only what trains: accelerate saves these weights instead of the whole
        model (the frozen PLM can be reloaded from its source) and we load them back."""
        model = self.model

        def save_trainable(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
            for i in range(len(weights)):
                weights[i] = {n: p.detach().contiguous() for n, p in model.trainable_parameters().items()}

        def load_trainable(models: list[Any], input_dir: str) -> None:
            _load_trainable(model, load_file(os.path.join(input_dir, "model.safetensors")))
            models.clear()

        accelerator.register_save_state_pre_hook(save_trainable)
        accelerator.register_load_state_pre_hook(load_trainable)

    def _checkpoint(self, accelerator: Accelerator, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if not self.output_dir:
            return
        folder = self.output_dir / CHECKPOINTS
        final = folder / f"step-{state['step']:08d}"
        if final.exists():
            return
        tmp = folder / f".tmp-step-{state['step']:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with atomic_write(tmp / STATE) as handle:
                json.dump({**state, "history": history, "config": {k: v for k, v in vars(self.config).items()}},
                          handle, indent=1)
            os.replace(tmp, final)
            for old in sorted(_complete_checkpoints(folder))[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _resume(self, accelerator: Accelerator) -> dict[str, Any] | None:
        assert self.output_dir is not None
        complete = sorted(_complete_checkpoints(self.output_dir / CHECKPOINTS))
        if not complete:
            return None
        latest = complete[-1]
        saved = json.loads((latest / STATE).read_text())
        saved_config = saved.pop("config", {})
        changed = [k for k in ("batch_size", "gradient_accumulation_steps", "seed", "epochs", "max_steps")
                   if k in saved_config and saved_config[k] != getattr(self.config, k)]
        if changed:
            raise ValueError(
                f"{self.output_dir} holds a run with different {', '.join(changed)}; resuming it would not "
                "reproduce that run. Use another output_dir, or resume=False to start over in this one"
            )
        accelerator.load_state(str(latest))
        if (self.output_dir / BEST).exists():
            self._best = load_file(str(self.output_dir / BEST))
        logger.info("resumed from %s (step %d)", latest, saved["step"])
        return saved


def _complete_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / STATE).exists()]


def _load_trainable(model: TaskModel, tensors: dict[str, torch.Tensor]) -> None:
    trainable = model.trainable_parameters()
    missing = sorted(set(trainable) - set(tensors))
    unexpected = sorted(set(tensors) - set(trainable))
    if missing or unexpected:
        raise ValueError(
            "saved weights do not fit this model: "
            + (f"missing {missing[:5]} " if missing else "")
            + (f"unexpected {unexpected[:5]}" if unexpected else "")
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(tensors[name].to(parameter.device, parameter.dtype))


def _mean_loss(state: dict[str, Any]) -> float:
    """Mean training loss since the last log row (that row's mean when no batch came since)."""
    if state["loss_count"] == 0:
        return state.get("last_loss", 0.0)
    return state["loss_sum"] / state["loss_count"]


class _Log:
    """log.csv and TensorBoard events (main process only). A resumed run first drops rows past
    its checkpoint, so the log reads as one uninterrupted run."""

    def __init__(self, directory: Path | None, tensorboard: bool, main: bool, resume_step: int):
        self.rows: list[dict[str, Any]] = []
        self.path = directory / "log.csv" if directory and main else None
        self.writer = None
        if self.path is None:
            return
        directory.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        if self.path.exists():
            with self.path.open() as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step + 1 or None)
        self._flush()

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.rows.append({"step": step, **values})
        if self.writer is not None:
            for key, value in values.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, step)
        self._flush()

    def _flush(self) -> None:
        assert self.path is not None
        columns = ["step", "epoch", "train_loss", "lr", "dev_accuracy", "dev_macro_f1", "dev_f1", "dev_loss"]
        with atomic_write(self.path) as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
