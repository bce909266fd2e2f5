"""PET and iPET (Schick & Schütze, 2021): few-shot classification from several prompts and
unlabelled text.

    labelled T --one prompt model per PVP--> models --ensemble, weighted, softened by T-->
    soft labels on unlabelled D --distil--> one ordinary classifier (a head or a prompt)

Several pattern-verbalizer pairs (PVPs) phrase the task differently; each is fine-tuned on the
few labelled examples, and their averaged, temperature-softened class scores label a larger
unlabelled set, on which one final classifier learns. iPET first repeats the per-PVP training
for a few generations: each model is retrained from the base weights on T plus examples of D
labelled by an ensemble of the other models of the previous generation, the training set
growing by a factor each generation.

    pet = PET(plm, [PVP("{text} It was {mask}.", "negative: terrible; positive: great"),
                    PVP("Just {mask}! {text}", "negative: bad; positive: good")])
    classifier = pet.fit(train, unlabelled)      # a HeadClassifier: save/load/evaluate as usual
    pet.weights, pet.soft_labels, pet.history    # what the method computed on the way
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling

from .classifier import Classifier, HeadClassifier, PromptClassifier
from .data import Example, as_examples
from .delta import MethodSpec
from .model import TaskModel
from .plm import PLM, Family, load_plm
from .schema import from_dict
from .template import Template
from .tokenization import Truncation
from .trainer import TrainConfig
from .verbalizer import Verbalizer

logger = logging.getLogger(__name__)
Final = Literal["head", "prompt"]
Weighting = Literal["train_accuracy", "uniform"]
FINALS: tuple[Final, ...] = ("head", "prompt")
WEIGHTINGS: tuple[Weighting, ...] = ("train_accuracy", "uniform")


@dataclass(frozen=True)
class PVP:
    """A pattern-verbalizer pair: a template with one ``{mask}`` and its label words (a
    ``Verbalizer`` or anything it accepts: a dict, a list in class order, ``"a: x; b: y"``, a
    file)."""

    template: Template | str
    label_words: Any

    def verbalizer(self, classes: Sequence[str] | None = None) -> Any:
        """A verbalizer object as given, else a ``Verbalizer`` of these label words."""
        if isinstance(self.label_words, (str, os.PathLike, Mapping, list, tuple)):
            return Verbalizer(self.label_words, classes)
        return self.label_words


def as_pvp(item: PVP | Sequence[Any] | Mapping[str, Any], where: str = "PVP") -> PVP:
    """A PVP from a PVP, a (template, label words) pair, or a mapping with ``template`` and
    ``verbalizer`` (or ``label_words``)."""
    if isinstance(item, PVP):
        return item
    if isinstance(item, Mapping):
        unknown = sorted(set(item) - {"template", "verbalizer", "label_words"})
        words = item.get("verbalizer", item.get("label_words"))
        if unknown or "template" not in item or words is None:
            raise ValueError(f"{where}: give 'template' and 'verbalizer' (label words)"
                             + (f"; unknown keys {unknown}" if unknown else ""))
        return PVP(item["template"], words)
    if isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
        return PVP(item[0], item[1])
    raise TypeError(f"{where}: expected a PVP, a (template, label words) pair or a mapping, got {item!r}")


def load_pvps(path: str | os.PathLike) -> list[PVP]:
    """PVPs from a YAML file: a list (or ``pvps:`` holding a list) of ``{template: ...,
    verbalizer: ...}``, the label words in any form ``Verbalizer`` reads."""
    from .config import read_yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such PVP file: {file}")
    raw = read_yaml(file.read_text(encoding="utf-8"), str(file))
    if isinstance(raw, Mapping) and set(raw) == {"pvps"}:
        raw = raw["pvps"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{file}: expected a list of {{template: ..., verbalizer: ...}} entries")
    return [as_pvp(entry, f"{file}: entry {i + 1}") for i, entry in enumerate(raw)]


# ----------------------------------------------------------------------------- the ensemble

def ensemble_soft_labels(
    log_probs_per_model: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """PET's soft labels: softmax(sum_i w_i s_i / sum_i w_i / T), an (N, C) distribution.

    ``log_probs_per_model``: one (N, C) tensor of class scores per model (log-probabilities or
    logits: a per-example constant does not change the result). A temperature above 1 softens
    the distribution, so the final classifier also learns how sure the ensemble was."""
    scores = torch.stack([torch.as_tensor(s) for s in log_probs_per_model]).double() \
        if not isinstance(log_probs_per_model, torch.Tensor) else log_probs_per_model.double()
    if scores.ndim != 3:
        raise ValueError(f"expected one (examples, classes) score tensor per model, got shape {tuple(scores.shape)}")
    weights = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if weights.numel() != scores.size(0):
        raise ValueError(f"{weights.numel()} weights for {scores.size(0)} models")
    if (weights < 0).any() or not weights.sum() > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights.tolist()}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    combined = (weights[:, None, None] * scores).sum(0) / weights.sum()
    return torch.softmax(combined / temperature, -1).float()


def pseudo_label_sample(
    probabilities: torch.Tensor, size: int, generator: torch.Generator | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """iPET's sample of ensemble-labelled examples: ``size`` indices, as many of each predicted
    class as possible (class-balanced), each drawn without replacement with probability
    proportional to the ensemble's confidence in its label; returns (indices, class indices).
    A class the ensemble predicts too rarely gives its share to the others (with a warning),
    so the sample keeps its size."""
    count, num_classes = probabilities.shape
    if not 0 <= size <= count:
        raise ValueError(f"cannot sample {size} of {count} examples")
    confidence, predicted = probabilities.max(1)
    pools = [torch.nonzero(predicted == c).flatten() for c in range(num_classes)]
    quota = [size // num_classes + (1 if c < size % num_classes else 0) for c in range(num_classes)]
    take = [min(q, len(p)) for q, p in zip(quota, pools, strict=True)]
    short = sum(quota) - sum(take)
    if short:
        rare = [classes[c] if classes else c for c in range(num_classes) if take[c] < quota[c]]
        warnings.warn(
            f"the ensemble labels too few examples as {rare} for a class-balanced sample of {size}; "
            "the other classes fill the gap",
            stacklevel=2,
        )
        while short:  # hand out the missing places one by one to classes with examples to spare
            for c in range(num_classes):
                if short and take[c] < len(pools[c]):
                    take[c] += 1
                    short -= 1
    indices, labels = [], []
    for c, (pool, k) in enumerate(zip(pools, take, strict=True)):
        if k:
            chosen = pool[torch.multinomial(confidence[pool].double(), k, replacement=False, generator=generator)]
            indices.append(chosen)
            labels.append(torch.full((k,), c))
    if not indices:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    indices_t, labels_t = torch.cat(indices), torch.cat(labels)
    order = indices_t.argsort()
    return indices_t[order], labels_t[order]


# ----------------------------------------------------------------------------- auxiliary MLM loss

class MaskedLMAuxiliary:
    """PET's auxiliary language-modelling loss: at every training step, ``weight`` times the
    masked-LM loss of the PLM on a batch of unlabelled texts with ``mask_probability`` of their
    tokens masked (BERT's 80/10/10 rule, from transformers' ``DataCollatorForLanguageModeling``),
    so that training on a handful of examples keeps the model close to language modelling
    (the paper: weight 1e-4, 15% masking). Pass it as ``auxiliary=`` to ``Trainer`` or
    ``Classifier.fit``.

    Masked LMs only. The loss runs the PLM with its delta modules in place (LoRA, adapters,
    BitFit, ...) but not the template's soft tokens or prefix keys/values. Batches and masks come
    from (``seed``, step), so a resumed run draws what an uninterrupted one would. Texts with a
    ``text_b`` are read as ``text text_b``. Single process only (the trainer refuses DDP)."""

    def __init__(
        self,
        texts: Iterable[Example | str],
        weight: float = 1e-4,
        mask_probability: float = 0.15,
        batch_size: int | None = None,
        max_length: int | None = 256,
        seed: int | None = None,
    ):
        self.texts = [" ".join(t for t in (e.text, e.text_b) if t) for e in as_examples(texts)]
        if not self.texts:
            raise ValueError("the auxiliary language-modelling loss needs unlabelled texts")
        if weight < 0:
            raise ValueError(f"weight cannot be negative, got {weight}")
        if not 0 < mask_probability < 1:
            raise ValueError(f"mask_probability must be in (0, 1), got {mask_probability}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.weight, self.mask_probability = weight, mask_probability
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self._tokenizer: Any = None
        self._orders: dict[int, list[int]] = {}

    @staticmethod
    def check(plm: PLM) -> None:
        """Refuse models without a masked-LM objective, saying what to do instead."""
        if plm.family != "masked":
            raise ValueError(
                f"the auxiliary language-modelling loss is a masked-LM loss; {plm.name or 'this model'} is a "
                f"{plm.family} LM. Use a masked LM (BERT, RoBERTa) or train without it (mlm_weight=None)"
            )
        if plm.tokenizer.mask_token is None:
            raise ValueError(f"{plm.name or 'this model'}'s tokenizer has no mask token, which masked-LM training needs")

    def start(self, model: TaskModel, config: TrainConfig) -> None:
        self.check(model.plm)
        self._tokenizer = model.plm.tokenizer
        self._batch_size = self.batch_size or config.batch_size
        self._seed = config.seed if self.seed is None else self.seed
        limits = [x for x in (self.max_length, model.plm.max_length()) if x is not None]
        self._max_length = min(limits) if limits else None
        self._orders.clear()

    def _order(self, cycle: int) -> list[int]:
        """The texts' order in one pass over them (a fresh permutation per pass)."""
        if cycle not in self._orders:
            self._orders = {cycle: list(range(len(self.texts)))}
            random.Random(self._seed * 100_003 + cycle).shuffle(self._orders[cycle])
        return self._orders[cycle]

    def batch(self, draw: int) -> dict[str, torch.Tensor]:
        """Masked inputs and labels (-100: not predicted) of the ``draw``-th step."""
        if self._tokenizer is None:
            raise RuntimeError("call start(model, config) first (the trainer does)")
        picked = []
        for position in range(draw * self._batch_size, (draw + 1) * self._batch_size):
            cycle, offset = divmod(position, len(self.texts))
            picked.append(self.texts[self._order(cycle)[offset]])
        encoded = self._tokenizer(picked, truncation=self._max_length is not None, max_length=self._max_length,
                                  return_special_tokens_mask=True)
        rows = [dict(zip(encoded.keys(), values, strict=True)) for values in zip(*encoded.values(), strict=True)]
        collator = DataCollatorForLanguageModeling(self._tokenizer, mlm_probability=self.mask_probability,
                                                   seed=self._seed * 1_000_003 + draw)
        batch = collator(rows)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}

    def __call__(self, model: TaskModel, draw: int) -> torch.Tensor:
        batch = self.batch(draw)
        if not (batch["labels"] != -100).any():  # nothing happened to be masked: no loss this step
            return torch.zeros((), device=model.device)
        output = model.model(**model.to_device(batch))
        return self.weight * output.loss


# ----------------------------------------------------------------------------- PET / iPET

class PET:
    """Pattern-Exploiting Training, and iPET with ``generations`` > 0.

    ``plm``: the base model (a ``PLM`` or a name); it is never changed: every model trains on a
    deep copy of it, so memory holds the base plus one copy per model alive (``keep_models``:
    keep the last generation's PVP models in ``models``, one copy each; False: one at a time).
    ``pvps``: ``PVP``s, (template, label words) pairs or mappings. ``methods``: delta methods of
    the PVP models (None: full fine-tuning, as in the paper); ``final_methods``: those of the
    final classifier (None: the same). ``final``: "head" (a ``HeadClassifier``, as in the paper)
    or "prompt" (a ``PromptClassifier`` with the first PVP). ``train_config`` trains the PVP
    models, ``final_config`` (default: the same) the final classifier; ``overrides`` are
    TrainConfig fields applied to both (e.g. ``epochs=3, lr=1e-5``); with an ``output_dir``
    each model checkpoints into its own subfolder (``generation-J/pvp-I``, ``final``).

    ``weighting``: "train_accuracy" weights each model by its PVP's accuracy on the labelled
    set before training (the paper), "uniform" weights all alike. ``temperature``: T of the soft
    labels. ``distil_labelled``: also train the final classifier on the labelled examples (as
    one-hot targets). ``mlm_weight``: add PET's auxiliary masked-LM loss on the unlabelled texts
    to the PVP models' training with this weight (paper: 1e-4; masked LMs only).

    iPET: ``generations`` rounds after the first; in round j each PVP model is retrained from
    the base weights on T plus a class-balanced sample of D labelled by a random
    ``sample_fraction`` of the other models of round j-1 (at least one), so that
    |T_j| = ``factor`` * |T_{j-1}| (capped by D, with a warning).
    """

    def __init__(
        self,
        plm: PLM | str,
        pvps: Sequence[PVP | Sequence[Any] | Mapping[str, Any]],
        *,
        classes: Sequence[str] | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        final: Final = "head",
        final_methods: Sequence[MethodSpec] | MethodSpec | None = None,
        train_config: TrainConfig | None = None,
        final_config: TrainConfig | None = None,
        temperature: float = 2.0,
        weighting: Weighting = "train_accuracy",
        generations: int = 0,
        factor: float = 5.0,
        sample_fraction: float = 0.25,
        mlm_weight: float | None = None,
        mask_probability: float = 0.15,
        distil_labelled: bool = False,
        keep_models: bool = True,
        seed: int = 0,
        family: Family | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        progress: bool | None = None,
        **overrides: Any,
    ):
        self.pvps = [as_pvp(p, f"PVP {i}") for i, p in enumerate(pvps)]
        if not self.pvps:
            raise ValueError("PET needs at least one pattern-verbalizer pair")
        if final not in FINALS:
            raise ValueError(f"final must be one of {FINALS}, got {final!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if generations < 0:
            raise ValueError(f"generations cannot be negative, got {generations}")
        if generations and len(self.pvps) < 2:
            raise ValueError("iPET labels data for each model with the other models: give at least two PVPs")
        if generations and not factor > 1:
            raise ValueError(f"factor must be above 1 (the training set grows by it each generation), got {factor}")
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
        # Parse every template and verbalizer now: a typo fails before any training.
        for i, pvp in enumerate(self.pvps):
            if isinstance(pvp.template, str):
                try:
                    Template(pvp.template)
                except ValueError as exc:
                    raise ValueError(f"PVP {i}: {exc}") from None
        self.verbalizers: list[Any] = []
        for i, pvp in enumerate(self.pvps):  # every PVP must name the classes of the first (or ``classes``)
            try:
                verbalizer = pvp.verbalizer(classes if classes is not None or i == 0 else self.classes)
            except ValueError as exc:
                raise ValueError(f"PVP {i}: {exc}") from None
            if i == 0:
                self.classes: tuple[str, ...] = tuple(classes) if classes is not None else verbalizer.classes
            if tuple(verbalizer.classes) != self.classes:
                raise ValueError(f"PVP {i} has classes {list(verbalizer.classes)}, not {list(self.classes)}")
            self.verbalizers.append(verbalizer)
        self.plm = load_plm(plm, family, device=device) if isinstance(plm, str) else plm
        if device is not None and not isinstance(plm, str):
            self.plm.model.to(device)
        if mlm_weight is not None:
            MaskedLMAuxiliary.check(self.plm)
        self.methods, self.final_methods = methods, final_methods if final_methods is not None else methods
        self.final = final
        self.train_config = _with_overrides(train_config or TrainConfig(), overrides)
        self.final_config = _with_overrides(final_config or train_config or TrainConfig(), overrides)
        self.temperature, self.weighting = temperature, weighting
        self.generations, self.factor, self.sample_fraction = generations, factor, sample_fraction
        self.mlm_weight, self.mask_probability = mlm_weight, mask_probability
        self.distil_labelled, self.keep_models, self.seed = distil_labelled, keep_models, seed
        self.batch_size, self.max_length, self.truncation, self.progress = batch_size, max_length, truncation, progress
        # Filled in by fit:
        self.models: list[PromptClassifier] = []
        self.train_accuracies: torch.Tensor | None = None  # (PVPs,) before training
        self.weights: torch.Tensor | None = None  # (PVPs,) the ensemble's weights
        self.unlabelled_log_probs: list[torch.Tensor] = []  # per generation, (PVPs, N, C)
        self.soft_labels: torch.Tensor | None = None  # (N, C), the final classifier's targets
        self.history: list[dict[str, Any]] = []
        self.classifier: Classifier | None = None

    # -- building blocks
    def _plm_copy(self) -> PLM:
        """A fresh copy of the base weights (the tokenizer is shared)."""
        return replace(self.plm, model=copy.deepcopy(self.plm.model))

    def _pvp_classifier(self, index: int) -> PromptClassifier:
        return PromptClassifier(
            self._plm_copy(), self.pvps[index].template, copy.deepcopy(self.verbalizers[index]),
            batch_size=self.batch_size, max_length=self.max_length, truncation=self.truncation,
            progress=self.progress, methods=copy.deepcopy(self.methods), seed=self.seed + index,
        )

    def _final_classifier(self) -> Classifier:
        methods = copy.deepcopy(self.final_methods)
        if self.final == "prompt":
            return PromptClassifier(
                self._plm_copy(), self.pvps[0].template, copy.deepcopy(self.verbalizers[0]),
                batch_size=self.batch_size, max_length=self.max_length, truncation=self.truncation,
                progress=self.progress, methods=methods, seed=self.seed,
            )
        return HeadClassifier(self._plm_copy(), self.classes, batch_size=self.batch_size, max_length=self.max_length,
                              truncation=self.truncation, progress=self.progress, methods=methods, seed=self.seed)

    def _config(self, base: TrainConfig, folder: str, seed_offset: int = 0) -> TrainConfig:
        output_dir = str(Path(base.output_dir) / folder) if base.output_dir else None
        return replace(base, output_dir=output_dir, seed=base.seed + seed_offset)

    def _ensemble(self, log_probs: torch.Tensor, models: Sequence[int]) -> torch.Tensor:
        """The soft labels of ``models`` (indices into the PVPs) with their weights; models that
        all scored 0 on the labelled set count alike rather than not at all."""
        assert self.weights is not None
        weights = self.weights[list(models)]
        if not weights.sum() > 0:
            weights = torch.ones(len(models))
        return ensemble_soft_labels(log_probs[list(models)], weights, self.temperature)

    # -- the method
    def fit(self, train: Iterable[Example], unlabelled: Iterable[Example | str],
            dev: Iterable[Example] | None = None) -> Classifier:
        """Run PET (or iPET) and return the final classifier (also ``self.classifier``).
        ``unlabelled``: texts or examples; any labels they carry are dropped. ``dev``: labelled
        examples for early stopping of every model (PET itself uses none)."""
        train = as_examples(train)
        pool = [replace(e, label=None) for e in as_examples(unlabelled)]
        dev_examples = as_examples(dev) if dev is not None else None
        if not train:
            raise ValueError("PET needs labelled training examples")
        if not pool:
            raise ValueError("PET needs unlabelled examples to label and distil on")
        wrong = sorted({str(e.label) for e in train if e.label not in self.classes})
        if wrong:
            raise ValueError(f"training labels {wrong} are not classes {list(self.classes)}")
        auxiliary = None
        if self.mlm_weight is not None:
            auxiliary = MaskedLMAuxiliary(pool, self.mlm_weight, self.mask_probability, seed=self.seed)
        self.models, self.unlabelled_log_probs, self.history = [], [], []
        count = len(self.pvps)
        bar = tqdm(total=count * (self.generations + 1), desc="PET models", unit="model",
                   disable=(not self.progress) if self.progress is not None else None)
        try:
            previous: torch.Tensor | None = None
            for generation in range(self.generations + 1):
                sets, entry = self._training_sets(generation, train, pool, previous)
                self.models = []  # the previous generation's models go: only their scores are needed
                _free_memory()
                scores, models, accuracies = [], [], []
                for index in range(count):
                    bar.set_postfix(generation=generation, pvp=index)
                    classifier = self._pvp_classifier(index)
                    if generation == 0:
                        accuracies.append(_accuracy(classifier, train))
                    classifier.fit(sets[index], dev_examples, self._config(
                        self.train_config, f"generation-{generation}/pvp-{index}", index), auxiliary=auxiliary)
                    scores.append(torch.from_numpy(classifier.predict_log_proba(pool)))
                    if self.keep_models:
                        models.append(classifier)
                    del classifier
                    if not self.keep_models:
                        _free_memory()  # its PLM copy goes now, before the next one is made
                    bar.update(1)
                if generation == 0:
                    self._set_weights(accuracies)
                previous = torch.stack(scores)
                self.unlabelled_log_probs.append(previous)
                self.models = models
                self.history.append(entry)
                logger.info("PET generation %d: training sets of %s examples", generation, entry["train_sizes"])
        finally:
            bar.close()
        assert previous is not None
        self.soft_labels = self._ensemble(previous, range(count))
        examples, targets = pool, self.soft_labels
        if self.distil_labelled:
            one_hot = torch.nn.functional.one_hot(torch.tensor([self.classes.index(e.label) for e in train]),
                                                  len(self.classes)).float()  # type: ignore[arg-type]
            examples, targets = [*pool, *train], torch.cat([self.soft_labels, one_hot])
        final = self._final_classifier()
        final.fit(examples, dev_examples, self._config(self.final_config, "final"), targets=targets)
        self.classifier = final
        return final

    def _set_weights(self, accuracies: list[float]) -> None:
        self.train_accuracies = torch.tensor(accuracies)
        if self.weighting == "uniform":
            self.weights = torch.ones(len(accuracies))
        elif not self.train_accuracies.sum() > 0:
            warnings.warn("every PVP has accuracy 0 on the training set before training; weighting them alike",
                          stacklevel=3)
            self.weights = torch.ones(len(accuracies))
        else:
            self.weights = self.train_accuracies.clone()

    def _training_sets(self, generation: int, train: list[Example], pool: list[Example],
                       previous: torch.Tensor | None) -> tuple[list[list[Example]], dict[str, Any]]:
        """Each PVP model's training set in ``generation``, and the history entry describing them."""
        count = len(self.pvps)
        if generation == 0:
            return [train] * count, {"generation": 0, "train_sizes": [len(train)] * count, "pseudo_labelled": 0}
        assert previous is not None
        requested = round(len(train) * self.factor ** generation)  # |T_j| = factor * |T_{j-1}|
        extra = requested - len(train)
        if extra > len(pool):
            warnings.warn(
                f"iPET generation {generation} asks for {requested} training examples ({extra} pseudo-labelled), "
                f"but the unlabelled pool has only {len(pool)}; capped at {len(train) + len(pool)}. Give more "
                "unlabelled data, fewer generations or a smaller factor",
                stacklevel=3,
            )
            extra = len(pool)
        generator = torch.Generator().manual_seed(self.seed * 10_007 + generation)
        labellers = max(1, round(self.sample_fraction * (count - 1)))
        sets, chosen_per_model, label_counts = [], [], []
        for index in range(count):
            others = [k for k in range(count) if k != index]
            chosen = sorted(others[k] for k in torch.randperm(len(others), generator=generator)[:labellers].tolist())
            probabilities = self._ensemble(previous, chosen)
            picked, labels = pseudo_label_sample(probabilities, extra, generator, self.classes)
            sets.append(train + [replace(pool[i], label=self.classes[c])
                                 for i, c in zip(picked.tolist(), labels.tolist(), strict=True)])
            chosen_per_model.append(chosen)
            label_counts.append({c: int((labels == k).sum()) for k, c in enumerate(self.classes)})
        entry = {"generation": generation, "train_sizes": [len(s) for s in sets], "requested": requested,
                 "pseudo_labelled": extra, "labelled_by": chosen_per_model, "pseudo_label_counts": label_counts}
        return sets, entry

    def summary(self) -> dict[str, Any]:
        """What the run did, JSON-ready (the CLI writes it into metrics.json)."""
        return {
            "pvps": [{"template": p.template if isinstance(p.template, str) else p.template.text,
                      "label_words": _describe_words(v)}
                     for p, v in zip(self.pvps, self.verbalizers, strict=True)],
            "classes": list(self.classes),
            "weighting": self.weighting,
            "train_accuracies_before_training": None if self.train_accuracies is None else self.train_accuracies.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
            "temperature": self.temperature,
            "generations": self.generations,
            "factor": self.factor,
            "sample_fraction": self.sample_fraction,
            "mlm_weight": self.mlm_weight,
            "final": self.final,
            "distil_labelled": self.distil_labelled,
            "history": self.history,
            "soft_label_mean": None if self.soft_labels is None else
            dict(zip(self.classes, self.soft_labels.mean(0).tolist(), strict=True)),
        }


def unlabelled_pool(examples: Sequence[Example], exclude: Iterable[Example], limit: int | None,
                    seed: int) -> list[Example]:
    """Unlabelled data from a labelled split: drop the examples in ``exclude`` (the few-shot
    training and dev examples, matched by their text), drop every label, shuffle with ``seed``
    and keep the first ``limit``."""
    if limit is not None and limit < 1:
        raise ValueError(f"the unlabelled pool needs at least one example, got a limit of {limit}")
    taken = {(e.text, e.text_b) for e in exclude}
    pool = [replace(e, label=None) for e in examples if (e.text, e.text_b) not in taken]
    random.Random(seed).shuffle(pool)
    pool = pool[:limit] if limit is not None else pool
    if not pool:
        raise ValueError("no unlabelled examples are left once the few-shot examples are excluded")
    return pool


def _describe_words(verbalizer: Any) -> Any:
    words = getattr(verbalizer, "label_words", None)
    return {c: list(w) for c, w in words.items()} if isinstance(words, Mapping) else repr(verbalizer)


def _accuracy(classifier: Classifier, examples: Sequence[Example]) -> float:
    predictions = classifier.predict(examples)
    return sum(p == e.label for p, e in zip(predictions, examples, strict=True)) / len(examples)


def _free_memory() -> None:
    """Return dropped models' memory now rather than whenever the collector runs."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _with_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    if not overrides:
        return config
    current = {f.name: getattr(config, f.name) for f in fields(TrainConfig)}
    return from_dict(TrainConfig, {**current, **overrides}, "PET training options")


__all__ = [
    "PET",
    "PVP",
    "MaskedLMAuxiliary",
    "as_pvp",
    "ensemble_soft_labels",
    "load_pvps",
    "pseudo_label_sample",
    "unlabelled_pool",
]
