"""PromptModel: template + PLM + verbalizer as one differentiable module.

examples --encode--> Encodings --collate--> batch of tensors --forward--> class log-probs

Soft tokens of the template live here as one embedding table (``SoftPrompt``), placed at
their positions in the input (anywhere in the text, not only in front). ``TaskModel`` is what
every trainable classifier shares (this one and the classic head model in ``head.py``): the
hooks delta methods use, and the bookkeeping of which parameters train at which rate.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .artifacts import fingerprint
from .data import Example
from .delta import MethodSpec, apply_methods, make_methods
from .metrics import accuracy, confusion_matrix, macro_f1
from .plm import PLM
from .scoring import (
    answer_prefix,
    causal_word_scores,
    head_inputs,
    masked_span_scores,
    masked_word_scores,
    seq2seq_word_scores,
)
from .template import Template
from .tokenization import Encoding, PromptTokenizer, Truncation
from .verbalizer import LabelWords, StateVerbalizer, Verbalizer, VerbalizerHead

logger = logging.getLogger(__name__)
Batch = dict[str, Any]
Role = Literal["soft", "delta", "head", "plm"]
ROLES: tuple[Role, ...] = ("soft", "delta", "head", "plm")
InputTransform = Callable[[dict[str, Any], Batch], dict[str, Any]]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded, restoring it afterwards: the random
    initial values of soft prompts, heads and delta modules then depend on ``seed`` alone, not
    on what ran before (same seed, same model, in any process)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def soft_table(model: nn.Module, init_ids: Sequence[int | None], warn: bool = True) -> torch.Tensor | None:
    """Initial soft-token vectors: the embedding of each init token, or normal noise at the
    embedding matrix's scale where there is none (None when there are no soft tokens)."""
    if not init_ids:
        return None
    embed = model.get_input_embeddings()
    table = torch.empty(len(init_ids), embed.weight.size(1), dtype=embed.weight.dtype)
    std = float(embed.weight.detach().float().std())
    with torch.no_grad():
        for i, token in enumerate(init_ids):
            if token is None:
                table[i].normal_(0.0, std)
            else:
                # Through the module, so models that scale their embeddings stay exact.
                table[i] = embed(torch.tensor([token], device=embed.weight.device))[0].cpu()
    if warn and any(token is None for token in init_ids):
        warnings.warn(
            "the template has randomly initialised soft tokens; until they are trained, "
            "predictions depend on random vectors",
            stacklevel=3,
        )
    return table.to(embed.weight.device)


class SoftPrompt(nn.Module):
    """The soft tokens' vectors, one row each. A module rather than a bare parameter so a
    delta method can put a network in its place (P-Tuning's prompt encoder) and fold it back."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(table)

    def forward(self) -> torch.Tensor:
        return self.weight


class TaskModel(nn.Module):
    """What the trainer, the artifacts and the delta methods rely on, whatever the task head.

    Subclasses provide ``encode`` / ``collate`` / ``length`` / ``forward`` (batch -> (B, C)
    class log-probabilities) and ``classes``. Delta methods change the PLM in place, append to
    ``input_transforms`` (functions ``(model_inputs, batch) -> model_inputs`` run just before
    every call of the PLM, e.g. to add prefix keys/values) and ``claim`` the parameters they add,
    so the optimiser gives each its role's learning rate.
    """

    soft_prompt: nn.Module | None

    def __init__(self, plm: PLM):
        super().__init__()
        self.plm = plm
        self.model = plm.model
        self.base_fingerprint = fingerprint(plm.model)  # before any method changes the PLM
        self.soft_prompt = None
        self.input_transforms: list[InputTransform] = []
        self.methods: list[Any] = []  # the DeltaMethod objects applied, in order
        self.methods_applied = False  # True once the PLM is frozen for delta tuning (even with none)
        self._claims: dict[int, tuple[Role, float | None]] = {}
        # Built for inference: a module starts in training mode, and ``log_proba`` restores the
        # mode it found, which would leave a shared PLM with dropout on after predicting.
        self.training = False

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.plm.device

    @property
    def family(self) -> str:
        return self.plm.family

    def claim(self, parameters: Iterable[nn.Parameter], role: Role, lr: float | None = None) -> None:
        """Record that ``parameters`` train with ``role``'s learning rate (or ``lr``)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        for parameter in parameters:
            self._claims[id(parameter)] = (role, lr)

    def role_of(self, name: str, parameter: nn.Parameter) -> tuple[Role, float | None]:
        """A parameter's role and its own learning rate (None: the trainer's for the role).
        Unclaimed: soft-prompt and head parameters by their place, everything else the PLM's."""
        if id(parameter) in self._claims:
            return self._claims[id(parameter)]
        if name.startswith("soft_prompt."):
            return "soft", None
        if name.startswith("head."):
            return "head", None
        return "plm", None

    def setup_methods(self, methods: Sequence[Any] | None) -> None:
        """Apply delta methods (already built, template rewritten); None leaves the PLM as is."""
        if methods is not None:
            apply_methods(self, methods)
            self.methods_applied = True

    def fold(self) -> bool:
        """Put every method in its inference form (see ``DeltaMethod.fold``)."""
        return any([method.fold(self) for method in self.methods])

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def trained_state(self) -> dict[str, nn.Parameter]:
        """What a saved classifier stores: the trainable parameters once delta methods are
        applied; before that (zero-shot), only the task model's own soft prompt and head."""
        if self.methods_applied:
            return self.trainable_parameters()
        return {n: p for n, p in self.named_parameters() if not n.startswith("model.")}

    def transform_inputs(self, inputs: dict[str, Any], batch: Batch) -> dict[str, Any]:
        for transform in self.input_transforms:
            inputs = transform(inputs, batch)
        return inputs

    def to_device(self, batch: Batch) -> Batch:
        device = self.device
        return {
            k: self.to_device(v) if isinstance(v, dict) else v.to(device)
            for k, v in batch.items()
        }

    @torch.no_grad()
    def log_proba(
        self, features: Sequence[Any], batch_size: int = 32, progress: bool | None = None, desc: str = "classifying"
    ) -> torch.Tensor:
        """(N, C) class log-probabilities of encoded examples, in batches sorted by length (little
        padding), in eval mode; the mode the model was in is restored afterwards."""
        if not features:
            return torch.empty(0, len(self.classes))
        order = sorted(range(len(features)), key=lambda i: self.length(features[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(
            batches, desc=desc, unit="batch",
            disable=(not progress) if progress is not None else (len(batches) <= 4 or None),
        )
        was_training = self.training
        self.eval()
        out = torch.empty(len(features), len(self.classes))
        try:
            for batch_index in bar:
                batch = self.to_device(self.collate([features[i] for i in batch_index]))
                out[batch_index] = self(batch).float().cpu()
        finally:
            self.train(was_training)
        return out

    @property
    def soft_embeddings(self) -> torch.Tensor | None:
        """(soft tokens, hidden) vectors placed at the template's soft slots."""
        return None if self.soft_prompt is None else self.soft_prompt()

    def embed(self, batch: Batch) -> dict[str, Any]:
        """Model inputs for a collated batch: token ids, or embeddings when soft tokens exist,
        then whatever the delta methods' input transforms add."""
        inputs: dict[str, Any] = {"attention_mask": batch["attention_mask"]}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        if self.soft_prompt is None:
            inputs["input_ids"] = batch["input_ids"]
        else:
            embeds = self.model.get_input_embeddings()(batch["input_ids"])
            soft_index = batch["soft_index"]
            soft = self.soft_prompt()[soft_index.clamp(min=0)].to(embeds.dtype)
            inputs["inputs_embeds"] = torch.where((soft_index >= 0)[..., None], soft, embeds)
        return self.transform_inputs(inputs, batch)

    # -- the training objective, as the trainer sees it (defaults: one class per example)
    def targets(self, examples: Sequence[Example], features: Sequence[Any], what: str) -> list[Any]:
        """One training target per example: here its class index. Token models align word tags
        to sub-words, which is why the encoded ``features`` come along."""
        index = {c: i for i, c in enumerate(self.classes)}
        bad = [(n, e.label) for n, e in enumerate(examples) if e.label not in index]
        if bad:
            n, label = bad[0]
            raise ValueError(
                f"{what} example {n} has label {label!r}, which is not one of the classes "
                f"{list(index)}; {len(bad)} such example(s)"
            )
        return [index[e.label] for e in examples]  # type: ignore[index]

    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor:
        """A batch's targets as one tensor, laid out like ``forward``'s output."""
        return torch.tensor(list(targets), dtype=torch.long)

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of the targets under ``forward``'s log-probabilities; any
        leading shape ((B, C) per example, (B, T, C) per token), targets of -100 ignored."""
        flat = output.float().reshape(-1, output.size(-1))
        return F.nll_loss(flat, targets.to(flat.device).reshape(-1), ignore_index=-100)

    def dev_metrics(self, features: Sequence[Any], targets: Sequence[Any], batch_size: int) -> dict[str, float]:
        """What the trainer picks its dev metric from: ``loss`` and each metric the model knows."""
        log_probs = self.log_proba(features, batch_size, progress=False)
        labels = self.collate_targets(targets)
        counts = confusion_matrix([self.classes[i] for i in labels.tolist()],
                                  [self.classes[i] for i in log_probs.argmax(1).tolist()], self.classes)
        return {"loss": float(self.loss(log_probs, labels)), "accuracy": accuracy(counts),
                "macro_f1": macro_f1(counts, self.ignored_classes())}

    def ignored_classes(self) -> list[int]:
        """Class indices left out of macro-F1 (a relation model's "Other"); none by default."""
        return []

    def encode(self, examples: Sequence[Example]) -> list[Any]:
        raise NotImplementedError

    def collate(self, features: Sequence[Any]) -> Batch:
        raise NotImplementedError

    @staticmethod
    def length(feature: Any) -> int:
        raise NotImplementedError


class PromptModel(TaskModel):
    """Scores every class of ``verbalizer`` for examples filled into ``template``.

    ``max_length`` defaults to the model's limit; ``truncation`` picks which shortenable
    parts give way when an example is longer (see ``plan_truncation``). ``methods``: delta
    methods to train with (names, dicts or configs; see ``deltaprompt.delta``); None leaves
    the PLM untouched, ``[]`` freezes it so that only the template's soft tokens train.
    ``seed`` fixes every random initial value (soft tokens, delta modules, a verbalizer's head).

    A verbalizer that scores classes from the mask's hidden state (soft, prototype) brings a
    ``VerbalizerHead``, kept as ``head``: its parameters train at the "head" learning rate and
    are saved with the classifier. Without one, classes come from label-word scores.
    """

    head: VerbalizerHead | None

    def __init__(
        self,
        plm: PLM,
        template: Template | str,
        verbalizer: Verbalizer,
        max_length: int | None = None,
        truncation: Truncation = "longest_first",
        efficient_head: bool = True,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(plm)
        built = make_methods(methods) if methods is not None else None
        template = template if isinstance(template, Template) else Template(template)
        self.source_template = template  # as the user wrote it; methods may add to it
        for method in built or []:
            template = method.rewrite_template(template)
        self.template = template
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
        with seeded(seed):
            # Random soft tokens are only worth a warning when nothing is going to train them.
            table = soft_table(self.model, self.prompt_tokenizer.soft_init_ids, warn=built is None)
            self.soft_prompt = SoftPrompt(table) if table is not None else None
            self.setup_methods(built)
            self.head = verbalizer.make_head(self) if isinstance(verbalizer, StateVerbalizer) else None
        reads_words = self.head is None or self.head.uses_label_words
        self.efficient_head = efficient_head and (not reads_words or self._efficient_head_agrees())

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_words.classes

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

    def mask_states(self, batch: Batch) -> torch.Tensor:
        """(B, H) the vector the LM head reads at the prediction position: after the head
        transform of a masked LM (BERT's dense + LayerNorm), at the last token before the mask of
        a decoder LM, at the decoder's answer position of an encoder-decoder (after its
        pre-projection scaling). The full-vocabulary projection is skipped."""
        if self.multi_mask:
            raise ValueError("mask states are read at one mask; multi_token='masks' puts one mask per token")
        inputs = self.embed(batch)
        positions = batch["predict_positions"][:, :1]
        if self.plm.family == "causal":
            inputs = {**inputs, "use_cache": False}
        elif self.plm.family == "seq2seq":
            inputs, positions = self._answer_inputs(inputs)
        with head_inputs(self.model, positions) as captured:
            self.model(**inputs)
        return captured["hidden"][:, 0]

    def _answer_inputs(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
        """Encoder-decoder inputs as the seq2seq word scores build them (the decoder reads
        <start> <sentinel> and answers at position 1), and that position."""
        mask = inputs["attention_mask"]
        encoder_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "inputs_embeds", "attention_mask")}
        encoded = self.model.get_encoder()(**encoder_inputs)
        prefix = answer_prefix(self.model, self.prompt_tokenizer.mask_id, mask.size(0), mask.device)
        decoder = {"encoder_outputs": encoded, "attention_mask": mask, "decoder_input_ids": prefix, "use_cache": False}
        return decoder, torch.ones(mask.size(0), 1, dtype=torch.long, device=mask.device)

    def word_log_probs(self, batch: Batch) -> torch.Tensor:
        """(B, W) true log-probabilities of the label words: ``word_scores`` with the
        full-vocabulary normaliser at the mask put back where it leaves it out (every word read
        at one position). For measuring priors."""
        multi_token = any(len(ids) > 1 for ids in self.label_words.token_ids)
        if self.multi_mask or (self.plm.family != "masked" and multi_token):
            return self.word_scores(batch).float()  # already normalised over the vocabulary
        states = self.mask_states(batch)
        scores = self._words_from_states(states)
        if scores is None:  # sub-token means or maxima: word_scores knows how
            scores = self.word_scores(batch)
        projection = self.model.get_output_embeddings()
        logits = F.linear(states, projection.weight, getattr(projection, "bias", None))
        return scores.float() - torch.logsumexp(logits.float(), -1, keepdim=True)

    def _words_from_states(self, states: torch.Tensor) -> torch.Tensor | None:
        """(B, W) label-word scores from mask states, when every word is read from one output
        row (first-token scoring, or one-token words), as ``word_scores`` gives them; else None."""
        words = self.label_words
        first_only = self.plm.family == "masked" and self.verbalizer.multi_token == "first"
        if self.multi_mask or not (first_only or all(len(ids) == 1 for ids in words.token_ids)):
            return None
        projection = self.model.get_output_embeddings()
        rows = torch.tensor([ids[0] for ids in words.token_ids], device=states.device)
        bias = projection.bias[rows] if getattr(projection, "bias", None) is not None else None
        return F.linear(states, projection.weight[rows], bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, C) class log-probabilities, normalised over the classes."""
        if self.head is None:
            return self.verbalizer.aggregate(self.word_scores(batch), self.label_words)
        states = self.mask_states(batch)
        manual = None
        if self.head.uses_label_words:
            scores = self._words_from_states(states)
            if scores is None:  # words that need more than one output row: a second pass
                scores = self.word_scores(batch)
            manual = self.verbalizer.aggregate(scores, self.label_words)
        return self.head(states, manual)

    def rebind(self) -> None:
        """Bind the verbalizer's label words again after it changed them (a knowledgeable
        verbalizer refined by its priors does)."""
        bound = self.verbalizer.bind(self.plm.tokenizer, self.template.mask_part.prefix or "", self.plm.family)
        if self.multi_mask and sorted({len(ids) for ids in bound.token_ids}) != self.spans:
            raise ValueError("with one mask per token, label words cannot change their lengths once the model is built")
        self.label_words = bound

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
