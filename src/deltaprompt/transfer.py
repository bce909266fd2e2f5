"""Pre-trained soft prompts and prompt transfer (PPT, Gu et al. 2022; SPoT, Vu et al. 2022).

A soft prompt trained on one task (or on unlabelled text with a masked-LM objective) is saved
as a small safetensors file with what it was trained on, and later starts another task's soft
prompt instead of random or vocabulary vectors::

    save_soft_prompt(sst2_classifier, "prompts/sst2.safetensors", task="sst2")
    target = PromptClassifier(plm, template, words, methods=[{"method": "prompt_tuning", "num_tokens": 20}])
    init_from(target, "prompts/sst2.safetensors")     # copied bit for bit into the 20 soft slots
    target.fit(train, dev)

Which rows are "the soft prompt": the block prompt tuning or P-Tuning prepends when they do
(``num_tokens`` > 0), else the whole soft table of the template. P-Tuning's prompt encoder is
saved folded (the vectors it outputs); loading into a P-Tuning target sets the encoder's input
vectors, as P-Tuning starts from the template's vectors.

``most_similar_source`` picks a source by cosine similarity of prompts (SPoT's prompt
similarity: compare with a prompt trained briefly on the target) or of task embeddings, a
cheap stand-in for SPoT's: the mean of the PLM's mean-pooled last hidden states over a sample
of the task's texts (no template, no training).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import artifacts
from .classifier import Classifier, PromptClassifier
from .data import Example, as_examples
from .delta.p_tuning.layer import PromptEncoder
from .delta.prompt_tuning.model import common_token_ids, prepended_rows
from .files import atomic_write
from .model import SoftPrompt, TaskModel
from .plm import PLM, load_plm
from .tokenization import padding_id, special_affixes
from .verbalizer import Verbalizer, parse_label_words

logger = logging.getLogger(__name__)
FORMAT = "deltaprompt-soft-prompt"
VERSION = 1
FILE_NAME = "soft_prompt.safetensors"
PROMPT_METHODS = ("prompt_tuning", "p_tuning")
Init = Literal["random", "vocab", "text", "transfer"]
BaseMismatch = Literal["error", "warn", "ignore"]


@dataclass
class SourcePrompt:
    """A saved soft prompt: (num_tokens, hidden) vectors and what they were trained on."""

    vectors: torch.Tensor
    base_model: str | None = None
    base_fingerprint: str | None = None
    task: str | None = None
    template: str | None = None
    method: str | None = None
    note: str | None = None
    task_embedding: torch.Tensor | None = None  # (hidden,), see ``task_embedding``
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.vectors.size(0))

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.size(1))

    @property
    def name(self) -> str:
        return self.task or self.path or "soft prompt"

    def metadata(self) -> dict[str, Any]:
        return {"num_tokens": self.num_tokens, "hidden_size": self.hidden_size, "dtype": str(self.vectors.dtype),
                "base_model": self.base_model, "base_fingerprint": self.base_fingerprint, "task": self.task,
                "template": self.template, "method": self.method, "note": self.note, "extra": self.extra}


@dataclass
class SourceMatch:
    """One ranked source of ``most_similar_source``."""

    name: str
    similarity: float
    source: SourcePrompt


# ----------------------------------------------------------------------------- the soft slots

def _task_model(target: Classifier | TaskModel) -> TaskModel:
    return target.model if isinstance(target, Classifier) else target


def soft_slots(target: Classifier | TaskModel) -> tuple[nn.Parameter, range, str]:
    """The parameter holding the soft prompt, its rows, and which method owns them ("template"
    for the template's own soft tokens). P-Tuning's: the encoder's input vectors."""
    model = _task_model(target)
    soft = model.soft_prompt
    if soft is None:
        raise ValueError(
            "the model has no soft tokens to hold a soft prompt: build it with "
            "methods=[{'method': 'prompt_tuning', 'num_tokens': N}] (N = the source prompt's length)"
        )
    if isinstance(soft, SoftPrompt):
        parameter = soft.weight
    elif isinstance(soft, PromptEncoder):
        parameter = soft.embedding
    else:
        raise TypeError(f"soft tokens held by a {type(soft).__name__} cannot be saved or initialised")
    owner = next((m for m in model.methods if m.name in PROMPT_METHODS), None)
    n = owner.config.num_tokens if owner is not None else 0
    rows = prepended_rows(model, n, owner.name) if n else range(parameter.size(0))
    return parameter, rows, owner.name if owner is not None else "template"


def soft_prompt_of(target: Classifier | TaskModel, task: str | None = None, note: str | None = None) -> SourcePrompt:
    """The trained soft prompt of a classifier or task model (P-Tuning's encoder output, in
    eval mode), with its base model and template."""
    model = _task_model(target)
    _, rows, owner = soft_slots(model)
    soft = model.soft_prompt
    was_training = soft.training  # type: ignore[union-attr]
    soft.eval()  # type: ignore[union-attr]
    with torch.no_grad():
        table = soft()  # type: ignore[misc]
    soft.train(was_training)  # type: ignore[union-attr]
    template = getattr(model, "source_template", None)
    others = [m.name for m in model.methods if m.name not in PROMPT_METHODS]
    return SourcePrompt(
        vectors=table[rows.start : rows.stop].detach().cpu().clone(),
        base_model=model.plm.name, base_fingerprint=model.base_fingerprint, task=task,
        template=template.text if template is not None else None, method=owner, note=note,
        extra={"other_methods": others} if others else {},
    )


# ----------------------------------------------------------------------------- save / load

def _file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / FILE_NAME


def save_soft_prompt(
    source: Classifier | TaskModel | SourcePrompt,
    path: str | Path,
    *,
    task: str | None = None,
    note: str | None = None,
    task_examples: Iterable[Example | str] | None = None,
    plm: PLM | None = None,
) -> Path:
    """Write a soft prompt as safetensors (tensor ``soft_prompt``) with its metadata as JSON in
    the header; ``path`` is a ``.safetensors`` file or a folder (then ``soft_prompt.safetensors``
    in it). ``task_examples``: the source task's texts, whose task embedding is stored so that
    ``most_similar_source(by="task")`` can rank this prompt later (needs ``plm`` for a
    ``SourcePrompt``). Written atomically."""
    if isinstance(source, SourcePrompt):
        prompt = source
        if task is not None or note is not None:
            prompt = SourcePrompt(**{**prompt.__dict__, "task": task or prompt.task, "note": note or prompt.note})
    else:
        prompt = soft_prompt_of(source, task, note)
        plm = plm or _task_model(source).plm
    if task_examples is not None:
        if plm is None:
            raise ValueError("a task embedding needs the PLM: pass plm=... with task_examples")
        prompt.task_embedding = task_embedding(plm, task_examples)
    tensors = {"soft_prompt": prompt.vectors.detach().cpu().contiguous()}
    if prompt.task_embedding is not None:
        tensors["task_embedding"] = prompt.task_embedding.detach().float().cpu().contiguous()
    header = {"format": FORMAT, "version": str(VERSION), "deltaprompt": json.dumps(prompt.metadata())}
    target = _file(path)
    with atomic_write(target, "wb") as handle:
        handle.write(safetensors_bytes(tensors, metadata=header))
    return target


def load_soft_prompt(path: str | Path) -> SourcePrompt:
    """A soft prompt saved by ``save_soft_prompt`` (file or folder), or the soft prompt of a saved
    classifier folder (``deltaprompt.json`` + weights: the prompt-tuning / P-Tuning block, or
    the whole soft table), read without loading any model."""
    path = Path(path)
    if path.is_dir() and not (path / FILE_NAME).exists() and (path / artifacts.DESCRIPTION).exists():
        return _from_classifier_folder(path)
    file = _file(path)
    if not file.exists():
        raise FileNotFoundError(f"no soft prompt at {path}: expected a .safetensors file, a folder with "
                                f"{FILE_NAME}, or a saved classifier folder")
    with safe_open(str(file), framework="pt") as handle:
        header = handle.metadata() or {}
    if header.get("format") != FORMAT:
        raise ValueError(f"{file} is not a deltaprompt soft prompt (no {FORMAT!r} header)")
    if int(header.get("version", 0)) > VERSION:
        raise ValueError(f"{file} was written by a newer deltaprompt (version {header['version']}); upgrade to read it")
    meta = json.loads(header["deltaprompt"])
    tensors = load_file(str(file))
    return SourcePrompt(
        vectors=tensors["soft_prompt"], base_model=meta.get("base_model"), base_fingerprint=meta.get("base_fingerprint"),
        task=meta.get("task"), template=meta.get("template"), method=meta.get("method"), note=meta.get("note"),
        task_embedding=tensors.get("task_embedding"), extra=meta.get("extra") or {}, path=str(file),
    )


def _from_classifier_folder(folder: Path) -> SourcePrompt:
    description, tensors = artifacts.read(folder)
    methods = description.get("methods") or []
    if "soft_prompt.weight" not in tensors:
        names = [m.get("method") for m in methods]
        raise ValueError(f"the classifier in {folder} has no trained soft prompt (methods: {names}); "
                         "train one with prompt_tuning or p_tuning")
    table = tensors["soft_prompt.weight"]
    owner = next((m for m in methods if m.get("method") in PROMPT_METHODS), None)
    n = int(owner.get("num_tokens") or 0) if owner else 0
    base = description.get("base_model", {})
    others = [m.get("method") for m in methods if m.get("method") not in PROMPT_METHODS]
    return SourcePrompt(
        vectors=table[:n].clone() if n else table, base_model=base.get("name"),
        base_fingerprint=base.get("fingerprint"), task=folder.parent.name if folder.name == "model" else folder.name,
        template=description.get("template"), method=owner.get("method") if owner else "template",
        extra={"other_methods": others} if others else {}, path=str(folder),
    )


def _as_source(source: SourcePrompt | torch.Tensor | str | Path | Classifier | TaskModel) -> SourcePrompt:
    if isinstance(source, SourcePrompt):
        return source
    if isinstance(source, torch.Tensor):
        return SourcePrompt(vectors=source)
    if isinstance(source, Classifier | TaskModel):
        return soft_prompt_of(source)
    return load_soft_prompt(source)


# ----------------------------------------------------------------------------- initialisation

def init_from(
    target: Classifier | TaskModel,
    source: SourcePrompt | torch.Tensor | str | Path,
    *,
    base_mismatch: BaseMismatch = "error",
) -> nn.Parameter:
    """Copy a source soft prompt into the target's soft slots, bit for bit (cast only when the
    target's dtype differs), before training; returns the parameter written.

    A different prompt length or hidden size is an error naming both shapes; a source trained
    on another base model (fingerprints differ) is an error, a warning (``"warn"``) or ignored.
    """
    prompt = _as_source(source)
    model = _task_model(target)
    parameter, rows, owner = soft_slots(model)
    if prompt.vectors.ndim != 2:
        raise ValueError(f"a soft prompt is a (tokens, hidden) matrix; got shape {tuple(prompt.vectors.shape)}")
    have, want = tuple(prompt.vectors.shape), (len(rows), parameter.size(1))
    if have[1] != want[1]:
        raise ValueError(
            f"soft prompt shape mismatch: the source {prompt.name!r} is {have} (tokens, hidden size) but the "
            f"target's soft slots are {want}: hidden size {have[1]} vs {want[1]}. Soft prompts only transfer "
            f"between models with the same embedding size; use a source trained on {model.plm.name or 'this model'}"
        )
    if have[0] != want[0]:
        fix = (f"build the target with {owner} num_tokens={have[0]}" if owner in PROMPT_METHODS
               else f"give the template {have[0]} soft tokens, or use prompt_tuning with num_tokens={have[0]}")
        raise ValueError(
            f"soft prompt shape mismatch: the source {prompt.name!r} is {have} (tokens, hidden size) but the "
            f"target's soft slots are {want}: {have[0]} vs {want[0]} tokens. {fix}"
        )
    if prompt.base_fingerprint and prompt.base_fingerprint != model.base_fingerprint and base_mismatch != "ignore":
        message = (f"the source {prompt.name!r} was trained on {prompt.base_model!r} (fingerprint "
                   f"{prompt.base_fingerprint}); the target's base model has fingerprint {model.base_fingerprint}. "
                   "Its vectors live in another embedding space; pass base_mismatch='warn' to transfer anyway")
        if base_mismatch == "error":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    if isinstance(model.soft_prompt, PromptEncoder):
        logger.info("p_tuning target: the source vectors start the prompt encoder's inputs, not its outputs")
    with torch.no_grad():
        parameter[rows.start : rows.stop] = prompt.vectors.to(device=parameter.device, dtype=parameter.dtype)
    return parameter


# ----------------------------------------------------------------------------- similarity

def prompt_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two soft prompts: of the flattened vectors when their shapes match
    (token by token), else of their mean vectors."""
    if a.size(-1) != b.size(-1):
        raise ValueError(f"soft prompts of hidden sizes {a.size(-1)} and {b.size(-1)} cannot be compared")
    if a.shape == b.shape:
        x, y = a.double().flatten(), b.double().flatten()
    else:
        x, y = a.double().mean(0), b.double().mean(0)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


@torch.no_grad()
def task_embedding(
    plm: PLM, examples: Iterable[Example | str], sample: int = 64, seed: int = 0, batch_size: int = 16,
    max_length: int = 128,
) -> torch.Tensor:
    """(hidden,) a task's embedding: the mean, over up to ``sample`` of its texts (drawn with
    ``seed``), of the PLM's last hidden states mean-pooled over each text's tokens (the
    encoder's for an encoder-decoder). A cheap proxy for SPoT's task embeddings, which are
    prompts trained on the task: no template, no training, one forward pass per text."""
    texts = [" ".join(t for t in (e.text, e.text_b) if t) for e in as_examples(examples)]
    if not texts:
        raise ValueError("a task embedding needs at least one example")
    if len(texts) > sample:
        texts = random.Random(seed).sample(texts, sample)
    tokenizer, model = plm.tokenizer, plm.model
    pad = padding_id(tokenizer)
    was_training = model.training
    model.eval()
    total = None
    try:
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length)["input_ids"]
            width = max(len(ids) for ids in encoded)
            ids = torch.tensor([row + [pad] * (width - len(row)) for row in encoded], device=plm.device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in encoded], device=plm.device)
            if plm.family == "seq2seq":
                hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            weights = mask[..., None].to(hidden.dtype)
            pooled = ((hidden * weights).sum(1) / weights.sum(1)).float().sum(0)
            total = pooled if total is None else total + pooled
    finally:
        model.train(was_training)
    return (total / len(texts)).cpu()  # type: ignore[operator]


def most_similar_source(
    target: Iterable[Example | str] | SourcePrompt | torch.Tensor | Classifier | TaskModel,
    sources: Sequence[SourcePrompt | str | Path],
    plm: PLM | None = None,
    by: Literal["prompt", "task"] = "prompt",
    *,
    source_examples: Mapping[str, Sequence[Example | str]] | None = None,
    sample: int = 64,
    seed: int = 0,
) -> list[SourceMatch]:
    """Sources ranked by similarity to the target, most similar first.

    ``by="prompt"``: ``target`` is a soft prompt (a classifier, tensor or saved prompt), e.g. one
    trained briefly on the target task, as SPoT does; compared with ``prompt_similarity``.
    ``by="task"``: ``target`` is the target task's examples; compared by cosine similarity of
    ``task_embedding`` with ``plm``, each source's embedding being the one stored with it or
    computed from ``source_examples[source.name]``."""
    loaded = [_as_source(s) for s in sources]
    if not loaded:
        raise ValueError("no sources to choose from")
    matches = []
    if by == "prompt":
        mine = _as_source(target)  # type: ignore[arg-type]
        matches = [SourceMatch(s.name, prompt_similarity(mine.vectors, s.vectors), s) for s in loaded]
    elif by == "task":
        if plm is None:
            raise ValueError("by='task' needs the PLM that embeds the tasks: pass plm=...")
        mine_embedding = task_embedding(plm, target, sample, seed)  # type: ignore[arg-type]
        for s in loaded:
            embedding = s.task_embedding
            if source_examples is not None and s.name in source_examples:
                embedding = task_embedding(plm, source_examples[s.name], sample, seed)
            if embedding is None:
                raise ValueError(
                    f"source {s.name!r} has no stored task embedding: save it with save_soft_prompt(..., "
                    "task_examples=...), pass source_examples={name: examples}, or rank by='prompt'"
                )
            similarity = float(torch.nn.functional.cosine_similarity(mine_embedding.double(), embedding.double(), dim=0))
            matches.append(SourceMatch(s.name, similarity, s))
    else:
        raise ValueError(f"by must be 'prompt' or 'task', got {by!r}")
    return sorted(matches, key=lambda m: -m.similarity)


# ----------------------------------------------------------------------------- comparison runs

def default_init_text(label_words: Any) -> str:
    """Lester et al.'s class-label initialisation: the first label word of every class."""
    words = label_words.label_words if isinstance(label_words, Verbalizer) else parse_label_words(label_words)
    return " ".join(w[0] for w in words.values() if w)


def train_with_init(
    plm: PLM, train: Sequence[Example], dev: Sequence[Example] | None, test: Sequence[Example], template: str,
    label_words: Any, init: Init, num_tokens: int, seed: int, *, source: SourcePrompt | None = None,
    init_text: str | None = None, train_options: Mapping[str, Any] | None = None, base_mismatch: BaseMismatch = "error",
    batch_size: int = 16, classifier_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], PromptClassifier]:
    """One prompt-tuning run from one initialisation: build, initialise, fit, evaluate on test.
    ``classifier_options``: more ``PromptClassifier`` arguments (max_length, truncation...)."""
    spec: dict[str, Any] = {"method": "prompt_tuning", "num_tokens": num_tokens,
                            "init": "random" if init == "transfer" else init}
    if init == "text":
        spec["init_text"] = init_text or default_init_text(label_words)
    if init == "transfer" and source is None:
        raise ValueError("init='transfer' needs a source prompt")
    clf = PromptClassifier(plm, template, label_words, methods=[spec], seed=seed, batch_size=batch_size,
                           **(classifier_options or {}))
    if init == "transfer":
        init_from(clf, source, base_mismatch=base_mismatch)  # type: ignore[arg-type]
    start = time.perf_counter()
    clf.fit(train, dev, **{"seed": seed, "tensorboard": False, **(train_options or {})})
    evaluation = clf.evaluate(test)
    row = {"init": init, "seed": seed, "num_tokens": num_tokens, "accuracy": evaluation.accuracy,
           "macro_f1": evaluation.macro_f1, "n_test": len(test), "seconds": round(time.perf_counter() - start, 2),
           "steps": clf.result.steps if clf.result else None, "source": source.name if init == "transfer" else None}
    return row, clf


def compare_initialisations(
    plm: PLM | str,
    target_train: Sequence[Example],
    target_dev: Sequence[Example] | None,
    target_test: Sequence[Example],
    template: str,
    label_words: Any,
    source_prompt: SourcePrompt | str | Path | None,
    *,
    num_tokens: int | None = None,
    inits: Sequence[Init] = ("random", "text", "transfer"),
    seeds: Sequence[int] = (13,),
    init_text: str | None = None,
    train_options: Mapping[str, Any] | None = None,
    base_mismatch: BaseMismatch = "error",
    batch_size: int = 16,
    classifier_options: Mapping[str, Any] | None = None,
    precomputed: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Rows (init, seed, accuracy, macro_f1, seconds, ...) of prompt tuning on the target from
    each initialisation and seed: ``random``, ``vocab``, ``text`` (prompt tuning's own; text
    defaults to the label words) and ``transfer`` (the source's vectors). Every run is a normal
    ``PromptClassifier`` training run (``train_options``: ``fit`` options). ``num_tokens``
    defaults to the source's length. Rows in ``precomputed`` (same init and seed) are kept, not
    re-run."""
    plm = load_plm(plm) if isinstance(plm, str) else plm
    source = _as_source(source_prompt) if source_prompt is not None else None
    if num_tokens is None:
        num_tokens = source.num_tokens if source is not None else 20
    done = {(r["init"], r["seed"]): r for r in precomputed}
    rows = []
    for seed in seeds:
        for init in inits:
            if (init, seed) not in done:
                done[init, seed], _ = train_with_init(
                    plm, target_train, target_dev, target_test, template, label_words, init, num_tokens, seed,
                    source=source, init_text=init_text, train_options=train_options, base_mismatch=base_mismatch,
                    batch_size=batch_size, classifier_options=classifier_options)
            rows.append(done[init, seed])
    return rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation of accuracy and macro-F1 per initialisation."""
    out = []
    for init in dict.fromkeys(r["init"] for r in rows):
        mine = [r for r in rows if r["init"] == init]
        entry: dict[str, Any] = {"init": init, "runs": len(mine)}
        for key in ("accuracy", "macro_f1"):
            values = [float(r[key]) for r in mine]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            entry[key], entry[f"{key}_std"] = mean, std
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- MLM pre-training

def _check_masked(plm: PLM) -> None:
    if plm.family != "masked" or plm.tokenizer.mask_token is None:
        raise ValueError(
            f"prompt pre-training uses the masked-LM objective; {plm.name or 'this model'} is a {plm.family} LM"
            + ("" if plm.family != "masked" else " whose tokenizer has no mask token")
            + ". Use a masked LM (BERT, RoBERTa), or pre-train the prompt on a source task instead"
        )


def _mlm_batch(plm: PLM, texts: Sequence[str], mask_probability: float, seed: int, max_length: int) -> dict:
    from transformers import DataCollatorForLanguageModeling

    encoded = plm.tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    rows = [dict(zip(encoded.keys(), values, strict=True)) for values in zip(*encoded.values(), strict=True)]
    collator = DataCollatorForLanguageModeling(plm.tokenizer, mlm_probability=mask_probability, seed=seed)
    return collator(rows)


def _mlm_loss(plm: PLM, soft: torch.Tensor, batch: dict) -> torch.Tensor:
    """The masked-LM loss with the soft tokens right after the tokenizer's prefix ([CLS], <s>),
    where prompt tuning puts them; the soft positions predict nothing."""
    model, device = plm.model, plm.device
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    p = len(special_affixes(plm.tokenizer)[0])
    embeds = model.get_input_embeddings()(ids)
    b, n = ids.size(0), soft.size(0)
    block = soft.to(embeds.dtype)[None].expand(b, -1, -1)
    inputs = torch.cat([embeds[:, :p], block, embeds[:, p:]], 1)
    attention = torch.cat([mask[:, :p], mask.new_ones(b, n), mask[:, p:]], 1)
    targets = torch.cat([labels[:, :p], labels.new_full((b, n), -100), labels[:, p:]], 1)
    return model(inputs_embeds=inputs, attention_mask=attention, labels=targets).loss


def _text_limit(plm: PLM, num_tokens: int, max_length: int) -> int:
    limit = plm.max_length()
    return min(max_length, limit - num_tokens) if limit is not None else max_length


def prompt_mlm_loss(
    plm: PLM, texts: Iterable[Example | str], vectors: torch.Tensor, *, mask_probability: float = 0.15,
    seed: int = 0, max_length: int = 128,
) -> float:
    """The masked-LM loss of ``texts`` (all in one batch, masks drawn with ``seed``) with the
    soft prompt ``vectors`` in the input: to measure what prompt pre-training gained."""
    _check_masked(plm)
    strings = [" ".join(t for t in (e.text, e.text_b) if t) for e in as_examples(texts)]
    was_training = plm.model.training
    plm.model.eval()
    try:
        with torch.no_grad():
            batch = _mlm_batch(plm, strings, mask_probability, seed, _text_limit(plm, vectors.size(0), max_length))
            return float(_mlm_loss(plm, vectors.to(plm.device), batch))
    finally:
        plm.model.train(was_training)


def prompt_pretrain_mlm(
    plm: PLM,
    texts: Iterable[Example | str],
    num_tokens: int = 20,
    *,
    steps: int = 100,
    lr: float = 3e-2,
    batch_size: int = 16,
    mask_probability: float = 0.15,
    max_length: int = 128,
    seed: int = 0,
    init: Literal["vocab", "random"] | torch.Tensor | SourcePrompt = "vocab",
    note: str | None = None,
) -> SourcePrompt:
    """Continued pre-training with prompts: train ``num_tokens`` soft tokens, placed where
    prompt tuning puts them, on the masked-LM objective over unlabelled ``texts`` (BERT's
    80/10/10 masking), the PLM frozen; a target's prompt tuning can then start from them
    (``init_from``). Masked LMs only. The vectors start from vocabulary embeddings (``"vocab"``,
    as prompt tuning's default), noise, or given vectors (to continue a saved prompt); the losses of the first and last steps are kept in
    ``extra``. Save the result with ``save_soft_prompt``."""
    _check_masked(plm)
    strings = [" ".join(t for t in (e.text, e.text_b) if t) for e in as_examples(texts)]
    if not strings:
        raise ValueError("prompt pre-training needs unlabelled texts")
    if num_tokens < 1 or steps < 1 or batch_size < 1:
        raise ValueError("num_tokens, steps and batch_size must be positive")
    model = plm.model
    embed = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if isinstance(init, torch.Tensor | SourcePrompt):
            start = init.vectors if isinstance(init, SourcePrompt) else init
            if tuple(start.shape) != (num_tokens, embed.weight.size(1)):
                raise ValueError(f"init vectors have shape {tuple(start.shape)}; this needs "
                                 f"({num_tokens}, {embed.weight.size(1)}): set num_tokens={start.size(0)}")
        elif init == "vocab":
            pool = common_token_ids(plm.tokenizer, embed.weight.size(0))
            picks = torch.randint(len(pool), (num_tokens,), generator=generator)
            start = embed(torch.tensor([pool[int(i)] for i in picks], device=embed.weight.device))
        elif init == "random":
            std = float(embed.weight.float().std())
            start = torch.randn(num_tokens, embed.weight.size(1), generator=generator) * std
        else:
            raise ValueError(f"init must be 'vocab' or 'random', got {init!r}")
    soft = nn.Parameter(start.detach().float().to(plm.device))  # trained in float32 whatever the PLM's dtype
    optimizer = torch.optim.AdamW([soft], lr=lr, weight_decay=0.0)
    limit = _text_limit(plm, num_tokens, max_length)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    rng = random.Random(seed)
    losses: list[float] = []
    try:
        for p in flags:
            p.requires_grad_(False)
        model.eval()  # a frozen PLM: dropout would only add noise to the soft tokens' gradient
        for step in range(steps):
            picked = rng.sample(strings, batch_size) if len(strings) >= batch_size else rng.choices(strings, k=batch_size)
            batch = _mlm_batch(plm, picked, mask_probability, seed * 1_000_003 + step, limit)
            optimizer.zero_grad()
            loss = _mlm_loss(plm, soft, batch)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return SourcePrompt(
        vectors=soft.detach().to(embed.weight.dtype).cpu(), base_model=plm.name,
        base_fingerprint=artifacts.fingerprint(model), task="mlm", method="prompt_pretrain_mlm", note=note,
        extra={"steps": steps, "lr": lr, "texts": len(strings), "first_loss": losses[0], "last_loss": losses[-1]},
    )
