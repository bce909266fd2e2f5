"""In-context learning: classify with labelled demonstrations in the prompt, no training.

    clf = ICLClassifier("smollm2-135m", "Review: {text}\\nSentiment: {mask}",
                        {"negative": "negative", "positive": "positive"},
                        demonstrations=pool, shots=8, selection="balanced", calibrate=True)
    clf.predict(["a gripping, funny film"])

Each demonstration is the template filled with a pool example and its class's first label word
in place of the mask. Where they go depends on how the model reads:

- decoder LMs (GPT-2, Llama, SmolLM2): before the query, joined by ``separator`` (GPT-3's
  layout); the verbalizer reads the token after the query's prompt;
- masked LMs (BERT, RoBERTa): after the query, each behind a separator (LM-BFF's layout); the
  mask stays in the query;
- seq2seq LMs (T5): before the query in the encoder input, as for decoders (the natural reading
  order); the decoder answers the query's sentinel.

The demonstrations are one template field (``{"meta": "_icl_demonstrations"}``) tokenised on its
own and never shortened, so a prompt's token ids are exactly: special prefix, demonstrations,
query. That makes the shared-prefix cache exact: when every query gets the same demonstrations
(``random``/``balanced`` selection draws one set per seed), a decoder LM encodes them once into a
key/value cache that every batch continues from, instead of recomputing them for each query.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import artifacts
from .classifier import CONTENT_FREE, Classifier, _resolve_plm
from .data import Example, as_examples
from .kv_cache import get_cache, put_cache
from .model import Batch, PromptModel
from .plm import PLM, Family, _quiet_transformers, resolve
from .scoring import trunk
from .template import POST_PROCESSORS, Part, Template
from .tokenization import Encoding, PromptTokenizer, Truncation
from .verbalizer import Aggregation, MultiToken, Verbalizer

Selection = Literal["random", "balanced", "knn"]
SELECTIONS: tuple[Selection, ...] = ("random", "balanced", "knn")
Order = Literal["random", "similarity", "fixed"]
ORDERS: tuple[Order, ...] = ("random", "similarity", "fixed")
DEMONSTRATIONS_FIELD = "_icl_demonstrations"
DEFAULT_ENCODER = "minilm-l6"
Plan = tuple[int, ...]  # pool indices of one prompt's demonstrations, in context order
EncoderSpec = str | PLM | Callable[[list[str]], Any]
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- sentence embeddings

class SentenceEncoder:
    """Sentence embeddings for nearest-neighbour selection: an encoder's last hidden states,
    mean-pooled over the real tokens and L2-normalised (how sentence-transformers' MiniLM is
    used), so a dot product is the cosine similarity.

    ``source``: a model name, folder or alias (loaded on first use, so selections that need no
    embeddings never load it), a loaded ``PLM``, or a function from a list of texts to an
    (n, dim) array of your own embeddings.
    """

    def __init__(self, source: EncoderSpec, device: str | torch.device | None = None,
                 batch_size: int = 64, max_length: int = 256):
        if not (isinstance(source, str | PLM) or callable(source)):
            raise TypeError(f"encoder must be a model name, a PLM or a function, got {type(source).__name__}")
        self.source = source
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._loaded: tuple[Any, Any] | None = None

    @property
    def name(self) -> str | None:
        """What ``load`` can rebuild the encoder from (None for a function)."""
        if isinstance(self.source, str):
            return self.source
        if isinstance(self.source, PLM):
            return self.source.name or None
        return None

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            if isinstance(self.source, PLM):
                model, tokenizer = self.source.model, self.source.tokenizer
            else:
                from transformers import AutoModel, AutoTokenizer

                path = resolve(self.source)  # type: ignore[arg-type]
                with _quiet_transformers():
                    tokenizer = AutoTokenizer.from_pretrained(path)
                    model = AutoModel.from_pretrained(path)
                if self.device is not None:
                    model.to(self.device)
                model.eval()
            # The stack that encodes: T5's encoder, a BERT/Llama body without its LM head.
            model = model.get_encoder() if model.config.is_encoder_decoder else model.base_model
            self._loaded = (model, tokenizer)
        return self._loaded

    def __call__(self, texts: Sequence[str], progress: bool | None = None) -> torch.Tensor:
        """(len(texts), dim) unit-length float32 embeddings on the CPU."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, 0)
        if not isinstance(self.source, str | PLM):
            embeddings = torch.as_tensor(np.asarray(self.source(texts)), dtype=torch.float32)
            if embeddings.dim() != 2 or embeddings.size(0) != len(texts):
                raise ValueError(f"the encoder function must return one vector per text, got shape "
                                 f"{tuple(embeddings.shape)} for {len(texts)} texts")
            return F.normalize(embeddings, dim=-1)
        model, tokenizer = self._model()
        ids = tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        out: torch.Tensor | None = None
        device = next(model.parameters()).device
        bar = tqdm(batches, desc="embedding", unit="batch",
                   disable=(not progress) if progress is not None else (len(batches) <= 4 or None))
        with torch.inference_mode():
            for rows in bar:
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.zeros(len(rows), width, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for n, i in enumerate(rows):  # padding by hand: not every tokenizer has a pad token
                    input_ids[n, : len(ids[i])] = torch.tensor(ids[i])
                    mask[n, : len(ids[i])] = 1
                hidden = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                weights = mask.to(device, hidden.dtype)[..., None]
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
                if out is None:
                    out = torch.empty(len(texts), pooled.size(-1))
                out[rows] = pooled.float().cpu()
        assert out is not None
        return F.normalize(out, dim=-1)


def _embedding_text(example: Example) -> str:
    return example.text if example.text_b is None else f"{example.text} {example.text_b}"


def _key(example: Example) -> tuple[str, str | None]:
    """What makes a pool example "the query itself"."""
    return example.text, example.text_b


# ----------------------------------------------------------------------------- selection

class DemonstrationSelector:
    """Which pool examples each query gets, most relevant first, and in which order they stand.

    ``random``/``balanced`` draw one set with ``seed`` and give it to every query (``per_query``:
    a fresh draw per query instead, seeded by ``seed`` and the query's text); ``balanced`` takes
    the classes in turn, so class counts differ by at most one. ``knn`` takes the ``shots``
    nearest pool examples by sentence embedding. A pool example with the query's own text (and
    text_b) is never chosen; the next candidate takes its place.
    """

    def __init__(
        self,
        pool: Sequence[Example],
        classes: Sequence[str],
        shots: int,
        selection: Selection,
        order: Order,
        seed: int,
        per_query: bool,
        encoder: SentenceEncoder,
    ):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise ValueError(f"shots must be a whole number >= 0, got {shots!r}")
        if shots > len(pool):
            raise ValueError(
                f"{shots} shots asked for but the pool holds {len(pool)} examples; give more "
                "demonstrations or fewer shots"
            )
        for i, example in enumerate(pool):
            if example.label not in classes:
                raise ValueError(
                    f"demonstration {i} ({example.text[:40]!r}) has label {example.label!r}, not one of the "
                    f"classes {list(classes)}; every demonstration needs a class label"
                )
        self.pool = list(pool)
        self.shots = shots
        self.selection = selection
        self.order = order
        self.seed = seed
        self.per_query = per_query and selection != "knn"
        self.encoder = encoder
        self.keys = [_key(e) for e in self.pool]
        self.key_counts = Counter(self.keys)
        self.by_class = {c: [i for i, e in enumerate(self.pool) if e.label == c] for c in classes}
        self._pool_embeddings: torch.Tensor | None = None
        # One draw for every query: the candidates in draw order, and the first ``shots`` of them.
        self.fixed_set = selection != "knn" and not self.per_query and shots > 0
        self._candidates = self._draw(random.Random(seed), None) if self.fixed_set else []
        self.fixed: Plan | None = tuple(self._walk(self._candidates, None)) if self.fixed_set else None

    @property
    def shared(self) -> Plan | None:
        """The demonstrations every query gets, most relevant first, when there is such a set
        (a fixed draw not reordered per query by similarity)."""
        return self.fixed if self.order != "similarity" else None

    @property
    def needs_embeddings(self) -> bool:
        return self.shots > 0 and (self.selection == "knn" or self.order == "similarity")

    def restore(self, fixed: Sequence[int]) -> None:
        """Use a saved fixed set (so a loaded classifier has the demonstrations it was saved with,
        even if drawing were ever to change)."""
        fixed = tuple(int(i) for i in fixed)
        if not self.fixed_set or len(fixed) != self.shots or any(not 0 <= i < len(self.pool) for i in fixed):
            raise artifacts.ArtifactError(f"saved demonstrations {list(fixed)} do not fit this pool and settings")
        if fixed != self.fixed:
            rest = [i for i in self._walk(self._candidates, None, len(self.pool)) if i not in fixed]
            self._candidates = [list(fixed) + rest]
            self.fixed = fixed

    # -- drawing
    def _draw(self, rng: random.Random, limit: int | None) -> list[list[int]]:
        """Candidate lists in draw order (one list, or one per class for ``balanced``)."""
        if self.selection == "random":
            population = range(len(self.pool))
            return [rng.sample(population, len(population) if limit is None else min(limit, len(population)))]
        classes = [c for c, members in self.by_class.items() if members]
        rng.shuffle(classes)  # which classes get the extra shot when shots % classes != 0
        lists = []
        for c in classes:
            members = self.by_class[c]
            lists.append(rng.sample(members, len(members) if limit is None else min(limit, len(members))))
        return lists

    def _walk(self, lists: list[list[int]], skip: tuple[str, str | None] | None,
              count: int | None = None) -> list[int]:
        """Take ``count`` (default ``shots``) candidates, the lists in turn, passing over the
        query's own text."""
        count = self.shots if count is None else count
        pointers = [0] * len(lists)
        chosen: list[int] = []
        while len(chosen) < count:
            moved = False
            for j, candidates in enumerate(lists):
                while pointers[j] < len(candidates) and self.keys[candidates[pointers[j]]] == skip:
                    pointers[j] += 1
                if pointers[j] < len(candidates):
                    chosen.append(candidates[pointers[j]])
                    pointers[j] += 1
                    moved = True
                    if len(chosen) == count:
                        break
            if not moved:
                break
        return chosen

    # -- per query
    def pool_embeddings(self, progress: bool | None = None) -> torch.Tensor:
        """The pool's embeddings, computed once."""
        if self._pool_embeddings is None:
            self._pool_embeddings = self.encoder([_embedding_text(e) for e in self.pool], progress)
        return self._pool_embeddings

    def rank(self, queries: Sequence[Example], progress: bool | None = None) -> list[list[int]]:
        """Per query, its demonstrations, most relevant first (by similarity for ``knn`` or
        ``order="similarity"``, else in draw order)."""
        if self.shots == 0:
            return [[] for _ in queries]
        query_embeddings = None
        if self.needs_embeddings and queries:
            pool = self.pool_embeddings(progress)
            query_embeddings = self.encoder([_embedding_text(q) for q in queries], progress)
            if query_embeddings.size(-1) != pool.size(-1):
                raise ValueError(f"query embeddings have {query_embeddings.size(-1)} dimensions, the pool's "
                                 f"{pool.size(-1)}")
        if self.selection == "knn":
            assert query_embeddings is not None
            return self._nearest(queries, query_embeddings)
        chosen = []
        for query in queries:
            key = _key(query)
            if self.fixed is not None:
                picked = list(self.fixed) if key not in self.key_counts else self._walk(self._candidates, key)
            else:
                rng = random.Random(f"{self.seed}\x1f{query.text}\x1f{query.text_b}")
                picked = self._walk(self._draw(rng, self.shots + self.key_counts[key]), key)
            chosen.append(picked)
        if self.order == "similarity" and query_embeddings is not None:
            pool = self.pool_embeddings()
            for n, picked in enumerate(chosen):
                scores = pool[picked] @ query_embeddings[n]
                ranking = torch.sort(scores, descending=True, stable=True).indices.tolist()
                chosen[n] = [picked[r] for r in ranking]
        return chosen

    def _nearest(self, queries: Sequence[Example], embeddings: torch.Tensor, chunk: int = 256) -> list[list[int]]:
        pool = self.pool_embeddings()
        chosen: list[list[int]] = []
        for start in range(0, len(queries), chunk):
            scores = embeddings[start : start + chunk] @ pool.T
            # Stable: ties go to the earlier pool example, whatever the platform.
            ranking = torch.sort(scores, dim=1, descending=True, stable=True).indices
            for n, row in enumerate(ranking):
                key = _key(queries[start + n])
                wanted = self.shots + self.key_counts[key]
                chosen.append([i for i in row[:wanted].tolist() if self.keys[i] != key][: self.shots])
        return chosen

    def arrange(self, chosen: Sequence[int], after_query: bool) -> Plan:
        """Context order: ``similarity`` puts the most similar next to the query (last before
        it, or first after it); ``random`` shuffles with the seed (the same set always comes out
        in the same order); ``fixed`` keeps pool order."""
        if self.order == "fixed":
            return tuple(sorted(chosen))
        if self.order == "similarity":
            return tuple(chosen) if after_query else tuple(reversed(chosen))
        arranged = list(chosen)
        random.Random(f"{self.seed}\x1forder\x1f{','.join(map(str, chosen))}").shuffle(arranged)
        return tuple(arranged)


# ----------------------------------------------------------------------------- rendering

def render_demonstration(template: Template, example: Example, label_word: str,
                         special: Callable[[Part], str]) -> str:
    """The whole template filled with ``example`` and ``label_word`` in place of the mask
    (text after the mask included); ``special`` spells a special-token part."""
    pieces = []
    for part in template.parts:
        if part.kind == "field":
            pieces.append(template.field_text(part, example))
        elif part.kind == "text":
            pieces.append(part.prefix + (part.value or ""))
        elif part.kind == "mask":
            pieces.append(label_word if label_word[:1].isspace() else part.prefix + label_word)
        elif part.kind == "special":
            pieces.append(part.prefix + special(part))
        else:
            raise ValueError("in-context learning does not train, so its template cannot have soft tokens")
    return "".join(pieces)


# ----------------------------------------------------------------------------- the model

@dataclass(frozen=True, slots=True)
class ICLFeature:
    """One encoded query: ``feature`` as ``PromptModel`` encodes it (the whole prompt), or, when
    ``shared``, only the query's tokens, to be read after the cached demonstrations."""

    feature: Any
    plan: Plan
    shared: bool


class SharedPrefix:
    """The shared demonstrations' keys and values, computed once per model and device.

    A forward pass appends to the cache it is given, so every batch gets its own copy,
    repeated over the batch (``cache_for``)."""

    def __init__(self, model: Any):
        self.model = model
        self.ids: tuple[int, ...] = ()
        self._cache: Any = None
        self._key: tuple[torch.device, torch.dtype] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def set(self, ids: Sequence[int]) -> None:
        ids = tuple(ids)
        if ids != self.ids:
            self.ids, self._cache = ids, None

    def cache_for(self, batch_size: int, device: torch.device) -> Any:
        key = (device, self.model.dtype)
        if self._cache is None or self._key != key:
            was_training = self.model.training
            self.model.eval()
            try:
                # Outside inference mode, so the cache can also serve a later plain no_grad call.
                with torch.inference_mode(False), torch.no_grad():
                    ids = torch.tensor([self.ids], device=device)
                    output = trunk(self.model)(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
            finally:
                self.model.train(was_training)
            self._cache, self._key = get_cache(output), key
        cache = copy.deepcopy(self._cache)
        cache.batch_repeat_interleave(batch_size)
        return cache


class SharedPrefixInputs:
    """Input transform for batches of query-only rows: the cached demonstrations as
    the cache, the attention mask widened to cover them (left padding then sits
    between them and the query, masked), the query's positions moved past them."""

    def __init__(self, prefix: SharedPrefix):
        self.prefix = prefix

    def __call__(self, inputs: dict[str, Any], batch: Batch) -> dict[str, Any]:
        if "shared_prefix" not in batch:
            return inputs
        out = dict(inputs)
        mask = out["attention_mask"]
        count = len(self.prefix)
        put_cache(out, self.prefix.cache_for(mask.size(0), mask.device))
        out["attention_mask"] = torch.cat([mask.new_ones(mask.size(0), count), mask], 1)
        out["position_ids"] = out["position_ids"] + count
        return out


class ICLModel(PromptModel):
    """A ``PromptModel`` whose template holds the demonstrations: ``encode`` picks them per query
    (``selector``), fits them into ``max_length`` by dropping the least relevant, and, for a
    decoder LM whose queries share them, encodes only the query against a cached prefix."""

    def __init__(
        self,
        plm: PLM,
        template: Template,
        verbalizer: Verbalizer,
        selector: DemonstrationSelector,
        separator: str | None = None,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        share_prefix: bool = True,
    ):
        if template.has_soft_tokens:
            raise ValueError("in-context learning does not train, so its template cannot have soft tokens")
        if DEMONSTRATIONS_FIELD in template.fields:
            raise ValueError(f"the field name {DEMONSTRATIONS_FIELD!r} is reserved for the demonstrations")
        after_query = plm.family == "masked"  # LM-BFF: demonstrations follow the query
        block = f'{{"meta": "{DEMONSTRATIONS_FIELD}", "shortenable": False, "add_prefix_space": ""}}'
        text = template.text + block if after_query else block + template.text
        super().__init__(plm, Template(text, post_processors=template.post_processors), verbalizer,
                         max_length=max_length, truncation=truncation)
        self.after_query = after_query
        self.source_template = template
        self.separator = separator if separator is not None else default_separator(plm.tokenizer, plm.family)
        self.share_prefix = share_prefix
        self.progress: bool | None = None
        # The query alone, never truncated: its length decides how many demonstrations fit,
        # and for shared prefixes its tokens are what the model reads after the cache.
        with warnings.catch_warnings():  # parts a causal LM ignores were already warned about
            warnings.simplefilter("ignore", UserWarning)
            self.query_tokenizer = PromptTokenizer(plm.tokenizer, template, plm.family, max_length=None,
                                                   truncation=truncation, mask_span=self.spans[-1])
        self.shared_prefix = SharedPrefix(self.model)
        self.input_transforms.append(SharedPrefixInputs(self.shared_prefix))
        self._demonstration_ids: dict[Plan, list[int]] = {}
        self.set_selector(selector)

    def set_selector(self, selector: DemonstrationSelector) -> None:
        """Use another pool or selection (the rendered demonstrations and caches start afresh)."""
        words = self.verbalizer.label_words
        tokenizer = self.plm.tokenizer

        def special(part: Part) -> str:  # the tokenizer's own spelling: <eos> -> </s>, [SEP]...
            return tokenizer.convert_ids_to_tokens(self.prompt_tokenizer._special_id(part))

        self.rendered = [
            render_demonstration(self.source_template, e, words[e.label][0], special)  # type: ignore[index]
            for e in selector.pool
        ]
        self.selector = selector
        self._demonstration_ids = {}
        self.shared_prefix.set(())

    # -- demonstrations
    @property
    def shared_plan(self) -> Plan | None:
        """The demonstrations every query gets, in context order (None: they differ per query)."""
        shared = self.selector.shared
        return None if shared is None else self.selector.arrange(shared, self.after_query)

    @property
    def caches_prefix(self) -> bool:
        """Whether queries with the shared demonstrations continue from a cached prefix."""
        return (self.share_prefix and self.family == "causal" and self.shared_plan is not None
                and len(self.prompt_tokenizer.prefix_ids) + len(self.demonstration_ids(self.shared_plan)) > 0)

    def demonstration_text(self, plan: Plan) -> str:
        if self.after_query:
            return "".join(self.separator + self.rendered[i] for i in plan)
        return "".join(self.rendered[i] + self.separator for i in plan)

    def demonstration_ids(self, plan: Plan) -> list[int]:
        """The demonstrations' tokens, as the template tokenises their field."""
        ids = self._demonstration_ids.get(plan)
        if ids is None:
            if len(self._demonstration_ids) > 4096:
                self._demonstration_ids.clear()
            ids = self.prompt_tokenizer._batch_ids([self.demonstration_text(plan)])[0] if plan else []
            self._demonstration_ids[plan] = ids
        return ids

    def with_demonstrations(self, example: Example, plan: Plan) -> Example:
        return Example(example.text, example.text_b, example.label,
                       {**example.meta, DEMONSTRATIONS_FIELD: self.demonstration_text(plan)})

    def plan(self, examples: Sequence[Example], queries: Sequence[Encoding] | None = None) -> list[Plan]:
        """Every example's demonstrations in context order, within the token budget: while a
        prompt is too long, its least relevant demonstration goes (the query is never cut for
        them)."""
        if queries is None:
            queries = self.query_tokenizer.encode(examples)
        budget = self.prompt_tokenizer.max_length
        plans, shortened = [], 0
        for chosen, query in zip(self.selector.rank(examples, self.progress), queries, strict=True):
            plan = self.selector.arrange(chosen, self.after_query)
            if budget is not None:
                room = budget - len(query.input_ids)
                while plan and len(self.demonstration_ids(plan)) > room:
                    chosen = chosen[:-1]
                    plan = self.selector.arrange(chosen, self.after_query)
                    shortened += 1
            plans.append(plan)
        if shortened:
            logger.info("dropped %d demonstrations to fit max_length=%s", shortened, budget)
        return plans

    # -- data
    def encode(self, examples: Sequence[Example], plans: Sequence[Plan] | None = None) -> list[Any]:  # type: ignore[override]
        """Select, fit and tokenise; ``plans`` gives the demonstrations instead (calibration
        reuses the queries' own)."""
        if "selector" not in self.__dict__:  # PromptModel's start-up check of the fast head
            return super().encode(examples)
        examples = as_examples(examples)
        queries = self.query_tokenizer.encode(examples)
        plans = self.plan(examples, queries) if plans is None else [tuple(p) for p in plans]
        if len(plans) != len(examples):
            raise ValueError(f"{len(plans)} plans for {len(examples)} examples")
        features: list[ICLFeature | None] = [None] * len(examples)
        shared = self.shared_plan if self.caches_prefix else None
        if shared is not None:
            special = len(self.prompt_tokenizer.prefix_ids)
            self.shared_prefix.set(self.prompt_tokenizer.prefix_ids + self.demonstration_ids(shared))
            for i, (plan, query) in enumerate(zip(plans, queries, strict=True)):
                if plan == shared and query.predict_positions[0] >= special:
                    stripped = Encoding(query.input_ids[special:], [p - special for p in query.predict_positions],
                                        [], [], query.num_truncated)
                    features[i] = ICLFeature(stripped, plan, True)
        full = [i for i, f in enumerate(features) if f is None]
        if full:
            encoded = super().encode([self.with_demonstrations(examples[i], plans[i]) for i in full])
            for i, feature in zip(full, encoded, strict=True):
                features[i] = ICLFeature(feature, plans[i], False)
        return features  # type: ignore[return-value]

    def collate(self, features: Sequence[Any]) -> Batch:
        if not features or not isinstance(features[0], ICLFeature):
            return super().collate(features)
        kinds = {f.shared for f in features}
        if len(kinds) != 1:
            raise ValueError("a batch mixes shared-prefix and whole-prompt rows; log_proba batches them apart")
        batch = super().collate([f.feature for f in features])
        if kinds == {True}:
            batch["shared_prefix"] = torch.ones(())
        return batch

    @staticmethod
    def length(feature: Any) -> int:
        return PromptModel.length(feature.feature if isinstance(feature, ICLFeature) else feature)

    @torch.no_grad()
    def log_proba(self, features: Sequence[Any], batch_size: int = 32, progress: bool | None = None,
                  desc: str = "classifying") -> torch.Tensor:
        """As ``PromptModel.log_proba``, with shared-prefix rows and whole prompts in separate batches."""
        groups: dict[bool, list[int]] = {}
        for i, feature in enumerate(features):
            groups.setdefault(isinstance(feature, ICLFeature) and feature.shared, []).append(i)
        out = torch.empty(len(features), len(self.classes))
        for rows in groups.values():
            out[rows] = super().log_proba([features[i] for i in rows], batch_size, progress, desc)
        return out


def default_separator(tokenizer: Any, family: Family) -> str:
    """Between demonstrations: a blank line; for masked LMs the separator token (LM-BFF)."""
    if family == "masked" and tokenizer.sep_token:
        return tokenizer.sep_token + " "
    return "\n\n"


# ----------------------------------------------------------------------------- the classifier

class ICLClassifier(Classifier):
    """In-context learning: demonstrations from a labelled pool in the prompt, no training.

    ``demonstrations``: the pool (Examples with labels). ``shots``: how many per query (0:
    zero-shot). ``selection``: ``random``, ``balanced`` (classes in turn) or ``knn`` (the
    nearest by sentence embedding from ``encoder``: a model name/path/alias, a PLM, or a
    function texts -> vectors). ``random``/``balanced`` draw one set with ``seed`` that every
    query shares (``per_query=True``: a draw per query). ``order``: ``random``, ``similarity``
    (most similar next to the query; default for ``knn``) or ``fixed`` (pool order).
    ``separator`` joins demonstrations (default a blank line; the separator token for masked
    LMs). ``max_length`` (default: the model's limit) is met by dropping the least relevant
    demonstrations, never by cutting the query for them. ``calibrate``: contextual calibration
    with content-free inputs that get the same demonstrations as the queries. ``share_prefix``:
    decoder LMs encode shared demonstrations once and reuse their keys/values.

    ``fit(pool)`` does not train: like a nearest-neighbour classifier's, it stores the pool.
    """

    kind = "icl"
    model: ICLModel

    def __init__(
        self,
        plm: PLM | str,
        template: Template | str,
        label_words: Verbalizer | Any,
        *,
        demonstrations: Iterable[Example | str | dict] = (),
        shots: int = 4,
        selection: Selection = "random",
        order: Order | None = None,
        seed: int = 0,
        per_query: bool = False,
        encoder: EncoderSpec = DEFAULT_ENCODER,
        separator: str | None = None,
        classes: Sequence[str] | None = None,
        aggregation: Aggregation = "mean",
        multi_token: MultiToken = "first",
        family: Family | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        calibrate: bool | Sequence[str] = False,
        share_prefix: bool = True,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        verbalizer = (
            label_words
            if isinstance(label_words, Verbalizer)
            else Verbalizer(label_words, classes, aggregation=aggregation, multi_token=multi_token)
        )
        template = template if isinstance(template, Template) else Template(template)
        self.settings = {"shots": shots, "selection": selection, "order": order or default_order(selection),
                         "seed": seed, "per_query": per_query}
        self.encoder = encoder if isinstance(encoder, SentenceEncoder) else SentenceEncoder(encoder, device=plm.device)
        selector = self._selector(as_examples(demonstrations), verbalizer.classes)
        self.model = ICLModel(plm, template, verbalizer, selector, separator=separator, max_length=max_length,
                              truncation=truncation, share_prefix=share_prefix)
        self.model.progress = progress
        self.content_free: tuple[str, ...] | None = None
        self._priors: dict[Plan, torch.Tensor] = {}
        if calibrate:
            self.calibrate(CONTENT_FREE if calibrate is True else calibrate)

    def _selector(self, pool: list[Example], classes: Sequence[str]) -> DemonstrationSelector:
        s = self.settings
        return DemonstrationSelector(pool, classes, s["shots"], s["selection"], s["order"], s["seed"],
                                     s["per_query"], self.encoder)

    # -- inspection
    @property
    def template(self) -> Template:
        return self.model.source_template

    @property
    def pool(self) -> list[Example]:
        return self.model.selector.pool

    @property
    def shared_demonstrations(self) -> list[Example] | None:
        """The demonstrations every query gets, in context order (None: chosen per query)."""
        plan = self.model.shared_plan
        return None if plan is None else [self.pool[i] for i in plan]

    def demonstrations_for(self, examples: Iterable[Example | str]) -> list[list[Example]]:
        """Each example's demonstrations, in the order the prompt holds them (after the budget)."""
        return [[self.pool[i] for i in plan] for plan in self.model.plan(as_examples(examples))]

    def render_prompt(self, example: Example | str) -> str:
        """The whole prompt for one example as text, the mask shown as [MASK] (for reading)."""
        example = as_examples([example])[0]
        plan = self.model.plan([example])[0]
        return self.model.template.render(self.model.with_demonstrations(example, plan))

    # -- prediction
    def _log_proba(self, examples: list[Example], show: bool | None = None) -> torch.Tensor:
        model = self.model
        model.progress = self.progress if show is None else show
        with torch.inference_mode():
            features = model.encode(examples)
            out = model.log_proba(features, self.batch_size, model.progress)
        if self.content_free is None or not features:
            return out
        plans = [f.plan for f in features]
        priors = self._priors_for(plans)
        return torch.log_softmax(out - torch.stack([priors[p] for p in plans]), -1)

    # -- calibration
    def calibrate(self, content_free: Sequence[str] = CONTENT_FREE) -> ICLClassifier:
        """Contextual calibration: divide out the class prior that the prompt, demonstrations
        included, induces on inputs without content. Each query is calibrated with its own
        demonstrations (measured once per distinct set: once in all when they are shared)."""
        if isinstance(content_free, str) or not content_free:
            raise ValueError("calibration needs a list of at least one content-free input, e.g. ['N/A', '']")
        self.content_free = tuple(content_free)
        self._priors = {}
        self.calibration = None
        shared = self.model.shared_plan
        if shared is not None:
            self.calibration = self._priors_for([shared])[shared]
        return self

    def _priors_for(self, plans: Sequence[Plan]) -> dict[Plan, torch.Tensor]:
        """log mean p(class | content-free input, demonstrations) for every distinct plan."""
        assert self.content_free is not None
        shared = self.model.shared_plan
        if shared is not None and self.calibration is not None:
            self._priors.setdefault(shared, self.calibration)
        missing = list(dict.fromkeys(p for p in plans if p not in self._priors))
        if missing:
            names = [f for f in self.template.fields if f not in ("text", "text_b")]
            inputs = [Example(t, t, meta=dict.fromkeys(names, t)) for t in self.content_free]
            count = len(inputs)
            with torch.inference_mode():
                features = self.model.encode([x for _ in missing for x in inputs],
                                             [p for p in missing for _ in range(count)])
                log_probs = self.model.log_proba(features, self.batch_size, False)
            for n, plan in enumerate(missing):
                rows = log_probs[n * count : (n + 1) * count]
                self._priors[plan] = torch.logsumexp(rows, 0) - math.log(count)
        return self._priors

    # -- the pool
    def fit(self, train: Iterable[Example], dev: Iterable[Example] | None = None, config: Any = None,
            **overrides: Any) -> ICLClassifier:
        """In-context learning trains no weights: ``fit(train)`` makes ``train`` the pool the
        demonstrations are drawn from (as a nearest-neighbour classifier's ``fit`` stores its
        data), draws them again with the seed, and recalibrates if calibration is on."""
        if dev is not None or config is not None or overrides:
            given = ["dev"] * (dev is not None) + ["config"] * (config is not None) + sorted(overrides)
            raise ValueError(
                f"in-context learning trains no weights, so fit takes no {', '.join(given)}: fit(train) only "
                "sets the demonstration pool. To train, use PromptClassifier(..., methods=[...]).fit"
            )
        pool = as_examples(train)
        self.model.set_selector(self._selector(pool, self.classes))
        self._priors = {}
        if self.content_free is not None:
            self.calibrate(self.content_free)
        return self

    # -- saving
    def describe(self) -> dict[str, Any]:
        model = self.model
        verbalizer = model.verbalizer
        selector = model.selector
        encoder = self.encoder.name
        if encoder is None and selector.needs_embeddings:
            raise ValueError(
                "this classifier embeds with a Python function, which cannot be saved; give the encoder "
                "as a model name or path to save it"
            )
        return {
            **super().describe(),
            "template": model.source_template.text,
            "post_processors": sorted({name for part in model.source_template.parts
                                       for name in part.post_processing if name not in POST_PROCESSORS}),
            "verbalizer": {"label_words": {c: list(w) for c, w in verbalizer.label_words.items()},
                           "aggregation": verbalizer.aggregation, "multi_token": verbalizer.multi_token},
            "max_length": model.prompt_tokenizer.max_length,
            "truncation": model.prompt_tokenizer.truncation,
            "icl": {
                **self.settings,
                "encoder": encoder,
                "separator": model.separator,
                "share_prefix": model.share_prefix,
                "content_free": None if self.content_free is None else list(self.content_free),
                "fixed_demonstrations": None if selector.fixed is None else list(selector.fixed),
                "pool": [{"text": e.text, "text_b": e.text_b, "label": e.label, "meta": dict(e.meta)}
                         for e in selector.pool],
            },
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> ICLClassifier:
        if methods:
            raise artifacts.ArtifactError("an in-context learning classifier has no delta methods")
        missing = [p for p in description.get("post_processors", []) if p not in POST_PROCESSORS]
        if missing:
            raise artifacts.ArtifactError(
                f"the template uses post-processors {missing}; register them (register_post_processor) before loading"
            )
        words, icl = description["verbalizer"], description["icl"]
        pool = [Example(r["text"], r.get("text_b"), r.get("label"), r.get("meta") or {}) for r in icl["pool"]]
        classifier = cls(plm, description["template"], words["label_words"], demonstrations=pool,
                         shots=icl["shots"], selection=icl["selection"], order=icl["order"], seed=icl["seed"],
                         per_query=icl["per_query"], encoder=icl["encoder"] or DEFAULT_ENCODER,
                         separator=icl["separator"], aggregation=words["aggregation"],
                         multi_token=words["multi_token"], batch_size=description["batch_size"],
                         max_length=description["max_length"], truncation=description["truncation"],
                         share_prefix=icl["share_prefix"])
        if icl.get("fixed_demonstrations") is not None:
            classifier.model.selector.restore(icl["fixed_demonstrations"])
        if icl.get("content_free") is not None:
            classifier.content_free = tuple(icl["content_free"])  # the saved prior is set by load
        return classifier


def default_order(selection: Selection) -> Order:
    """Nearest neighbours read best with the most similar next to the query; a drawn set in a
    seeded random order."""
    return "similarity" if selection == "knn" else "random"
