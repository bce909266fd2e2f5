"""Generation: a prompt and a PLM trained with teacher forcing, decoded with transformers' ``generate``.

    gen = PromptForGeneration("smollm2-135m", "Sentence: {text}\\nJSON: {mask}", methods=["lora"])
    gen.fit(train, dev, epochs=5)                     # teacher forcing on input -> output pairs
    gen.generate(["Ada Lovelace was born in 1815."], num_beams=4,
                 postprocess=[{"json": {"schema": schema}}], retry_invalid=True)
    gen.evaluate(test)                                # {'n': ..., 'exact_match': ..., 'token_f1': ...}
    gen.save("runs/json-lora"); load("runs/json-lora").generate([...])

Data: an example carries its output as ``meta["target"]`` (``Example(text=..., meta={"target":
...})``, or a record ``{"text": ..., "target": ...}``); ``meta["output"]`` is read as well, and
``label`` when neither is there (classification as generation). Examples to generate for need
no output; training and evaluation refuse an example without one.

The template's ``{mask}`` is the answer slot: the prompt is everything before it and the answer
is generated there (with the mask's leading space, if any, for decoder LMs: "Answer: {mask}"
asks for " Paris", as it follows "Answer:"). A template without a mask is answered right after
its end, with no space; fields or soft tokens after the mask are refused, other text after it is
dropped with a warning. A ``PromptSpec`` works as a template (its answer cue is the slot);
specs with ``chain_of_thought`` or ``self_check`` are rendered example by example, and
``self_check`` runs a second pass that asks the model to verify and correct its draft.
``chat=True`` wraps a plain template in the tokenizer's chat template (the prompt as the user
turn, the answer right after the generation prompt).

Decoder LMs (GPT-2, Llama, SmolLM2) read prompt + answer + EOS; the loss covers the answer and
EOS only (the prompt is context, masked out as transformers' ``labels=-100`` would), and the LM
head runs at those positions alone. Encoder-decoders (T5) get the prompt in the encoder, with
nothing in place of the mask (no sentinel: a trained model answers directly, so the output needs
no span markers stripped), and the decoder is trained on answer + EOS with the model's own shift.

Delta methods work as in classification: soft tokens (prompt tuning, P-Tuning) reach
``generate`` as ``inputs_embeds``; a prefix reaches every decoding step (decoder LMs: it fills the
empty cache at the first step, as PEFT does, and later steps widen the mask and positions by it;
encoder-decoders: the prefix hooks on the encoder and decoder stacks); LoRA, adapters, BitFit,
intrinsic and full fine-tuning change the PLM itself.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig

from . import artifacts
from .classifier import Classifier, _resolve_plm
from .data import Example, as_examples
from .delta import MethodSpec, make_methods
from .kv_cache import get_cache, put_cache
from .model import Batch, SoftPrompt, TaskModel, seeded, soft_table
from .plm import PLM, Family
from .scoring import head_inputs
from .template import POST_PROCESSORS, Template
from .tokenization import Encoding, PromptTokenizer, Truncation, padding_id
from .trainer import AuxiliaryLoss, TrainConfig

logger = logging.getLogger(__name__)
IGNORE = -100  # label of positions without a target
TARGET_KEYS = ("target", "output")  # meta keys holding an example's output, in order of preference
PROMPT_FIELD = "_generation_prompt"  # the field holding a prompt rendered example by example
RENDERED = Template('{"meta": "' + PROMPT_FIELD + '", "shortenable": False}')
Postprocess = Callable[[str], Any] | Sequence[Any] | None


# ----------------------------------------------------------------------------- data

def target_of(example: Example) -> str | None:
    """An example's output: ``meta["target"]``, else ``meta["output"]``, else ``label``."""
    for key in TARGET_KEYS:
        value = example.meta.get(key)
        if value is not None:
            return value if isinstance(value, str) else _json_text(value)
    return example.label


def generation_example(text: str, target: str | None = None, **fields: Any) -> Example:
    """An input -> output pair: ``Example(text, meta={"target": target, **fields})``."""
    meta = dict(fields)
    if target is not None:
        meta["target"] = target
    return Example(text, meta=meta)


def _json_text(value: Any) -> str:
    """A structured target (a dict from a JSON Lines file) as the text the model should write."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)


# ----------------------------------------------------------------------------- templates

def answer_slot(template: Template, family: Family) -> tuple[Template, str]:
    """The prompt part of a generation template (everything before ``{mask}``) and the text that
    separates it from the answer (the mask's leading space; always "" for encoder-decoders,
    whose answer starts the decoder)."""
    masks = [i for i, p in enumerate(template.parts) if p.kind == "mask"]
    if len(masks) > 1:
        raise ValueError(f"a generation template has one answer slot {{mask}}, this one has {len(masks)}: "
                         f"{template.text!r}")
    if not masks:
        return template, ""
    mask = template.parts[masks[0]]
    after = template.parts[masks[0] + 1 :]
    carried = [p.value or p.kind for p in after if p.kind in ("field", "soft")]
    if carried:
        raise ValueError(
            f"the answer is generated at {{mask}}, so nothing the model should read may follow it; "
            f"move {carried} before the mask"
        )
    if after:
        warnings.warn(
            f"the answer is generated at {{mask}}; the text after it is dropped: "
            f"{[p.value for p in after]}", stacklevel=3,
        )
    text = template.text[: mask.position]
    if not text.strip():
        raise ValueError("a generation template needs a prompt before the answer slot {mask}")
    prompt = Template(text, post_processors=dict(template.post_processors))
    return prompt, "" if family == "seq2seq" else mask.prefix


def chat_wrapped(template: Template, tokenizer: Any) -> Template:
    """A plain prompt template as the user turn of the tokenizer's chat template, the answer slot
    right after the generation prompt (through ``PromptSpec``, which escapes the chat text)."""
    from .prompt_spec import PromptSpec

    spec = PromptSpec(input=template.text, answer_prefix="")
    wrapped = spec.template(tokenizer, chat=True)
    return Template(wrapped.text, post_processors=dict(template.post_processors))


def _is_spec(template: Any) -> bool:
    return not isinstance(template, str | Template) and callable(getattr(template, "template", None)) \
        and callable(getattr(template, "render", None))


def _drop_bos(text: str, tokenizer: Any, prefix_ids: list[int]) -> str:
    """A chat rendering that writes the BOS token the tokenizer adds anyway: keep one."""
    if not prefix_ids:
        return text
    bos = tokenizer.decode(prefix_ids)
    return text[len(bos):] if bos and text.startswith(bos) else text


class ChatRenderer:
    """A spec's chat prompt for one example, without a BOS the tokenizer adds by itself."""

    def __init__(self, spec: Any, tokenizer: Any):
        from .tokenization import special_affixes

        self.spec, self.tokenizer = spec, tokenizer
        self.prefix_ids = special_affixes(tokenizer)[0]

    def __call__(self, example: Example) -> str:
        return _drop_bos(self.spec.render_chat(self.tokenizer, example), self.tokenizer, self.prefix_ids)


class AnswerPromptTokenizer(PromptTokenizer):
    """A ``PromptTokenizer`` for prompts whose answer slot has been cut off: no mask token is
    needed, so encoder-decoders without T5 sentinels (BART) are accepted too."""

    def _mask_id(self) -> int | None:
        return None


# ----------------------------------------------------------------------------- the task model

@dataclass(frozen=True, slots=True)
class GenerationEncoding:
    """One example: its prompt (tokenised and wrapped, not padded), the answer's ids (+ EOS) it
    is trained on (None without an output), and the text between prompt and answer."""

    prompt: Encoding
    target_ids: list[int] | None
    answer_prefix: str
    target_cut: int = 0  # answer tokens dropped to fit max_length


class GenerationModel(TaskModel):
    """Prompt -> answer tokens, trained with teacher forcing (see the module docstring).

    ``forward`` gives (B, T, V) log-probabilities of the vocabulary at the answer's T positions
    (column j predicts answer token j; rows padded at the end), which ``TaskModel.loss`` turns
    into the mean token NLL, so the ``Trainer`` trains it unchanged. ``max_length`` bounds
    prompt + answer (default: the model's limit); prompts are cut to ``max_length -
    max_new_tokens`` (shortenable fields first). ``render``: a function from example to prompt
    text, for prompts rendered one by one (the template is then a single field holding that
    text); ``answer_prefix`` None then picks " " after a prompt not ending in whitespace.
    """

    def __init__(
        self,
        plm: PLM,
        template: Template | None,
        answer_prefix: str | None = "",
        *,
        render: Callable[[Example], str] | None = None,
        max_length: int | None = None,
        max_new_tokens: int = 64,
        truncation: Truncation = "longest_first",
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        seed: int = 0,
    ):
        super().__init__(plm)
        if plm.family == "masked":
            raise ValueError(
                "a masked LM cannot generate text; use a decoder LM (GPT-2, Llama, SmolLM2) or an "
                "encoder-decoder (T5)"
            )
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if render is None and template is None:
            raise ValueError("give a template, or a render function for prompts rendered one by one")
        built = make_methods(methods) if methods is not None else None
        template = RENDERED if render is not None else template
        self.source_template = template
        for method in built or []:
            template = method.rewrite_template(template)
        self.template = template
        self.render = render
        self.answer_prefix = answer_prefix
        self.max_new_tokens = max_new_tokens
        limit = max_length if max_length is not None else plm.max_length()
        if limit is not None and limit <= max_new_tokens:
            raise ValueError(f"max_length={limit} leaves no room for a prompt before {max_new_tokens} new tokens; "
                             "raise max_length or lower max_new_tokens")
        self.prompt_tokenizer = AnswerPromptTokenizer(
            plm.tokenizer, template, plm.family,
            max_length=None if limit is None else limit - max_new_tokens, truncation=truncation,
        )
        tokenizer = plm.tokenizer
        self.eos_id: int | None = tokenizer.eos_token_id
        self.pad_id = padding_id(tokenizer)
        with seeded(seed):
            table = soft_table(self.model, self.prompt_tokenizer.soft_init_ids, warn=built is None)
            self.soft_prompt = SoftPrompt(table) if table is not None else None
            self.setup_methods(built)

    @property
    def classes(self) -> tuple[str, ...]:
        return ()

    @property
    def max_length(self) -> int | None:
        """The longest prompt + answer (a prefix's virtual tokens already taken off)."""
        limit = self.prompt_tokenizer.max_length
        return None if limit is None else limit + self.max_new_tokens

    # -- data
    def prompt_of(self, example: Example) -> Example:
        """The example as the template reads it: rendered into the prompt field when prompts are
        rendered one by one (an example already holding that field passes as it is)."""
        if self.render is None or PROMPT_FIELD in example.meta:
            return example
        return Example(example.text, example.text_b, example.label,
                       {**example.meta, PROMPT_FIELD: self.render(example)})

    def _prefix_for(self, example: Example) -> str:
        if self.answer_prefix is not None:
            return self.answer_prefix
        text = example.meta[PROMPT_FIELD]
        return " " if self.family == "causal" and text and not text[-1].isspace() else ""

    def encode(self, examples: Sequence[Example]) -> list[GenerationEncoding]:
        """Tokenise prompts (one tokenizer call) and the outputs examples have (another)."""
        examples = [self.prompt_of(e) for e in as_examples(examples)]
        prompts = self.prompt_tokenizer.encode(examples)
        if self.family == "causal":
            empty = [n for n, p in enumerate(prompts) if not p.input_ids]
            if empty:
                raise ValueError(f"example {empty[0]}: the prompt is empty; a decoder LM needs text to continue")
        prefixes = [self._prefix_for(e) for e in examples]
        targets = [target_of(e) for e in examples]
        given = [n for n, t in enumerate(targets) if t is not None]
        ids = self._target_ids([prefixes[n] + targets[n] for n in given])  # type: ignore[operator]
        target_ids: list[list[int] | None] = [None] * len(examples)
        for n, row in zip(given, ids, strict=True):
            target_ids[n] = row
        out = []
        limit = self.max_length
        for prompt, row, prefix in zip(prompts, target_ids, prefixes, strict=True):
            cut = 0
            if row is not None and limit is not None and len(prompt.input_ids) + len(row) > limit:
                cut = len(prompt.input_ids) + len(row) - limit
                row = row[: len(row) - cut]
            out.append(GenerationEncoding(prompt, row, prefix, cut))
        cuts = [e.target_cut for e in out if e.target_cut]
        if cuts:
            logger.warning("%d output(s) lost their last %d token(s) at most to fit max_length=%s; raise "
                           "max_new_tokens for longer outputs", len(cuts), max(cuts), limit)
        return out

    def _target_ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        rows = self.plm.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        eos = [] if self.eos_id is None else [self.eos_id]
        return [list(row) + eos for row in rows]

    @staticmethod
    def length(feature: GenerationEncoding) -> int:
        return len(feature.prompt.input_ids) + len(feature.target_ids or [])

    def collate(self, features: Sequence[GenerationEncoding]) -> Batch:
        """A teacher-forcing batch. Decoder LMs: prompt + answer, left-padded as prompts are,
        with ``target_positions`` (B, T): the position whose output predicts each answer token.
        Encoder-decoders: the prompt, and ``decoder_input_ids``, the answer shifted right."""
        missing = [n for n, f in enumerate(features) if f.target_ids is None]
        if missing:
            raise ValueError(f"teacher forcing needs outputs; batch rows {missing[:5]} have none")
        targets = [f.target_ids for f in features]
        width_t = max(len(t) for t in targets)  # type: ignore[arg-type]
        if self.family == "seq2seq":
            batch = self.prompt_tokenizer.collate([f.prompt for f in features])
            labels = self.collate_targets(targets)
            batch["decoder_input_ids"] = self._shift_right(labels)
            return batch
        joined = [Encoding(f.prompt.input_ids + f.target_ids, [], f.prompt.soft_positions,  # type: ignore[operator]
                           f.prompt.soft_tokens) for f in features]
        batch = self.prompt_tokenizer.collate(joined)
        width = batch["input_ids"].size(1)
        positions = torch.zeros(len(features), width_t, dtype=torch.long)
        for row, target in enumerate(targets):
            n = len(target)  # type: ignore[arg-type]
            positions[row, :n] = torch.arange(width - n - 1, width - 1)
        batch["target_positions"] = positions
        return batch

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from padded labels, the model's own way when it has one."""
        shift = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        if shift is not None:
            return shift(labels=labels)
        start = self.model.config.decoder_start_token_id
        shifted = labels.new_full(labels.shape, self.pad_id)
        shifted[:, 0] = start
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == IGNORE, self.pad_id)

    def targets(self, examples: Sequence[Example], features: Sequence[GenerationEncoding], what: str) -> list[Any]:
        missing = [n for n, f in enumerate(features) if f.target_ids is None]
        if missing:
            raise ValueError(
                f"{what} example {missing[0]} has no output to learn: give each example its output as "
                f"meta['target'] (e.g. generation_example(text, target)); {len(missing)} such example(s)"
            )
        return [f.target_ids for f in features]

    def collate_targets(self, targets: Sequence[Any]) -> torch.Tensor:
        """(B, T) answer ids, padded with -100 at the end (as ``forward``'s columns)."""
        width = max(len(t) for t in targets)
        out = torch.full((len(targets), width), IGNORE, dtype=torch.long)
        for row, target in enumerate(targets):
            out[row, : len(target)] = torch.as_tensor(target, dtype=torch.long)
        return out

    def sequence_labels(self, features: Sequence[GenerationEncoding]) -> torch.Tensor:
        """transformers-style ``labels`` for ``collate``'s decoder-LM batch: (B, width), the
        input ids at answer positions, -100 on the prompt and padding (the model shifts them)."""
        if self.family != "causal":
            return self.collate_targets([f.target_ids for f in features])
        rows = [len(f.prompt.input_ids) + len(f.target_ids or []) for f in features]
        width = max(rows)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        for row, feature in enumerate(features):
            target = feature.target_ids or []
            if target:
                labels[row, width - len(target):] = torch.as_tensor(target)
        return labels

    # -- scoring
    def forward(self, batch: Batch) -> torch.Tensor:
        """(B, T, V) log-probabilities at the answer positions (teacher forcing)."""
        inputs = self.embed(batch)
        if self.family == "seq2seq":
            logits = self.model(**inputs, decoder_input_ids=batch["decoder_input_ids"], use_cache=False).logits
        else:
            with head_inputs(self.model, batch["target_positions"]) as captured:
                self.model(**inputs, use_cache=False)
            logits = self.lm_head(captured["hidden"])
        return torch.log_softmax(logits.float(), -1)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output embedding on hidden states (any delta method on it included), with the
        final soft-capping of models that apply one after it (Gemma 2)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def dev_metrics(self, features: Sequence[Any], targets: Sequence[Any], batch_size: int) -> dict[str, float]:
        """Teacher-forced token NLL (``loss``) and token ``accuracy`` of the answers: what can be
        measured every epoch (decoding is far slower; use ``evaluate`` for it)."""
        order = sorted(range(len(features)), key=lambda i: self.length(features[i]))
        nll, correct, counted = 0.0, 0, 0
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    index = order[start : start + batch_size]
                    output = self(self.to_device(self.collate([features[i] for i in index])))
                    labels = self.collate_targets([targets[i] for i in index]).to(output.device)
                    valid = labels != IGNORE
                    picked, gold = output[valid], labels[valid]
                    nll -= float(picked.gather(1, gold[:, None]).sum())
                    correct += int((picked.argmax(-1) == gold).sum())
                    counted += int(valid.sum())
        finally:
            self.train(was_training)
        return {"loss": nll / max(counted, 1), "accuracy": correct / max(counted, 1)}

    # -- decoding
    def generation_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """What ``generate`` takes for a collated prompt batch: the ids and mask, plus the input
        embeddings with the soft tokens in place when the template has any (decoder LMs keep the
        ids too, for repetition penalties and the returned sequences; encoder-decoders take one)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.soft_prompt is None:
            return inputs
        embeds = self.model.get_input_embeddings()(batch["input_ids"])
        soft_index = batch["soft_index"]
        soft = self.soft_prompt()[soft_index.clamp(min=0)].to(embeds.dtype)
        inputs["inputs_embeds"] = torch.where((soft_index >= 0)[..., None], soft, embeds)
        if self.family == "seq2seq":
            del inputs["input_ids"]
        return inputs

    @contextlib.contextmanager
    def transforms_in_generate(self) -> Iterator[None]:
        """While active, the input transforms of delta methods (a decoder LM's prefix) reach
        every step of ``self.model.generate``: the first step gets them as a forward pass does
        (a fresh cache holding the prefix, mask and positions widened by it); later steps keep
        generate's cache, which already holds the prefix, and get the wider mask and positions."""
        if not self.input_transforms:
            yield
            return
        if self.model.config.is_encoder_decoder:
            raise NotImplementedError("input transforms of an encoder-decoder cannot reach generate's encoder call")
        model = self.model
        original = model.prepare_inputs_for_generation
        own = "prepare_inputs_for_generation" in vars(model)

        def prepare(input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                    **kwargs: Any) -> dict[str, Any]:
            inputs = original(input_ids, inputs_embeds=inputs_embeds, **kwargs)
            cache = get_cache(inputs)
            first = cache is None or cache.get_seq_length() == 0
            out = self.transform_inputs(inputs, {})
            if not first:
                put_cache(out, cache)
            return out

        model.prepare_inputs_for_generation = prepare
        try:
            yield
        finally:
            if own:
                model.prepare_inputs_for_generation = original
            else:
                del model.prepare_inputs_for_generation

    @torch.no_grad()
    def generate_ids(self, features: Sequence[GenerationEncoding], config: GenerationConfig, batch_size: int = 8,
                     progress: bool | None = None, seed: int = 0) -> list[list[int]]:
        """The new tokens for each prompt (up to and including the first stop token), from
        ``self.model.generate`` in batches of similar length, in eval mode (restored afterwards),
        under a random state seeded with ``seed`` (sampling is reproducible)."""
        if not features:
            return []
        order = sorted(range(len(features)), key=lambda i: len(features[i].prompt.input_ids))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(batches, desc="generating", unit="batch",
                   disable=(not progress) if progress is not None else (len(batches) <= 4 or None))
        stops = set(_as_list(config.eos_token_id))
        out: list[list[int]] = [[] for _ in features]
        was_training = self.training
        self.eval()
        try:
            with _seeded_everywhere(seed, self.device), self.transforms_in_generate():
                for index in bar:
                    batch = self.to_device(self.prompt_tokenizer.collate([features[i].prompt for i in index]))
                    width = batch["input_ids"].size(1)
                    step_config = self._fit_config(config, width)
                    sequences = self.model.generate(**self.generation_inputs(batch), generation_config=step_config)
                    new = sequences[:, width:] if self.family == "causal" else sequences[:, 1:]
                    for i, row in zip(index, new.tolist(), strict=True):
                        out[i] = _until_stop(row, stops)
        finally:
            self.train(was_training)
        return out

    def _fit_config(self, config: GenerationConfig, width: int) -> GenerationConfig:
        """``config`` with ``max_new_tokens`` lowered where the prompts leave less room before the
        model's position limit."""
        limit = self.max_length
        if limit is None or width + config.max_new_tokens <= limit:
            return config
        room = limit - width
        if room < 1:
            raise ValueError(f"prompts of {width} tokens leave no room to generate within max_length={limit}")
        logger.warning("generating at most %d new tokens: prompts of %d tokens reach max_length=%d", room, width, limit)
        fitted = copy.deepcopy(config)
        fitted.max_new_tokens = room
        return fitted


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    for n, token in enumerate(row):
        if token in stops:
            return row[: n + 1]
    return row


@contextlib.contextmanager
def _seeded_everywhere(seed: int, device: torch.device) -> Iterator[None]:
    """``seeded`` for the CPU and, when the model is on one, the model's GPU (where sampling draws)."""
    if device.type != "cuda":
        with seeded(seed):
            yield
        return
    with torch.random.fork_rng(devices=[device]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- the user-facing class

class PromptForGeneration(Classifier):
    """Generate text from a prompt: zero-shot as built, trained with teacher forcing by ``fit``.

    ``plm``: a loaded ``PLM`` or a model name/path/alias (decoder LM or encoder-decoder).
    ``template``: template text, a ``Template`` or a ``PromptSpec``; ``{mask}`` is the answer slot
    (see the module docstring). ``methods``: delta methods as in ``PromptClassifier`` (None: the
    PLM as is now, full fine-tuning if ``fit`` is called). ``max_length``: the longest prompt +
    answer (default: the model's limit); ``max_new_tokens``: the default length of generated
    answers, and the room prompts leave for them. ``chat``: wrap the prompt in the tokenizer's
    chat template. ``seed`` fixes random initial values and sampling.
    """

    kind = "generation"
    model: GenerationModel

    def __init__(
        self,
        plm: PLM | str,
        template: str | Template | Any,
        methods: Sequence[MethodSpec] | MethodSpec | None = None,
        max_length: int | None = None,
        max_new_tokens: int = 64,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool | None = None,
        chat: bool = False,
        *,
        truncation: Truncation = "longest_first",
        family: Family | None = None,
        device: str | torch.device | None = None,
    ):
        super().__init__(batch_size, progress)
        plm = _resolve_plm(plm, family, device)
        self.seed = seed
        self.chat = chat
        self.spec = template if _is_spec(template) else None
        self.source_template = template.text if isinstance(template, Template) else template
        self.post_processors = dict(template.post_processors) if isinstance(template, Template) else {}
        prompt, prefix, render = self._answer_template(template, plm)
        self.model = GenerationModel(plm, prompt, prefix, render=render, max_length=max_length,
                                     max_new_tokens=max_new_tokens, truncation=truncation, methods=methods, seed=seed)
        self.cue = _cue(prompt) if render is None else None

    def _answer_template(self, template: Any, plm: PLM) -> tuple[Template | None, str | None, Callable | None]:
        """(prompt template, answer prefix, renderer): a spec whose reasoning or self-check needs
        generated text is rendered example by example; anything else is a template."""
        family, tokenizer = plm.family, plm.tokenizer
        if self.spec is not None:
            spec = self.spec
            if not (spec.chain_of_thought or spec.self_check):
                return (*answer_slot(spec.template(tokenizer, chat=self.chat), family), None)
            if self.chat:
                return None, "", ChatRenderer(spec, tokenizer)
            return None, "" if family == "seq2seq" else None, spec.render
        if not isinstance(template, Template | str):
            raise TypeError(f"template is text, a Template or a PromptSpec, got {type(template).__name__}")
        template = template if isinstance(template, Template) else Template(template)
        prompt, prefix = answer_slot(template, family)
        if self.chat:
            return chat_wrapped(prompt, tokenizer), "", None
        return prompt, prefix, None

    @property
    def template(self) -> Template:
        """The prompt template the model encodes (delta methods' soft tokens included)."""
        return self.model.template

    # -- generation
    def generate(
        self,
        examples: Iterable[Example | str | Mapping[str, Any]],
        *,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        max_new_tokens: int | None = None,
        postprocess: Postprocess = None,
        retry_invalid: bool = False,
        seed: int | None = None,
    ) -> list[Any]:
        """One answer per example: the generated text (new tokens only, special tokens skipped,
        the answer slot's leading space removed), or, with ``postprocess`` (a ``Pipeline``, a
        list of step entries for ``make_pipeline``, or any callable str -> value), its value; a
        ``PostProcessError`` the pipeline raised takes the value's place. ``retry_invalid``:
        prompt once more those whose output was rejected, with the output and the error's
        ``retry_hint()`` appended, and keep the second result (value or error).

        Decoding: greedy by default; ``num_beams`` > 1 for beam search; ``do_sample`` samples
        with ``temperature``, ``top_p`` and ``top_k`` (None: no top-k cut), from a random state
        seeded with ``seed`` (default: the model's). ``repetition_penalty`` and
        ``no_repeat_ngram_size`` as in transformers. A ``PromptSpec`` with ``self_check`` answers
        twice: the draft, then its verified correction, which is returned."""
        examples = as_examples(examples)
        config = self.generation_config(
            num_beams=num_beams, do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            max_new_tokens=max_new_tokens,
        )
        seed = self.seed if seed is None else seed
        features = self.model.encode([_without_target(e) for e in examples])
        texts = self._decode(features, self.model.generate_ids(features, config, self.batch_size, self.progress, seed))
        if self.spec is not None and self.spec.self_check:
            features = self.model.encode([self._checked(e, draft) for e, draft in zip(examples, texts, strict=True)])
            texts = self._decode(features, self.model.generate_ids(features, config, self.batch_size, False, seed))
        pipeline = _pipeline(postprocess)
        if pipeline is None:
            return texts
        values = [_apply(pipeline, text) for text in texts]
        if retry_invalid:
            self._retry(features, texts, values, pipeline, config, seed)
        return values

    def predict(self, examples: Iterable[Example | str]) -> list[Any]:  # type: ignore[override]
        """Greedy answers (``generate`` with its defaults)."""
        return self.generate(examples)

    def generation_config(self, *, num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0,
                          top_p: float = 1.0, top_k: int | None = None, repetition_penalty: float = 1.0,
                          no_repeat_ngram_size: int = 0, max_new_tokens: int | None = None) -> GenerationConfig:
        """The decoding settings, every option of ``generate`` set here (and the sampling ones
        to neutral values when greedy), so a checkpoint's own ``generation_config.json`` (a
        sampling preset, a repetition penalty) changes nothing unasked. Stops at the tokenizer's
        EOS and the model's own end tokens."""
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        if do_sample and temperature <= 0:
            raise ValueError(f"temperature must be positive when sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
        if no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size cannot be negative, got {no_repeat_ngram_size}")
        max_new = self.model.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be positive, got {max_new}")
        model = self.model.model
        stops = _as_list(self.model.eos_id) + [t for t in _as_list(model.generation_config.eos_token_id)
                                               if t != self.model.eos_id]
        settings: dict[str, Any] = {
            "max_new_tokens": max_new, "num_beams": num_beams, "do_sample": do_sample,
            "repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size,
            "eos_token_id": stops or None, "pad_token_id": self.model.pad_id, "num_return_sequences": 1,
        }
        if do_sample:
            settings.update(temperature=temperature, top_p=top_p, top_k=top_k or 0)
        else:  # transformers' neutral values, so a checkpoint's sampling preset stays out (and silent)
            settings.update(temperature=1.0, top_p=1.0, top_k=50)
        if model.config.is_encoder_decoder:
            settings["decoder_start_token_id"] = model.config.decoder_start_token_id
        return GenerationConfig(**settings)

    def _decode(self, features: Sequence[GenerationEncoding], ids: Sequence[list[int]]) -> list[str]:
        texts = self.model.plm.tokenizer.batch_decode(list(ids), skip_special_tokens=True)
        out = []
        for feature, text in zip(features, texts, strict=True):
            prefix = feature.answer_prefix
            out.append(text[len(prefix):] if prefix and text.startswith(prefix) else text)
        return out

    def _checked(self, example: Example, draft: str) -> Example:
        """The self-check prompt for one example and its draft, as a pre-rendered example."""
        spec, tokenizer = self.spec, self.model.plm.tokenizer
        if self.chat:
            text = tokenizer.apply_chat_template(spec.self_check_messages(example, draft), tokenize=False,
                                                 add_generation_prompt=True)
            text = _drop_bos(text, tokenizer, self.model.prompt_tokenizer.prefix_ids)
        else:
            text = spec.self_check_text(example, draft)
        return Example(example.text, example.text_b, None, {PROMPT_FIELD: text})

    # -- one retry of rejected outputs
    def _retry(self, features: list[GenerationEncoding], texts: list[str], values: list[Any], pipeline: Any,
               config: GenerationConfig, seed: int) -> None:
        """Prompt again the examples whose post-processing failed: the prompt, the rejected
        output, the error's hint and the answer cue; their new values replace the errors."""
        error_class = _post_process_error()
        failed = [i for i, v in enumerate(values) if isinstance(v, error_class)]
        retried: list[int] = []
        encodings: list[GenerationEncoding] = []
        limit = self.model.prompt_tokenizer.max_length
        for i in failed:
            encoding = self._retry_encoding(features[i], texts[i], values[i].retry_hint())
            if limit is not None and len(encoding.prompt.input_ids) > limit:
                logger.warning("example %d: no retry, the prompt with the rejected output exceeds max_length", i)
                continue
            retried.append(i)
            encodings.append(encoding)
        if not encodings:
            return
        new = self._decode(encodings, self.model.generate_ids(encodings, config, self.batch_size, False, seed))
        for i, text in zip(retried, new, strict=True):
            values[i] = _apply(pipeline, text)

    def _retry_encoding(self, feature: GenerationEncoding, output: str, hint: str) -> GenerationEncoding:
        """``feature``'s prompt followed by the rejected output and the hint: in a chat, as the
        assistant's turn and a new user turn (when the chat template renders turns as a prefix
        of longer conversations); otherwise as text lines, then the answer cue again."""
        prefix = feature.answer_prefix
        tokenizer = self.model.plm.tokenizer
        text = _chat_continuation(tokenizer, output, hint) if self.chat else None
        if text is None:
            cue = self.cue if self.cue is not None else _last_line(tokenizer.decode(feature.prompt.input_ids))
            text = f"{prefix}{output}\n{hint}\n{cue}"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompt = feature.prompt
        cut = len(prompt.input_ids) - len(self.model.prompt_tokenizer.suffix_ids)  # before T5's </s>
        joined = prompt.input_ids[:cut] + list(ids) + prompt.input_ids[cut:]
        encoding = Encoding(joined, [], prompt.soft_positions, prompt.soft_tokens, prompt.num_truncated)
        return GenerationEncoding(encoding, None, prefix)

    # -- evaluation
    def evaluate(  # type: ignore[override]
        self,
        examples: Iterable[Example | Mapping[str, Any]],
        metrics: Sequence[str] = ("exact_match", "token_f1"),
        postprocess: Postprocess = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Generate for examples with outputs and score the answers against them with
        ``deltaprompt.generation_metrics`` (``metrics``: exact_match, token_f1, bleu, rouge).
        ``options`` go to ``generate`` (decoding settings, ``retry_invalid``). With
        ``postprocess``, values are scored (JSON as text with sorted keys and fixed spacing, references
        that hold JSON likewise) and ``invalid`` is the share of outputs it rejected (scored as
        empty answers)."""
        from .generation_metrics import generation_scores

        examples = as_examples(examples)
        references = [target_of(e) for e in examples]
        missing = [n for n, r in enumerate(references) if r is None]
        if missing:
            raise ValueError(f"evaluation needs outputs; examples {missing[:5]} have none (meta['target'])")
        predictions = self.generate(examples, postprocess=postprocess, **options)
        if postprocess is None:
            return generation_scores(predictions, references, metrics)
        return score_values(predictions, references, metrics)  # type: ignore[arg-type]

    def predict_log_proba(self, examples: Iterable[Example | str]) -> Any:
        raise TypeError("a generation model has no classes to score; use generate() or evaluate()")

    # -- training
    def fit(  # type: ignore[override]
        self,
        train: Iterable[Example | Mapping[str, Any]],
        dev: Iterable[Example | Mapping[str, Any]] | None = None,
        config: TrainConfig | None = None,
        *,
        auxiliary: AuxiliaryLoss | None = None,
        **overrides: Any,
    ) -> PromptForGeneration:
        """Teacher forcing on input -> output pairs (see ``Classifier.fit``; ``dev`` picks the best
        checkpoint on teacher-forced token accuracy, ties on loss). ``overrides``: TrainConfig
        fields, e.g. ``epochs=5, lr=1e-4``."""
        if "targets" in overrides:
            raise ValueError("generation trains on each example's output text; soft targets are not supported")
        super().fit(train, dev, config, auxiliary=auxiliary, **overrides)
        return self

    # -- saving
    def describe(self) -> dict[str, Any]:
        model = self.model
        spec = self.spec
        template = self.source_template if spec is None else spec.to_dict()
        return {
            **super().describe(),
            "template": template,
            "template_kind": "text" if spec is None else "spec",
            "post_processors": sorted(n for n in self.post_processors if n not in POST_PROCESSORS),
            "chat": self.chat,
            "max_length": model.max_length if model.max_length is None else model.max_length + _prefix_room(model),
            "max_new_tokens": model.max_new_tokens,
            "truncation": model.prompt_tokenizer.truncation,
            "seed": self.seed,
        }

    @classmethod
    def _rebuild(cls, description: dict[str, Any], plm: PLM, methods: list[Any] | None) -> PromptForGeneration:
        template: Any = description["template"]
        if description.get("template_kind") == "spec":
            from .prompt_spec import PromptSpec

            template = PromptSpec.from_dict(template)
        missing = [p for p in description.get("post_processors", []) if p not in POST_PROCESSORS]
        if missing:
            raise artifacts.ArtifactError(
                f"the template uses post-processors {missing}; register them (register_post_processor) before loading"
            )
        return cls(plm, template, methods=methods, max_length=description["max_length"],
                   max_new_tokens=description["max_new_tokens"], seed=description["seed"],
                   batch_size=description["batch_size"], chat=description["chat"],
                   truncation=description["truncation"])

    @classmethod
    def load(cls, directory: str | Path, plm: PLM | None = None,
             device: str | torch.device | None = None) -> PromptForGeneration:
        """Rebuild a saved generation model (refused when ``plm``'s weights are not the ones it
        was trained on, or when the folder holds a classifier)."""
        loaded = Classifier.load(directory, plm=plm, device=device)
        if not isinstance(loaded, cls):
            raise artifacts.ArtifactError(f"{directory} holds a {loaded.kind} classifier, not a generation model")
        return loaded


# ----------------------------------------------------------------------------- helpers

def _without_target(example: Example) -> Example:
    """Generation reads the prompt only; dropping the output also skips tokenising it."""
    if example.label is None and not any(k in example.meta for k in TARGET_KEYS):
        return example
    return Example(example.text, example.text_b, None, {k: v for k, v in example.meta.items() if k not in TARGET_KEYS})


def _cue(prompt: Template | None) -> str | None:
    """The answer cue to repeat after a retry hint: the last line of the prompt's final text
    ("A:" in "Q: {text}\\nA: {mask}"), or "" when the prompt does not end with text."""
    if prompt is None:
        return None
    last = prompt.parts[-1]
    return _last_line(last.value or "") if last.kind == "text" else ""


def _last_line(text: str) -> str:
    return text.rstrip().rsplit("\n", 1)[-1].strip()


def _chat_continuation(tokenizer: Any, output: str, hint: str) -> str | None:
    """The chat text after a generation prompt for: the assistant's ``output``, a user turn with
    ``hint``, a new generation prompt. None when the template does not render a conversation
    as the extension of its beginning (then plain text serves)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    first = [{"role": "user", "content": "x"}]
    more = first + [{"role": "assistant", "content": output}, {"role": "user", "content": hint}]
    try:
        start = tokenizer.apply_chat_template(first, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(more, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that refuses such a conversation
        return None
    return whole[len(start):] if whole.startswith(start) else None


def _pipeline(postprocess: Postprocess) -> Callable[[str], Any] | None:
    if postprocess is None:
        return None
    if callable(postprocess):
        return postprocess
    if isinstance(postprocess, Sequence) and not isinstance(postprocess, str):
        from .postprocess import make_pipeline

        return make_pipeline(list(postprocess))
    raise TypeError(f"postprocess is a Pipeline, a list of steps or a callable, got {type(postprocess).__name__}")


def _post_process_error() -> type[Exception]:
    from .postprocess import PostProcessError

    return PostProcessError


def _apply(pipeline: Callable[[str], Any], text: str) -> Any:
    """The post-processed value, or the PostProcessError raised instead (other errors propagate)."""
    try:
        return pipeline(text)
    except _post_process_error() as error:
        return error


def score_values(values: Sequence[Any], references: Sequence[str], metrics: Sequence[str]) -> dict[str, Any]:
    """Generation metrics of post-processed values: JSON values compared as text with fixed spacing and
    sorted keys (references holding JSON likewise), rejected outputs (``PostProcessError``) scored
    as empty answers, and ``invalid`` their share."""
    from .generation_metrics import generation_scores

    error_class = _post_process_error()
    invalid = [isinstance(v, error_class) for v in values]
    predictions = ["" if bad else _canonical(v) for v, bad in zip(values, invalid, strict=True)]
    refs = [_canonical(_json_reference(r)) if isinstance(v, dict | list) else r
            for v, r in zip(values, references, strict=True)]
    scores = generation_scores(predictions, refs, metrics)
    scores["invalid"] = sum(invalid) / max(len(invalid), 1)
    return scores


def _json_reference(reference: str) -> Any:
    """A reference holding JSON, parsed (so it is compared as the parsed prediction is)."""
    try:
        return json.loads(reference)
    except (TypeError, ValueError):
        return reference


def _canonical(value: Any) -> Any:
    """Parsed JSON as text with sorted keys and one space after each separator, so key order and
    spacing do not count, and token F1 sees its keys and values as words (compact JSON would be
    one token once punctuation is stripped)."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return value


def _prefix_room(model: GenerationModel) -> int:
    """Positions a prefix method took off the prompt limit (re-applied when loading)."""
    prefix = getattr(model, "prefix", None)
    if not isinstance(prefix, nn.ModuleDict) or model.family != "causal":
        return 0
    return sum(p.num_virtual_tokens for p in prefix.values())


__all__ = [
    "GenerationEncoding",
    "GenerationModel",
    "PromptForGeneration",
    "answer_slot",
    "generation_example",
    "target_of",
]
