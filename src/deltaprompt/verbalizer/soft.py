"""Verbalizers that score classes from the hidden state at the mask, with parameters of their own.

The manual verbalizer reads label-word rows of the LM head. The verbalizers here read the
vector that feeds the LM head at the prediction position (``PromptModel.mask_states``: after
BERT's dense + LayerNorm head transform, at the last prefix token of a decoder LM, at the
decoder's answer position of T5) and turn it into class scores with a ``VerbalizerHead``. The
prompt model keeps that head as its ``head`` submodule, so its parameters train at
``TrainConfig.head_lr`` and are saved and loaded with the classifier.

``SoftVerbalizer`` is WARP's (Hambardzumyan et al. 2021): one trainable vector per class in
the LM head's output space, started from the class's label-word rows, so that untrained it
predicts what the manual verbalizer with first-token scoring predicts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from .manual import LabelWords, Verbalizer

if TYPE_CHECKING:
    from ..model import PromptModel


class VerbalizerHead(nn.Module):
    """(B, H) mask states -> (B, C) class log-probabilities.

    ``uses_label_words``: the head also wants the manual verbalizer's (B, C) class
    log-probabilities (``manual`` in ``forward``), e.g. to ensemble with them; the prompt model
    then computes them too (from the same states when it can, so in the same pass).
    """

    uses_label_words: bool = False

    def forward(self, states: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class StateVerbalizer(Verbalizer):
    """A verbalizer whose class scores come from a trainable head on the mask's hidden state.

    Subclasses build the head for a prompt model (``make_head``, called once when the model is
    built, under its seed) and describe their settings (``to_config`` / ``from_config``).
    """

    type_name: ClassVar[str]

    def make_head(self, model: PromptModel) -> VerbalizerHead:
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StateVerbalizer:
        raise NotImplementedError


class SoftVerbalizerHead(VerbalizerHead):
    """WARP's class vectors: score_c = <h, v_c> + b_c, normalised over the classes."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, states: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        logits = F.linear(states.to(self.weight.dtype), self.weight, self.bias)
        return torch.log_softmax(logits.float(), -1)


class SoftVerbalizer(StateVerbalizer):
    """WARP's soft verbalizer: a trainable vector (and bias) per class in the LM head's output space.

    ``label_words`` (any form ``Verbalizer`` accepts) only start the class vectors: each is the
    mean output-embedding row of its class's label words (first token of each), its bias the
    mean of the LM head's bias over those tokens when the head has one. Untrained, a class with
    one label word therefore scores exactly as the manual verbalizer scores that word; training
    moves the vectors away from any word. ``bias=False``: class vectors only.
    """

    type_name = "soft"

    def __init__(self, label_words: Any, classes: Sequence[str] | None = None, bias: bool = True):
        super().__init__(label_words, classes, aggregation="mean", multi_token="first")
        self.bias = bias

    def __repr__(self) -> str:
        words = "; ".join(f"{c}: {', '.join(w)}" for c, w in self.label_words.items())
        return f"SoftVerbalizer({words!r}, bias={self.bias})"

    def bind(self, tokenizer: PreTrainedTokenizerBase, prefix: str = " ", family: str = "masked") -> LabelWords:
        """As the manual verbalizer binds, but only first tokens matter: they start the class vectors."""
        bound = super().bind(tokenizer, prefix, "causal")  # whole words: no first-token warning meant for masked LMs
        split = [w.strip() for w, ids in zip(bound.words, bound.token_ids, strict=True) if len(ids) > 1]
        if split:
            warnings.warn(
                f"label words split into several tokens: {split}; the soft verbalizer starts each class "
                "vector from the first token of its words",
                stacklevel=2,
            )
        return bound

    def make_head(self, model: PromptModel) -> SoftVerbalizerHead:
        bound = model.label_words
        projection = model.model.get_output_embeddings()
        first = torch.tensor([ids[0] for ids in bound.token_ids], device=projection.weight.device)
        share = class_word_shares(bound).to(projection.weight.device)  # (C, W), rows sum to 1
        with torch.no_grad():
            weight = share @ projection.weight[first].float()
            head_bias = getattr(projection, "bias", None)
            if not self.bias:
                bias = None
            elif head_bias is not None:
                bias = share @ head_bias[first].float()
            else:
                bias = weight.new_zeros(len(bound.classes))
        return SoftVerbalizerHead(weight, bias).to(projection.weight.device)

    def to_config(self) -> dict[str, Any]:
        return {"type": self.type_name, "label_words": {c: list(w) for c, w in self.label_words.items()},
                "bias": self.bias}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SoftVerbalizer:
        return cls(config["label_words"], bias=config.get("bias", True))


def class_word_shares(bound: LabelWords) -> torch.Tensor:
    """(C, W) averaging matrix: row c holds 1/n_c at class c's n_c words, 0 elsewhere."""
    one_hot = F.one_hot(bound.word_class.long(), len(bound.classes)).T.float()
    return one_hot / one_hot.sum(1, keepdim=True).clamp(min=1)
