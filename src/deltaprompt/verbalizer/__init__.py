"""Verbalizers: how the model's output at the mask becomes class scores.

- ``manual`` (``Verbalizer``): label words per class (the classic PET/OpenPrompt verbalizer);
  class scores aggregate the label words' probabilities.
- ``soft`` (``SoftVerbalizer``, WARP): a trainable vector per class in the LM head's output
  space, started from the label words' rows.
- ``knowledgeable`` (``KnowledgeableVerbalizer``, KPT): label words expanded with related
  words, refined and calibrated by their priors on unlabelled examples.
- ``prototype`` (``PrototypeVerbalizer``, ProtoVerb): learned class prototypes compared by
  cosine with a projection of the mask state; label words optional.

Soft and prototype verbalizers score the mask's hidden state through a ``VerbalizerHead``
that the prompt model keeps as its ``head``. By name: ``make_verbalizer("soft", words)``;
``verbalizer_config`` / ``verbalizer_from_config`` write and read a verbalizer for saving.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from .knowledgeable import KnowledgeableVerbalizer, WordDecision, embedding_neighbours
from .manual import (
    AGGREGATIONS,
    MULTI_TOKEN,
    Aggregation,
    LabelWords,
    MultiToken,
    Verbalizer,
    parse_label_words,
)
from .prototype import PrototypeHead, PrototypeVerbalizer
from .soft import SoftVerbalizer, SoftVerbalizerHead, StateVerbalizer, VerbalizerHead

VERBALIZERS: dict[str, type[Verbalizer]] = {
    "manual": Verbalizer,
    "soft": SoftVerbalizer,
    "knowledgeable": KnowledgeableVerbalizer,
    "prototype": PrototypeVerbalizer,
}


def make_verbalizer(
    spec: str | Mapping[str, Any] | None,
    label_words: Any,
    classes: Sequence[str] | None = None,
    aggregation: Aggregation = "mean",
    multi_token: MultiToken = "first",
) -> Verbalizer:
    """A verbalizer by type name (``"soft"``) or mapping (``{"type": "prototype", "tau": 0.05}``,
    the other keys being that verbalizer's options) over ``label_words``; None: manual."""
    options: dict[str, Any] = {}
    if spec is None:
        name = "manual"
    elif isinstance(spec, str):
        name = spec
    elif isinstance(spec, Mapping):
        if "type" not in spec:
            raise ValueError(f'a verbalizer given as a mapping needs a "type" key: one of {list(VERBALIZERS)}')
        name, options = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    else:
        raise TypeError(f"verbalizer: expected a type name or a mapping, got {type(spec).__name__}")
    if name not in VERBALIZERS:
        close = difflib.get_close_matches(str(name), VERBALIZERS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(VERBALIZERS)}"
        raise ValueError(f"unknown verbalizer {name!r}; {hint}")
    cls = VERBALIZERS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "label_words", "classes"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for the {name} verbalizer; it takes {sorted(accepted)}")
    for option, value, default in (("aggregation", aggregation, "mean"), ("multi_token", multi_token, "first")):
        if option in accepted:
            options.setdefault(option, value)
        elif value != default:
            raise ValueError(f"the {name} verbalizer has no {option} option (got {value!r})")
    return cls(label_words, classes, **options)


def verbalizer_config(verbalizer: Verbalizer) -> dict[str, Any]:
    """A JSON-ready description of ``verbalizer`` (type, words, settings, fitted state)."""
    to_config = getattr(verbalizer, "to_config", None)
    if to_config is not None:
        return to_config()
    if type(verbalizer) is not Verbalizer:
        raise TypeError(f"{type(verbalizer).__name__} cannot be saved: it has no to_config()")
    return {"type": "manual", "label_words": {c: list(w) for c, w in verbalizer.label_words.items()},
            "aggregation": verbalizer.aggregation, "multi_token": verbalizer.multi_token}


def verbalizer_from_config(config: Mapping[str, Any]) -> Verbalizer:
    """The verbalizer ``verbalizer_config`` described (no "type": a manual one, as saved before types)."""
    name = config.get("type", "manual")
    if name not in VERBALIZERS:
        raise ValueError(f"unknown verbalizer type {name!r} in a saved description; choose from {list(VERBALIZERS)}")
    if name == "manual":
        return Verbalizer(config["label_words"], aggregation=config["aggregation"], multi_token=config["multi_token"])
    return VERBALIZERS[name].from_config(dict(config))  # type: ignore[attr-defined]


__all__ = [
    "AGGREGATIONS",
    "MULTI_TOKEN",
    "VERBALIZERS",
    "Aggregation",
    "KnowledgeableVerbalizer",
    "LabelWords",
    "MultiToken",
    "PrototypeHead",
    "PrototypeVerbalizer",
    "SoftVerbalizer",
    "SoftVerbalizerHead",
    "StateVerbalizer",
    "Verbalizer",
    "VerbalizerHead",
    "WordDecision",
    "embedding_neighbours",
    "make_verbalizer",
    "parse_label_words",
    "verbalizer_config",
    "verbalizer_from_config",
]
