"""Verbalizers: which words stand for which class, and how word scores become class scores.

A class may have several label words ("positive: great, good, fine"); a word may be several
tokens. Word scores are log-probabilities; a class's score aggregates its words'
probabilities (mean, max, or their sum via logsumexp), and classes are then normalised
against each other.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

Aggregation = Literal["mean", "max", "logsumexp"]
AGGREGATIONS: tuple[Aggregation, ...] = ("mean", "max", "logsumexp")
MultiToken = Literal["first", "mean", "max", "masks"]
MULTI_TOKEN: tuple[MultiToken, ...] = ("first", "mean", "max", "masks")


@dataclass(frozen=True)
class LabelWords:
    """A verbalizer bound to a tokenizer: every label word as token ids, flattened over classes."""

    classes: tuple[str, ...]
    words: tuple[str, ...]  # as tokenised, with the mask's leading space
    token_ids: tuple[tuple[int, ...], ...]
    word_class: torch.Tensor  # (num_words,) class index of each word


class Verbalizer:
    """Manual verbalizer: label words per class.

    ``label_words`` is a dict ``{class: word or [words]}``, a list aligned with ``classes``,
    a string ``"negative: terrible, bad; positive: great"``, or a path to a .txt/.json/.yaml
    file. ``multi_token`` decides how masked LMs score words of several tokens: ``first``
    sub-token, ``mean``/``max`` over the sub-tokens at one mask, or ``masks`` (one mask per
    sub-token, summed log-probabilities). Causal and seq2seq LMs always score the whole word
    as a continuation.
    """

    def __init__(
        self,
        label_words: Any,
        classes: Sequence[str] | None = None,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if multi_token not in MULTI_TOKEN:
            raise ValueError(f"multi_token must be one of {MULTI_TOKEN}, got {multi_token!r}")
        mapping = parse_label_words(label_words, classes)
        if classes is not None:
            unknown = [c for c in mapping if c not in classes]
            missing = [c for c in classes if c not in mapping]
            if unknown or missing:
                raise ValueError(
                    "the verbalizer's classes do not match the task's: "
                    + (f"no label words for {missing}" if missing else "")
                    + ("; " if unknown and missing else "")
                    + (f"unknown classes {unknown}" if unknown else "")
                    + f" (task classes: {list(classes)})"
                )
            mapping = {c: mapping[c] for c in classes}
        self.label_words: dict[str, tuple[str, ...]] = mapping
        self.aggregation = aggregation
        self.multi_token = multi_token

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.label_words)

    def __repr__(self) -> str:
        words = "; ".join(f"{c}: {', '.join(w)}" for c, w in self.label_words.items())
        return f"Verbalizer({words!r}, aggregation={self.aggregation!r}, multi_token={self.multi_token!r})"

    def bind(
        self, tokenizer: PreTrainedTokenizerBase, prefix: str = " ", family: str = "masked"
    ) -> LabelWords:
        """Tokenise every label word as it follows the mask (``prefix`` is the mask's space).

        Errors for words that vanish or become the unknown token, or two classes claiming
        the same tokens; warnings for words the chosen multi-token rule will blur.
        """
        first_only = family == "masked" and self.multi_token == "first"
        words, token_ids, word_class = [], [], []
        owner: dict[tuple[int, ...], str] = {}
        for index, (cls, class_words) in enumerate(self.label_words.items()):
            for word in class_words:
                text = word if word[:1].isspace() else prefix + word
                ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
                if not ids:
                    raise ValueError(f"label word {word!r} of class {cls!r} tokenises to nothing")
                if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
                    raise ValueError(
                        f"label word {word!r} of class {cls!r} is not in the vocabulary (it becomes "
                        f"{tokenizer.unk_token!r}); choose another word"
                    )
                key = ids[:1] if first_only else ids
                if key in owner and owner[key] != cls:
                    raise ValueError(
                        f"label word {word!r} of class {cls!r} has the same tokens as a word of class "
                        f"{owner[key]!r} ({tokenizer.convert_ids_to_tokens(list(key))}); the classes "
                        "could not be told apart"
                    )
                owner[key] = cls
                words.append(text)
                token_ids.append(ids)
                word_class.append(index)
        split = [w for w, ids in zip(words, token_ids, strict=True) if len(ids) > 1]
        if split and first_only:
            warnings.warn(
                f"label words split into several tokens: {[w.strip() for w in split]}; a masked LM "
                "scores only their first token (multi_token='first'); 'masks' scores all of them",
                stacklevel=2,
            )
        return LabelWords(self.classes, tuple(words), tuple(token_ids), torch.tensor(word_class))

    def aggregate(self, word_scores: torch.Tensor, bound: LabelWords) -> torch.Tensor:
        """Word log-probabilities (..., W) -> class log-probabilities (..., C), normalised."""
        num_classes = len(bound.classes)
        index = bound.word_class.to(word_scores.device)
        expanded = word_scores.new_full((*word_scores.shape[:-1], num_classes, word_scores.shape[-1]), -math.inf)
        one_hot = torch.nn.functional.one_hot(index, num_classes).T.bool()  # (C, W)
        expanded = torch.where(one_hot, word_scores.unsqueeze(-2), expanded)
        if self.aggregation == "max":
            class_scores = expanded.max(-1).values
        else:
            class_scores = torch.logsumexp(expanded, -1)
            if self.aggregation == "mean":
                class_scores = class_scores - one_hot.sum(-1).to(word_scores.dtype).log()
        return torch.log_softmax(class_scores, -1)


# ----------------------------------------------------------------------------- parsing

def parse_label_words(spec: Any, classes: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Normalise any accepted form of label words to ``{class: (word, ...)}``."""
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_file(spec)):
        return parse_label_words(_read_file(Path(spec), classes), classes)
    if isinstance(spec, str):
        return _parse_string(spec, classes)
    if isinstance(spec, Mapping):
        out = {}
        for cls, words in spec.items():
            out[str(cls)] = _word_tuple(words, str(cls))
        if not out:
            raise ValueError("the verbalizer has no classes")
        return out
    if isinstance(spec, Sequence):
        if classes is None:
            raise ValueError("label words given as a list need the class names (classes=[...]) in the same order")
        if len(spec) != len(classes):
            raise ValueError(f"{len(spec)} label-word entries for {len(classes)} classes {list(classes)}")
        return {cls: _word_tuple(words, cls) for cls, words in zip(classes, spec, strict=True)}
    raise TypeError(f"cannot read label words from {type(spec).__name__}")


def _word_tuple(words: Any, cls: str) -> tuple[str, ...]:
    items = [words] if isinstance(words, str) else list(words)
    cleaned = tuple(w for w in items if isinstance(w, str) and w.strip())
    if len(cleaned) != len(items) or not cleaned:
        raise ValueError(f"class {cls!r}: label words must be non-empty strings, got {words!r}")
    return cleaned


def _looks_like_file(text: str) -> bool:
    return "\n" not in text and text.endswith((".txt", ".json", ".yaml", ".yml")) and Path(text).exists()


def _parse_string(text: str, classes: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """'neg: terrible, bad; pos: great' (';' or newlines between classes)."""
    entries = [e.strip() for e in text.replace("\n", ";").split(";") if e.strip()]
    if entries and all(":" not in e for e in entries):
        # "terrible; great" or one class per line in class order (OpenPrompt's txt files).
        return parse_label_words([[w.strip() for w in e.split(",")] for e in entries], classes)
    out: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        cls, colon, words = entry.partition(":")
        if not colon:
            raise ValueError(f"cannot read {entry!r}: write 'class: word, word; class: word'")
        cls = cls.strip()
        if cls in out:
            raise ValueError(f"class {cls!r} appears twice in the label words")
        out[cls] = _word_tuple([w.strip() for w in words.split(",")], cls)
    if not out:
        raise ValueError("no label words given")
    return out


def _read_file(path: Path, classes: Sequence[str] | None) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return text
