"""PromptModel: template + PLM + verbalizer as one differentiable module.

examples --encode--> Encodings --collate--> batch of tensors --forward--> class log-probs

Soft tokens of the template live here as one embedding table, placed at their positions in
the input (anywhere in the text, not only in front). Training (later) optimises this module;
inference wraps it in ``PromptClassifier``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .data import Example
from .plm import PLM
from .scoring import causal_word_scores, masked_span_scores, masked_word_scores, seq2seq_word_scores
from .template import Template
from .tokenization import Encoding, PromptTokenizer, Truncation
from .verbalizer import LabelWords, Verbalizer

logger = logging.getLogger(__name__)
Batch = dict[str, Any]


class PromptModel(nn.Module):
    """Scores every class of ``verbalizer`` for examples filled into ``template``.

    ``max_length`` defaults to the model's limit; ``truncation`` picks which shortenable
    parts give way when an example is longer (see ``plan_truncation``).
    """

    def __init__(
        self,
        plm: PLM,
        template: Template | str,
        verbalizer: Verbalizer,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        efficient_head: bool = True,
    ):
        super().__init__()
        self.plm = plm
        self.model = plm.model
        self.template = template if isinstance(template, Template) else Template(template)
        self.verbalizer = verbalizer
        mask = self.template.mask_part
        self.label_words: LabelWords = verbalizer.bind(plm.tokenizer, mask.prefix or "", plm.family)
        self.multi_mask = plm.family == "masked" and verbalizer.multi_token == "masks"
        self.spans = sorted({len(ids) for ids in self.label_words.token_ids}) if self.multi_mask else [1]
        self.prompt_tokenizer = PromptTokenizer(
            plm.tokenizer,
            self.template,
            plm.family,
            max_length=max_length if max_length is not None else plm.max_length(),
            truncation=truncation,
            mask_span=self.spans[0],
        )
        self.soft_embeddings = self._init_soft_embeddings()
        self.efficient_head = efficient_head and self._efficient_head_agrees()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_words.classes

    @property
    def device(self) -> torch.device:
        return self.plm.device

    # -- soft tokens
    def _init_soft_embeddings(self) -> nn.Parameter | None:
        init_ids = self.prompt_tokenizer.soft_init_ids
        if not init_ids:
            return None
        embed = self.model.get_input_embeddings()
        table = torch.empty(len(init_ids), embed.weight.size(1), dtype=embed.weight.dtype)
        std = float(embed.weight.detach().float().std())
        with torch.no_grad():
            for i, token in enumerate(init_ids):
                if token is None:
                    table[i].normal_(0.0, std)
                else:
                    # Through the module, so models that scale their embeddings stay exact.
                    table[i] = embed(torch.tensor([token], device=embed.weight.device))[0].cpu()
        if any(token is None for token in init_ids):
            warnings.warn(
                "the template has randomly initialised soft tokens; until they are trained, "
                "predictions depend on random vectors",
                stacklevel=3,
            )
        return nn.Parameter(table.to(embed.weight.device))

    def embed(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Model inputs for a collated batch: token ids, or embeddings when soft tokens exist."""
        inputs = {"attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        if self.soft_embeddings is None:
            inputs["input_ids"] = batch["input_ids"]
            return inputs
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        soft_index = batch["soft_index"]
        soft = self.soft_embeddings[soft_index.clamp(min=0)].to(embeds.dtype)
        inputs["inputs_embeds"] = torch.where((soft_index >= 0)[..., None], soft, embeds)
        return inputs

    # -- data
    def encode(self, examples: Sequence[Example]) -> list[Encoding] | list[tuple[Encoding, ...]]:
        """Tokenise a batch of examples (one entry per example; a tuple of one encoding per
        mask span when words of several lengths are scored with one mask per token)."""
        if not self.multi_mask:
            return self.prompt_tokenizer.encode(examples)
        per_span = [self.prompt_tokenizer.encode(examples, mask_span=k) for k in self.spans]
        return list(zip(*per_span, strict=True))

    def collate(self, features: Sequence[Any]) -> Batch:
        if not self.multi_mask:
            return self.prompt_tokenizer.collate(features)
        return {
            "by_span": {
                k: self.prompt_tokenizer.collate([f[n] for f in features]) for n, k in enumerate(self.spans)
            }
        }

    @staticmethod
    def length(feature: Any) -> int:
        """Token count of an encoded example (for length-sorted batching)."""
        return len(feature.input_ids) if isinstance(feature, Encoding) else max(len(f.input_ids) for f in feature)

    def to_device(self, batch: Batch) -> Batch:
        device = self.device
        return {
            k: self.to_device(v) if isinstance(v, dict) else v.to(device)
            for k, v in batch.items()
        }

    # -- scoring
    def word_scores(self, batch: Batch, efficient: bool | None = None) -> torch.Tensor:
        """(B, W) log-probability of every label word (up to a per-example constant when
        every word is a single token read at one position)."""
        efficient = self.efficient_head if efficient is None else efficient
        family, words = self.plm.family, self.label_words
        if self.multi_mask:
            return self._span_scores(batch["by_span"], efficient)
        inputs = self.embed(batch)
        positions = batch["predict_positions"]
        if family == "masked":
            return masked_word_scores(self.model, inputs, positions, words, self.verbalizer.multi_token, efficient)
        if family == "causal":
            return causal_word_scores(self.model, inputs, positions, words, efficient)
        return seq2seq_word_scores(self.model, inputs, self.prompt_tokenizer.mask_id, words, efficient)

    def _span_scores(self, by_span: dict[int, Batch], efficient: bool) -> torch.Tensor:
        words = self.label_words
        first = next(iter(by_span.values()))
        scores = torch.empty(first["input_ids"].size(0), len(words.words), device=first["input_ids"].device)
        for span, batch in by_span.items():
            chosen = [i for i, ids in enumerate(words.token_ids) if len(ids) == span]
            part = masked_span_scores(self.model, self.embed(batch), batch["predict_positions"], words, chosen, efficient)
            scores[:, chosen] = part.to(scores.dtype)
        return scores

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, C) class log-probabilities, normalised over the classes."""
        return self.verbalizer.aggregate(self.word_scores(batch), self.label_words)

    def _efficient_head_agrees(self) -> bool:
        """Check once, on a dummy example, that the fast head gives the plain head's scores.

        A model applying something after its output projection (logit soft-capping, a final
        bias) would differ; it then keeps the plain path, still correct, just slower.
        """
        fields = {name: "a" for name in self.template.fields if name not in ("text", "text_b")}
        dummy = Example("a", "a", meta=fields)
        batch = self.to_device(self.collate(self.encode([dummy, dummy])))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                fast = self.verbalizer.aggregate(self.word_scores(batch, efficient=True), self.label_words)
                plain = self.verbalizer.aggregate(self.word_scores(batch, efficient=False), self.label_words)
        finally:
            self.model.train(was_training)
        tolerance = 1e-3 if fast.dtype == torch.float32 else 3e-2
        if torch.allclose(fast.float(), plain.float(), atol=tolerance, rtol=tolerance):
            return True
        logger.warning(
            "the fast LM-head path disagrees with the model's own logits for %s; using the plain path",
            type(self.model).__name__,
        )
        return False
