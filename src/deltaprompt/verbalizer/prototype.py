"""ProtoVerb (Cui et al. 2022): classes as learned prototypes in a projection of the mask state.

Each example's mask state h is projected (a linear map, no bias) and compared with one
learnable prototype per class: score_c = cos(W h, p_c) / tau. The cross-entropy over these
scores, which is what the trainer's NLL computes on the model's log-softmax output, is
ProtoVerb's instance-prototype contrastive loss. Its instance-instance term needs the labels of
a whole batch inside the model and is not used (the trainer keeps labels to itself).

No label words are needed. With ``ensemble=True`` the prototype scores are combined with a
manual verbalizer's (the product of the two class distributions, renormalised), as ProtoVerb
does with hand-picked label words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from .manual import AGGREGATIONS, Aggregation, LabelWords, MultiToken
from .soft import StateVerbalizer, VerbalizerHead

if TYPE_CHECKING:
    from ..data import Example
    from ..model import PromptModel


class PrototypeHead(VerbalizerHead):
    """Projection and prototypes; ``forward`` gives log_softmax(cos(W h, p_c) / tau) (times the
    manual class distribution, renormalised, when ``ensemble``)."""

    def __init__(self, hidden: int, dim: int, num_classes: int, tau: float, ensemble: bool):
        super().__init__()
        self.projection = nn.Linear(hidden, dim, bias=False)
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim))
        self.tau = tau
        self.uses_label_words = ensemble

    def project(self, states: torch.Tensor) -> torch.Tensor:
        return self.projection(states.to(self.projection.weight.dtype))

    def forward(self, states: torch.Tensor, manual: torch.Tensor | None = None) -> torch.Tensor:
        similarity = F.normalize(self.project(states), dim=-1) @ F.normalize(self.prototypes, dim=-1).T
        log_probs = torch.log_softmax(similarity.float() / self.tau, -1)
        if self.uses_label_words:
            if manual is None:
                raise ValueError("this prototype head ensembles with label words; pass the manual class log-probs")
            log_probs = torch.log_softmax(log_probs + manual.float(), -1)
        return log_probs


class PrototypeVerbalizer(StateVerbalizer):
    """ProtoVerb: one learnable prototype per class in a ``dim``-dimensional projection of the
    mask state; class score = cosine(projection(h), prototype) / ``tau``.

    ``classes`` suffice; ``label_words`` are needed only for ``ensemble=True`` (ProtoVerb with a
    manual verbalizer: ``aggregation`` and ``multi_token`` apply to those words, except
    ``"masks"``). ``init_from``: labelled examples whose projected mask states, averaged per
    class, start the prototypes (classes without examples, or no examples: random, from the
    model's seed). They are used once, when the prompt model is built, and not saved.
    """

    type_name = "prototype"

    def __init__(
        self,
        label_words: Any = None,
        classes: Sequence[str] | None = None,
        *,
        dim: int = 128,
        tau: float = 0.1,
        ensemble: bool = False,
        init_from: Sequence[Example] | None = None,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
    ):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if multi_token == "masks":
            raise ValueError("the prototype verbalizer reads one mask; use multi_token 'first', 'mean' or 'max'")
        if label_words is not None:
            super().__init__(label_words, classes, aggregation=aggregation, multi_token=multi_token)
        else:
            if ensemble:
                raise ValueError("ensemble=True combines prototypes with label words; give label_words")
            if classes is None or len(classes) < 2 or len(set(classes)) != len(classes):
                raise ValueError(f"the prototype verbalizer needs at least two distinct classes, got {classes!r}")
            if aggregation not in AGGREGATIONS:
                raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
            self.label_words = {str(c): () for c in classes}
            self.aggregation = aggregation
            self.multi_token = multi_token
        self.has_label_words = label_words is not None
        self.dim, self.tau, self.ensemble = dim, float(tau), ensemble
        self.init_from = list(init_from) if init_from is not None else None

    def __repr__(self) -> str:
        words = "; ".join(f"{c}: {', '.join(w)}" for c, w in self.label_words.items()) if self.has_label_words else ""
        return (f"PrototypeVerbalizer(classes={list(self.classes)}, dim={self.dim}, tau={self.tau}, "
                f"ensemble={self.ensemble}" + (f", label_words={words!r}" if words else "") + ")")

    def bind(self, tokenizer: PreTrainedTokenizerBase, prefix: str = " ", family: str = "masked") -> LabelWords:
        if self.has_label_words:
            return super().bind(tokenizer, prefix, family)
        return LabelWords(self.classes, (), (), torch.empty(0, dtype=torch.long))

    def make_head(self, model: PromptModel) -> PrototypeHead:
        projection = model.model.get_output_embeddings()
        head = PrototypeHead(projection.weight.size(1), self.dim, len(self.classes), self.tau, self.ensemble)
        head.to(projection.weight.device)
        if self.init_from:
            with torch.no_grad():
                head.prototypes.copy_(self._mean_states(model, head))
        return head

    def _mean_states(self, model: PromptModel, head: PrototypeHead) -> torch.Tensor:
        """Per class, the mean projected mask state of ``init_from``; random rows stay for classes without any."""
        from ..data import as_examples

        examples = as_examples(self.init_from or [])
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({str(e.label) for e in examples if e.label not in index})
        if unknown:
            raise ValueError(f"init_from examples have labels {unknown} that are not classes {list(self.classes)}")
        prototypes = head.prototypes.detach().clone()
        sums = torch.zeros_like(prototypes)
        counts = torch.zeros(len(self.classes), device=sums.device)
        modes = {module: module.training for module in model.modules()}  # restored exactly afterwards
        model.eval()
        try:
            for start in range(0, len(examples), 32):
                chunk = examples[start : start + 32]
                batch = model.to_device(model.collate(model.encode(chunk)))
                projected = F.normalize(head.project(model.mask_states(batch)), dim=-1)
                labels = torch.tensor([index[e.label] for e in chunk], device=sums.device)  # type: ignore[index]
                sums.index_add_(0, labels, projected.to(sums.dtype))
                counts.index_add_(0, labels, torch.ones(len(chunk), device=sums.device))
        finally:
            for module, mode in modes.items():
                module.training = mode
        seen = counts > 0
        prototypes[seen] = sums[seen] / counts[seen, None]
        return prototypes

    def to_config(self) -> dict[str, Any]:
        words = {c: list(w) for c, w in self.label_words.items()} if self.has_label_words else None
        return {"type": self.type_name, "classes": list(self.classes), "label_words": words, "dim": self.dim,
                "tau": self.tau, "ensemble": self.ensemble, "aggregation": self.aggregation,
                "multi_token": self.multi_token}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PrototypeVerbalizer:
        return cls(config.get("label_words"), config["classes"], dim=config["dim"], tau=config["tau"],
                   ensemble=config["ensemble"], aggregation=config.get("aggregation", "mean"),
                   multi_token=config.get("multi_token", "first"))

