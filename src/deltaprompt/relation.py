"""Relation classification: which relation holds between two entities of a sentence.

    clf = RelationClassifier("minilm-l6", classes, variant="markers_start", methods=["lora"])
    clf.fit(train, dev)          # Example(text, label, meta={"head": {"start", "end"}, "tail": {...}})
    clf.evaluate(test).macro_f1  # SemEval-2010 convention: "Other" is left out of macro-F1

The six ways of reading an entity pair out of a PLM that Baldini Soares et al. (2019, "Matching
the Blanks") compare, by ``variant``:

- ``cls``: the sentence representation ([CLS]; a decoder's last token; T5's mean);
- ``mention_pool``: each entity's tokens max-pooled, head and tail concatenated;
- ``mention_pool_position``: the same, with learned entity-role embeddings (none/head/tail)
  added to every token's input embedding;
- ``markers_cls``, ``markers_mention_pool``, ``markers_start``: the text with entity markers
  around the mentions ("[E1] Bill Gates [/E1] founded [E2] Microsoft [/E2]"), read as ``cls``,
  as the max over the tokens between each pair of markers, or as the states of the two start
  markers (the paper's best).

Markers are new special tokens, added to the tokenizer once per PLM with as many new rows in
the embedding matrix. Their vectors are the task model's own small parameter
(``markers.weight``, 4 x hidden), put in place of the marker tokens' embeddings in every input,
so they train under any delta method (LoRA freezes the embedding matrix) and a saved classifier
stores 4 vectors rather than the matrix.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tokenizers import AddedToken
from torch import nn

from .classifier import Classifier, _resolve_plm
from .data import Example
from .delta import MethodSpec, make_methods, template_rewriters
from .head import DEFAULT_POOLING, HeadModel, _check_classes, hidden_size, linear_head
from .metrics import Evaluation
from .model import Batch, TaskModel, seeded
from .plm import PLM, Family
from .spans import Span, SpanError, entity_pair, tokens_in
from .tokenization import padding_id, special_affixes, tokenize_offsets

Variant = Literal["cls", "mention_pool", "mention_pool_position", "markers_cls", "markers_mention_pool",
                  "markers_start"]
VARIANTS: tuple[Variant, ...] = ("cls", "mention_pool", "mention_pool_position", "markers_cls",
                                 "markers_mention_pool", "markers_start")
MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")  # head start, head end, tail start, tail end
NO_ROLE, HEAD_ROLE, TAIL_ROLE = 0, 1, 2
# The fingerprint of each PLM from before markers grew its embedding matrix: a model built later
# on the same PLM is still saved as trained on the checkpoint that loads afresh.
_PRISTINE: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


@dataclass
class RelationFeature:
    """One encoded example. Positions index ``input_ids`` (before padding): ``head`` and ``tail``
    are the mention tokens, ``markers`` the four marker tokens (empty without markers), and
    ``gathered`` what the variant max-pools, one group per entity (empty for the ``cls`` ones)."""

    input_ids: list[int]
    head: list[int]
    tail: list[int]
    markers: list[int] = field(default_factory=list)
    gathered: tuple[list[int], ...] = ()
    truncated: int = 0  # tokens cut to fit max_length


class RelationModel(TaskModel):
    """Classifies the relation between ``meta["head"]`` and ``meta["tail"]`` of each example into
    ``classes`` with ``head`` (dropout + linear) on the representation ``variant`` reads (see the
    module's docstring). ``methods`` as in ``HeadModel`` (None leaves the PLM as loaded; methods
    that rewrite a template, such as prompt tuning, are refused: there is none here). ``markers``:
    the four marker tokens (head start, head end, tail start, tail end). ``negative_class``: the
    class left out of macro-F1 on dev sets ("no relation", SemEval's "Other")."""

    def __init__(
        self,
        plm: PLM,
        classes: Sequence[str],
        variant: Variant = "markers_start",
        max_length: int | None = None,
        dropout: float = 0.1,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
        markers: Sequence[str] = MARKERS,
        negative_class: str | None = None,
    ):
        super().__init__(plm)
        self.base_fingerprint = _PRISTINE.get(plm.model, self.base_fingerprint)
        self._classes = _check_classes(classes)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if negative_class is not None and negative_class not in self._classes:
            raise ValueError(f"negative_class {negative_class!r} is not one of the classes {list(self._classes)}")
        self.variant: Variant = variant
        self.negative_class = negative_class
        self.pooling = DEFAULT_POOLING[plm.family]  # what ``pool`` (HeadModel's) reads for the cls variants
        self.marker_tokens = _check_markers(markers) if variant.startswith("markers") else ()
        built = make_methods(methods) if methods is not None else None
        rewriting = template_rewriters(built or [])
        if rewriting:
            raise ValueError(
                f"{rewriting} add soft tokens to a template, and a relation model has none; use lora, "
                "adapter, bitfit, prefix or finetune"
            )
        self.max_length = max_length if max_length is not None else plm.max_length()
        self.prefix_ids, self.suffix_ids = special_affixes(plm.tokenizer)
        if plm.family == "causal":
            self.suffix_ids = []  # as HeadModel: the last token pooled is the text's own
        budget = None if self.max_length is None else self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if budget is not None and budget < 1:
            raise ValueError(f"max_length={self.max_length} leaves no room for text after the special tokens")
        self.budget = budget
        self.pad_id = padding_id(plm.tokenizer)
        width = hidden_size(self.model)
        self.markers: nn.Embedding | None = None
        self.roles: nn.Embedding | None = None
        self.marker_ids: list[int] = []
        std = getattr(self.model.config, "initializer_range", None) or 0.02
        with seeded(seed):
            if self.marker_tokens:
                table = marker_init(plm, self.marker_tokens)
                self.marker_ids = add_markers(plm, self.marker_tokens, self.base_fingerprint)
                self.markers = nn.Embedding.from_pretrained(table.to(self.device), freeze=False)
            if variant == "mention_pool_position":
                self.roles = nn.Embedding(3, width, device=self.device)
                nn.init.normal_(self.roles.weight, std=std)
                nn.init.zeros_(self.roles.weight[NO_ROLE])  # tokens outside the entities start unchanged
            groups = 1 if variant in ("cls", "markers_cls") else 2
            self.head = linear_head(self.model, groups * width, len(self._classes), dropout)
            self.setup_methods(built)
        # Entity vectors are task parameters that train with the head, whatever the methods.
        self.claim([m.weight for m in (self.markers, self.roles) if m is not None], "head")

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    def ignored_classes(self) -> list[int]:
        return [] if self.negative_class is None else [self._classes.index(self.negative_class)]

    # -- data
    def encode(self, examples: Sequence[Example]) -> list[RelationFeature]:
        """Tokenise a batch of examples (entity spans checked, markers inserted, truncated around
        the entities when longer than ``max_length``)."""
        examples = list(examples)
        marked = [self._marked(example, f"example {n}") for n, example in enumerate(examples)]
        tokenized = tokenize_offsets(self.plm.tokenizer, [text for text, _, _ in marked])
        return [
            self._feature(ids, offsets, head, tail, f"example {n}")
            for n, ((_, head, tail), (ids, offsets)) in enumerate(zip(marked, tokenized, strict=True))
        ]

    def _marked(self, example: Example, where: str) -> tuple[str, Span, Span]:
        """The text to tokenise and the mentions' spans in it (markers inserted where used)."""
        head, tail = entity_pair(example, where)
        if not self.marker_tokens:
            return example.text, head, tail
        text, cursor, moved = "", 0, {}
        for span, (opening, closing) in sorted(
            [(head, self.marker_tokens[:2]), (tail, self.marker_tokens[2:])], key=lambda pair: pair[0].start
        ):
            # Spaces inside the markers keep the mention's words whole; the markers absorb the
            # space before them (lstrip), so no stray space tokens appear.
            text += example.text[cursor : span.start] + opening + " "
            moved[span.label] = Span(len(text), len(text) + span.end - span.start, span.label)
            text += example.text[span.start : span.end] + " " + closing
            cursor = span.end
        return text + example.text[cursor:], moved["head"], moved["tail"]

    def _feature(self, ids: list[int], offsets: list[tuple[int, int]], head_span: Span, tail_span: Span,
                 where: str) -> RelationFeature:
        # A marker takes the space before it, so its offsets can touch a mention's: never a mention token.
        mention = [i for i, t in enumerate(ids) if t not in self.marker_ids]
        head, tail = ([mention[i] for i in tokens_in([offsets[i] for i in mention], span)]
                      for span in (head_span, tail_span))
        for name, tokens in (("head", head), ("tail", tail)):
            if not tokens:
                raise SpanError(f"{where}: the {name} span covers no token (only spaces?)")
        markers = []
        for token, token_id in zip(self.marker_tokens, self.marker_ids, strict=True):
            found = [i for i, t in enumerate(ids) if t == token_id]
            if len(found) != 1:
                raise ValueError(f"{where}: the marker {token} occurs {len(found)} times in the marked text; "
                                 "the text itself must not contain the marker tokens (pass other markers=...)")
            markers += found
        ids, shift, truncated = self._fit(ids, head + tail + markers, where)
        head, tail, markers = ([i + shift for i in group] for group in (head, tail, markers))
        if self.variant in ("mention_pool", "mention_pool_position"):
            gathered: tuple[list[int], ...] = (head, tail)
        elif self.variant == "markers_mention_pool":  # the tokens between each pair of markers
            gathered = tuple(list(range(markers[k] + 1, markers[k + 1])) for k in (0, 2))
        elif self.variant == "markers_start":
            gathered = ([markers[0]], [markers[2]])
        else:
            gathered = ()
        return RelationFeature(self.prefix_ids + ids + self.suffix_ids, head, tail, markers, gathered, truncated)

    def _fit(self, ids: list[int], needed: list[int], where: str) -> tuple[list[int], int, int]:
        """Cut the text to the budget, from the end first, then from the start, keeping every
        ``needed`` token; the kept ids, the shift of old positions to new ones, tokens cut."""
        budget = self.budget
        if budget is None or len(ids) <= budget:
            return ids, len(self.prefix_ids), 0
        low, high = min(needed), max(needed) + 1
        if high - low > budget:
            what = "its two entities and their markers" if self.marker_tokens else "its two entities"
            raise ValueError(
                f"{where}: {what} take {high - low} tokens, more than the {budget} that "
                f"max_length={self.max_length} leaves; raise max_length or drop the example"
            )
        end = max(high, budget)
        start = end - budget
        return ids[start:end], len(self.prefix_ids) - start, len(ids) - budget

    def collate(self, features: Sequence[RelationFeature]) -> Batch:
        """Pad a batch to its longest row: on the left for decoders (whose last token is pooled),
        on the right otherwise; every position moves with the padding."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(f.input_ids) for f in features]
        width = max(lengths)
        left = self.plm.family == "causal"
        shifts = [width - n if left else 0 for n in lengths]
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(features), width), dtype=torch.long)
        for row, (feature, shift) in enumerate(zip(features, shifts, strict=True)):
            input_ids[row, shift : shift + len(feature.input_ids)] = torch.tensor(feature.input_ids)
            attention[row, shift : shift + len(feature.input_ids)] = 1
        batch: Batch = {"input_ids": input_ids, "attention_mask": attention}
        if left:  # absolute-position models (GPT-2) must not count the padding as positions
            batch["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
        if self.markers is not None:
            slots = torch.full_like(input_ids, -1)
            for row, (feature, shift) in enumerate(zip(features, shifts, strict=True)):
                slots[row, [p + shift for p in feature.markers]] = torch.arange(len(feature.markers))
            batch["marker_slot"] = slots
        if self.roles is not None:
            roles = torch.full_like(input_ids, NO_ROLE)
            for row, (feature, shift) in enumerate(zip(features, shifts, strict=True)):
                roles[row, [p + shift for p in feature.head]] = HEAD_ROLE
                roles[row, [p + shift for p in feature.tail]] = TAIL_ROLE
            batch["role_ids"] = roles
        if features[0].gathered:
            longest = max(len(group) for f in features for group in f.gathered)
            index = torch.zeros((len(features), 2, longest), dtype=torch.long)
            valid = torch.zeros((len(features), 2, longest), dtype=torch.bool)
            for row, (feature, shift) in enumerate(zip(features, shifts, strict=True)):
                for g, group in enumerate(feature.gathered):
                    index[row, g, : len(group)] = torch.tensor(group) + shift
                    valid[row, g, : len(group)] = True
            batch["gather_index"], batch["gather_valid"] = index, valid
        return batch

    @staticmethod
    def length(feature: RelationFeature) -> int:
        """Token count of an encoded example (for length-sorted batching)."""
        return len(feature.input_ids)

    # -- scoring
    trunk = HeadModel.trunk  # T5's encoder, otherwise the base model under the LM head
    hidden_states = HeadModel.hidden_states  # (B, T, H), from the inputs ``embed`` builds
    pool = HeadModel.pool  # the family's sentence pooling, padding excluded

    def embed(self, batch: Batch) -> dict[str, Any]:
        """Model inputs: the token embeddings with the marker vectors in place of the marker
        tokens' rows and, for ``mention_pool_position``, the entity-role embeddings added."""
        if self.markers is None and self.roles is None:
            return super().embed(batch)
        inputs: dict[str, Any] = {"attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        if self.markers is not None:
            slot = batch["marker_slot"]
            vectors = self.markers.weight[slot.clamp(min=0)].to(embeds.dtype)
            embeds = torch.where((slot >= 0)[..., None], vectors, embeds)
        if self.roles is not None:
            embeds = embeds + self.roles.weight[batch["role_ids"]].to(embeds.dtype)
        inputs["inputs_embeds"] = embeds
        return self.transform_inputs(inputs, batch)

    def represent(self, batch: Batch) -> torch.Tensor:
        """(B, H) or (B, 2H): what the head classifies."""
        hidden = self.hidden_states(batch)
        if "gather_index" not in batch:
            return self.pool(hidden, batch["attention_mask"])
        index, valid = batch["gather_index"].to(hidden.device), batch["gather_valid"].to(hidden.device)
        rows = torch.arange(hidden.size(0), device=hidden.device)[:, None, None]
        states = hidden[rows, index]  # (B, 2, L, H)
        states = states.masked_fill(~valid[..., None], torch.finfo(states.dtype).min)
        return states.amax(2).flatten(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, C) class log-probabilities."""
        linear = self.head[1]
        logits = self.head(self.represent(batch).to(device=linear.weight.device, dtype=linear.weight.dtype))
        return torch.log_softmax(logits.float(), -1)

    # -- the marker rows of the embedding matrix
    def fold(self) -> bool:
        """Also copy the trained marker vectors into the embedding matrix, so the PLM itself
        embeds the markers as this model does."""
        self.sync_marker_rows()
        return super().fold()

    def train(self, mode: bool = True) -> RelationModel:
        if not mode:  # after training and on load: the matrix rows follow the trained vectors
            self.sync_marker_rows()
        return super().train(mode)

    @torch.no_grad()
    def sync_marker_rows(self) -> None:
        if self.markers is not None:
            matrix = self.model.get_input_embeddings().weight
            matrix[self.marker_ids] = self.markers.weight.to(matrix.device, matrix.dtype)


# ----------------------------------------------------------------------------- markers

def _check_markers(markers: Sequence[str]) -> tuple[str, ...]:
    out = tuple(markers)
    if len(out) != 4 or len(set(out)) != 4 or not all(isinstance(m, str) and m.strip() == m and m for m in out):
        raise ValueError(f"markers are four distinct tokens without spaces (head start, head end, tail start, "
                         f"tail end), got {list(out)}")
    return out


def marker_init(plm: PLM, markers: Sequence[str]) -> torch.Tensor:
    """(markers, H) initial marker vectors: the mean embedding of the pieces each marker's text
    splits into ("[", "/", "E1", "]"), so markers start as bracket-like and distinct. Pieces are
    tokenised one by one, so the result is the same whether or not the markers are added yet."""
    tokenizer, embed = plm.tokenizer, plm.model.get_input_embeddings()
    rows = []
    with torch.no_grad():
        for marker in markers:
            ids = [i for piece in re.findall(r"\w+|[^\w\s]", marker)
                   for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
            # Through the module, so models that scale their embeddings stay exact.
            rows.append(embed(torch.tensor(ids, device=embed.weight.device)).float().mean(0))
    return torch.stack(rows)


def add_markers(plm: PLM, markers: Sequence[str], pristine_fingerprint: str) -> list[int]:
    """Add the markers to the tokenizer as special tokens and grow the embedding matrix by as
    many rows (initialised by ``marker_init``), unless an earlier model on this PLM did; the
    markers' ids. The matrix does not grow where it already has spare rows past the vocabulary
    (T5's)."""
    tokenizer, model = plm.tokenizer, plm.model
    missing = [m for m in markers if m not in tokenizer.get_vocab()]
    if missing:
        table = marker_init(plm, missing)
        _PRISTINE.setdefault(model, pristine_fingerprint)
        # lstrip: a marker takes the space before it, so no lone space token precedes it.
        tokenizer.add_tokens([AddedToken(m, lstrip=True, special=True, normalized=False) for m in missing],
                             special_tokens=True)
        new_ids = tokenizer.convert_tokens_to_ids(missing)
        rows = model.get_input_embeddings().weight.size(0)
        if max(new_ids) >= rows:
            model.resize_token_embeddings(max(new_ids) + 1, mean_resizing=False)
        with torch.no_grad():
            matrix = model.get_input_embeddings().weight
            matrix[new_ids] = table.to(matrix.device, matrix.dtype)
    ids = tokenizer.convert_tokens_to_ids(list(markers))
    if len(set(ids)) != len(ids) or tokenizer.unk_token_id in ids:
        raise ValueError(f"the markers {list(markers)} do not map to distinct tokens of this tokenizer")
    return ids


# ----------------------------------------------------------------------------- classifier

class RelationClassifier(Classifier):
    """Relation classification between ``meta["head"]`` and ``meta["tail"]`` (character spans,
    end exclusive) with one of the six ``VARIANTS``. ``negative_class``: the "no relation" class
    left out of macro-F1 (default: "Other" when it is a class). ``methods`` as in
    ``HeadClassifier`` (e.g. ["lora"]: LoRA, the head and the marker vectors train)."""

    kind = "relation"
    model: RelationModel

    def __init__(
        self,
        plm: PLM | str,
        classes: Sequence[str],
        *,
        variant: Variant = "markers_start",
        negative_class: str | None = "Other",
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        dropout: float = 0.1,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
        markers: Sequence[str] = MARKERS,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        if negative_class == "Other" and "Other" not in classes:
            negative_class = None  # the default, for label sets without SemEval's "Other"
        self.seed = seed
        self.dropout = dropout
        self.model = RelationModel(plm, list(classes), variant=variant, max_length=max_length, dropout=dropout,
                                   methods=methods, seed=seed, markers=markers, negative_class=negative_class)

    @property
    def negative_class(self) -> str | None:
        return self.model.negative_class

    def evaluate(self, examples: Iterable[Example]) -> Evaluation:
        """Accuracy, macro-F1 over the relation classes (not the negative one) and the confusion."""
        evaluation = super().evaluate(examples)
        ignore = () if self.negative_class is None else (self.negative_class,)
        return dataclasses.replace(evaluation, ignore=ignore)

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            **super().describe(),
            "classes": list(model.classes),
            "variant": model.variant,
            "negative_class": model.negative_class,
            "markers": list(model.marker_tokens) or list(MARKERS),
            "dropout": self.dropout,
            "max_length": model.max_length,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> RelationClassifier:
        return cls(plm, description["classes"], variant=description["variant"],
                   negative_class=description["negative_class"], batch_size=description["batch_size"],
                   max_length=description["max_length"], dropout=description["dropout"], seed=description["seed"],
                   markers=description["markers"], methods=methods)
