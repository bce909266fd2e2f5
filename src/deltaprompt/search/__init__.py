"""Automatic prompt search (LM-BFF, Gao et al. 2021; PETAL, Schick et al. 2020).

``search_label_words``: which word per class a template's mask should be read as.
``search_templates``: which words between the input and the mask make a good template.
Both rank candidates cheaply on the training set and pick by zero-shot dev accuracy.
``search_delta_structures``: which delta methods, where and how big, under a parameter budget
(Optuna trials, each a training run scored on dev).
"""

from .delta_structure import (
    DeltaSearch,
    ParameterBudget,
    SearchSection,
    parse_budget,
    search_delta_structures,
)
from .label_words import (
    SCORINGS,
    Assignment,
    CandidateWord,
    LabelWordSearch,
    MaskReader,
    Scoring,
    search_label_words,
    whole_word_tokens,
)
from .templates import (
    TemplateCandidate,
    TemplateSearch,
    phrase_cuts,
    search_templates,
    template_from_phrase,
)

__all__ = [
    "SCORINGS",
    "Assignment",
    "CandidateWord",
    "DeltaSearch",
    "LabelWordSearch",
    "MaskReader",
    "ParameterBudget",
    "Scoring",
    "SearchSection",
    "TemplateCandidate",
    "TemplateSearch",
    "parse_budget",
    "phrase_cuts",
    "search_delta_structures",
    "search_label_words",
    "search_templates",
    "template_from_phrase",
    "whole_word_tokens",
]
