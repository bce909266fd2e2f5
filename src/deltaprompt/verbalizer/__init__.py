"""Verbalizers: how the model's output at the mask becomes class scores.

``manual``: label words per class (the classic PET/OpenPrompt verbalizer).
"""

from .manual import (
    AGGREGATIONS,
    MULTI_TOKEN,
    Aggregation,
    LabelWords,
    MultiToken,
    Verbalizer,
    parse_label_words,
)

__all__ = [
    "AGGREGATIONS",
    "MULTI_TOKEN",
    "Aggregation",
    "LabelWords",
    "MultiToken",
    "Verbalizer",
    "parse_label_words",
]
