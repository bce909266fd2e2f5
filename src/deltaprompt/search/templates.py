"""Automatic templates: generate the words between the input and the mask, keep what works.

LM-BFF (Gao et al., 2021) has T5 fill ``<X> {text} <Y> {label word}`` and turns the spans
into templates. Here:

- a **T5 generator** fills ``{text} <extra_id_0> {label word} <extra_id_1>`` for each
  training example with its gold label word (beam search); the span for ``<extra_id_0>``
  gives the template ``{text} <span> {mask}``;
- a **decoder LM generator** cannot see what follows, so it continues each example's text
  (seeded sampling), and every cut of a continuation before one of its words gives a
  template ``{text} <phrase> {mask}``: the label word takes the place of that word.

Candidates proposed by more generations come first; up to ``num_candidates`` are scored on
the training set by the mean log-probability of the gold label word at the mask (one pass
over the training set per candidate), the ``keep`` best are evaluated zero-shot on the dev
set and ranked by dev accuracy (ties: training score). Scoring uses the PLM being prompted,
which may be a masked LM even though a masked LM cannot generate.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import Example, as_examples
from ..files import atomic_write
from ..model import PromptModel, seeded
from ..plm import PLM, Family
from ..template import Template
from ..tokenization import Encoding, PromptTokenizer, Truncation
from ..verbalizer import Verbalizer
from .label_words import MaskReader, resolve_plm

TEMPLATE_SUFFIXES = (".json", ".yaml", ".yml", ".txt")
_LABEL_FIELD = "__label_word__"  # the meta field carrying the gold label word into T5's input
_BEFORE_WORD = re.compile(r"\s+(?=\S)")
_SENTINEL = re.compile(r"<extra_id_\d+>")


def template_from_phrase(context: str, phrase: str) -> str:
    """The template ``context <phrase> {mask}``, the phrase kept literally.

    A space before the phrase stays a space (the template's own convention), any other
    leading whitespace (a line break) stays in the text, and braces in generated text are
    written as a ``{"text": ...}`` block so they cannot open a template block. The mask
    follows the phrase after a space, where the label word takes the place of a word.
    """
    body = phrase.rstrip()
    text = body.lstrip(" ")
    if not text.strip():
        raise ValueError(f"the phrase {phrase!r} has no text")
    space = " " if len(text) < len(body) else ""
    if "{" in text or "}" in text:
        text = json.dumps({"text": text}, ensure_ascii=False)
    return f"{context}{space}{text} {{mask}}"


def phrase_cuts(continuation: str) -> list[str]:
    """Every beginning of ``continuation`` that ends just before one of its words (so the
    label word can take that word's place) and is usable text (see ``usable_phrase``)."""
    return [continuation[: m.start()] for m in _BEFORE_WORD.finditer(continuation)
            if usable_phrase(continuation[: m.start()])]


def usable_phrase(phrase: str) -> bool:
    """At least one letter or digit, and nothing a template should not hold: control
    characters (line breaks and tabs aside) or the replacement character of broken bytes."""
    return any(char.isalnum() for char in phrase) and all(
        (char.isprintable() and char != "\ufffd") or char in "\n\t" for char in phrase
    )


@dataclass(frozen=True)
class TemplateCandidate:
    """A generated template. ``train_score``: mean log-probability (over the whole vocabulary)
    of the gold label word at the mask on the training set (a class with several words: the
    mean of their probabilities; words of several tokens: their first token).
    ``train_accuracy``: zero-shot, from the same pass. ``dev_accuracy``: zero-shot through a
    PromptModel (None if not evaluated). ``proposals``: how many generations proposed it."""

    template: str
    train_score: float
    train_accuracy: float
    dev_accuracy: float | None = None
    proposals: int = 1


@dataclass
class TemplateSearch:
    """What ``search_templates`` found: ``ranked`` (the evaluated templates, best first) and
    ``candidates`` (every scored template, by training score)."""

    model: str
    generator: str
    context: str
    classes: tuple[str, ...]
    label_words: dict[str, list[str]]
    train_size: int
    dev_size: int
    generated: int  # distinct templates generated, before the num_candidates cap
    candidates: list[TemplateCandidate]
    ranked: list[TemplateCandidate]
    seconds: float = 0.0

    @property
    def best(self) -> TemplateCandidate:
        return self.ranked[0]

    @property
    def templates(self) -> list[str]:
        return [c.template for c in self.ranked]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "LM-BFF automatic templates",
            "model": self.model,
            "generator": self.generator,
            "context": self.context,
            "classes": list(self.classes),
            "label_words": self.label_words,
            "train_size": self.train_size,
            "dev_size": self.dev_size,
            "generated": self.generated,
            "ranked": [vars(c) for c in self.ranked],
            "candidates": [vars(c) for c in self.candidates],
            "seconds": round(self.seconds, 2),
        }

    def report(self, top: int = 10) -> str:
        """A readable table of the ranked templates."""
        lines = [
            f"template search: {self.model or 'the model'} scores, {self.generator or 'it'} generates; "
            f"context {self.context!r}",
            f"{self.train_size} train / {self.dev_size} dev examples; {self.generated} distinct templates "
            f"generated, {len(self.candidates)} scored on train, {len(self.ranked)} on dev; {self.seconds:.1f} s",
            "",
            "  rank  dev acc  train acc  train log-p  template",
        ]
        for rank, candidate in enumerate(self.ranked[:top], 1):
            dev = "-" if candidate.dev_accuracy is None else f"{candidate.dev_accuracy:.3f}"
            lines.append(f"  {rank:>4}  {dev:>7}  {candidate.train_accuracy:>9.3f}  {candidate.train_score:>11.3f}  "
                         f"{json.dumps(candidate.template, ensure_ascii=False)}")
        lines += ["", f"best: {json.dumps(self.best.template, ensure_ascii=False)}"]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """``.json`` / ``.yaml``: the ranking with scores; ``.txt``: the best template alone, as
        ``deltaprompt zero-shot --template-file`` reads it."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in TEMPLATE_SUFFIXES:
            raise ValueError(f"save the templates as one of {', '.join(TEMPLATE_SUFFIXES)}, not {target.name!r}")
        if suffix == ".txt":
            text = self.best.template + "\n"
        elif suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        with atomic_write(target) as handle:
            handle.write(text)
        return target


def search_templates(
    plm: PLM | str,
    train: Iterable[Example],
    dev: Iterable[Example] | None,
    label_words: Verbalizer | Any,
    *,
    classes: Sequence[str] | None = None,
    generator: PLM | str | None = None,
    context: str = "{text}",
    num_candidates: int = 50,
    keep: int = 10,
    per_example: int = 4,
    max_examples: int | None = 32,
    max_new_tokens: int = 10,
    seed: int = 0,
    generate_options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    truncation: Truncation = "longest_first",
    family: Family | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> TemplateSearch:
    """Generate templates for ``label_words`` and rank them (LM-BFF's automatic templates).

    ``plm`` is the model the templates are for (it scores them); ``generator`` writes them
    (default: ``plm``): a decoder LM or a T5-style encoder-decoder, not a masked LM.
    ``context`` is the template text before the generated phrase (default ``{text}``; e.g.
    ``{premise} {hypothesis}`` for pairs). ``max_examples`` training examples (drawn with
    ``seed``; None: all) each get ``per_example`` generations of up to ``max_new_tokens``
    tokens; ``generate_options`` go to ``model.generate`` (e.g. ``{"top_p": 0.9}``). The
    ``num_candidates`` most often proposed templates are scored on ``train``, the ``keep``
    best evaluated on ``dev``. The same ``seed`` gives the same ranking.
    """
    started = time.perf_counter()
    for name, value in (("num_candidates", num_candidates), ("keep", keep), ("per_example", per_example),
                        ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    scorer = resolve_plm(plm, family, device)
    writer = scorer if generator is None else resolve_plm(generator, None, device)
    if writer.family == "masked":
        raise ValueError(
            f"{writer.name or 'the generator'} is a masked LM, which cannot write template text; pass "
            "generator= a decoder LM (e.g. smollm2-135m) or a T5 model. The masked LM can still be the "
            "model the templates are scored for."
        )
    verbalizer = label_words if isinstance(label_words, Verbalizer) else Verbalizer(label_words, classes)
    classes = verbalizer.classes
    train = as_examples(train)
    dev = as_examples(dev) if dev is not None else []
    for split, examples in (("training", train), ("dev", dev)):
        unknown = sorted({str(e.label) for e in examples if e.label not in classes})
        if unknown:
            raise ValueError(f"{split} labels {unknown} are not classes of the label words {list(classes)}")
    if not train:
        raise ValueError("the search needs labelled training examples; got none")
    context_template = Template(context)
    if context_template.num_masks or context_template.has_soft_tokens:
        raise ValueError(f"the context is the text before the generated phrase, without {{mask}} or soft "
                         f"tokens: {context!r}")

    rng = random.Random(seed)
    sources = train if max_examples is None or len(train) <= max_examples else \
        [train[i] for i in sorted(rng.sample(range(len(train)), max_examples))]
    options = dict(generate_options or {})
    if writer.family == "seq2seq":
        phrases = _t5_spans(writer, sources, context, verbalizer, per_example, max_new_tokens, seed, options,
                            batch_size, progress)
    else:
        phrases = _decoder_phrases(writer, sources, context_template, per_example, max_new_tokens, seed, options,
                                   batch_size, progress)
    proposals: Counter[str] = Counter()
    for phrase, count in phrases.items():  # several phrases can give one template
        proposals[template_from_phrase(context, phrase)] += count
    if not proposals:
        raise ValueError("the generator produced no usable phrase; raise max_new_tokens or per_example, "
                         "or try another generator")
    # Most often proposed first; ties keep the order they were first generated in.
    pool = sorted(proposals, key=lambda t: -proposals[t])[:num_candidates]

    labels = torch.tensor([classes.index(e.label) for e in train])  # type: ignore[arg-type]
    scored: list[TemplateCandidate] = []
    efficient: bool | None = None
    for text in tqdm(pool, desc="scoring templates on train", unit="template", disable=_hide(progress, len(pool))):
        reader = MaskReader(scorer, text, max_length, truncation, efficient)
        score, accuracy = _train_scores(reader, train, labels, verbalizer, batch_size)
        efficient = reader.efficient
        scored.append(TemplateCandidate(text, score, accuracy, proposals=proposals[text]))
    scored.sort(key=lambda c: -c.train_score)

    ranked = []
    for candidate in tqdm(scored[:keep], desc="evaluating templates on dev", unit="template",
                          disable=_hide(progress, min(keep, len(scored))) or not dev):
        ranked.append(replace(candidate, dev_accuracy=_dev_accuracy(
            scorer, candidate.template, verbalizer, dev, max_length, truncation, batch_size)) if dev else candidate)
    ranked.sort(key=lambda c: (-(c.dev_accuracy or 0.0), -c.train_score))
    return TemplateSearch(
        model=scorer.name, generator=writer.name, context=context, classes=tuple(classes),
        label_words={c: list(w) for c, w in verbalizer.label_words.items()},
        train_size=len(train), dev_size=len(dev), generated=len(proposals), candidates=scored, ranked=ranked,
        seconds=time.perf_counter() - started,
    )


def _hide(progress: bool | None, count: int) -> bool:
    return not progress if progress is not None else count <= 4


def _train_scores(
    reader: MaskReader, train: list[Example], labels: torch.Tensor, verbalizer: Verbalizer, batch_size: int
) -> tuple[float, float]:
    """(mean gold label-word log-probability, zero-shot accuracy) from one pass over train."""
    bound = verbalizer.bind(reader.plm.tokenizer, reader.mask_prefix, reader.plm.family)
    rows, where = torch.unique(torch.tensor([ids[0] for ids in bound.token_ids]), return_inverse=True)
    word_lp = reader.log_probs(train, rows, batch_size, progress=False)[:, where]  # (N, W)
    gold_words = bound.word_class[None, :] == labels[:, None]
    gold = torch.logsumexp(word_lp.masked_fill(~gold_words, -torch.inf), -1) - gold_words.sum(-1).log()
    accuracy = (verbalizer.aggregate(word_lp, bound).argmax(-1) == labels).float().mean()
    return float(gold.mean()), float(accuracy)


def _dev_accuracy(
    plm: PLM, template: str, verbalizer: Verbalizer, dev: list[Example],
    max_length: int | None, truncation: Truncation, batch_size: int,
) -> float:
    """Zero-shot accuracy exactly as a PromptClassifier with this template would score it."""
    was_training = plm.model.training
    # A new module starts in training mode, to which log_proba would return the shared PLM.
    model = PromptModel(plm, template, verbalizer, max_length=max_length, truncation=truncation).eval()
    try:
        predicted = model.log_proba(model.encode(dev), batch_size, progress=False).argmax(-1)
    finally:
        plm.model.train(was_training)
    gold = torch.tensor([model.classes.index(e.label) for e in dev])  # type: ignore[arg-type]
    return float((predicted == gold).float().mean())


def _decoder_phrases(
    writer: PLM, examples: list[Example], context: Template, per_example: int, max_new_tokens: int, seed: int,
    options: dict[str, Any], batch_size: int, progress: bool | None,
) -> dict[str, int]:
    """Phrases cut from sampled continuations of each example's context, with how many
    continuations proposed each (in the order first seen)."""
    tokenizer = writer.tokenizer
    limit = writer.max_length()
    prompt_tokenizer = PromptTokenizer(tokenizer, context, "causal",
                                       max_length=None if limit is None else limit - max_new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = {"do_sample": True, "pad_token_id": pad, **options,
                "num_return_sequences": per_example, "max_new_tokens": max_new_tokens}
    continuations = []
    for batch in _generate(writer, prompt_tokenizer, examples, settings, seed, batch_size, progress):
        width = batch["input"].size(1)
        continuations += tokenizer.batch_decode(batch["output"][:, width:], skip_special_tokens=True)
    counts: Counter[str] = Counter()
    for continuation in continuations:
        counts.update(dict.fromkeys(phrase_cuts(continuation), 1))
    return dict(counts)


def _t5_spans(
    writer: PLM, examples: list[Example], context: str, verbalizer: Verbalizer, per_example: int,
    max_new_tokens: int, seed: int, options: dict[str, Any], batch_size: int, progress: bool | None,
) -> dict[str, int]:
    """Spans T5 writes for ``<extra_id_0>`` in ``context <extra_id_0> {label word} <extra_id_1>``."""
    tokenizer = writer.tokenizer
    filled = Template(context + ' {mask} {"meta": "' + _LABEL_FIELD + '", "shortenable": False} '
                      '{"special": "<extra_id_1>"}')
    prompt_tokenizer = PromptTokenizer(tokenizer, filled, "seq2seq", max_length=writer.max_length())
    start = writer.model.config.decoder_start_token_id
    sentinel = prompt_tokenizer.mask_id
    stops = {i for token, i in tokenizer.get_vocab().items() if _SENTINEL.fullmatch(token)}
    stops |= {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    with_words = [
        replace(e, meta={**e.meta, _LABEL_FIELD: verbalizer.label_words[e.label][0]})  # type: ignore[index]
        for e in examples
    ]
    settings = {"num_beams": per_example, **options, "num_return_sequences": per_example,
                "max_new_tokens": max_new_tokens}
    counts: Counter[str] = Counter()
    for batch in _generate(writer, prompt_tokenizer, with_words, settings, seed, batch_size, progress,
                           decoder_prefix=[start, sentinel]):
        for row in batch["output"].tolist():
            span = []
            for token in row[2:]:  # after <start> <extra_id_0>
                if token in stops:
                    break
                span.append(token)
            text = tokenizer.decode(span, skip_special_tokens=True).strip()
            if usable_phrase(text):
                counts[" " + text] += 1
    return dict(counts)


@torch.no_grad()
def _generate(
    writer: PLM, prompt_tokenizer: PromptTokenizer, examples: list[Example], settings: dict[str, Any], seed: int,
    batch_size: int, progress: bool | None, decoder_prefix: list[int] | None = None,
) -> Iterable[dict[str, torch.Tensor]]:
    """``model.generate`` over the examples in batches, under one seeded random state."""
    encodings: list[Encoding] = prompt_tokenizer.encode(examples)
    batches = [encodings[i : i + batch_size] for i in range(0, len(encodings), batch_size)]
    model, device = writer.model, writer.device
    was_training = model.training
    model.eval()
    try:
        with seeded(seed):
            for chunk in tqdm(batches, desc="generating templates", unit="batch", disable=_hide(progress, len(batches))):
                batch = prompt_tokenizer.collate(chunk)
                inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
                if decoder_prefix is not None:
                    inputs["decoder_input_ids"] = torch.tensor([decoder_prefix], device=device).expand(len(chunk), -1)
                output = model.generate(**inputs, **settings)
                yield {"input": inputs["input_ids"], "output": output.cpu()}
    finally:
        model.train(was_training)
