"""The baselines users would pick instead of deltaprompt, run on the same splits as its methods.

- ``setfit``: the `setfit` package (contrastive fine-tuning of a sentence encoder, then a
  logistic-regression head) on the MiniLM-L6 sentence encoder, with SetFit's own few-shot
  defaults: a strong few-shot baseline that needs no prompt at all.
- ``peft_lora``: what a PEFT user writes for text classification: the suite's model as a
  ``AutoModelForSequenceClassification`` wrapped by ``peft.get_peft_model`` with a
  ``SEQ_CLS`` ``LoraConfig`` (PEFT trains the new classification head as well), and a plain
  PyTorch training loop.

Both are built with :func:`make_baseline`, trained with ``fit`` and scored with
``predict_proba``; the runner treats them like any other method. A baseline whose package is
missing raises :class:`BaselineUnavailable` when it is built, so the report can say so instead
of leaving a silent gap.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import tempfile
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch

from ..data import Example
from ..plm import _quiet_transformers, resolve

BASELINE_KINDS: tuple[str, ...] = ("setfit", "peft_lora")
SETFIT_INSTALL = "pip install 'deltaprompt[bench]'"


class BaselineUnavailable(RuntimeError):
    """A baseline's package is not installed; the message says how to install it."""


class Baseline(Protocol):
    """What the runner needs of a baseline."""

    classes: tuple[str, ...]

    def fit(self, train: list[Example], dev: list[Example] | None, budget: Mapping[str, Any]) -> Baseline: ...

    def predict_proba(self, examples: list[Example]) -> np.ndarray: ...

    def parameter_count(self) -> tuple[int, int]: ...


def make_baseline(
    kind: str,
    options: Mapping[str, Any] | None,
    *,
    classes: Sequence[str],
    plm_name: str,
    seed: int,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> Baseline:
    """Build a baseline and load its model (so a missing package or model fails here, before
    any time is measured). ``options`` are the method's own settings from the suite (a
    ``kind`` key is ignored); ``plm_name`` is the suite's model (``peft_lora`` trains it,
    ``setfit`` uses its own sentence encoder); ``device`` defaults to CUDA when there is one;
    ``progress``: show progress bars (None: only on a terminal)."""
    options = {k: v for k, v in dict(options or {}).items() if k != "kind"}
    classes = tuple(classes)
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least two classes, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    device = torch.device(device) if device is not None else _default_device()
    if kind == "setfit":
        return SetFitBaseline(_parse(SetFitOptions, options, kind), classes, seed, device, progress)
    if kind == "peft_lora":
        return PeftLoraBaseline(_parse(PeftLoraOptions, options, kind), classes, plm_name, seed, device, progress)
    raise ValueError(f"unknown baseline kind {kind!r}; choose one of {', '.join(BASELINE_KINDS)}")


# ----------------------------------------------------------------------------- shared helpers

def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _parse(cls: type, options: dict[str, Any], kind: str) -> Any:
    """Options as a dataclass; an unknown key is an error that lists the known ones (a typo
    would otherwise silently run the defaults)."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{kind}: unknown option(s) {', '.join(unknown)}; known options: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    for name, value in options.items():
        if not _matches(value, hints[name]):
            raise ValueError(f"{kind}: option {name} must be {_describe(hints[name])}, got {value!r}")
    return cls(**options)


def _matches(value: Any, hint: Any) -> bool:
    """Whether an option's value (read from YAML) fits its annotation: int, float, bool, str,
    list[str], or a union of those with None. An int is a float; a bool is not a number."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, part) for part in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(part) for part in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _labels(examples: Sequence[Example], classes: tuple[str, ...], where: str) -> list[int]:
    """Class indices of labelled examples (an unknown or missing label is an error)."""
    out = []
    for i, example in enumerate(examples):
        if example.label not in classes:
            raise ValueError(f"{where} example {i} has label {example.label!r}; the classes are {list(classes)}")
        out.append(classes.index(example.label))
    return out


def _check_not_empty(train: Sequence[Example], kind: str) -> None:
    if not train:
        raise ValueError(f"{kind}: the training set is empty")


# ----------------------------------------------------------------------------- SetFit

@dataclass(frozen=True)
class SetFitOptions:
    """``model``: a sentence-transformers folder, alias, or hub id already in the local cache
    (default: MiniLM-L6, installed from PyPI).
    Every other field is SetFit's ``TrainingArguments`` field of that name; None keeps SetFit's
    default (contrastive pairs by ``oversampling``, 1 epoch of body training at 2e-5, batch 16,
    then a logistic-regression head on the embeddings)."""

    model: str = "minilm-l6"
    num_iterations: int | None = None
    sampling_strategy: str | None = None
    num_epochs: int | None = None
    batch_size: int | None = None
    body_learning_rate: float | None = None
    max_steps: int | None = None
    max_length: int | None = None
    l2_weight: float | None = None
    warmup_proportion: float | None = None

    def __post_init__(self) -> None:
        strategies = ("oversampling", "undersampling", "unique")
        if self.sampling_strategy is not None and self.sampling_strategy not in strategies:
            raise ValueError(f"setfit: sampling_strategy must be one of {', '.join(strategies)}, "
                             f"got {self.sampling_strategy!r}")
        for name in ("num_iterations", "num_epochs", "batch_size", "max_steps", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"setfit: {name} must be at least 1 (or null for SetFit's default), got {value}")


def _import_setfit() -> Any:
    try:
        return importlib.import_module("setfit")
    except ImportError as exc:
        raise BaselineUnavailable(f"setfit is not installed: {SETFIT_INSTALL}") from exc


class SetFitBaseline:
    """SetFit on a sentence encoder. The whole body is fine-tuned (contrastive phase), so every
    body weight counts as trainable, plus the head's.

    Text pairs (RTE, CB) are one input, ``text + " " + sep + " " + text_b`` where ``sep`` is the
    encoder tokenizer's separator token (``[SEP]`` for MiniLM, which its tokenizer reads as the
    special token: the same ids as BERT's pair encoding) or a newline when it has none. The dev
    set is not used: SetFit's recipe has no model selection."""

    def __init__(self, options: SetFitOptions, classes: tuple[str, ...], seed: int, device: torch.device,
                 progress: bool | None) -> None:
        self._setfit = _import_setfit()
        from sentence_transformers import SentenceTransformer
        from sklearn.linear_model import LogisticRegression

        self.options, self.classes, self.seed = options, classes, seed
        self.progress = sys.stderr.isatty() if progress is None else progress
        path = resolve(options.model)
        with _quiet_transformers(), _quiet_setfit():
            body = SentenceTransformer(path, device=str(device), local_files_only=True)
        # Built here, not with SetFitModel.from_pretrained: that asks the hub about the model's
        # name for its model card even for a local folder.
        self.model = self._setfit.SetFitModel(model_body=body, model_head=LogisticRegression(random_state=seed))
        self.separator = getattr(body.tokenizer, "sep_token", None) or "\n"
        self._fitted = False

    def text(self, example: Example) -> str:
        if example.text_b is None:
            return example.text
        joiner = "\n" if self.separator == "\n" else f" {self.separator} "
        return f"{example.text}{joiner}{example.text_b}"

    def fit(self, train: list[Example], dev: list[Example] | None, budget: Mapping[str, Any]) -> SetFitBaseline:
        """Contrastive body training then the head, with SetFit's defaults (the suite's
        ``budget`` is not applied: SetFit has an established recipe; override it through the
        method's options)."""
        if self._fitted:
            raise RuntimeError("this baseline is trained already; make a new one to train again")
        _check_not_empty(train, "setfit")
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback

        labels = _labels(train, self.classes, "training")
        dataset = Dataset.from_dict({"text": [self.text(e) for e in train], "label": labels})
        overrides = {f.name: getattr(self.options, f.name) for f in fields(self.options) if f.name != "model"}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        # Nothing is written where the run starts (checkpoints, TensorBoard logs): a scratch
        # folder for the trainer, no checkpoints, no reporting integrations.
        with (tempfile.TemporaryDirectory(prefix="setfit-") as scratch, _quiet_transformers(), _quiet_setfit(),
              _datasets_progress(self.progress)):
            args = self._setfit.TrainingArguments(
                output_dir=scratch, seed=self.seed, report_to="none", save_strategy="no",
                logging_strategy="no", logging_first_step=False, show_progress_bar=self.progress,
                **overrides,
            )
            trainer = self._setfit.Trainer(model=self.model, args=args, train_dataset=dataset)
            st_trainer = trainer.st_trainer
            st_trainer.args.dataloader_pin_memory = self.model.model_body.device.type == "cuda"
            if not self.progress:
                st_trainer.remove_callback(ProgressCallback)
                st_trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary
            trainer.train()
        self._fitted = True
        return self

    def predict_proba(self, examples: list[Example]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError("fit the baseline before predicting")
        if not examples:
            return np.zeros((0, len(self.classes)))
        with _quiet_setfit():
            probabilities = self.model.predict_proba([self.text(e) for e in examples], as_numpy=True,
                                                     show_progress_bar=self.progress)
        # The head knows only the classes it saw; put its columns where the classes are.
        out = np.zeros((len(examples), len(self.classes)))
        out[:, np.asarray(self.model.model_head.classes_, dtype=int)] = probabilities
        return out / out.sum(axis=1, keepdims=True)

    def parameter_count(self) -> tuple[int, int]:
        """(trainable, total): the whole body plus the head; equal, since SetFit trains all of it."""
        body = sum(p.numel() for p in self.model.model_body.parameters())
        head = self.model.model_head
        if hasattr(head, "coef_"):
            head_size = head.coef_.size + head.intercept_.size
        else:  # before fitting: what logistic regression will have (one row for two classes)
            rows = 1 if len(self.classes) == 2 else len(self.classes)
            body_model = self.model.model_body
            dimension = getattr(body_model, "get_embedding_dimension", body_model.get_sentence_embedding_dimension)()
            head_size = rows * (dimension + 1)
        return body + head_size, body + head_size


@contextlib.contextmanager
def _datasets_progress(show: bool) -> Iterator[None]:
    """``datasets`` shows a bar for every map over the pairs; only when asked."""
    from datasets.utils import logging as datasets_logging

    was_enabled = datasets_logging.is_progress_bar_enabled()
    if not show:
        datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_setfit() -> Iterator[None]:
    """setfit sets its own logger to INFO on import; keep its chatter off the user's screen."""
    logger = logging.getLogger("setfit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# ----------------------------------------------------------------------------- PEFT-only LoRA

@dataclass(frozen=True)
class PeftLoraOptions:
    """``model``: the model to train (default: the suite's). ``r``, ``alpha``, ``dropout``,
    ``target_modules`` go to ``LoraConfig`` (None: PEFT's default modules for the architecture).
    ``lr`` is for the LoRA matrices and the head together (deltaprompt's own LoRA rate, so the
    table compares methods, not tuning). ``epochs``, ``batch_size``, ``max_steps`` override the
    suite's budget. ``select_on_dev``: keep the epoch with the best dev accuracy."""

    model: str | None = None
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: list[str] | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int = 32
    max_steps: int | None = None
    max_length: int = 512
    select_on_dev: bool = True

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "eval_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"peft_lora: {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("peft_lora: dropout and warmup_ratio must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"peft_lora: lr must be positive, got {self.lr}")


DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 8


class PeftLoraBaseline:
    """A LoRA sequence classifier written with PEFT alone.

    Decoder models get a pad token (their EOS) and ``config.pad_token_id``, which their
    classification head needs to find each sequence's last token. Text pairs use the
    tokenizer's pair encoding (BERT: ``[CLS] a [SEP] b [SEP]``); where that encoding puts
    nothing between the two texts (GPT-2, SmolLM2 simply concatenate them) the second one
    starts with a newline, so the two stay apart."""

    def __init__(self, options: PeftLoraOptions, classes: tuple[str, ...], plm_name: str, seed: int,
                 device: torch.device, progress: bool | None) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

        self.options, self.classes, self.seed, self.device, self.progress = options, classes, seed, device, progress
        path = resolve(options.model or plm_name)
        set_seed(seed)  # the new head and the LoRA matrices start from the seed
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(classes), dtype=torch.float32,
                id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
            )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"{plm_name}: the tokenizer has neither a pad nor an EOS token to pad batches with")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        config = LoraConfig(task_type="SEQ_CLS", r=options.r, lora_alpha=options.alpha,
                            lora_dropout=options.dropout, target_modules=options.target_modules)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # GPT-2's Conv1D: PEFT fixes it
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            self.model = get_peft_model(model, config).to(device)
        self.tokenizer = tokenizer
        self.max_length = min(options.max_length, _positions(model.config) or options.max_length)
        pair_tokens = tokenizer.num_special_tokens_to_add(pair=True) - tokenizer.num_special_tokens_to_add(pair=False)
        self.pair_prefix = "" if pair_tokens > 0 else "\n"
        self.history: list[float] = []  # the training loss at each step
        self._fitted = False

    # -------------------------------------------------------------- data

    def encode(self, examples: Sequence[Example]) -> list[dict[str, list[int]]]:
        texts = [e.text for e in examples]
        if any(e.text_b is not None for e in examples):
            if not all(e.text_b is not None for e in examples):
                raise ValueError("peft_lora: either every example has a text_b or none has")
            seconds = [self.pair_prefix + e.text_b for e in examples]  # type: ignore[operator]
            encoded = self.tokenizer(texts, seconds, truncation=True, max_length=self.max_length)
        else:
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [{key: encoded[key][i] for key in encoded} for i in range(len(examples))]

    def batches(self, features: list[dict[str, list[int]]], order: Sequence[int], size: int) -> Iterator[dict]:
        """Dynamic padding: each batch is as long as its longest sequence."""
        for start in range(0, len(order), size):
            chunk = [features[i] for i in order[start:start + size]]
            batch = self.tokenizer.pad(chunk, return_tensors="pt")
            yield {k: v.to(self.device) for k, v in batch.items()}

    # -------------------------------------------------------------- training

    def fit(self, train: list[Example], dev: list[Example] | None, budget: Mapping[str, Any]) -> PeftLoraBaseline:
        """AdamW with linear warm-up and decay over ``epochs`` (or ``max_steps``) of seeded
        shuffled batches; with a dev set, the epoch with the best dev accuracy is kept."""
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        if self._fitted:
            raise RuntimeError("this baseline is trained already; make a new one to train again")
        _check_not_empty(train, "peft_lora")
        options = self.options
        epochs = options.epochs or budget.get("epochs") or DEFAULT_EPOCHS
        batch_size = options.batch_size or budget.get("batch_size") or DEFAULT_BATCH_SIZE
        max_steps = options.max_steps or budget.get("max_steps")
        labels = torch.tensor(_labels(train, self.classes, "training"))
        dev_labels = _labels(dev, self.classes, "dev") if dev else None
        features = self.encode(train)

        steps_per_epoch = math.ceil(len(train) / batch_size)
        total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=options.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(options.warmup_ratio * total), total)
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # dropout
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        step = 0
        bar = tqdm(total=total, desc="peft_lora", unit="step", disable=None if self.progress is None else not self.progress)
        self.model.train()
        while step < total:
            order = torch.randperm(len(train), generator=generator).tolist()
            for batch, index in zip(self.batches(features, order, batch_size),
                                    _chunks(order, batch_size), strict=True):
                loss = torch.nn.functional.cross_entropy(self.model(**batch).logits, labels[index].to(self.device))
                loss.backward()
                if options.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                self.history.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{self.history[-1]:.4f}")
                if step >= total:
                    break
            if dev and options.select_on_dev:
                accuracy = float(np.mean(self.predict_proba(dev).argmax(axis=1) == np.asarray(dev_labels)))
                if best is None or accuracy > best[0]:
                    best = (accuracy, self._trainable_state())
                self.model.train()
        bar.close()
        if best is not None:
            self.model.load_state_dict(best[1], strict=False)
        self.model.eval()
        self._fitted = True
        return self

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def predict_proba(self, examples: list[Example]) -> np.ndarray:
        """Softmax of the classifier's logits, (examples, classes), in the examples' order."""
        if not examples:
            return np.zeros((0, len(self.classes)))
        was_training = self.model.training
        self.model.eval()
        features = self.encode(examples)
        # Batches of similar length pad less; the rows go back to the input order.
        order = sorted(range(len(examples)), key=lambda i: len(features[i]["input_ids"]))
        out = np.zeros((len(examples), len(self.classes)))
        for batch, index in zip(self.batches(features, order, self.options.eval_batch_size),
                                _chunks(order, self.options.eval_batch_size), strict=True):
            out[index] = torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu().double().numpy()
        self.model.train(was_training)
        return out / out.sum(axis=1, keepdims=True)

    def parameter_count(self) -> tuple[int, int]:
        """(trainable, total): PEFT's count of the trainable ones (LoRA matrices and the head it
        trains); the total counts each weight the classifier uses once (PEFT's own total also
        counts the untouched original of the head it copies for training)."""
        trainable, _ = self.model.get_nb_trainable_parameters()
        total = sum(p.numel() for n, p in self.model.named_parameters() if ".original_module." not in n)
        return trainable, total


def _chunks(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def _positions(config: Any) -> int | None:
    """The longest input the model's position embeddings allow (None when unbounded)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
