"""Automatic label words: which single word per class makes a template classify best.

The method is LM-BFF's (Gao et al., 2021), with PETAL's likelihood ratio (Schick et al.,
2020) as an alternative ranking, and zero-shot dev accuracy in place of fine-tuning each
assignment:

1. read the model once at the mask for every training example, as log-probabilities over the
   whole vocabulary, kept for the tokens that are whole words (a word the mask's leading space
   turns into exactly that one token);
2. per class, rank the words by their mean log-probability over that class's examples
   (``scoring="sum"``, LM-BFF), or by how much likelier they are there than on the other
   classes' examples (``scoring="ratio"``), and keep the top ``candidates``;
3. prune: keep the ``per_class`` words that classify the training set best as that class's
   word while every other class uses its top-ranked word;
4. enumerate one distinct word per class over the pruned lists, keep the ``max_assignments``
   best by training accuracy, and pick the best by dev accuracy (ties: training accuracy,
   then the training log-probability of the gold class).

Steps 2-4 reuse the cached log-probabilities: the model runs once over the training set and
once over the dev set, not once per assignment.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..data import Example, as_examples
from ..files import atomic_write
from ..plm import PLM, Family, load_plm
from ..scoring import answer_prefix, head_logits
from ..template import Template
from ..tokenization import PromptTokenizer, Truncation
from ..verbalizer import Verbalizer

logger = logging.getLogger(__name__)
Scoring = Literal["sum", "ratio"]
SCORINGS: tuple[Scoring, ...] = ("sum", "ratio")
MAX_ENUMERATED = 200_000  # assignments scored on the training set before the dev set is read
VERBALIZER_SUFFIXES = (".yaml", ".yml", ".json", ".txt")


# ----------------------------------------------------------------------------- the model at the mask

def resolve_plm(plm: PLM | str, family: Family | None = None, device: str | torch.device | None = None) -> PLM:
    """A loaded PLM as given (moved to ``device`` if set), or one loaded by name."""
    if isinstance(plm, str):
        return load_plm(plm, family, device=device)
    if device is not None:
        plm.model.to(device)
    return plm


class MaskReader:
    """Full-vocabulary log-probabilities at a template's mask, for any family.

    A masked LM is read at its mask token, a decoder LM at the last token before the mask
    (its next-token prediction), T5 at the first decoder step after ``<extra_id_0>``. The LM
    head runs only at that position (``scoring.head_logits``); ``efficient=None`` checks on the
    first batch that this agrees with the model's own logits and falls back if not.
    """

    def __init__(
        self,
        plm: PLM,
        template: Template | str,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        efficient: bool | None = None,
    ):
        template = template if isinstance(template, Template) else Template(template)
        if template.has_soft_tokens:
            raise ValueError(
                "the template has soft tokens, which are random until trained; search with a "
                f"template of plain text and fields: {template.text!r}"
            )
        self.mask_prefix = template.mask_part.prefix  # also checks there is exactly one mask
        self.plm = plm
        self.template = template
        self.efficient = efficient
        self.prompt_tokenizer = PromptTokenizer(
            plm.tokenizer, template, plm.family,
            max_length=max_length if max_length is not None else plm.max_length(), truncation=truncation,
        )

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, Any], torch.Tensor]:
        device = self.plm.device
        inputs: dict[str, Any] = {"input_ids": batch["input_ids"].to(device),
                                  "attention_mask": batch["attention_mask"].to(device)}
        positions = batch["predict_positions"][:, :1].to(device)
        if self.plm.family == "causal":
            inputs["position_ids"] = batch["position_ids"].to(device)
        elif self.plm.family == "seq2seq":
            rows = inputs["input_ids"].size(0)
            inputs["decoder_input_ids"] = answer_prefix(self.plm.model, self.prompt_tokenizer.mask_id, rows, device)
            inputs["use_cache"] = False
            positions = torch.ones(rows, 1, dtype=torch.long, device=device)
        return inputs, positions

    def batch_log_probs(self, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """(B, R) log-probabilities of vocabulary ``rows`` at the mask of a collated batch."""
        inputs, positions = self._inputs(batch)
        model = self.plm.model
        if self.efficient is None:
            fast, _ = head_logits(model, inputs, positions, rows, normalise=True, efficient=True)
            plain, _ = head_logits(model, inputs, positions, rows, normalise=True, efficient=False)
            tolerance = 1e-3 if fast.dtype == torch.float32 else 3e-2
            self.efficient = torch.allclose(fast.float(), plain.float(), atol=tolerance, rtol=tolerance)
            if not self.efficient:
                logger.warning("the fast LM-head path disagrees with %s's own logits; using the plain path",
                               type(model).__name__)
            return (fast if self.efficient else plain)[:, 0].float()
        logits, _ = head_logits(model, inputs, positions, rows, normalise=True, efficient=self.efficient)
        return logits[:, 0].float()

    @torch.no_grad()
    def log_probs(
        self,
        examples: Sequence[Example],
        rows: Sequence[int] | torch.Tensor | None = None,
        batch_size: int = 16,
        progress: bool | None = None,
        desc: str = "reading the mask",
    ) -> torch.Tensor:
        """(N, R) log-probabilities (over the whole vocabulary) of the tokens ``rows`` (every
        row of the output layer if None) at the mask, one row per example, on the CPU. Batches
        are sorted by length, so little padding is computed; the model is read in eval mode."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        model = self.plm.model
        if rows is None:
            rows = torch.arange(model.get_output_embeddings().weight.size(0))
        rows = torch.as_tensor(rows, dtype=torch.long)
        encodings = self.prompt_tokenizer.encode(examples)
        out = torch.empty(len(encodings), len(rows))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        show = progress if progress is not None else len(batches) > 4
        was_training = model.training
        model.eval()
        try:
            for indices in tqdm(batches, desc=desc, unit="batch", disable=not show):
                batch = self.prompt_tokenizer.collate([encodings[i] for i in indices])
                out[indices] = self.batch_log_probs(batch, rows).cpu()
        finally:
            model.train(was_training)
        return out


def whole_word_tokens(
    tokenizer: PreTrainedTokenizerBase, prefix: str = " ", min_chars: int = 2
) -> dict[int, str]:
    """Vocabulary tokens that are whole words where the mask is: ``{token id: word}``.

    A token qualifies when it decodes to letters only (at least ``min_chars``; no "##" pieces,
    punctuation, digits or special tokens) and ``prefix + word`` (the mask's leading space)
    tokenises back to exactly that token, so a BPE piece without its space marker, or a word
    the tokenizer would split, is left out. Such a word binds to the same single token when
    it is used as a label word.
    """
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    decoded = tokenizer.batch_decode([[i] for i in ids])
    pairs = [(i, text.strip()) for i, text in zip(ids, decoded, strict=True)]
    pairs = [(i, word) for i, word in pairs if word.isalpha() and len(word) >= min_chars]
    if not pairs:
        return {}
    encoded = tokenizer([prefix + word for _, word in pairs], add_special_tokens=False)["input_ids"]
    return {i: word for (i, word), ids_back in zip(pairs, encoded, strict=True) if ids_back == [i]}


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class CandidateWord:
    """A word proposed for a class. ``score``: its ranking score (step 2); the training
    accuracy and log-probability are set for the words that survived pruning (step 3)."""

    word: str
    score: float
    train_accuracy: float | None = None
    train_log_prob: float | None = None


@dataclass(frozen=True)
class Assignment:
    """One word per class, with zero-shot scores: accuracy and the mean log-probability of
    the gold class (normalised over the classes), on the training and dev sets."""

    words: dict[str, str]
    train_accuracy: float
    train_log_prob: float
    dev_accuracy: float | None = None
    dev_log_prob: float | None = None


@dataclass
class LabelWordSearch:
    """What ``search_label_words`` found. ``assignments`` are ranked best first; ``verbalizer``
    is the best one, ready for a PromptClassifier; ``save`` writes it as an editable file."""

    model: str
    template: str
    classes: tuple[str, ...]
    scoring: Scoring
    vocabulary_size: int  # whole-word tokens considered
    train_size: int
    dev_size: int
    candidates: dict[str, list[CandidateWord]]
    pruned: dict[str, list[CandidateWord]]
    assignments: list[Assignment]
    seconds: float = 0.0

    @property
    def best(self) -> Assignment:
        return self.assignments[0]

    @property
    def label_words(self) -> dict[str, str]:
        return dict(self.best.words)

    @property
    def verbalizer(self) -> Verbalizer:
        return Verbalizer({c: self.best.words[c] for c in self.classes}, classes=self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready data."""
        return {
            "method": "LM-BFF automatic label words" + (" (PETAL likelihood ratio)" if self.scoring == "ratio" else ""),
            "model": self.model,
            "template": self.template,
            "classes": list(self.classes),
            "scoring": self.scoring,
            "vocabulary_size": self.vocabulary_size,
            "train_size": self.train_size,
            "dev_size": self.dev_size,
            "label_words": self.label_words,
            "candidates": {c: [vars(w) for w in words] for c, words in self.candidates.items()},
            "pruned": {c: [vars(w) for w in words] for c, words in self.pruned.items()},
            "assignments": [vars(a) for a in self.assignments],
            "seconds": round(self.seconds, 2),
        }

    def report(self, top: int = 10) -> str:
        """A readable summary: candidates per class and the best ``top`` assignments."""
        what = "mean log-prob over the class's examples" if self.scoring == "sum" else \
            "log-prob ratio, class vs. other classes"
        lines = [
            f"label-word search on {self.model or 'the model'}, template {self.template!r}",
            f"{self.train_size} train / {self.dev_size} dev examples; {self.vocabulary_size:,} whole-word "
            f"tokens; {len(self.assignments)} assignments ranked; {self.seconds:.1f} s",
            "",
            f"candidates per class ({what}):",
        ]
        for cls, words in self.candidates.items():
            shown = ", ".join(f"{w.word} ({w.score:.2f})" for w in words[:top])
            lines.append(f"  {cls}: {shown}{', ...' if len(words) > top else ''}")
        lines += ["", "after pruning (training accuracy with the other classes' top words):"]
        for cls, words in self.pruned.items():
            lines.append(f"  {cls}: " + ", ".join(f"{w.word} ({w.train_accuracy:.2f})" for w in words))
        lines += ["", "assignments, best first:"]
        widths = [max(len(c), *(len(a.words[c]) for a in self.assignments[:top])) for c in self.classes]
        header = "  rank  " + "  ".join(c.ljust(w) for c, w in zip(self.classes, widths, strict=True))
        lines.append(header + "  train acc  dev acc")
        for rank, assignment in enumerate(self.assignments[:top], 1):
            words = "  ".join(assignment.words[c].ljust(w) for c, w in zip(self.classes, widths, strict=True))
            dev = "-" if assignment.dev_accuracy is None else f"{assignment.dev_accuracy:.3f}"
            lines.append(f"  {rank:>4}  {words}  {assignment.train_accuracy:>9.3f}  {dev:>7}")
        lines += ["", "chosen: " + "; ".join(f"{c}: {self.best.words[c]}" for c in self.classes)]
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write the best verbalizer where ``Verbalizer(path)`` (and ``--verbalizer``) reads it.

        ``.yaml``/``.yml``: the label words plus the search's details and runners-up as comments
        (edit freely: add words to a class's list). ``.json``: the label words only. ``.txt``:
        one ``class: word`` line per class.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in VERBALIZER_SUFFIXES:
            raise ValueError(f"save the label words as one of {', '.join(VERBALIZER_SUFFIXES)}, not {target.name!r}")
        words = {c: [self.best.words[c]] for c in self.classes}
        if suffix == ".json":
            text = json.dumps(words, indent=2, ensure_ascii=False) + "\n"
        elif suffix == ".txt":
            text = _text_format(words)
        else:
            import yaml

            text = self._comments() + yaml.safe_dump(words, sort_keys=False, allow_unicode=True, default_flow_style=None)
        with atomic_write(target) as handle:
            handle.write(text)
        return target

    def _comments(self) -> str:
        best = self.best
        dev = "" if best.dev_accuracy is None else f"dev accuracy {best.dev_accuracy:.3f}, "
        lines = [
            "Label words found by automatic search (LM-BFF" + (", PETAL ratio" if self.scoring == "ratio" else "") + ").",
            f"model: {self.model}",
            f"template: {json.dumps(self.template, ensure_ascii=False)}",
            f"{dev}training accuracy {best.train_accuracy:.3f} ({self.train_size} train, {self.dev_size} dev examples)",
            "Add words to a class's list to use several; a class's score averages its words' probabilities.",
            "Runners-up:",
        ]
        for rank, assignment in enumerate(self.assignments[1:6], 2):
            dev = "" if assignment.dev_accuracy is None else f"dev {assignment.dev_accuracy:.3f}, "
            choice = "; ".join(f"{c}: {assignment.words[c]}" for c in self.classes)
            lines.append(f"  {rank}. {choice} ({dev}train {assignment.train_accuracy:.3f})")
        lines.append("Candidates per class:")
        for cls, words in self.candidates.items():
            lines.append(f"  {cls}: " + ", ".join(w.word for w in words[:15]))
        return "".join(f"# {line}\n" for line in lines)


def _text_format(words: dict[str, list[str]]) -> str:
    """'class: word, word' lines, refusing names the format cannot hold."""
    for cls, class_words in words.items():
        for name in (cls, *class_words):
            if any(char in name for char in ":;,\n") or name != name.strip():
                raise ValueError(f"{name!r} cannot be written to a .txt verbalizer (it holds ':', ';', ',' "
                                 "or a line break, or spaces at an end); save as .yaml instead")
    return "".join(f"{cls}: {', '.join(class_words)}\n" for cls, class_words in words.items())


# ----------------------------------------------------------------------------- the search

def search_label_words(
    plm: PLM | str,
    template: Template | str,
    train: Iterable[Example],
    dev: Iterable[Example] | None = None,
    classes: Sequence[str] | None = None,
    *,
    candidates: int = 100,
    per_class: int = 10,
    max_assignments: int = 100,
    scoring: Scoring = "sum",
    vocabulary: Iterable[str] | None = None,
    min_chars: int = 2,
    max_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    truncation: Truncation = "longest_first",
    family: Family | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> LabelWordSearch:
    """Find one label word per class for ``template`` (LM-BFF's automatic label words).

    ``train`` ranks and prunes the words, ``dev`` picks among the assignments by zero-shot
    accuracy (without ``dev`` the training accuracy decides, which overfits more easily).
    ``classes`` fixes the class order (default: the sorted training labels). ``candidates``
    words per class are ranked (``scoring``: "sum", LM-BFF's summed log-probability, or
    "ratio", PETAL's likelihood ratio against the other classes), ``per_class`` survive
    pruning, and at most ``max_assignments`` combinations are scored on dev. ``vocabulary``
    restricts the words to a list you trust; ``min_chars`` drops shorter words.
    ``max_per_class`` draws that many training examples per class with ``seed`` (the model
    reads every training example once, so this bounds the cost on a large training set);
    otherwise the search has no randomness: the same inputs give the same result.
    """
    started = time.perf_counter()
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    for name, value in (("candidates", candidates), ("per_class", per_class), ("max_assignments", max_assignments)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    plm = resolve_plm(plm, family, device)
    train = as_examples(train)
    dev = as_examples(dev) if dev is not None else []
    classes = _classes(train, classes)
    if max_per_class is not None:
        train = _sample_per_class(train, classes, max_per_class, seed)
    _check_labels(dev, classes, "dev")
    reader = MaskReader(plm, template, max_length, truncation)

    words = whole_word_tokens(plm.tokenizer, reader.mask_prefix, min_chars)
    if vocabulary is not None:
        allowed = {w.strip() for w in vocabulary}
        words = {i: w for i, w in words.items() if w in allowed}
    if len(words) < len(classes):
        raise ValueError(
            f"only {len(words)} whole-word tokens to choose from for {len(classes)} classes"
            + ("; widen the vocabulary list" if vocabulary is not None else "")
        )
    token_ids = torch.tensor(sorted(words))
    labels = torch.tensor([classes.index(e.label) for e in train])  # type: ignore[arg-type]
    train_lp = reader.log_probs(train, token_ids, batch_size, progress, "reading the mask (train)")

    ranked = _rank_words(train_lp, labels, len(classes), scoring, min(candidates, len(words)))
    word_of = [words[int(t)] for t in token_ids]
    candidate_lists = {
        cls: [CandidateWord(word_of[int(col)], float(score)) for col, score in zip(*ranked[c], strict=True)]
        for c, cls in enumerate(classes)
    }
    columns = [ranked[c][0].tolist() for c in range(len(classes))]
    pruned_columns, pruned_scores = _prune(train_lp, labels, columns, per_class)
    pruned = {
        cls: [CandidateWord(word_of[col], float(ranked[c][1][columns[c].index(col)]), acc, lp)
              for col, (acc, lp) in zip(pruned_columns[c], pruned_scores[c], strict=True)]
        for c, cls in enumerate(classes)
    }

    assignments, train_acc, train_gold = _best_assignments(train_lp, labels, pruned_columns, max_assignments)
    dev_acc = dev_gold = None
    if dev:
        used = sorted({col for row in assignments.tolist() for col in row})
        dev_lp = reader.log_probs(dev, token_ids[used], batch_size, progress, "reading the mask (dev)")
        remap = torch.full((len(token_ids),), -1, dtype=torch.long)
        remap[torch.tensor(used)] = torch.arange(len(used))
        dev_labels = torch.tensor([classes.index(e.label) for e in dev])  # type: ignore[arg-type]
        dev_acc, dev_gold = score_assignments(dev_lp, dev_labels, remap[assignments])
    records = [
        Assignment(
            {cls: word_of[int(col)] for cls, col in zip(classes, row, strict=True)},
            float(train_acc[a]), float(train_gold[a]),
            None if dev_acc is None else float(dev_acc[a]), None if dev_gold is None else float(dev_gold[a]),
        )
        for a, row in enumerate(assignments)
    ]
    # Best dev accuracy; ties go to the training scores; then the order found (stable sort).
    records.sort(key=lambda r: (-(r.dev_accuracy or 0.0), -r.train_accuracy, -r.train_log_prob))
    return LabelWordSearch(
        model=plm.name, template=reader.template.text, classes=tuple(classes), scoring=scoring,
        vocabulary_size=len(words), train_size=len(train), dev_size=len(dev),
        candidates=candidate_lists, pruned=pruned, assignments=records,
        seconds=time.perf_counter() - started,
    )


def _classes(train: list[Example], classes: Sequence[str] | None) -> list[str]:
    if not train:
        raise ValueError("the search needs labelled training examples; got none")
    unlabelled = [i for i, e in enumerate(train) if e.label is None]
    if unlabelled:
        raise ValueError(f"training examples {unlabelled[:5]} have no label")
    found = sorted({e.label for e in train})  # type: ignore[type-var]
    chosen = list(classes) if classes is not None else found
    if len(chosen) < 2:
        raise ValueError(f"a classification needs at least two classes, got {chosen}")
    _check_labels(train, chosen, "training")
    missing = [c for c in chosen if c not in found]
    if missing:
        raise ValueError(f"classes {missing} have no training example; each class needs some to rank words")
    return chosen


def _check_labels(examples: Sequence[Example], classes: Sequence[str], split: str) -> None:
    unknown = sorted({str(e.label) for e in examples if e.label not in classes})
    if unknown:
        raise ValueError(f"{split} labels {unknown} are not among the classes {list(classes)}")


def _sample_per_class(train: list[Example], classes: Sequence[str], k: int, seed: int) -> list[Example]:
    if k < 1:
        raise ValueError(f"max_per_class must be at least 1, got {k}")
    by_class: dict[str, list[Example]] = defaultdict(list)
    for example in train:
        by_class[example.label].append(example)  # type: ignore[index]
    rng = random.Random(seed)
    return [e for c in classes for e in (by_class[c] if len(by_class[c]) <= k else rng.sample(by_class[c], k))]


def _rank_words(
    log_probs: torch.Tensor, labels: torch.Tensor, num_classes: int, scoring: Scoring, top: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per class: (columns, scores) of its ``top`` words, best first (ties: lower column)."""
    out = []
    for c in range(num_classes):
        inside = labels == c
        score = log_probs[inside].mean(0)
        if scoring == "ratio":
            score = score - log_probs[~inside].mean(0)
        # A stable descending sort keeps ties in vocabulary order, whatever the platform.
        order = torch.sort(score, descending=True, stable=True).indices[:top]
        out.append((order, score[order]))
    return out


def score_assignments(
    log_probs: torch.Tensor, labels: torch.Tensor, assignments: torch.Tensor, chunk_cells: int = 4_000_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot accuracy and mean gold-class log-probability of each assignment.

    ``log_probs`` (N, R) are word log-probabilities per example, ``assignments`` (A, C) a
    column per class; a class's score is its word's log-probability, normalised over the
    classes, as a one-word-per-class verbalizer scores it. Chunked to bound memory.
    """
    count, num_classes = assignments.shape
    per_chunk = max(1, chunk_cells // max(1, log_probs.size(0) * num_classes))
    accuracy, gold = [], []
    for start in range(0, count, per_chunk):
        scores = log_probs[:, assignments[start : start + per_chunk]]  # (N, A', C)
        normalised = torch.log_softmax(scores, -1)
        index = labels[:, None, None].expand(-1, scores.size(1), 1)
        gold.append(normalised.gather(-1, index).squeeze(-1).mean(0))
        accuracy.append((scores.argmax(-1) == labels[:, None]).float().mean(0))
    return torch.cat(accuracy), torch.cat(gold)


def _prune(
    log_probs: torch.Tensor, labels: torch.Tensor, columns: list[list[int]], per_class: int
) -> tuple[list[list[int]], list[list[tuple[float, float]]]]:
    """Per class, the ``per_class`` candidates that classify the training set best as its word
    while every other class takes its best-ranked word not already used (ties: rank)."""
    kept, kept_scores = [], []
    for c, own in enumerate(columns):
        trials, trial_columns = [], []
        for column in own:
            row = _complete(columns, c, column)
            if row is not None:
                trials.append(row)
                trial_columns.append(column)
        if not trials:
            raise ValueError("too few candidate words to give every class a different word; raise candidates")
        accuracy, gold = (s.tolist() for s in score_assignments(log_probs, labels, torch.tensor(trials)))
        order = sorted(range(len(trials)), key=lambda t: (-accuracy[t], -gold[t], t))[:per_class]
        kept.append([trial_columns[t] for t in order])
        kept_scores.append([(accuracy[t], gold[t]) for t in order])
    return kept, kept_scores


def _complete(columns: list[list[int]], fixed_class: int, fixed_column: int) -> list[int] | None:
    """An assignment with ``fixed_column`` for ``fixed_class`` and, for the others in class
    order, their best-ranked word that is still free (None if some class runs out)."""
    used = {fixed_column}
    row = []
    for c, own in enumerate(columns):
        if c == fixed_class:
            row.append(fixed_column)
            continue
        free = next((col for col in own if col not in used), None)
        if free is None:
            return None
        used.add(free)
        row.append(free)
    return row


def _best_assignments(
    log_probs: torch.Tensor, labels: torch.Tensor, pruned: list[list[int]], keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every assignment of distinct words over the pruned lists, scored on the training set;
    the ``keep`` best (accuracy, then gold log-probability; ties: enumeration order)."""
    total = math.prod(len(p) for p in pruned)
    if total > MAX_ENUMERATED:
        width = max(1, int(MAX_ENUMERATED ** (1 / len(pruned))))
        logger.warning("%d word combinations; enumerating the top %d words per class (%d combinations)",
                       total, width, width ** len(pruned))
        pruned = [p[:width] for p in pruned]
    rows = [row for row in itertools.product(*pruned) if len(set(row)) == len(row)]
    if not rows:
        raise ValueError("no assignment gives every class a different word; raise per_class")
    assignments = torch.tensor(rows, dtype=torch.long)
    accuracy, gold = score_assignments(log_probs, labels, assignments)
    accuracies, golds = accuracy.tolist(), gold.tolist()
    order = sorted(range(len(rows)), key=lambda a: (-accuracies[a], -golds[a], a))[:keep]
    index = torch.tensor(order, dtype=torch.long)
    return assignments[index], accuracy[index], gold[index]
