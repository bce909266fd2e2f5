"""Classifiers with scikit-learn manners: ``fit``, ``predict``, ``evaluate``, ``save``, ``load``.

    clf = PromptClassifier("smollm2-135m", "Review: {text}\\nSentiment: {mask}",
                           {"negative": "negative", "positive": "positive"}, methods=["lora"])
    clf.predict(["a gripping, funny film"])        # zero-shot already: ['positive']
    clf.fit(train, dev, epochs=20)                # few-shot training, LoRA only
    clf.evaluate(test).report()                   # accuracy, macro-F1, confusion matrix
    clf.save("runs/sst2-lora")                    # a few MB: the LoRA weights + a description
    load("runs/sst2-lora").predict([...])         # refuses if the base model's weights differ

``PromptClassifier`` reads a template's mask through a verbalizer; ``HeadClassifier`` is classic
fine-tuning (pooled hidden state + a linear head), for comparison.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import artifacts
from .data import Example, as_examples
from .delta import MethodSpec, make_method, make_methods
from .head import HeadModel, Pooling
from .metrics import Evaluation
from .model import PromptModel, TaskModel
from .plm import PLM, Family, load_plm
from .schema import from_dict
from .structure import ParameterCount, count_parameters, structure
from .template import POST_PROCESSORS, Template
from .tokenization import Truncation
from .trainer import AuxiliaryLoss, TrainConfig, Trainer, TrainResult
from .verbalizer import (
    Aggregation,
    MultiToken,
    Verbalizer,
    make_verbalizer,
    verbalizer_config,
    verbalizer_from_config,
)

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. (2021)
logger = logging.getLogger(__name__)
KINDS: dict[str, type[Classifier]] = {}  # "kind" in a saved description -> the class that loads it


class Classifier:
    """What every classifier shares: prediction, evaluation, training and saving around a
    ``TaskModel``. Subclasses build the model and describe themselves for ``save``."""

    kind: ClassVar[str]
    model: TaskModel

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # every concrete classifier can be loaded by its kind
            KINDS[cls.kind] = cls

    def __init__(self, batch_size: int, progress: bool | None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress
        self.calibration: torch.Tensor | None = None  # log p(class | content-free input)
        self.result: TrainResult | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    # -- prediction
    def predict_log_proba(self, examples: Iterable[Example | str]) -> np.ndarray:
        return self._log_proba(as_examples(examples)).numpy()

    def predict_proba(self, examples: Iterable[Example | str]) -> np.ndarray:
        """(N, classes) probabilities, columns in the order of ``classes``."""
        return np.exp(self.predict_log_proba(examples))

    def predict(self, examples: Iterable[Example | str]) -> list[str]:
        return [self.classes[i] for i in self.predict_log_proba(examples).argmax(1)]

    def evaluate(self, examples: Iterable[Example]) -> Evaluation:
        """Predict labelled examples and measure accuracy, macro-F1 and the confusion matrix."""
        examples = as_examples(examples)
        unlabelled = [i for i, e in enumerate(examples) if e.label is None]
        if unlabelled:
            raise ValueError(f"evaluation needs labels; examples {unlabelled[:5]} have none")
        probabilities = np.exp(self._log_proba(examples).numpy())
        predictions = [self.classes[i] for i in probabilities.argmax(1)]
        return Evaluation(self.classes, [e.label for e in examples], predictions, probabilities)  # type: ignore[misc]

    def _log_proba(self, examples: list[Example], show: bool | None = None) -> torch.Tensor:
        model = self.model
        with torch.inference_mode():
            out = model.log_proba(model.encode(examples), self.batch_size, self.progress if show is None else show)
        if self.calibration is not None:
            out = torch.log_softmax(out - self.calibration, -1)
        return out

    # -- inspection
    def parameter_count(self) -> ParameterCount:
        """Trainable and total parameters (each tensor once), per role."""
        return count_parameters(self.model)

    def structure(self, max_depth: int | None = 4) -> str:
        """The module tree with which parameters train (``deltaprompt info`` prints this)."""
        return structure(self.model, max_depth)

    # -- training
    def fit(
        self,
        train: Iterable[Example],
        dev: Iterable[Example] | None = None,
        config: TrainConfig | None = None,
        *,
        targets: torch.Tensor | None = None,
        auxiliary: AuxiliaryLoss | None = None,
        **overrides: Any,
    ) -> Classifier:
        """Train on labelled examples (``dev``: for early stopping and picking the best
        checkpoint). ``overrides``: TrainConfig fields, e.g. ``epochs=20, lr=1e-4``. A model
        built without ``methods`` is fully fine-tuned (prompt-oriented fine-tuning).
        ``targets``: soft labels, an (examples, classes) tensor of probabilities (distillation;
        labels may then be None); ``auxiliary``: an extra loss each step (see ``Trainer``)."""
        base = config or TrainConfig()
        config = from_dict(TrainConfig, {**{f.name: getattr(base, f.name) for f in fields(TrainConfig)}, **overrides},
                           "fit options") if overrides else base
        if not self.model.methods_applied:
            logger.info("no delta methods given: training all weights (finetune)")
            self.model.setup_methods(make_methods(["finetune"]))
        self.calibration = None  # measured on the untrained model; no longer valid
        self.result = Trainer(self.model, config, auxiliary=auxiliary).fit(
            as_examples(train), as_examples(dev) if dev is not None else None, targets=targets)
        return self

    # -- saving
    def describe(self) -> dict[str, Any]:
        """Everything ``load`` needs besides the weights (JSON-ready)."""
        model = self.model
        plm = model.plm
        trained = None
        if self.result is not None:
            r = self.result
            trained = {"steps": r.steps, "epochs": r.epochs, "best_metric": r.best_metric,
                       "best_step": r.best_step, "train_loss": r.train_loss, "seconds": round(r.seconds, 2)}
        return {
            "kind": self.kind,
            "base_model": {"name": plm.name, "family": plm.family, "fingerprint": model.base_fingerprint,
                           "head_pretrained": plm.head_pretrained},
            "methods": [m.describe() for m in model.methods] if model.methods_applied else None,
            "folded": False,
            "batch_size": self.batch_size,
            "calibration": None if self.calibration is None else self.calibration.tolist(),
            "trained": trained,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the trained weights and a description (see ``deltaprompt.artifacts``); methods
        PEFT has are also written as PEFT adapters under ``peft/<method>``. Training-time
        machinery is folded first (P-Tuning's encoder, a prefix MLP become the vectors they
        compute), so the saved classifier is the inference one."""
        model = self.model
        folded = model.fold()
        description = self.describe()
        description["folded"] = folded or description["folded"]

        def peft_exports(folder: Path) -> None:
            for method in model.methods:
                if method.peft_format:
                    method.export(model, folder / "peft" / method.name)

        return artifacts.write(directory, description, dict(model.trained_state()), peft_exports)

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> Classifier:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path, plm: PLM | None = None, device: str | torch.device | None = None) -> Classifier:
        """Rebuild a saved classifier. ``plm``: the base model, already loaded (default: load it
        by the saved name); refused when its weights are not the ones trained on."""
        description, tensors = artifacts.read(directory)
        kind = description.get("kind")
        if kind not in KINDS:
            raise artifacts.ArtifactError(f"{directory}: unknown classifier kind {kind!r}")
        base = description["base_model"]
        if plm is None:
            plm = load_plm(base["name"], base["family"], device=device)
        elif device is not None:
            plm.model.to(device)
        artifacts.check_base(description, plm.model)
        saved_methods = description["methods"]
        methods = None if saved_methods is None else [make_method(dict(m), f"{directory} methods") for m in saved_methods]
        with warnings.catch_warnings():  # random soft tokens are about to be overwritten
            warnings.filterwarnings("ignore", message="the template has randomly initialised soft tokens")
            classifier = KINDS[kind]._rebuild(description, plm, methods)
        model = classifier.model
        if description.get("folded"):
            model.fold()
        _load_trainable_state(model, tensors)
        if description.get("calibration") is not None:
            classifier.calibration = torch.tensor(description["calibration"])
        model.eval()
        return classifier


def _load_trainable_state(model: TaskModel, tensors: dict[str, torch.Tensor]) -> None:
    state = model.trained_state()
    if set(state) != set(tensors):
        missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
        raise artifacts.ArtifactError(
            f"saved weights do not fit the rebuilt model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "was it saved by another version of deltaprompt?"
        )
    with torch.no_grad():
        for name, parameter in state.items():
            parameter.copy_(tensors[name].to(parameter.device, parameter.dtype))


def load(directory: str | Path, plm: PLM | None = None, device: str | torch.device | None = None) -> Classifier:
    """Load a classifier saved with ``save``, whichever kind it is."""
    return Classifier.load(directory, plm=plm, device=device)


class PromptClassifier(Classifier):
    """Classification through a prompt: zero-shot as built, few-shot after ``fit``.

    ``plm``: a loaded ``PLM`` or a model name/path/alias. ``label_words``: a verbalizer object
    (``Verbalizer``, ``SoftVerbalizer``, ``KnowledgeableVerbalizer``, ``PrototypeVerbalizer``) or
    label words in any form ``Verbalizer`` accepts (None for a prototype verbalizer given
    ``classes``). ``verbalizer``: which kind to build over those words, by name ("manual",
    "soft", "knowledgeable", "prototype") or as a mapping with its options
    (``{"type": "prototype", "tau": 0.05}``), as ``methods`` takes delta methods (see
    docs/verbalizers.md). ``methods``: delta methods to train with (names, dicts or configs, see
    ``deltaprompt.delta``); None: zero-shot now, full fine-tuning if ``fit`` is called.
    ``calibrate``: True for contextual calibration with the usual content-free inputs, or your
    own list of them. ``seed`` fixes every random initial value. Long inputs are processed in
    batches sorted by length (little padding) with a progress bar.
    """

    kind = "prompt"
    model: PromptModel

    def __init__(
        self,
        plm: PLM | str,
        template: Template | str,
        label_words: Verbalizer | Any,
        *,
        classes: Sequence[str] | None = None,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
        verbalizer: str | Mapping[str, Any] | None = None,
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        calibrate: bool | Sequence[str] = False,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        if isinstance(label_words, Verbalizer):
            if verbalizer is not None:
                raise ValueError("give the verbalizer once: as an object in label_words or by verbalizer=..., not both")
            built = label_words
        else:
            built = make_verbalizer(verbalizer, label_words, classes, aggregation, multi_token)
        self.seed = seed
        self.model = PromptModel(plm, template, built, max_length=max_length, truncation=truncation,
                                 methods=methods, seed=seed)
        if calibrate:
            self.calibrate(CONTENT_FREE if calibrate is True else calibrate)

    @property
    def template(self) -> Template:
        return self.model.template

    def calibrate(self, content_free: Sequence[str] = CONTENT_FREE) -> PromptClassifier:
        """Contextual calibration: divide out the class prior the prompt itself induces,
        measured on inputs with no content (every template field set to e.g. "N/A")."""
        if not content_free:
            raise ValueError("calibration needs at least one content-free input")
        names = [f for f in self.template.fields if f not in ("text", "text_b")]
        inputs = [Example(t, t, meta=dict.fromkeys(names, t)) for t in content_free]
        self.calibration = None
        log_probs = self._log_proba(inputs, show=False)
        self.calibration = torch.logsumexp(log_probs, 0) - np.log(len(inputs))  # log of mean prob
        return self

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().describe(),
            "template": model.source_template.text,
            "post_processors": sorted({name for part in model.source_template.parts
                                       for name in part.post_processing if name not in POST_PROCESSORS}),
            "verbalizer": verbalizer_config(model.verbalizer),
            "max_length": model.prompt_tokenizer.max_length,
            "truncation": model.prompt_tokenizer.truncation,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> PromptClassifier:
        verbalizer = verbalizer_from_config(description["verbalizer"])
        missing = [p for p in description.get("post_processors", []) if p not in POST_PROCESSORS]
        if missing:
            raise artifacts.ArtifactError(
                f"the template uses post-processors {missing}; register them (register_post_processor) before loading"
            )
        classifier = cls(plm, description["template"], verbalizer, batch_size=description["batch_size"],
                         max_length=description["max_length"], truncation=description["truncation"],
                         seed=description["seed"], methods=methods)
        return classifier


def _resolve_plm(plm: PLM | str, family: Family | None, device: str | torch.device | None) -> PLM:
    if isinstance(plm, str):
        return load_plm(plm, family, device=device)
    if device is not None:
        plm.model.to(device)
    return plm


class HeadClassifier(Classifier):
    """Classic fine-tuning for comparison: the PLM's pooled hidden state (``pooling``: "cls",
    "mean" or "last"; default by family) and a linear head, no template mask, no verbalizer.
    ``methods`` as in ``PromptClassifier`` (e.g. ["lora"] trains LoRA and the head); None:
    untrained head now, every weight trained if ``fit`` is called."""

    kind = "head"
    model: HeadModel

    def __init__(
        self,
        plm: PLM | str,
        classes: Sequence[str],
        *,
        template: Template | str | None = None,
        pooling: Pooling | None = None,
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        dropout: float = 0.1,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        self.seed = seed
        self.dropout = dropout
        self.source_template = template.text if isinstance(template, Template) else template
        self.model = HeadModel(plm, list(classes), template=template, pooling=pooling, max_length=max_length,
                               truncation=truncation, dropout=dropout, methods=methods, seed=seed)

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().describe(),
            "classes": list(model.classes),
            "template": self.source_template,
            "pooling": model.pooling,
            "dropout": self.dropout,
            "max_length": model.prompt_tokenizer.max_length,
            "truncation": model.prompt_tokenizer.truncation,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> HeadClassifier:
        return cls(plm, description["classes"], template=description["template"], pooling=description["pooling"],
                   batch_size=description["batch_size"], max_length=description["max_length"],
                   truncation=description["truncation"], dropout=description["dropout"], seed=description["seed"],
                   methods=methods)
