"""PTR-style sub-prompts (Han et al. 2021, "PTR: Prompt Tuning with Rules").

A class is a conjunction of sub-labels, one per sub-prompt: for relation classification, say,
the head entity's type, the relation's words and the tail entity's type. Each sub-prompt is a
template with one mask and its own verbalizer over its sub-labels, and

    score(class) = sum over sub-prompts k of log p_k(sub-label of class at k | x)

where each p_k is normalised over sub-prompt k's own sub-labels (PTR's rule combination);
the class log-probabilities are these scores log-softmaxed over the classes.

    SubPromptClassifier(
        plm,
        [{"template": '{text} {"meta": "head"} is a {mask}', "label_words": {"person": "person", ...}},
         {"template": '{text} {"meta": "head"} {mask} {"meta": "tail"}', "label_words": {"born_in": "born", ...}},
         {"template": '{text} {"meta": "tail"} is a {mask}', "label_words": {"place": "place", ...}}],
        rules={"per:city_of_birth": ["person", "born_in", "place"], ...},
        methods=["lora"],
    )

Every sub-prompt reads the same PLM, and delta methods are applied once, to the whole model,
so all sub-prompts share them (one LoRA, one prefix). Methods that rewrite the template
(prompt_tuning, p_tuning) are refused: which of several templates to rewrite, and whether they
would share the added tokens, has no one right answer; write soft tokens into each sub-template
instead (``{"soft": ...}`` blocks), which train per sub-prompt.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import artifacts
from .classifier import Classifier, _resolve_plm
from .data import Example
from .delta import DeltaMethod, MethodSpec, make_methods, template_rewriters
from .model import Batch, PromptModel, Role, TaskModel, seeded
from .plm import PLM, Family
from .template import Template
from .tokenization import Truncation
from .verbalizer import Verbalizer

SUBPROMPT_KEYS = ("template", "label_words")
_SUB_PARAMETER = re.compile(r"prompts\.(\d+)\.(.+)")


class SubPromptModel(TaskModel):
    """Class log-probabilities from several one-mask prompts combined by rules.

    ``subprompts``: one ``{"template": ..., "label_words": {sub_label: words}}`` per sub-prompt
    (a template string or ``Template``; label words in any form ``Verbalizer`` accepts).
    ``rules``: ``{class: [sub_label per sub-prompt, in order]}``. ``methods``: delta methods
    applied once for all sub-prompts (None leaves the PLM as loaded). ``seed`` fixes every
    random initial value (soft tokens of the sub-templates, delta modules).
    """

    def __init__(
        self,
        plm: PLM,
        subprompts: Sequence[Mapping[str, Any]],
        rules: Mapping[str, Sequence[str]],
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(plm)
        specs = check_subprompts(subprompts)
        built = make_methods(methods) if methods is not None else None
        refuse_template_rewriting(built or [])
        prompts = []
        with warnings.catch_warnings():
            if built is not None:  # soft tokens are about to be trained: no warning about them
                warnings.filterwarnings("ignore", message="the template has randomly initialised soft tokens")
            for index, spec in enumerate(specs):
                prompt = PromptModel(plm, spec["template"], Verbalizer(spec["label_words"]), max_length=max_length,
                                     truncation=truncation, methods=None, seed=seed + index)
                # One list for all: what delta methods append (a prefix's keys/values) reaches every sub-prompt.
                prompt.input_transforms = self.input_transforms
                prompts.append(prompt)
        self.prompts = nn.ModuleList(prompts)
        self.rules = check_rules(rules, [p.classes for p in prompts])
        self._rule_index = [[p.classes.index(rule[k]) for rule in self.rules.values()] for k, p in enumerate(prompts)]
        with seeded(seed):
            self.setup_methods(built)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.rules)

    @property
    def sub_labels(self) -> list[tuple[str, ...]]:
        """Each sub-prompt's sub-labels, in the order its distribution lists them."""
        return [prompt.classes for prompt in self.prompts]

    def setup_methods(self, methods: Sequence[Any] | None) -> None:
        """Apply delta methods once for every sub-prompt. A prefix takes positions in front of
        each input, so each sub-prompt's length limit leaves room for it."""
        super().setup_methods(methods)
        for method in methods or []:
            if method.name == "prefix":
                for prompt in self.prompts:
                    tokenizer = prompt.prompt_tokenizer
                    if isinstance(tokenizer.max_length, int):
                        tokenizer.max_length = max(1, tokenizer.max_length - method.config.num_virtual_tokens)

    def role_of(self, name: str, parameter: nn.Parameter) -> tuple[Role, float | None]:
        """Claims made on this model first (delta methods), then each sub-prompt's own rules
        for its parameters (its soft tokens train as soft tokens)."""
        if id(parameter) in self._claims:
            return self._claims[id(parameter)]
        match = _SUB_PARAMETER.fullmatch(name)
        if match:
            return self.prompts[int(match.group(1))].role_of(match.group(2), parameter)
        return super().role_of(name, parameter)

    # -- data
    def encode(self, examples: Sequence[Example]) -> list[tuple[Any, ...]]:
        """One tuple per example: its encoding by each sub-prompt."""
        examples = list(examples)
        return list(zip(*(prompt.encode(examples) for prompt in self.prompts), strict=True))

    def collate(self, features: Sequence[tuple[Any, ...]]) -> Batch:
        return {f"prompt_{k}": prompt.collate([f[k] for f in features]) for k, prompt in enumerate(self.prompts)}

    @staticmethod
    def length(feature: tuple[Any, ...]) -> int:
        """The longest of the example's sub-prompt encodings (for length-sorted batching)."""
        return max(PromptModel.length(part) for part in feature)

    # -- scoring
    def sub_log_probs(self, batch: Batch) -> list[torch.Tensor]:
        """(B, S_k) log-probabilities of each sub-prompt's sub-labels, normalised over them."""
        return [
            torch.log_softmax(prompt(batch[f"prompt_{k}"]).float(), -1) for k, prompt in enumerate(self.prompts)
        ]

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, C) class log-probabilities: each class's sub-label log-probabilities summed over
        the sub-prompts, then normalised over the classes."""
        total: torch.Tensor | None = None
        for index, scores in zip(self._rule_index, self.sub_log_probs(batch), strict=True):
            picked = scores[:, torch.tensor(index, device=scores.device)]
            total = picked if total is None else total + picked
        assert total is not None
        return torch.log_softmax(total, -1)


def check_subprompts(subprompts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Sub-prompt specs as dicts with a template and label words; clear errors otherwise."""
    if isinstance(subprompts, (str, Mapping)) or not isinstance(subprompts, Sequence):
        raise TypeError('subprompts is a list of {"template": ..., "label_words": {sub_label: words}} mappings')
    if not subprompts:
        raise ValueError("give at least one sub-prompt")
    out = []
    for index, spec in enumerate(subprompts):
        if not isinstance(spec, Mapping):
            raise TypeError(f"subprompts[{index}] must be a mapping with keys {list(SUBPROMPT_KEYS)}, "
                            f"got {type(spec).__name__}")
        missing = [k for k in SUBPROMPT_KEYS if k not in spec]
        unknown = sorted(set(spec) - set(SUBPROMPT_KEYS))
        if missing or unknown:
            raise ValueError(f"subprompts[{index}]: " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else []))
                + f" (a sub-prompt has exactly {list(SUBPROMPT_KEYS)})")
        template = spec["template"]
        template = template if isinstance(template, Template) else Template(template)
        if template.num_masks != 1:
            raise ValueError(f"subprompts[{index}]: a sub-prompt's template has exactly one {{\"mask\"}}, "
                             f"{template.text!r} has {template.num_masks}")
        out.append({"template": template, "label_words": spec["label_words"]})
    return out


def check_rules(rules: Mapping[str, Sequence[str]], sub_labels: Sequence[Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """``{class: sub-labels}`` checked against each sub-prompt's sub-labels: one per
    sub-prompt, each known to its sub-prompt, and no two classes with the same conjunction."""
    if not isinstance(rules, Mapping):
        raise TypeError(f"rules is a mapping {{class: [sub_label per sub-prompt]}}, got {type(rules).__name__}")
    if len(rules) < 2:
        raise ValueError(f"rules need at least two classes, got {list(rules)}")
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[tuple[str, ...], str] = {}
    for name, labels in rules.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"class names in rules must be non-empty strings, got {name!r}")
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise TypeError(f"rules[{name!r}] must be a list of sub-labels, one per sub-prompt, got {labels!r}")
        labels = tuple(labels)
        if len(labels) != len(sub_labels):
            raise ValueError(f"rules[{name!r}] names {len(labels)} sub-labels {list(labels)}; "
                             f"give exactly one per sub-prompt ({len(sub_labels)})")
        for k, (label, known) in enumerate(zip(labels, sub_labels, strict=True)):
            if label not in known:
                raise ValueError(f"rules[{name!r}]: sub-prompt {k} has no sub-label {label!r}; "
                                 f"its sub-labels are {list(known)}")
        if labels in owner:
            raise ValueError(f"classes {owner[labels]!r} and {name!r} have the same sub-labels {list(labels)}, "
                             "so nothing can tell them apart; give one of them another sub-label")
        owner[labels] = name
        out[name] = labels
    return out


def refuse_template_rewriting(methods: Sequence[DeltaMethod]) -> None:
    """Prompt tuning and P-Tuning add soft tokens to the template; with several templates
    that has no single meaning, so they are refused with what to do instead."""
    rewriting = template_rewriters(methods)
    if rewriting:
        raise ValueError(
            f"{', '.join(rewriting)} rewrite(s) a template, and sub-prompts have several; put soft tokens "
            'into each sub-template instead (e.g. {"soft": None}), which train with any other method, or methods=[]'
        )


class SubPromptClassifier(Classifier):
    """Classification by PTR sub-prompts and rules: zero-shot as built, few-shot after ``fit``.

    ``subprompts``: ``[{"template": str, "label_words": {sub_label: words}}, ...]``, each
    template with one ``{"mask"}`` (at the very end for a causal LM). ``rules``:
    ``{class: [sub_label of sub-prompt 0, sub_label of sub-prompt 1, ...]}``. ``methods``: delta
    methods shared by all sub-prompts (prompt_tuning and p_tuning are refused, see the module
    docs); None: zero-shot now, full fine-tuning if ``fit`` is called. ``seed`` fixes every
    random initial value.
    """

    kind = "subprompts"
    model: SubPromptModel

    def __init__(
        self,
        plm: PLM | str,
        subprompts: Sequence[Mapping[str, Any]],
        rules: Mapping[str, Sequence[str]],
        *,
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        self.seed = seed
        self.max_length = max_length
        self.model = SubPromptModel(plm, subprompts, rules, max_length=max_length, methods=methods, seed=seed)

    @property
    def rules(self) -> dict[str, tuple[str, ...]]:
        return dict(self.model.rules)

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().describe(),
            "subprompts": [
                {"template": prompt.source_template.text,
                 "label_words": {label: list(words) for label, words in prompt.verbalizer.label_words.items()}}
                for prompt in model.prompts
            ],
            "rules": {name: list(labels) for name, labels in model.rules.items()},
            "max_length": self.max_length,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> SubPromptClassifier:
        try:
            subprompts, rules = description["subprompts"], description["rules"]
        except KeyError as missing:
            raise artifacts.ArtifactError(f"the saved description has no {missing}; is it a sub-prompt classifier?"
                                          ) from None
        return cls(plm, subprompts, rules, batch_size=description["batch_size"],
                   max_length=description["max_length"], seed=description["seed"], methods=methods)
