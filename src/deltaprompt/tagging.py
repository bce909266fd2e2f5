"""Token classification (NER): one BIO tag per word, from a linear head on every token's state.

words --join, tokenise with offsets--> sub-words mapped to words --collate--> batch --forward-->
(B, T, tags) log-probs; a word's tag is read at its first sub-token.

Classic fine-tuning, as ``HeadModel`` is for sentences: only the trunk runs (the base model, or
T5's encoder), never the LM head. Delta methods that change the PLM (LoRA, adapters, BitFit,
prefix tuning, intrinsic, full fine-tuning) work; those that write soft tokens into a template
(prompt tuning, P-Tuning) have no template to write into and are refused.

    tagger = Tagger(plm, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], methods=["lora"])
    tagger.fit(load_task("conll2003").load("train"), metric="f1")
    tagger.predict(["Angela Merkel visited Paris"])   # [['B-PER', 'I-PER', 'O', 'B-LOC']]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from torch import nn
from tqdm.auto import tqdm

from .classifier import Classifier, _resolve_plm
from .data import Example
from .delta import MethodSpec, make_methods, template_rewriters
from .head import hidden_size, linear_head
from .model import Batch, TaskModel, seeded
from .plm import PLM, Family
from .spans import join_words, tagged_example
from .tokenization import padding_id, special_affixes, tokenize_offsets

logger = logging.getLogger(__name__)
Alignment = Literal["first", "all"]
ALIGNMENTS: tuple[Alignment, ...] = ("first", "all")
IGNORE = -100  # the label of positions without a target (loss and accuracy skip them)


@dataclass(frozen=True, slots=True)
class TokenEncoding:
    """One sentence, tokenised and wrapped, not yet padded.

    ``word_index``: per token, the word it belongs to (-1: special tokens, bare spaces).
    ``labels``: per token, the tag id it is trained on, or -100 (None without gold tags).
    ``first_tokens``: per word, the position of its first sub-token, -1 when it has none (all
    cut off by ``max_length``, or none to begin with): such words are predicted "O".
    ``words_cut``: how many words ``max_length`` cut off.
    """

    input_ids: list[int]
    word_index: list[int]
    labels: list[int] | None
    first_tokens: list[int]
    tags: tuple[str, ...] | None
    words_cut: int = 0


class TokenModel(TaskModel):
    """Tags every word with one of ``tags`` ("O" and B-/I- tags) from a dropout + linear head
    on the trunk's token states.

    ``alignment``: which sub-tokens train: "first" (a word's first sub-token carries its tag,
    the others are ignored) or "all" (every sub-token carries it; continuation pieces of a
    B-X word are I-X). Either way a word is predicted at its first sub-token. ``max_length``:
    longer sentences lose their last tokens (default: the model's limit). ``methods``: as in
    ``HeadModel``; ``seed`` fixes every random initial value.
    """

    def __init__(
        self,
        plm: PLM,
        tags: Sequence[str],
        alignment: Alignment = "first",
        max_length: int | None = None,
        dropout: float = 0.1,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(plm)
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        self.tags = check_tags(tags)
        self.alignment: Alignment = alignment
        self.tag_index = {tag: i for i, tag in enumerate(self.tags)}
        self.continuation = self._continuation_ids()
        built = make_methods(methods) if methods is not None else None
        templated = template_rewriters(built or [])
        if templated:
            raise ValueError(
                f"{templated} write soft tokens into a prompt template, and token classification has no "
                "template; use lora, adapter, prefix, bitfit, intrinsic or finetune"
            )
        self.max_length = max_length if max_length is not None else plm.max_length()
        tokenizer = plm.tokenizer
        self.prefix_ids, self.suffix_ids = special_affixes(tokenizer)
        if self.max_length is not None and self.max_length <= len(self.prefix_ids) + len(self.suffix_ids):
            raise ValueError(f"max_length={self.max_length} leaves no room for words between the special tokens")
        self.pad_id = padding_id(tokenizer)
        with seeded(seed):
            self.head = linear_head(self.model, hidden_size(self.model), len(self.tags), dropout)
            self.setup_methods(built)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.tags

    def _continuation_ids(self) -> list[int]:
        """Per tag id, the tag a non-first sub-token gets under "all": I-X for B-X, else itself."""
        out = []
        for tag in self.tags:
            if tag.startswith("B-"):
                inside = "I-" + tag[2:]
                if self.alignment == "all" and inside not in self.tag_index:
                    raise ValueError(f"alignment='all' tags the pieces after a {tag} word {inside}; add it to the tags")
                out.append(self.tag_index.get(inside, self.tag_index[tag]))
            else:
                out.append(self.tag_index[tag])
        return out

    # -- data
    def encode(self, examples: Sequence[Example | str]) -> list[TokenEncoding]:
        """Tokenise a batch of sentences (one tokenizer call) and align their words and tags;
        inputs as ``as_sentences`` takes them."""
        sentences = [sentence_of(example, f"example {n}") for n, example in enumerate(as_sentences(examples))]
        texts = [" ".join(words) for words, _ in sentences]
        tokenized = tokenize_offsets(self.plm.tokenizer, texts)
        return [self._align(words, tags, ids, offsets, f"example {n}")
                for n, ((words, tags), (ids, offsets)) in enumerate(zip(sentences, tokenized, strict=True))]

    def _align(self, words: list[str], tags: list[str] | None, ids: list[int],
               offsets: list[tuple[int, int]], where: str) -> TokenEncoding:
        tag_ids = None if tags is None else self._tag_ids(words, tags, where)
        text, spans = join_words(words)
        owner = [-1] * len(text)  # character -> word
        for w, span in enumerate(spans):
            owner[span.start : span.end] = [w] * (span.end - span.start)
        # A token belongs to the word its characters fall in (a leading space is no word's).
        word_of = [next((owner[c] for c in range(start, end) if owner[c] >= 0), -1) for start, end in offsets]
        budget = None if self.max_length is None else self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        lost = set(word_of[budget:]) if budget is not None else set()
        ids, word_of = ids[:budget], word_of[:budget]
        cut = len(lost - set(word_of) - {-1})
        first = [-1] * len(words)
        labels: list[int] = []
        for position, w in enumerate(word_of, start=len(self.prefix_ids)):
            starts = w >= 0 and first[w] < 0
            if starts:
                first[w] = position
            if tag_ids is None or w < 0 or not (starts or self.alignment == "all"):
                labels.append(IGNORE)
            else:
                labels.append(tag_ids[w] if starts else self.continuation[tag_ids[w]])
        prefix, suffix = self.prefix_ids, self.suffix_ids
        return TokenEncoding(
            input_ids=prefix + list(ids) + suffix,
            word_index=[-1] * len(prefix) + word_of + [-1] * len(suffix),
            labels=None if tag_ids is None else [IGNORE] * len(prefix) + labels + [IGNORE] * len(suffix),
            first_tokens=first,
            tags=None if tags is None else tuple(tags),
            words_cut=cut,
        )

    def _tag_ids(self, words: list[str], tags: list[str], where: str) -> list[int]:
        if len(tags) != len(words):
            raise ValueError(f"{where}: {len(words)} words but {len(tags)} tags")
        for i, tag in enumerate(tags):
            if tag not in self.tag_index:
                raise ValueError(f"{where}: word {i} ({words[i]!r}) is tagged {tag!r}, which is not one of the "
                                 f"tagger's tags {list(self.tags)}")
        return [self.tag_index[t] for t in tags]

    def collate(self, features: Sequence[TokenEncoding]) -> Batch:
        """Pad to the batch's longest row: on the left for causal LMs (with positions counted
        from the first real token, as ``PromptTokenizer.collate`` does), else on the right."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        input_ids = self._pad([f.input_ids for f in features], self.pad_id)
        mask = self._pad([[1] * len(f.input_ids) for f in features], 0)
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.family == "causal":
            batch["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        return batch

    def _pad(self, rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        left = self.family == "causal"
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            start = width - len(row) if left else 0
            out[i, start : start + len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        return out

    @staticmethod
    def length(feature: TokenEncoding) -> int:
        return len(feature.input_ids)

    # -- scoring
    def trunk(self) -> nn.Module:
        """T5's encoder, otherwise the base model under the LM head (looked up on every call, so
        it follows methods that wrap modules)."""
        if self.model.config.is_encoder_decoder:
            return self.model.get_encoder()
        return self.model.base_model

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, T, tags) log-probabilities at every position (padding included; ignore it)."""
        output = self.trunk()(**self.embed(batch))
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        linear = self.head[1]
        logits = self.head(hidden.to(device=linear.weight.device, dtype=linear.weight.dtype))
        return torch.log_softmax(logits.float(), -1)

    def _outputs(self, features: Sequence[TokenEncoding], batch_size: int,
                 progress: bool | None = None) -> Iterator[tuple[list[int], torch.Tensor, list[int]]]:
        """(feature indices, (B, T, tags) log-probs on the CPU, each row's left shift) per batch,
        in eval mode and batches sorted by length; the mode is restored afterwards."""
        order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(batches, desc="tagging", unit="batch",
                   disable=(not progress) if progress is not None else (len(batches) <= 4 or None))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for index in bar:
                    rows = [features[i] for i in index]
                    output = self(self.to_device(self.collate(rows))).float().cpu()
                    width = output.size(1)
                    shifts = [width - len(f.input_ids) if self.family == "causal" else 0 for f in rows]
                    yield index, output, shifts
        finally:
            self.train(was_training)

    def word_log_probs(self, features: Sequence[TokenEncoding], batch_size: int = 32,
                       progress: bool | None = None) -> list[torch.Tensor]:
        """Per sentence, (words, tags) log-probabilities read at each word's first sub-token; a
        word without tokens (cut by ``max_length``) is certainly "O"."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(features)
        outside = torch.full((len(self.tags),), -torch.inf)
        outside[self.tag_index["O"]] = 0.0
        for index, output, shifts in self._outputs(features, batch_size, progress):
            for row, (i, shift) in enumerate(zip(index, shifts, strict=True)):
                first = torch.tensor(features[i].first_tokens, dtype=torch.long)
                words = output[row, (first + shift).clamp(min=0)]
                out[i] = torch.where((first >= 0)[:, None], words, outside)
        return out

    # -- training hooks
    def targets(self, examples: Sequence[Example], features: Sequence[TokenEncoding], what: str) -> list[Any]:
        """Per sentence, the aligned per-token tag ids (-100 where no tag is trained)."""
        untagged = [n for n, f in enumerate(features) if f.labels is None]
        if untagged:
            raise ValueError(f"{what} example {untagged[0]} has no tags (meta 'tokens' and 'tags', as "
                             f"tagged_example makes); {len(untagged)} such example(s)")
        return [f.labels for f in features]

    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor:
        """(B, T) tag ids padded with -100 on the side ``collate`` pads."""
        return self._pad(targets, IGNORE)

    def dev_metrics(self, features: Sequence[Any], targets: Sequence[Any], batch_size: int) -> dict[str, float]:
        """Token loss and accuracy on trained positions; entity-level micro and macro F1 of
        the word tags (seqeval)."""
        nll, correct, counted = 0.0, 0, 0
        predicted: list[list[str]] = [[] for _ in features]
        for index, output, shifts in self._outputs(features, batch_size):
            labels = self.collate_targets([targets[i] for i in index])
            trained = labels != IGNORE
            picked, gold = output[trained], labels[trained]
            nll -= float(picked.gather(1, gold[:, None]).sum())
            correct += int((picked.argmax(-1) == gold).sum())
            counted += int(trained.sum())
            for row, (i, shift) in enumerate(zip(index, shifts, strict=True)):
                best = output[row].argmax(-1).tolist()
                predicted[i] = [self.tags[best[p + shift]] if p >= 0 else "O" for p in features[i].first_tokens]
        evaluation = TaggingEvaluation([list(f.tags) for f in features], predicted)
        return {"loss": nll / max(counted, 1), "accuracy": correct / max(counted, 1),
                "f1": evaluation.f1, "macro_f1": evaluation.macro_f1}


@dataclass
class TaggingEvaluation:
    """Entity-level precision, recall and F1 (seqeval, default lenient BIO reading) and word
    accuracy of predicted tag sequences."""

    gold: list[list[str]]
    predicted: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.gold) != len(self.predicted):
            raise ValueError(f"{len(self.gold)} gold sentences but {len(self.predicted)} predicted")
        for n, (gold, guess) in enumerate(zip(self.gold, self.predicted, strict=True)):
            if len(gold) != len(guess):
                raise ValueError(f"sentence {n}: {len(gold)} gold tags but {len(guess)} predicted")

    @property
    def precision(self) -> float:
        return float(precision_score(self.gold, self.predicted, zero_division=0))

    @property
    def recall(self) -> float:
        return float(recall_score(self.gold, self.predicted, zero_division=0))

    @property
    def f1(self) -> float:
        return float(f1_score(self.gold, self.predicted, zero_division=0))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over entity types (those in gold or predictions)."""
        types = self.per_type()
        return float(np.mean([t["f1"] for t in types.values()])) if types else 0.0

    @property
    def accuracy(self) -> float:
        """Share of words tagged exactly right ("O" words included)."""
        total = sum(len(g) for g in self.gold)
        right = sum(g == p for gold, guess in zip(self.gold, self.predicted, strict=True)
                    for g, p in zip(gold, guess, strict=True))
        return right / total if total else 0.0

    def per_type(self) -> dict[str, dict[str, float]]:
        """Per entity type: precision, recall, f1 and support (gold entities)."""
        if not any(t != "O" for tags in (*self.gold, *self.predicted) for t in tags):
            return {}
        table = classification_report(self.gold, self.predicted, output_dict=True, zero_division=0)
        return {
            kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
                   "f1": float(row["f1-score"]), "support": int(row["support"])}
            for kind, row in table.items() if not kind.endswith(" avg")
        }

    def summary(self) -> dict[str, float | int]:
        return {"n": len(self.gold), "f1": self.f1, "precision": self.precision, "recall": self.recall,
                "accuracy": self.accuracy}

    def report(self) -> str:
        """Sentence count, word accuracy and seqeval's per-type table as plain text."""
        lines = [f"sentences {len(self.gold)}", f"accuracy  {self.accuracy:.4f}  (words)",
                 f"f1        {self.f1:.4f}  (entities, micro)", ""]
        if self.per_type():
            lines.append(classification_report(self.gold, self.predicted, digits=4, zero_division=0))
        else:
            lines.append("no entities in gold or predictions")
        return "\n".join(lines)


class Tagger(Classifier):
    """A named-entity tagger: one BIO tag per word (see ``TokenModel``). ``predict`` takes
    tagged examples (``tagged_example``), dicts with "tokens", or strings (split on spaces);
    ``fit`` needs gold tags (pick the dev metric with ``metric="f1"``). ``methods`` as in
    ``HeadClassifier``; prompt tuning and P-Tuning are refused (no template)."""

    kind = "tagger"
    model: TokenModel

    def __init__(
        self,
        plm: PLM | str,
        tags: Sequence[str],
        *,
        alignment: Alignment = "first",
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
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
        self.model = TokenModel(plm, tags, alignment=alignment, max_length=max_length, dropout=dropout,
                                methods=methods, seed=seed)

    @property
    def tags(self) -> tuple[str, ...]:
        return self.model.tags

    def predict_log_proba(self, examples: Iterable[Any]) -> list[np.ndarray]:  # type: ignore[override]
        """Per sentence, a (words, tags) array of log-probabilities, columns in ``classes`` order."""
        return [t.numpy() for t in self._word_log_probs(as_sentences(examples))]

    def predict_proba(self, examples: Iterable[Any]) -> list[np.ndarray]:  # type: ignore[override]
        return [np.exp(a) for a in self.predict_log_proba(examples)]

    def predict(self, examples: Iterable[Any]) -> list[list[str]]:  # type: ignore[override]
        """One tag per word of each sentence."""
        return [[self.tags[i] for i in t.argmax(-1).tolist()] for t in self._word_log_probs(as_sentences(examples))]

    def evaluate(self, examples: Iterable[Any]) -> TaggingEvaluation:  # type: ignore[override]
        """Tag sentences with gold tags and compare, entity by entity."""
        sentences = as_sentences(examples)
        untagged = [n for n, e in enumerate(sentences) if e.meta.get("tags") is None]
        if untagged:
            raise ValueError(f"evaluation needs gold tags; examples {untagged[:5]} have none")
        predicted = [[self.tags[i] for i in t.argmax(-1).tolist()] for t in self._word_log_probs(sentences)]
        return TaggingEvaluation([list(e.meta["tags"]) for e in sentences], predicted)

    def _word_log_probs(self, sentences: list[Example]) -> list[torch.Tensor]:
        model = self.model
        features = model.encode(sentences)
        cut = sum(f.words_cut for f in features)
        if cut:
            logger.warning("%d words in %d sentences lie beyond max_length=%s and are tagged 'O'", cut,
                           sum(f.words_cut > 0 for f in features), model.max_length)
        return model.word_log_probs(features, self.batch_size, self.progress)

    def fit(self, train: Iterable[Any], dev: Iterable[Any] | None = None, config: Any = None, *,
            targets: torch.Tensor | None = None, **options: Any) -> Tagger:
        """Train on sentences with gold tags (see ``Classifier.fit``; no soft targets)."""
        if targets is not None:
            raise ValueError("a tagger trains on gold tags; soft targets are not supported")
        super().fit(as_sentences(train), as_sentences(dev) if dev is not None else None, config, **options)
        return self

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {**super().describe(), "tags": list(model.tags), "alignment": model.alignment,
                "max_length": model.max_length, "dropout": self.dropout, "seed": self.seed}

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> Tagger:
        return cls(plm, description["tags"], alignment=description["alignment"],
                   batch_size=description["batch_size"], max_length=description["max_length"],
                   dropout=description["dropout"], seed=description["seed"], methods=methods)


# ----------------------------------------------------------------------------- helpers

def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """A tag set: distinct strings, "O" among them, every other one "B-<type>" or "I-<type>"."""
    if isinstance(tags, str) or not isinstance(tags, Sequence):
        raise TypeError(f"tags is a list of tag names such as ['O', 'B-PER', 'I-PER'], got {type(tags).__name__}")
    out = tuple(tags)
    if not all(isinstance(t, str) for t in out):
        raise TypeError(f"tags must be strings, got {list(out)}")
    if "O" not in out:
        raise ValueError(f"the tags need 'O' (outside any entity), got {list(out)}")
    bad = [t for t in out if t != "O" and (t[:2] not in ("B-", "I-") or len(t) < 3)]
    if bad:
        raise ValueError(f"tags must be 'O', 'B-<type>' or 'I-<type>' (BIO), got {bad}")
    if len(set(out)) != len(out):
        raise ValueError(f"tags must be distinct, got {list(out)}")
    return out


def sentence_of(example: Example, where: str) -> tuple[list[str], list[str] | None]:
    """A sentence's words and gold tags (None without): ``meta["tokens"]``/``meta["tags"]``,
    or the text split on whitespace."""
    words = example.meta.get("tokens")
    words = [str(w) for w in words] if words is not None else example.text.split()
    if not words:
        raise ValueError(f"{where}: a sentence to tag needs at least one word")
    if any(not w or any(c.isspace() for c in w) for w in words):
        raise ValueError(f"{where}: words must be non-empty and contain no spaces")
    tags = example.meta.get("tags")
    return words, None if tags is None else [str(t) for t in tags]


def as_sentences(items: Iterable[Any]) -> list[Example]:
    """Tagged examples from Examples, dicts with "tokens" (and "tags"), or strings split on
    whitespace."""
    out = []
    for n, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, str):
            out.append(tagged_example(item.split(), where=f"item {n}"))
        elif isinstance(item, Mapping) and "tokens" in item:
            out.append(tagged_example(item["tokens"], item.get("tags"), where=f"item {n}"))
        else:
            raise TypeError(f"item {n}: expected a tagged Example, a dict with 'tokens' or a string, "
                            f"got {type(item).__name__}")
    return out
