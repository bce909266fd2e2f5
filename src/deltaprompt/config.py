"""The run configuration of ``deltaprompt train CONFIG.yaml``: one YAML file says which model,
which data, which classifier, which delta methods and how to train.

    model:      {name: smollm2-135m}
    data:       {task: sst2, shots: 16, seed: 13}
    classifier: {template: "Review: {text}\\nSentiment: {mask}",
                 label_words: {negative: terrible, positive: great}}
    methods:    [{method: lora, r: 8}]
    training:   {epochs: 20, delta_lr: 1e-3}
    output_dir: runs/sst2-lora

Everything is checked before a model is loaded: unknown keys (with the closest valid name),
wrong types, and combinations that cannot work (a head classifier with label words, a prompt
without a mask, delta methods that exclude each other, shots without a training split...).
Flags override single values: ``--set training.lr=1e-4 --set methods[0].r=16``. Values are
read as YAML (never evaluated); keys that hold text take the text as written.
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

if typing.TYPE_CHECKING:
    from .classifier import Classifier
    from .prompt_spec import PromptSpec

from .data import Example, few_shot_split, load_examples, load_task
from .head import Pooling
from .plm import PLM, Family
from .schema import ConfigError, from_dict, relocated, to_dict
from .spans import entity_typing_examples
from .template import Template, TemplateError
from .tokenization import Truncation
from .trainer import TrainConfig
from .verbalizer import Aggregation, MultiToken, make_verbalizer, parse_label_words

Kind = Literal["prompt", "head", "tagger", "relation", "subprompts", "span_ner", "generation"]
DType = Literal["float32", "float16", "bfloat16"]
LABEL_WORD_FILES = (".txt", ".json", ".yaml", ".yml")


# ----------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; a learning
    rate written the usual way would otherwise arrive as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str, where: str) -> Any:
    """Parse YAML safely; a syntax error becomes a one-line ConfigError with its line number."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


# ----------------------------------------------------------------------------- sections

@dataclass
class ModelSection:
    """The pretrained model. ``name``: hub id, local folder or alias (smollm2-135m, minilm-l6);
    ``family`` overrides detection; ``dtype`` of the weights (default float32); ``device``:
    cpu, cuda, cuda:1 (default: the trainer's choice)."""

    name: str | None = None
    family: Family | None = None
    revision: str | None = None
    dtype: DType | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError(
                "model.name is required: a hub id, a local folder or an alias (smollm2-135m, minilm-l6)"
            )


@dataclass
class DataSection:
    """Where examples come from: a benchmark ``task`` (a name under ``data_dir``, default
    ../shared/data, or a folder) or ``train``/``dev``/``test`` files (.jsonl/.csv/.tsv, whose
    columns ``text_column``/``text_b_column``/``label_column`` name). ``labels`` fixes the class
    order for files. ``shots``: sample that many examples per class from the training split
    (LM-BFF's protocol, with ``seed``), and ``dev_per_class`` (default: ``shots``; 0: none)
    more, disjoint, as the dev set. ``*_limit``: keep only the first N examples of a split.
    Tagged sentences (CoNLL's words and BIO tags): ``shots`` draws that many sentences (and
    ``dev_per_class`` sentences as dev); ``entity_typing: true`` turns each gold entity into
    one example whose label is its type (for a prompt that types entities). ``rare_classes:
    keep`` lets a class with fewer examples than asked give what it has (default: an error).

    Generation (``classifier.kind: generation``): each example's output is the column
    ``target_column`` (default target); ``shots`` draws that many examples (and
    ``dev_per_class`` more as dev). ``entity_records: true`` turns tagged sentences into
    sentence -> JSON record of their entities by type (``deltaprompt.entity_records``)."""

    task: str | None = None
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    data_dir: str | None = None
    text_column: str = "text"
    text_b_column: str = "text_b"
    label_column: str = "label"
    labels: list[str] | None = None
    shots: int | None = None
    dev_per_class: int | None = None
    seed: int = 13
    train_limit: int | None = None
    dev_limit: int | None = None
    test_limit: int | None = None
    entity_typing: bool = False
    rare_classes: Literal["error", "keep"] = "error"
    target_column: str = "target"
    entity_records: bool = False

    def __post_init__(self) -> None:
        files = [name for name in ("train", "dev", "test") if getattr(self, name)]
        if self.task and files:
            raise ConfigError(
                f"data: give either a task or files, not both (task {self.task!r} and data.{files[0]})"
            )
        if not self.task and not files:
            raise ConfigError("data: give a task (data.task: sst2) or files (data.train, data.dev, data.test)")
        if not self.task and not self.train:
            what = "data.shots samples from the training split" if self.shots else "training needs examples"
            raise ConfigError(f"{what}; give data.train (or a task with a train split)")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"data.shots must be at least 1, got {self.shots}")
        if self.dev_per_class is not None:
            if self.shots is None:
                raise ConfigError("data.dev_per_class applies to few-shot sampling; set data.shots too")
            if self.dev_per_class < 0:
                raise ConfigError(f"data.dev_per_class cannot be negative, got {self.dev_per_class}")
        for name in ("train_limit", "dev_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"data.labels lists a class twice: {self.labels}")
        if self.entity_typing and self.entity_records:
            raise ConfigError("data: entity_typing and entity_records make different tasks of tagged sentences; "
                              "choose one")
        if not self.target_column:
            raise ConfigError("data.target_column is empty; name the column holding each example's output")


@dataclass
class DecodingSection:
    """How a generation model decodes (``classifier.decoding``), as transformers' ``generate``:
    greedy by default, beam search with ``num_beams`` > 1, sampling with ``do_sample`` (and
    ``temperature``, ``top_p``, ``top_k``; ``seed`` fixes the draw, default the training seed);
    ``repetition_penalty`` and ``no_repeat_ngram_size`` against repeated text."""

    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"classifier.decoding.num_beams must be at least 1, got {self.num_beams}")
        if self.temperature <= 0:
            raise ConfigError(f"classifier.decoding.temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"classifier.decoding.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"classifier.decoding.top_k must be at least 1 (or null: no cut), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"classifier.decoding.repetition_penalty must be positive, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"classifier.decoding.no_repeat_ngram_size cannot be negative, got "
                              f"{self.no_repeat_ngram_size}")

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``PromptForGeneration.generate``."""
        return dataclasses.asdict(self)


@dataclass
class ClassifierSection:
    """The classifier. ``kind: prompt`` scores label words at the template's mask (needs
    ``template`` and ``label_words``); ``kind: head`` puts a classification head on the PLM's
    representation (``pooling``: cls, mean or last; ``dropout``; ``template`` optional and
    without a mask; no label words).
    ``label_words``: {class: word or [words]}, a list in class order, the string form
    ``"neg: bad, awful; pos: great"`` or a .txt/.json/.yaml file. ``verbalizer``: how the
    label words become class scores, by name (manual, soft, knowledgeable, prototype) or as a
    mapping with its options (``{type: prototype, tau: 0.05}``; docs/verbalizers.md); a
    knowledgeable verbalizer measures its word priors on the training texts, labels unused.
    ``batch_size``: for inference.

    Entity tasks (docs/entities.md): ``kind: tagger`` tags words (BIO) with a head on their
    sub-tokens (``alignment``: first or all); ``kind: relation`` classifies the relation between
    two marked entities (``variant``: cls, mention_pool, mention_pool_position, markers_cls,
    markers_mention_pool, markers_start; ``negative_class`` is left out of macro-F1, default
    Other); ``kind: subprompts`` combines PTR-style sub-prompts by ``rules`` ({class: [one
    sub-label per sub-prompt]}; ``subprompts``: [{template, label_words}]); ``kind: span_ner``
    tags entities by typing every span of up to ``max_span_words`` words through ``template``
    and ``label_words`` ({type: words}) with ``none_word`` for non-entities, keeping spans at
    ``threshold`` or above.

    Generation (docs/generation.md): ``kind: generation`` trains a ``PromptForGeneration`` with
    teacher forcing on each example's output. The prompt is ``template`` (its ``{mask}`` is the
    answer slot; none: the answer follows the end), a PromptSpec mapping ``spec`` or a spec YAML
    file ``spec_file``; ``chat`` wraps it in the tokenizer's chat template. ``max_new_tokens``
    (default 64) bounds answers; ``decoding`` (``DecodingSection``) sets how they are decoded;
    ``postprocess`` lists post-processing steps (``deltaprompt.postprocess``, e.g. ``[strip,
    {json: {schema: ...}}]``), ``retry_invalid`` prompts once more when they reject an output;
    ``metrics``: exact_match, token_f1, bleu, rouge (default the first two)."""

    kind: Kind = "prompt"
    template: str | None = None
    label_words: str | dict[str, Any] | list[Any] | None = None
    verbalizer: str | dict[str, Any] | None = None
    aggregation: Aggregation | None = None
    multi_token: MultiToken | None = None
    calibrate: bool = False
    pooling: Pooling | None = None
    dropout: float | None = None
    max_length: int | None = None
    truncation: Truncation = "longest_first"
    batch_size: int = 16
    alignment: Literal["first", "all"] | None = None
    variant: str | None = None
    negative_class: str | None = None
    subprompts: list[dict[str, Any]] | None = None
    rules: dict[str, list[str]] | None = None
    none_word: str | None = None
    max_span_words: int | None = None
    threshold: float | None = None
    spec: dict[str, Any] | None = None
    spec_file: str | None = None
    chat: bool = False
    max_new_tokens: int | None = None
    decoding: dict[str, Any] | None = None  # a DecodingSection; a mapping here so that its errors name the key
    postprocess: list[str | dict[str, Any]] | None = None
    retry_invalid: bool = False
    metrics: list[str] | None = None

    def __post_init__(self) -> None:
        entity = self.kind in SPECIAL_KINDS  # the prompt and head kinds check their own keys below
        own = {key for kind, keys in KIND_OPTIONS.items() for key in keys if entity or kind in SPECIAL_KINDS}
        for key in sorted(own - set(KIND_OPTIONS.get(self.kind, ()))):
            if getattr(self, key) is not None:
                owners = [k for k, keys in KIND_OPTIONS.items() if key in keys]
                raise ConfigError(f"classifier.{key} applies to kind: {' or '.join(owners)}, not to kind: {self.kind}")
        for key in ("chat", "retry_invalid"):
            if getattr(self, key) and self.kind != "generation":
                raise ConfigError(f"classifier.{key} applies to kind: generation, not to kind: {self.kind}")
        if self.kind == "generation":
            self._check_generation_kind()
            return
        if self.kind in ENTITY_KINDS:
            self._check_entity_kind()
            return
        if self.kind == "prompt":
            missing = [k for k in ("template", "label_words") if getattr(self, k) is None]
            if missing:
                raise ConfigError(
                    f"classifier: a prompt classifier needs {' and '.join(missing)} "
                    "(or use kind: head for a classification head)"
                )
            for key in ("pooling", "dropout"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"classifier.{key} applies to kind: head, not to a prompt classifier")
            self._check_label_words()
            self._check_verbalizer()
        else:
            if self.label_words is not None:
                raise ConfigError(
                    "classifier.label_words: a head classifier has no label words (it learns a "
                    "weight per class); remove them or use kind: prompt"
                )
            for key in ("aggregation", "multi_token", "verbalizer"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"classifier.{key} applies to label words; a head classifier has none")
            if self.calibrate:
                raise ConfigError("classifier.calibrate applies to prompt classifiers (label-word priors)")
            if self.dropout is not None and not 0 <= self.dropout < 1:
                raise ConfigError(f"classifier.dropout must be in [0, 1), got {self.dropout}")
        if self.template is not None:
            try:
                masks = Template(self.template).num_masks
            except (TemplateError, ValueError) as exc:
                raise ConfigError(f"classifier.template: {str(exc).splitlines()[0]}") from None
            if self.kind == "prompt" and masks != 1:
                raise ConfigError(
                    f"classifier.template: a prompt classifier reads exactly one {{mask}}; this one has {masks}"
                )
            if self.kind == "head" and masks:
                raise ConfigError(
                    "classifier.template: a head classifier pools hidden states and reads no {mask}; "
                    "remove it, or use kind: prompt"
                )
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"classifier.max_length must be positive, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"classifier.batch_size must be positive, got {self.batch_size}")

    def _check_entity_kind(self) -> None:
        """The entity kinds check their own options when built; here what needs no model."""
        needs = {"span_ner": ("template", "label_words"), "subprompts": ("subprompts", "rules")}
        missing = [k for k in needs.get(self.kind, ()) if getattr(self, k) is None]
        if missing:
            raise ConfigError(f"classifier: kind: {self.kind} needs {' and '.join(missing)}")
        if self.kind in ("tagger", "relation"):
            for key in ("template", "label_words"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"classifier.{key}: kind: {self.kind} puts a head on the PLM and takes no {key}")
        elif self.dropout is not None:
            raise ConfigError(f"classifier.dropout applies to heads (kind: head, tagger, relation), not to kind: {self.kind}")
        if self.calibrate:
            raise ConfigError("classifier.calibrate applies to kind: prompt")
        if self.kind == "span_ner":
            self._check_label_words()
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"classifier.dropout must be in [0, 1), got {self.dropout}")
        if self.max_span_words is not None and self.max_span_words < 1:
            raise ConfigError(f"classifier.max_span_words must be at least 1, got {self.max_span_words}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigError(f"classifier.threshold must be in [0, 1], got {self.threshold}")

    def _check_generation_kind(self) -> None:
        """Everything a generation model needs that can be checked without a model: one prompt
        (template, spec or spec_file), post-processing steps that exist, known metrics."""
        given = [k for k in ("template", "spec", "spec_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("classifier: kind: generation needs exactly one of template, spec, spec_file"
                              + (f" (got {' and '.join(given)})" if given else ""))
        for key in ("label_words", "dropout"):
            if getattr(self, key) is not None:
                raise ConfigError(f"classifier.{key}: kind: generation writes text and takes no {key}")
        if self.calibrate:
            raise ConfigError("classifier.calibrate applies to kind: prompt")
        if self.template is not None:
            try:
                masks = Template(self.template).num_masks
            except (TemplateError, ValueError) as exc:
                raise ConfigError(f"classifier.template: {str(exc).splitlines()[0]}") from None
            if masks > 1:
                raise ConfigError(f"classifier.template: a generation template has one answer slot {{mask}} "
                                  f"(or none: the answer follows its end); this one has {masks}")
        if self.spec_file is not None and not Path(self.spec_file).is_file():
            raise ConfigError(f"classifier.spec_file: no such file {self.spec_file!r}")
        self.prompt_spec()
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"classifier.max_new_tokens must be positive, got {self.max_new_tokens}")
        self.decoding_section()
        if self.postprocess is not None:
            from .postprocess import make_pipeline

            try:
                make_pipeline(self.postprocess)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"classifier.postprocess: {str(exc).splitlines()[0]}") from None
        if self.retry_invalid and not self.postprocess:
            raise ConfigError("classifier.retry_invalid retries outputs that post-processing rejects; "
                              "add classifier.postprocess steps (e.g. [{json: {schema: ...}}])")
        if self.metrics is not None:
            from .generation_metrics import METRICS

            for i, name in enumerate(self.metrics):
                if name not in METRICS:
                    close = difflib.get_close_matches(name, METRICS, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ConfigError(f"classifier.metrics[{i}]: unknown metric {name!r}; {hint}"
                                      f"choose from {', '.join(METRICS)}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"classifier.max_length must be positive, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"classifier.batch_size must be positive, got {self.batch_size}")

    def prompt_spec(self) -> PromptSpec | None:
        """The PromptSpec of ``spec`` or ``spec_file`` (None for a template)."""
        from .prompt_spec import PromptSpec

        if self.spec is not None:
            return PromptSpec.from_dict(self.spec, "classifier.spec")
        if self.spec_file is not None:
            try:
                return PromptSpec.load(self.spec_file)
            except ConfigError as exc:
                raise ConfigError(f"classifier.spec_file: {str(exc).splitlines()[0]}") from None
        return None

    def decoding_section(self) -> DecodingSection:
        return from_dict(DecodingSection, self.decoding or {}, "classifier.decoding")

    def generation_settings(self) -> dict[str, Any]:
        """What generating and evaluating use beyond the saved model: decoding, post-processing,
        retry, metrics (``train`` saves them beside the model for ``eval`` and ``generate``)."""
        return {
            "decoding": self.decoding_section().options(),
            "postprocess": self.postprocess,
            "retry_invalid": self.retry_invalid,
            "metrics": list(self.metrics) if self.metrics is not None else list(DEFAULT_GENERATION_METRICS),
        }

    def _check_label_words(self) -> None:
        words = self.label_words
        if isinstance(words, list):  # class order comes with the data; check the shape only
            for i, entry in enumerate(words):
                items = [entry] if isinstance(entry, str) else entry
                if not isinstance(items, list) or not items or not all(isinstance(w, str) and w.strip() for w in items):
                    raise ConfigError(f"classifier.label_words[{i}]: expected a word or a list of words, got {entry!r}")
            return
        looks_like_file = isinstance(words, str) and words.endswith(LABEL_WORD_FILES) and ":" not in words
        if looks_like_file and "\n" not in words and not Path(words).is_file():
            raise ConfigError(f"classifier.label_words: no such file {words!r}")
        try:
            parse_label_words(words)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"classifier.label_words: {exc}") from None

    def _check_verbalizer(self) -> None:
        """Build the verbalizer once (no model needed) so a wrong type or option fails now."""
        if self.verbalizer is None:
            return
        words = self.label_words
        classes = None
        if isinstance(words, list):  # class order comes with the data: stand-in names will do
            classes = [f"class {i}" for i in range(len(words))]
        try:
            make_verbalizer(self.verbalizer, words, classes, self.aggregation or "mean", self.multi_token or "first")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"classifier.verbalizer: {exc}") from None

    def classes(self) -> tuple[str, ...] | None:
        """The classes the label words name, in their order (None for a list or a head)."""
        if self.kind != "prompt" or isinstance(self.label_words, list):
            return None
        return tuple(parse_label_words(self.label_words))


MethodEntry = str | dict[str, Any]
# Options that belong to one kind of classifier (the rest are shared or checked per kind).
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "prompt": ("verbalizer", "aggregation", "multi_token"),
    "head": ("pooling",),
    "tagger": ("alignment",),
    "relation": ("variant", "negative_class"),
    "subprompts": ("subprompts", "rules"),
    "span_ner": ("none_word", "max_span_words", "threshold"),
    "generation": ("spec", "spec_file", "max_new_tokens", "decoding", "postprocess", "metrics"),
}
ENTITY_KINDS = ("tagger", "relation", "subprompts", "span_ner")
SPECIAL_KINDS = (*ENTITY_KINDS, "generation")  # kinds whose options are refused on every other kind
DEFAULT_GENERATION_METRICS = ("exact_match", "token_f1")


@dataclass
class RunConfig:
    """A whole training run; see the module docstring and docs/configuration.md.

    ``methods``: delta methods by name or ``{method: name, ...options}``; omitted, the
    classifier's default (all PLM weights train); ``[]`` freezes the PLM (only soft tokens or
    the head train). ``training``: the trainer's settings (``TrainConfig``). ``output_dir``:
    where the model, metrics and checkpoints go (``--output-dir`` overrides it).
    """

    # Missing sections read as empty ones, whose own checks then say what is missing.
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    methods: list[MethodEntry] | MethodEntry | None = None
    training: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.methods, (str, dict)):
            self.methods = [self.methods]
        if self.methods is not None:
            check_methods(self.methods)
        if self.data.labels is not None:
            classes = self.classifier.classes()
            if classes is not None and set(classes) != set(self.data.labels):
                raise ConfigError(
                    f"classifier.label_words name classes {list(classes)} but data.labels are {self.data.labels}"
                )
        generation = self.classifier.kind == "generation"
        for key, default in (("entity_records", False), ("target_column", "target")):
            if getattr(self.data, key) != default and not generation:
                raise ConfigError(f"data.{key} applies to classifier kind: generation, not to kind: "
                                  f"{self.classifier.kind}")
        if generation and self.data.labels is not None:
            raise ConfigError("data.labels: a generation model writes text and has no classes; remove data.labels")
        if (
            self.methods == []
            and self.classifier.kind in ("prompt", "generation")
            and self.classifier.template is not None
            and not Template(self.classifier.template).has_soft_tokens
        ):
            raise ConfigError(
                "nothing would train: methods: [] freezes the PLM and the template has no soft "
                "tokens; add a method (e.g. lora, prompt_tuning) or {soft} tokens to the template"
            )

    def method_specs(self) -> list[MethodEntry] | None:
        return None if self.methods is None else list(typing.cast(list[MethodEntry], self.methods))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def check_methods(specs: Sequence[Any]) -> None:
    """Unknown names and options (naming the entry), duplicates and exclusive pairs."""
    from .delta import make_method, make_methods

    for i, spec in enumerate(specs):
        where = f"methods[{i}]"
        try:
            make_method(spec, where)
        except ConfigError as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        make_methods(list(specs))
    except ConfigError as exc:
        raise ConfigError(f"methods: {exc}") from None


# ----------------------------------------------------------------------------- loading

PATH_KEYS = {"data": ("train", "dev", "test", "data_dir")}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping (empty for an empty file), or an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    raw = read_yaml(path.read_text(encoding="utf-8"), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(
    source: str | Path | dict[str, Any],
    overrides: Iterable[str] = (),
) -> RunConfig:
    """Read and check a run config from a YAML file (or a dict), then apply ``key=value``
    overrides. Relative paths in the file are relative to the file's folder; paths given in
    overrides are relative to the working directory."""
    if isinstance(source, dict):
        raw, where = source, "config"
    else:
        raw, where = read_config_file(source), str(source)
        raw = resolve_paths(raw, Path(source).resolve().parent)
    for override in overrides:
        key, value = split_override(override)
        raw = apply_override(raw, key, value)
    return build_config(raw, where)


def build_config(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """``RunConfig`` from plain data; every error is a one-line ConfigError naming the key."""
    sections = {f.name for f in dataclasses.fields(RunConfig)} - {"methods", "output_dir"}
    # An empty section in YAML (``training:`` with nothing under it) is null: read it as {}.
    raw = {k: ({} if v is None and k in sections else v) for k, v in raw.items()}
    try:
        return from_dict(RunConfig, raw, "config")
    except ConfigError as exc:
        raise relocated(exc, "config", where) from None


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A raw run config with its relative paths (data files, task and model folders, label-word
    and spec files) made relative to ``base``, the config file's folder."""
    raw = dict(raw)
    data = raw.get("data")
    if isinstance(data, dict):
        data = dict(data)
        for key in PATH_KEYS["data"]:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                data[key] = str(base / Path(value).expanduser())
        task = data.get("task")
        if isinstance(task, str) and (base / task / "labels.json").is_file():
            data["task"] = str(base / task)
        raw["data"] = data
    model = raw.get("model")
    if isinstance(model, dict):
        name = model.get("name")
        if isinstance(name, str) and name and (base / name / "config.json").is_file():
            raw["model"] = {**model, "name": str(base / name)}  # a model folder beside the config
    classifier = raw.get("classifier")
    if isinstance(classifier, dict):
        words = classifier.get("label_words")
        if isinstance(words, str) and words.endswith(LABEL_WORD_FILES) and (base / words).is_file():
            raw["classifier"] = classifier = {**classifier, "label_words": str(base / words)}
        spec_file = classifier.get("spec_file")
        if isinstance(spec_file, str) and spec_file and not Path(spec_file).expanduser().is_absolute():
            raw["classifier"] = {**classifier, "spec_file": str(base / Path(spec_file).expanduser())}
    return raw


# ----------------------------------------------------------------------------- overrides

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def parse_flag_entry(text: str, flag: str, example: str) -> str | tuple[str, dict[str, Any]] | dict[str, Any]:
    """A named entry given on the command line: ``name``, ``name:key=value,key=value`` (values
    read as YAML scalars) as a (name, options) pair, or a YAML mapping ``{...}`` as it is."""
    text = text.strip()
    if text.startswith("{"):
        value = read_yaml(text, f"{flag} {text}")
        if not isinstance(value, dict):
            raise ValueError(f"{flag} {text}: expected a mapping")
        return value
    name, colon, options = text.partition(":")
    if not colon:
        return name.strip()
    parsed: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{flag} {text}: write name:key=value,key=value (e.g. {example})")
        parsed[key.strip()] = read_yaml(value, f"{flag} {text}")
    return name.strip(), parsed


def split_override(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise ConfigError(f"--set {text!r}: write key=value, e.g. training.lr=1e-4 or methods[0].r=16")
    return key.strip(), value


def parse_key(key: str) -> list[str | int]:
    """``methods[0].r`` -> ['methods', 0, 'r']."""
    steps: list[str | int] = []
    position = 0
    expect_name = True
    while position < len(key):
        if key[position] == "." and not expect_name and steps:
            position += 1
            expect_name = True
            continue
        match = _STEP.match(key, position)
        if not match or (match.group(1) and not expect_name):
            raise ConfigError(f"--set {key!r}: cannot read the key at {key[position:]!r}")
        steps.append(match.group(1) if match.group(1) else int(match.group(2)))
        position = match.end()
        expect_name = False
    if not steps or not isinstance(steps[0], str) or expect_name:
        raise ConfigError(f"--set {key!r}: cannot read the key")
    return steps


def apply_override(raw: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    """A copy of ``raw`` with the value at ``key`` replaced (missing mappings are created; a
    method given by name becomes ``{method: name}`` so that its options can be set)."""
    steps = parse_key(key)
    parsed = parse_value(value, _hint_at(steps), key)
    root = _copy(raw)
    node: Any = root
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        where = _path_text(steps[: i + 1])
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"--set {key}: {_path_text(steps[:i])} is not a list")
            if step > len(node):
                raise ConfigError(f"--set {key}: {_path_text(steps[:i])} has {len(node)} entries; "
                                  f"index {step} would leave a gap")
            if step == len(node):
                node.append({} if not last else None)
            if last:
                node[step] = parsed
            else:
                if isinstance(node[step], str) and steps[0] == "methods":
                    node[step] = {"method": node[step]}
                node = node[step]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {_path_text(steps[:i])} is not a mapping")
        if last:
            node[step] = parsed
            continue
        following = steps[i + 1]
        if node.get(step) is None:
            node[step] = [] if isinstance(following, int) else {}
        node = node[step]
        if isinstance(following, str) and not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {where} is {node!r}, not a mapping")
    return root


def parse_value(text: str, hint: Any, key: str) -> Any:
    """YAML for numbers, booleans, null, lists and mappings; keys that hold text keep the text
    as written (a template's ``{text}`` is not a YAML mapping), ``\\n`` meaning a newline."""
    if _is_text(hint):
        if text.strip() in ("null", "~", "None"):
            return None
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return read_yaml(text, f"--set {key}")
        return text.replace("\\n", "\n").replace("\\t", "\t")
    return read_yaml(text, f"--set {key}") if text.strip() else None


def _is_text(hint: Any) -> bool:
    if hint is str:
        return True
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return options == [str]
    return False


def _hint_at(steps: Sequence[str | int]) -> Any:
    """The schema's type hint at a key path (Any where the schema does not say)."""
    hint: Any = RunConfig
    for step in steps:
        hint = _strip_optional(hint)
        if isinstance(step, str) and dataclasses.is_dataclass(hint):
            hints = get_type_hints(hint)
            if step not in hints:
                return Any  # from_dict reports the unknown key with a suggestion
            hint = hints[step]
        else:
            return Any
    return hint


def _strip_optional(hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _path_text(steps: Sequence[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out or "the config"


# ----------------------------------------------------------------------------- data

@dataclass
class RunData:
    """The examples of a run and the class order."""

    train: list[Example]
    dev: list[Example] | None
    test: list[Example] | None
    classes: tuple[str, ...]


def load_run_data(config: RunConfig) -> RunData:
    """Read the splits, fix the class order, and draw the few-shot sample if asked."""
    data = config.data
    classes: tuple[str, ...] | None = tuple(data.labels) if data.labels else None
    if data.task:
        task = load_task(data.task, data.data_dir)
        classes = classes or task.labels
        train = task.load("train")
        dev = task.load("dev") if "dev" in task.splits else None
        test = task.load("test") if "test" in task.splits else None
    else:
        columns = (data.text_column, data.text_b_column, data.label_column)
        train = load_examples(typing.cast(str, data.train), *columns)
        dev = load_examples(data.dev, *columns) if data.dev else None
        test = load_examples(data.test, *columns) if data.test else None
    if config.classifier.kind == "generation":
        return _generation_run_data(config, train, dev, test, classes)
    if train and all("tokens" in e.meta for e in train):
        if not data.entity_typing:
            return _tagged_run_data(config, train, dev, test, classes)
        types = sorted({tag[2:] for tag in classes or () if tag != "O"}) or None
        train, dev, test = (entity_typing_examples(x) if x else x for x in (train, dev, test))
        classes = tuple(types) if types else None
    elif data.entity_typing:
        raise ValueError("data.entity_typing reads tagged sentences (words and BIO tags); this data has none")
    named = config.classifier.classes()
    if classes is not None and named is not None and set(named) != set(classes):
        missing, extra = sorted(set(classes) - set(named)), sorted(set(named) - set(classes))
        raise ValueError(
            f"classifier.label_words do not match the data's classes {list(classes)}: "
            + "; ".join(filter(None, [f"no label words for {missing}" if missing else "",
                                      f"unknown classes {extra}" if extra else ""]))
        )
    classes = classes or named
    if classes is None:
        classes = tuple(sorted({e.label for e in train if e.label is not None}))
    for split, examples in (("train", train), ("dev", dev), ("test", test)):
        unknown = sorted({e.label for e in examples or () if e.label is not None and e.label not in classes})
        if unknown:
            raise ValueError(f"data: the {split} split has labels {unknown} that are not classes {list(classes)}")
    for split, examples in (("training", train), ("dev", dev)):
        if any(e.label is None for e in examples or ()):
            raise ValueError(f"data: every {split} example needs a label")
    if data.shots is not None:
        train, sampled_dev = few_shot_split(train, data.shots, data.seed, classes, data.dev_per_class,
                                             data.rare_classes)
        if sampled_dev:
            dev = sampled_dev
    if data.train_limit:
        train = train[: data.train_limit]
    if dev is not None and data.dev_limit:
        dev = dev[: data.dev_limit]
    if test is not None and data.test_limit:
        test = test[: data.test_limit]
    if not train:
        raise ValueError("data: no training examples")
    if len(classes) < 2:
        raise ValueError(f"data: a classifier needs at least two classes, found {list(classes)}")
    return RunData(train, dev or None, test or None, classes)


def _tagged_run_data(config: RunConfig, train: list[Example], dev: list[Example] | None,
                     test: list[Example] | None, tags: tuple[str, ...] | None) -> RunData:
    """Tagged sentences: the classes are the BIO tags; ``shots`` draws sentences, not classes."""
    data = config.data
    seen = {t for split in (train, dev or [], test or []) for e in split for t in e.meta.get("tags", ())}
    tags = tags or tuple(["O", *sorted(seen - {"O"})])
    unknown = sorted(seen - set(tags))
    if unknown:
        raise ValueError(f"data: tags {unknown} are not among the labels {list(tags)}")
    if any("tags" not in e.meta for e in [*train, *(dev or [])]):
        raise ValueError("data: every training and dev sentence needs its tags")
    return RunData(*_draw(data, train, dev, test, "sentences"), tags)


def _draw(data: DataSection, train: list[Example], dev: list[Example] | None, test: list[Example] | None,
          what: str) -> tuple[list[Example], list[Example] | None, list[Example] | None]:
    """``shots`` examples (not per class) drawn from train with the seed, ``dev_per_class``
    (default: as many) more as dev; then the limits."""
    if data.shots is not None:
        wanted = data.shots + (data.shots if data.dev_per_class is None else data.dev_per_class)
        if len(train) < wanted:
            raise ValueError(f"data: {wanted} {what} were asked for (shots and dev), the train split has {len(train)}")
        drawn = list(train)
        random.Random(data.seed).shuffle(drawn)
        train, sampled_dev = drawn[: data.shots], drawn[data.shots : wanted]
        dev = sampled_dev or dev
    train = train[: data.train_limit] if data.train_limit else train
    dev = dev[: data.dev_limit] if dev is not None and data.dev_limit else dev
    test = test[: data.test_limit] if test is not None and data.test_limit else test
    return train, dev or None, test or None


def read_targets(examples: Sequence[Example], column: str = "target") -> list[Example]:
    """Examples whose output sits in ``column`` (a meta key after loading) with it moved to
    ``meta["target"]``, where ``deltaprompt.generation.target_of`` reads it."""
    if column == "target":
        return list(examples)
    out = []
    for example in examples:
        if column in example.meta:
            meta = {k: v for k, v in example.meta.items() if k != column}
            example = Example(example.text, example.text_b, example.label, {**meta, "target": example.meta[column]})
        out.append(example)
    return out


def _generation_run_data(config: RunConfig, train: list[Example], dev: list[Example] | None,
                         test: list[Example] | None, tags: tuple[str, ...] | None) -> RunData:
    """Input -> output pairs: the target column, or tagged sentences as entity records."""
    from .entity_records import entity_record_examples, record_types
    from .generation import target_of

    data = config.data
    tagged = bool(train) and all("tokens" in e.meta for e in train)
    if data.entity_records:
        if not tagged:
            raise ValueError("data.entity_records reads tagged sentences (words and BIO tags); this data has none")
        types = record_types(tags or (t for e in train for t in e.meta.get("tags", ())))
        train, dev, test = (entity_record_examples(x, types) if x else x for x in (train, dev, test))
    elif tagged:
        raise ValueError("data: tagged sentences (words and BIO tags) have no output text; set "
                         "data.entity_records: true to generate a JSON record of their entities")
    else:
        train, dev, test = (read_targets(x, data.target_column) if x else x for x in (train, dev, test))
    for split, examples in (("training", train), ("dev", dev)):
        missing = [i for i, e in enumerate(examples or ()) if target_of(e) is None]
        if missing:
            raise ValueError(f"data: every {split} example needs its output (column {data.target_column!r}); "
                             f"example {missing[0] + 1} has none")
    train, dev, test = _draw(data, train, dev, test, "examples")
    if not train:
        raise ValueError("data: no training examples")
    return RunData(train, dev, test, ())


# ----------------------------------------------------------------------------- building

def load_base_model(section: ModelSection) -> PLM:
    """The pretrained model the config names (through ``deltaprompt.plm.load_plm``)."""
    import torch

    from . import plm as plm_module

    dtype = getattr(torch, section.dtype) if section.dtype else None
    return plm_module.load_plm(
        typing.cast(str, section.name), section.family, dtype=dtype, device=section.device,
        revision=section.revision,
    )


def build_classifier(config: RunConfig, plm: PLM, classes: Sequence[str]) -> Classifier:
    """The untrained classifier of a run. Calibration is left to after training (it measures
    the trained model's prior); the run's seed also fixes the classifier's initial values."""
    from .classifier import HeadClassifier, PromptClassifier

    c = config.classifier
    if c.kind in ENTITY_KINDS:
        return _entity_classifier(config, plm, classes)
    if c.kind == "generation":
        from .generation import PromptForGeneration

        return PromptForGeneration(
            plm, c.prompt_spec() or typing.cast(str, c.template), methods=config.method_specs(),
            max_length=c.max_length, max_new_tokens=c.max_new_tokens or 64, seed=config.training.seed,
            batch_size=c.batch_size, chat=c.chat, truncation=c.truncation,
        )
    if c.kind == "prompt":
        return PromptClassifier(
            plm, typing.cast(str, c.template), c.label_words, classes=classes,
            aggregation=c.aggregation or "mean", multi_token=c.multi_token or "first", verbalizer=c.verbalizer,
            batch_size=c.batch_size, max_length=c.max_length, truncation=c.truncation,
            methods=config.method_specs(), seed=config.training.seed,
        )
    return HeadClassifier(
        plm, classes, template=c.template, pooling=c.pooling, batch_size=c.batch_size,
        max_length=c.max_length, truncation=c.truncation,
        dropout=0.1 if c.dropout is None else c.dropout,
        methods=config.method_specs(), seed=config.training.seed,
    )


def _entity_classifier(config: RunConfig, plm: PLM, classes: Sequence[str]) -> Classifier:
    c, methods, seed = config.classifier, config.method_specs(), config.training.seed
    tagged = c.kind in ("tagger", "span_ner")
    if tagged != any(cls.startswith(("B-", "I-")) for cls in classes):
        raise ValueError(f"classifier kind {c.kind!r} needs "
                         + ("tagged sentences (words with BIO tags)" if tagged else "labelled examples, not tagged sentences"))
    common: dict[str, Any] = {"batch_size": c.batch_size, "max_length": c.max_length, "methods": methods, "seed": seed}
    if c.kind == "tagger":
        from .tagging import Tagger

        return Tagger(plm, classes, alignment=c.alignment or "first", dropout=0.1 if c.dropout is None else c.dropout,
                      **common)
    if c.kind == "relation":
        from .relation import RelationClassifier

        extra = {"negative_class": c.negative_class} if c.negative_class is not None else {}
        return RelationClassifier(plm, classes, variant=c.variant or "markers_start",
                                  dropout=0.1 if c.dropout is None else c.dropout, **extra, **common)
    if c.kind == "subprompts":
        from .subprompts import SubPromptClassifier

        rules = typing.cast(dict[str, list[str]], c.rules)
        missing = sorted(set(classes) - set(rules))
        if missing:
            raise ValueError(f"classifier.rules: no rule for the classes {missing}")
        return SubPromptClassifier(plm, typing.cast(list[dict[str, Any]], c.subprompts),
                                   {k: rules[k] for k in classes}, **common)
    from .span_ner import SpanTagger

    options = {k: getattr(c, k) for k in ("none_word", "max_span_words", "threshold") if getattr(c, k) is not None}
    return SpanTagger(plm, typing.cast(str, c.template), parse_label_words(c.label_words), **options, **common)


__all__ = [
    "build_classifier",
    "load_base_model",
    "ClassifierSection",
    "ConfigError",
    "check_methods",
    "DataSection",
    "DecodingSection",
    "ModelSection",
    "RunConfig",
    "RunData",
    "apply_override",
    "build_config",
    "load_config",
    "load_run_data",
    "parse_key",
    "read_targets",
    "read_yaml",
]
