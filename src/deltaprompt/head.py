"""HeadModel: classic fine-tuning, a classification head on the PLM's pooled hidden states.

examples --encode--> Encodings --collate--> batch --forward--> (B, C) class log-probs

The baseline prompt learning is compared against: no template words to predict, no
verbalizer, and no LM head at all (only the trunk runs: the base model, or T5's encoder). The
input is still built by a ``PromptTokenizer`` from a template (by default just the text), so
soft tokens and delta methods work exactly as in ``PromptModel``: ``methods=["lora"]`` gives a
LoRA classifier, ``methods=["finetune"]`` classic full fine-tuning, ``methods=[]`` a linear
probe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .data import Example
from .delta import MethodSpec, make_methods
from .model import Batch, SoftPrompt, TaskModel, seeded, soft_table
from .plm import PLM, Family
from .template import Template
from .tokenization import Encoding, PromptTokenizer, Truncation, special_affixes

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean", "last")
# What each family's pretraining puts a summary in: BERT's [CLS]; a decoder's last token, the
# only one that has seen the whole input; T5 has neither, so the mean (as sentence-T5).
DEFAULT_POOLING: dict[Family, Pooling] = {"masked": "cls", "causal": "last", "seq2seq": "mean"}


class HeadModel(TaskModel):
    """Classifies into ``classes`` with ``head`` (dropout + linear) on the pooled trunk output.

    ``template``: what the PLM reads, without ``{"mask"}`` (default ``{text}``, or for examples
    with a ``text_b`` the pair template of ``pair_template_text``). ``pooling``: "cls" (first
    token: [CLS]/<s>, or the first real token under left padding), "mean" (over the attended
    tokens, special and soft ones included) or "last" (the last attended token); default by
    family. ``methods``: as in ``PromptModel`` (None leaves the PLM as loaded; ``[]`` freezes
    it so that only the head and any soft tokens train; ``["finetune"]`` trains it all).
    ``seed`` fixes every random initial value (head, soft tokens, delta modules).
    """

    def __init__(
        self,
        plm: PLM,
        classes: Sequence[str],
        template: Template | str | None = None,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        dropout: float = 0.1,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(plm)
        self._classes = _check_classes(classes)
        pooling = pooling or DEFAULT_POOLING[plm.family]
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling: Pooling = pooling
        built = make_methods(methods) if methods is not None else None
        single = template if isinstance(template, Template) else Template(template or "{text}")
        self.source_template = single  # as the user wrote it; methods may add to it
        if single.num_masks:
            raise ValueError(
                f'a head model classifies pooled hidden states and reads no {{"mask"}}; remove it from '
                f"{single.text!r} (PromptModel predicts label words at a mask)"
            )
        # Without a template of the user's, examples with a text_b get the pair template.
        pair = None if template is not None else Template(pair_template_text(plm.tokenizer))
        for method in built or []:
            single = method.rewrite_template(single)
            pair = method.rewrite_template(pair) if pair is not None else None
        self.template = single
        self.pair_template = pair
        limit = max_length if max_length is not None else plm.max_length()
        self.prompt_tokenizer = PromptTokenizer(plm.tokenizer, single, plm.family, limit, truncation)
        self.pair_tokenizer = (
            PromptTokenizer(plm.tokenizer, pair, plm.family, limit, truncation) if pair is not None else None
        )
        if self.pair_tokenizer is not None and self.pair_tokenizer.soft_init_ids != self.prompt_tokenizer.soft_init_ids:
            raise ValueError("the single-text and pair templates define different soft tokens; pass a template")
        with seeded(seed):
            # Random soft tokens are only worth a warning when nothing is going to train them.
            table = soft_table(self.model, self.prompt_tokenizer.soft_init_ids, warn=built is None)
            self.soft_prompt = SoftPrompt(table) if table is not None else None
            self.head = linear_head(self.model, hidden_size(self.model), len(self._classes), dropout)
            self.setup_methods(built)

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    # -- data
    def encode(self, examples: Sequence[Example]) -> list[Encoding]:
        """Tokenise a batch of examples; those with a ``text_b`` use the pair template (when
        the template is the default)."""
        examples = list(examples)
        if self.pair_tokenizer is None:
            return self.prompt_tokenizer.encode(examples)
        is_pair = [_text_b(e) is not None for e in examples]
        if not any(is_pair):
            return self.prompt_tokenizer.encode(examples)
        if all(is_pair):
            return self.pair_tokenizer.encode(examples)
        singles = iter(self.prompt_tokenizer.encode([e for e, p in zip(examples, is_pair, strict=True) if not p]))
        pairs = iter(self.pair_tokenizer.encode([e for e, p in zip(examples, is_pair, strict=True) if p]))
        return [next(pairs) if p else next(singles) for p in is_pair]

    def collate(self, features: Sequence[Encoding]) -> Batch:
        return self.prompt_tokenizer.collate(features)

    @staticmethod
    def length(feature: Encoding) -> int:
        """Token count of an encoded example (for length-sorted batching)."""
        return len(feature.input_ids)

    # -- scoring
    def trunk(self) -> nn.Module:
        """What runs: T5's encoder, otherwise the base model under the LM head. Looked up on
        every call (not stored), so it follows methods that wrap or replace modules."""
        if self.model.config.is_encoder_decoder:
            return self.model.get_encoder()
        return self.model.base_model

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """(B, T, H) last hidden states of the trunk."""
        output = self.trunk()(**self.embed(batch))
        return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H) by ``self.pooling``, padding (left or right) excluded."""
        mask = attention_mask.to(hidden.device)
        rows = torch.arange(hidden.size(0), device=hidden.device)
        if self.pooling == "mean":
            weights = mask[..., None].to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        columns = torch.arange(mask.size(1), device=mask.device)
        if self.pooling == "cls":
            position = (mask > 0).long().argmax(1)  # the first attended column
        else:
            position = (columns * (mask > 0)).argmax(1)  # the last attended column
        return hidden[rows, position]

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, C) class log-probabilities."""
        pooled = self.pool(self.hidden_states(batch), batch["attention_mask"])
        linear = self.head[1]
        logits = self.head(pooled.to(device=linear.weight.device, dtype=linear.weight.dtype))
        return torch.log_softmax(logits.float(), -1)


# ----------------------------------------------------------------------------- helpers

def pair_template_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """``{text}``, the special tokens the tokenizer's own pair encoding puts between two texts,
    ``{text_b}``: ``{text}{"special": "[SEP]"}{text_b}`` for BERT, two ``</s>`` for RoBERTa,
    one for T5. Tokenizers that put nothing there (GPT-2, Llama) get ``{text} {text_b}``, one
    text with a space. Segment (token type) ids are not produced: BERT sees zeros throughout,
    and fine-tuning adapts to that."""
    first = tokenizer("x", add_special_tokens=False)["input_ids"]
    second = tokenizer("y", add_special_tokens=False)["input_ids"]
    try:
        pair = tokenizer("x", "y", add_special_tokens=True)["input_ids"]
    except Exception:  # a tokenizer without pair support: plain concatenation
        return "{text} {text_b}"
    prefix, suffix = special_affixes(tokenizer)
    if pair[: len(prefix)] != prefix or pair[len(pair) - len(suffix) :] != suffix:
        return "{text} {text_b}"
    body = pair[len(prefix) : len(pair) - len(suffix)]
    if body[: len(first)] != first or body[len(body) - len(second) :] != second or len(body) < len(first) + len(second):
        return "{text} {text_b}"
    middle = body[len(first) : len(body) - len(second)]
    if not middle:
        return "{text} {text_b}"
    tokens = tokenizer.convert_ids_to_tokens(middle)
    return "{text}" + "".join("{" + f'"special": {token!r}' + "}" for token in tokens) + "{text_b}"


def linear_head(model: PreTrainedModel, features: int, classes: int, dropout: float) -> nn.Sequential:
    """Dropout and a linear layer on the model's device, initialised as the PLM's own heads
    start (normal at its ``initializer_range``, zero bias): the head of every fine-tuning recipe."""
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, classes))
    std = getattr(model.config, "initializer_range", None) or 0.02
    nn.init.normal_(head[1].weight, std=std)
    nn.init.zeros_(head[1].bias)
    return head.to(model.device)


def hidden_size(model: PreTrainedModel) -> int:
    """Width of the trunk's hidden states, from the config (GPT-2's n_embd and T5's d_model
    answer to hidden_size too)."""
    config: PretrainedConfig = model.config
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return model.get_input_embeddings().weight.size(1)


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(f"classes is a list of class names, got {type(classes).__name__}")
    out = tuple(classes)
    if len(out) < 2 or not all(isinstance(c, str) and c for c in out):
        raise ValueError(f"a classifier needs at least two non-empty class names, got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"class names must be distinct, got {list(out)}")
    return out


def _text_b(example: Any) -> str | None:
    if isinstance(example, Mapping):
        return example.get("text_b")
    return getattr(example, "text_b", None)
