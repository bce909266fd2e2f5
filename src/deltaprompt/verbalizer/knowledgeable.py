"""Knowledgeable verbalizer (KPT, Hu et al. 2022): many label words per class, refined on unlabelled text.

1. **Expansion.** Each class's label words are joined by related words: given (``related``: a
   dict class -> words, a ``"class: word, word; ..."`` string, or a .txt/.json/.yaml file) and/or
   found in the PLM (``neighbours=k``): the k vocabulary tokens nearest to the class's label
   words in the PLM's input-embedding space (cosine to the mean of their normalised
   embeddings), kept only when they are whole words (letters only, two or more, tokenised back
   to that one token after the mask's space), not already anyone's label word, and nearer to
   this class than to any other. Embedding neighbours are an offline stand-in for the
   knowledge bases KPT used; they bring inflections and synonyms, and also antonyms and noise,
   which is why refinement follows.
2. **Refinement** (``fit_prior`` on unlabelled examples). A word's contextualized prior is its
   mean probability at the mask over the examples (the model's full-vocabulary probability of
   the whole word, as the verbalizer scores it). (a) Frequency: words whose prior is below
   ``min_prior`` are dropped. (b) Relevance: with q(v) the vector of v's probabilities over the
   examples, r(v, c) = cos(q(v), q(class c's own label words)) and
   R(v) = r(v, its class) * (C - 1) / sum of r(v, every other class); words with R(v) below
   ``min_relevance`` (default 1: no closer to their class than to the average other) are
   dropped. A class's own label words are never dropped, so no class is left empty.
3. **Calibration** (``calibrate=True``): every word's probability is divided by its prior
   before the per-class aggregation, so words (and classes) the prompt favours whatever the
   input stop dominating.

``report()`` lists every candidate word with its source, prior and relevance, and why it was
dropped; the refined words and priors are saved and loaded with a classifier.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .manual import Aggregation, LabelWords, MultiToken, Verbalizer, parse_label_words

if TYPE_CHECKING:
    from ..data import Example
    from ..model import PromptModel
    from ..plm import PLM

logger = logging.getLogger(__name__)
LABEL_WORD, RELATED, NEIGHBOUR = "label word", "related", "neighbour"


@dataclass(frozen=True)
class WordDecision:
    """One candidate word: where it came from, its measured prior and relevance, and whether it
    was kept (``reason`` says why not)."""

    cls: str
    word: str
    source: str  # "label word", "related" or "neighbour"
    kept: bool
    prior: float | None = None
    relevance: float | None = None  # None for a class's own label words (they are the reference)
    reason: str = ""


class KnowledgeableVerbalizer(Verbalizer):
    """KPT's verbalizer: label words expanded with related words, refined and calibrated by their
    prior on unlabelled examples (see the module docstring for each step).

    Until ``fit_prior`` runs it scores like a manual verbalizer over the label words and the
    ``related`` words. ``fit_prior(classifier_or_model, unlabelled)`` adds the ``neighbours``
    (once), measures every candidate's prior, keeps and drops words, and from then on divides
    each word's probability by its prior (``calibrate``). ``multi_token`` as for the manual
    verbalizer, except ``"masks"``.
    """

    type_name: ClassVar[str] = "knowledgeable"

    def __init__(
        self,
        label_words: Any,
        classes: Sequence[str] | None = None,
        related: Any = None,
        *,
        neighbours: int = 0,
        min_prior: float = 1e-5,
        min_relevance: float = 1.0,
        calibrate: bool = True,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
    ):
        if multi_token == "masks":
            raise ValueError("the knowledgeable verbalizer reads one mask; use multi_token 'first', 'mean' or 'max'")
        if neighbours < 0:
            raise ValueError(f"neighbours must be 0 or more, got {neighbours}")
        if min_prior < 0 or min_relevance < 0:
            raise ValueError(f"min_prior and min_relevance cannot be negative, got {min_prior} and {min_relevance}")
        super().__init__(label_words, classes, aggregation=aggregation, multi_token=multi_token)
        self.seed_words: dict[str, tuple[str, ...]] = dict(self.label_words)
        self.neighbours = neighbours
        self.min_prior, self.min_relevance, self.calibrate = float(min_prior), float(min_relevance), calibrate
        self.conflicts: list[WordDecision] = []
        self.related_words = self._clean_related(related)
        self.neighbour_words: dict[str, tuple[str, ...]] | None = None
        self.prior: dict[str, dict[str, float]] | None = None  # class -> word -> prior, for the kept words
        self.decisions: list[WordDecision] = list(self.conflicts)
        self.fitted_on = 0  # number of unlabelled examples the prior was measured on
        self._log_prior: tuple[Any, torch.Tensor] | None = None
        self.label_words = self.candidates()

    def __repr__(self) -> str:
        counts = ", ".join(f"{c}: {len(w)}" for c, w in self.label_words.items())
        state = f"refined on {self.fitted_on} examples" if self.prior is not None else "not refined"
        return f"KnowledgeableVerbalizer(words per class {{{counts}}}, {state}, calibrate={self.calibrate})"

    # -- candidates
    def _clean_related(self, related: Any) -> dict[str, tuple[str, ...]]:
        """Related words per class, minus label words and words listed for several classes (recorded as conflicts)."""
        out: dict[str, tuple[str, ...]] = {c: () for c in self.classes}
        if related is None:
            return out
        mapping = parse_label_words(related, self.classes)
        unknown = [c for c in mapping if c not in out]
        if unknown:
            raise ValueError(f"related words for unknown classes {unknown} (classes: {list(self.classes)})")
        owner_of_seed = {w.strip(): c for c, words in self.seed_words.items() for w in words}
        claims: dict[str, set[str]] = {}
        for cls, words in mapping.items():
            for word in words:
                claims.setdefault(word.strip(), set()).add(cls)
        for cls, words in mapping.items():
            kept: list[str] = []
            for word in dict.fromkeys(w.strip() for w in words):
                seed_owner = owner_of_seed.get(word)
                if seed_owner == cls:
                    continue  # already a label word of this class
                if seed_owner is not None:
                    reason = f"a label word of class {seed_owner!r}"
                elif len(claims[word]) > 1:
                    reason = f"listed for several classes: {sorted(claims[word])}"
                else:
                    kept.append(word)
                    continue
                self.conflicts.append(WordDecision(cls, word, RELATED, kept=False, reason=reason))
            out[cls] = tuple(kept)
        return out

    def candidates(self) -> dict[str, tuple[str, ...]]:
        """Every word a class may use before refinement: label words, related words, neighbours."""
        neighbours = self.neighbour_words or {}
        return {c: tuple(dict.fromkeys((*self.seed_words[c], *self.related_words[c], *neighbours.get(c, ()))))
                for c in self.classes}

    def source_of(self, cls: str, word: str) -> str:
        if word in self.seed_words[cls]:
            return LABEL_WORD
        return RELATED if word in self.related_words[cls] else NEIGHBOUR

    # -- refinement
    def fit_prior(
        self,
        model: Any,
        unlabelled: Sequence[Example | str],
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> KnowledgeableVerbalizer:
        """Expand (neighbours, once), measure each candidate's prior on ``unlabelled``, refine, and
        calibrate from then on. ``model``: the ``PromptClassifier`` or ``PromptModel`` built with
        this verbalizer; its label words are re-bound to the kept ones. Refitting starts again
        from all candidates."""
        from ..data import as_examples

        prompt_model, classifier = _prompt_model_of(model, self)
        examples = as_examples(unlabelled)
        if not examples:
            raise ValueError("fit_prior needs unlabelled examples to measure the label words' priors on")
        if self.neighbours and self.neighbour_words is None:
            taken = [w for words in self.candidates().values() for w in words]
            self.neighbour_words = embedding_neighbours(
                prompt_model.plm, self.seed_words, self.neighbours, prompt_model.template.mask_part.prefix or "", taken
            )
        self.prior, self._log_prior = None, None
        self.label_words = self.candidates()
        prompt_model.rebind()
        log_probs = collect_word_log_probs(prompt_model, examples, batch_size, progress)
        self._refine(log_probs)
        self.fitted_on = len(examples)
        prompt_model.rebind()
        if classifier is not None and getattr(classifier, "calibration", None) is not None:
            logger.warning("contextual calibration was measured with the unrefined words; it is dropped "
                           "(call calibrate() again if you want it)")
            classifier.calibration = None
        return self

    def _refine(self, log_probs: torch.Tensor) -> None:
        """Keep or drop every candidate from its (N, W) log-probabilities over the unlabelled examples."""
        probs = log_probs.double().exp()
        prior = probs.mean(0)
        entries = [(c, w) for c, words in self.label_words.items() for w in words]
        own = torch.tensor([self.classes.index(c) for c, _ in entries])
        is_seed = torch.tensor([self.source_of(c, w) == LABEL_WORD for c, w in entries])
        anchors = torch.stack([probs[:, (own == k) & is_seed].mean(1) for k in range(len(self.classes))])  # (C, N)
        similarity = F.normalize(probs.T, dim=-1) @ F.normalize(anchors, dim=-1).T  # (W, C)
        decisions, kept = list(self.conflicts), {c: [] for c in self.classes}
        prior_of: dict[str, dict[str, float]] = {c: {} for c in self.classes}
        for j, (cls, word) in enumerate(entries):
            source, p = self.source_of(cls, word), float(prior[j])
            relevance = None if source == LABEL_WORD else _relevance(similarity[j], int(own[j]))
            reason = ""
            if source != LABEL_WORD and p < self.min_prior:
                reason = f"prior {p:.2g} below min_prior {self.min_prior:g}"
            elif relevance is not None and relevance < self.min_relevance:
                reason = f"relevance {relevance:.2f} below min_relevance {self.min_relevance:g}"
            decisions.append(WordDecision(cls, word, source, not reason, p, relevance, reason))
            if not reason:
                kept[cls].append(word)
                prior_of[cls][word] = p
        self.decisions = decisions
        self.label_words = {c: tuple(w) for c, w in kept.items()}
        self.prior = prior_of

    # -- scoring
    def aggregate(self, word_scores: torch.Tensor, bound: LabelWords) -> torch.Tensor:
        """As the manual verbalizer, each word's probability first divided by its prior (when
        refined and ``calibrate``)."""
        if self.prior is not None and self.calibrate:
            word_scores = word_scores - self._log_prior_for(bound, word_scores.device).to(word_scores.dtype)
        return super().aggregate(word_scores, bound)

    def _log_prior_for(self, bound: LabelWords, device: torch.device) -> torch.Tensor:
        key = (bound.words, bound.classes, device)
        if self._log_prior is None or self._log_prior[0] != key:
            assert self.prior is not None
            values = [self.prior[c][w] for c, words in self.label_words.items() for w in words]
            if len(values) != len(bound.words):
                raise ValueError("the bound label words are not the refined ones; rebuild the model with this "
                                 "verbalizer")
            tensor = torch.tensor(values, dtype=torch.float64).clamp(min=1e-30).log().float().to(device)
            self._log_prior = (key, tensor)
        return self._log_prior[1]

    # -- reading
    def report(self) -> str:
        """Every candidate word per class: kept (+) or dropped (-), its source, prior, relevance, and why."""
        if self.prior is None:
            lines = ["not refined yet (fit_prior); candidate words:"]
            lines += [f"{c}: {', '.join(words)}" for c, words in self.label_words.items()]
            lines += [f"  - {d.cls}: {d.word} ({d.source}) dropped: {d.reason}" for d in self.decisions]
            return "\n".join(lines)
        total = sum(1 for d in self.decisions)
        kept = sum(d.kept for d in self.decisions)
        lines = [f"{kept} of {total} candidate words kept (priors from {self.fitted_on} unlabelled examples; "
                 f"min_prior {self.min_prior:g}, min_relevance {self.min_relevance:g})"]
        width = max((len(d.word) for d in self.decisions), default=4)
        for cls in self.classes:
            mine = [d for d in self.decisions if d.cls == cls]
            lines.append(f"{cls} ({sum(d.kept for d in mine)} of {len(mine)} kept)")
            for d in mine:
                prior = f"prior {d.prior:.2e}" if d.prior is not None else " " * 14
                relevance = f"relevance {d.relevance:5.2f}" if d.relevance is not None else ""
                why = f"  dropped: {d.reason}" if d.reason else ""
                line = f"  {'+' if d.kept else '-'} {d.word:<{width}}  {d.source:<10}  {prior}  {relevance}{why}"
                lines.append(line.rstrip())
        return "\n".join(lines)

    # -- saving
    def to_config(self) -> dict[str, Any]:
        neighbour_words = self.neighbour_words
        return {
            "type": self.type_name,
            "label_words": {c: list(w) for c, w in self.seed_words.items()},
            "related": {c: list(w) for c, w in self.related_words.items() if w} or None,
            "neighbours": self.neighbours,
            "neighbour_words": None if neighbour_words is None else {c: list(w) for c, w in neighbour_words.items()},
            "min_prior": self.min_prior,
            "min_relevance": self.min_relevance,
            "calibrate": self.calibrate,
            "aggregation": self.aggregation,
            "multi_token": self.multi_token,
            "words": {c: list(w) for c, w in self.label_words.items()},
            "prior": self.prior,
            "fitted_on": self.fitted_on,
            "decisions": [asdict(d) for d in self.decisions],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KnowledgeableVerbalizer:
        verbalizer = cls(config["label_words"], related=config.get("related"), neighbours=config["neighbours"],
                         min_prior=config["min_prior"], min_relevance=config["min_relevance"],
                         calibrate=config["calibrate"], aggregation=config["aggregation"],
                         multi_token=config["multi_token"])
        if config.get("neighbour_words") is not None:
            verbalizer.neighbour_words = {c: tuple(w) for c, w in config["neighbour_words"].items()}
        verbalizer.label_words = {c: tuple(w) for c, w in config["words"].items()}
        verbalizer.prior = config.get("prior")
        verbalizer.fitted_on = config.get("fitted_on", 0)
        verbalizer.decisions = [WordDecision(**d) for d in config.get("decisions", [])]
        verbalizer.conflicts = [d for d in verbalizer.decisions if d.prior is None]  # set aside before measuring
        return verbalizer


def _relevance(similarity: torch.Tensor, own: int) -> float:
    """KPT's R(v): similarity to its class over the mean similarity to the other classes."""
    others = float(similarity.sum() - similarity[own])
    count = similarity.numel() - 1
    if count == 0:
        return math.inf
    return float(similarity[own]) * count / others if others > 0 else math.inf


def _prompt_model_of(model: Any, verbalizer: Verbalizer) -> tuple[PromptModel, Any]:
    """The prompt model (and the classifier around it, if one was given) built with ``verbalizer``."""
    from ..model import PromptModel

    classifier = None
    if not isinstance(model, PromptModel):
        inner = getattr(model, "model", None)
        if not isinstance(inner, PromptModel):
            raise TypeError(f"fit_prior needs a PromptClassifier or PromptModel, got {type(model).__name__}")
        classifier, model = model, inner
    if model.verbalizer is not verbalizer:
        raise ValueError("this model was built with another verbalizer; build it with this one, e.g. "
                         "PromptClassifier(plm, template, verbalizer), then call verbalizer.fit_prior(classifier, ...)")
    return model, classifier


def collect_word_log_probs(
    model: PromptModel, examples: Sequence[Example], batch_size: int = 32, progress: bool | None = None
) -> torch.Tensor:
    """(N, W) true log-probabilities of the model's label words at the mask for each example,
    in batches sorted by length, in eval mode, without gradients."""
    features = model.encode(examples)
    order = sorted(range(len(features)), key=lambda i: model.length(features[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out = torch.empty(len(features), len(model.label_words.words), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            bar = tqdm(batches, desc="label-word priors", unit="batch",
                       disable=(not progress) if progress is not None else (len(batches) <= 4 or None))
            for rows in bar:
                batch = model.to_device(model.collate([features[i] for i in rows]))
                out[rows] = model.word_log_probs(batch).double().cpu()
    finally:
        model.train(was_training)
    return out


def embedding_neighbours(
    plm: PLM,
    words_by_class: dict[str, Sequence[str]],
    per_class: int,
    prefix: str = " ",
    exclude: Sequence[str] = (),
) -> dict[str, tuple[str, ...]]:
    """Up to ``per_class`` whole-word vocabulary tokens nearest each class's words in the PLM's
    input-embedding space (cosine to the mean normalised embedding of the class's tokens), each
    nearer to its class than to any other, none of them in ``exclude`` or already a class word
    (compared in lower case). Whole word: letters only, two or more, and ``prefix + word``
    tokenises to exactly that token, so it binds as a one-token label word."""
    tokenizer = plm.tokenizer
    table = plm.model.get_input_embeddings().weight.detach().float()
    size = min(table.size(0), len(tokenizer))
    normed = F.normalize(table[:size], dim=-1)
    centroids = []
    for cls, words in words_by_class.items():
        ids = [i for w in words for i in tokenizer(_spaced(prefix, w), add_special_tokens=False)["input_ids"]]
        if not ids:
            raise ValueError(f"class {cls!r} has no label-word tokens to find neighbours of")
        centroids.append(F.normalize(normed[ids].mean(0), dim=0))
    similarity = normed @ torch.stack(centroids).T  # (V, C)
    nearest = similarity.argmax(1)
    special = set(tokenizer.all_special_ids)
    taken = {w.strip().lower() for w in exclude} | {w.strip().lower() for ws in words_by_class.values() for w in ws}
    out: dict[str, tuple[str, ...]] = {}
    for k, cls in enumerate(words_by_class):
        order = torch.argsort(similarity[:, k], descending=True)
        order = order[nearest[order] == k].tolist()
        found: list[str] = []
        for start in range(0, len(order), 512):
            if len(found) >= per_class:
                break
            ids = [i for i in order[start : start + 512] if i not in special]
            texts = [t.strip() for t in tokenizer.batch_decode([[i] for i in ids])]
            pairs = [(i, t) for i, t in zip(ids, texts, strict=True)
                     if len(t) >= 2 and t.isalpha() and t.lower() not in taken]
            if not pairs:
                continue
            encoded = tokenizer([_spaced(prefix, t) for _, t in pairs], add_special_tokens=False)["input_ids"]
            for (i, text), ids_back in zip(pairs, encoded, strict=True):
                if list(ids_back) == [i] and text.lower() not in taken:
                    found.append(text)
                    taken.add(text.lower())
                    if len(found) >= per_class:
                        break
        out[cls] = tuple(found)
    return out


def _spaced(prefix: str, word: str) -> str:
    """A word as it follows the mask (the manual verbalizer's ``bind`` rule)."""
    return word if word[:1].isspace() else prefix + word
