"""Structured prompts: the parts practitioners write, rendered the same way every time.

A ``PromptSpec`` holds each component of a prompt on its own (all optional except the input)::

    spec = PromptSpec(
        persona="You are a careful film critic.",
        task="Classify the sentiment of the review.",
        output_format=OutputFormat("labels", labels=["negative", "positive"]),
        exemplars=[Exemplar("a gripping, funny film", "positive")],
        input="Review: {text}",
    )
    spec.render(example)                 # plain text, ends with "Answer:"
    spec.render_chat(tokenizer, example) # through the model's own chat template
    spec.template()                      # a classification Template: "... Answer: {mask}"

Plain-text rendering order, the important instructions first (empty components are left out;
sections are separated by one blank line)::

    1. persona                 "You are a careful film critic."
    2. task                    "Classify the sentiment of the review."
    3. output format           "Answer with one of: negative, positive."
    4. constraints             "Use at most 20 words." / "Do not use: a, b." / each rule
    5. tone                    "Tone: friendly."
    6. context                 "Context:" and the background text
    7. exemplars, one section each: the exemplar's input, a newline, "Answer: <output>"
    8. history                 "User: ..." / "Assistant: ..." lines, the earlier turns
    9. the example's input (``input`` filled by ``Template``), a newline, the answer cue "Answer:"

With ``chain_of_thought`` the last section is the input alone, followed by a request to think
step by step and end with a line "Answer: <answer>"; the text then ends with that request, not
with the cue, so that the model reasons before it answers.

Chat rendering (``messages``): a system message with the persona and the instructions (task,
output format, constraints, tone), left out when there are none so that the chat template
adds its own default; each exemplar as a user turn (its input) and an assistant turn (its
output); the history turns; a final user turn with the context, the input and, with
``chain_of_thought``, the request to reason step by step.

Rendering is deterministic: the same spec and example always give the same text (labels keep
the order given, JSON schemas are serialised with sorted keys, nothing is random).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from .files import atomic_write
from .schema import ConfigError, coerce
from .template import Part, Template, TemplateError

FormatKind = Literal["text", "labels", "json"]
Role = Literal["user", "assistant"]
FORMAT_KINDS: tuple[str, ...] = ("text", "labels", "json")
ROLES: tuple[str, ...] = ("user", "assistant")
MASK_MARKER = "[MASK]"
_SOFT_MARKER = "[SOFT]"  # what Template.render shows for a randomly initialised soft token
_SENTINEL = re.compile("\ue000(\\d+)\ue001")  # private-use characters: no real text holds them
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHAT_TEMPLATE_HINT = (
    "set one, e.g. tokenizer.chat_template = \"{% for m in messages %}<|im_start|>{{ m['role'] }}\\n"
    "{{ m['content'] }}<|im_end|>\\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n"
    "{% endif %}\" (ChatML), use an instruction-tuned model's tokenizer, or render plain text "
    "(spec.render(example), spec.template(chat=False))"
)


# ----------------------------------------------------------------------------- validation

def _check_keys(data: Any, cls: type, where: str) -> dict[str, Any]:
    """``data`` as a dict of ``cls``'s fields; an unknown key names itself and the allowed ones."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    allowed = [f.name for f in fields(cls)]
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}; {guess}allowed keys: {', '.join(allowed)}")
    return dict(data)


def _text(value: Any, where: str, optional: bool = False) -> str | None:
    """A non-empty string (None too when ``optional``); YAML's unquoted yes/no/1.5 get a hint."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}{hint}")
    if not value.strip():
        leave_out = "; leave it out to omit it" if optional else ""
        raise ConfigError(f"{where}: is empty{leave_out}")
    return value


def _texts(value: Any, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__} {value!r}")
    return [_text(v, f"{where}[{i}]") for i, v in enumerate(value)]  # type: ignore[misc]


def _items(value: Any, cls: type, where: str) -> list[Any]:
    """A list of ``cls`` instances; mappings (from YAML) are built, with their position in errors."""
    if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return [_build(cls, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _build(cls: type, value: Any, where: str) -> Any:
    if isinstance(value, cls):
        return value
    data = _check_keys(value, cls, where)
    try:
        return cls(**data)
    except ConfigError as exc:  # "exemplar.output: ..." told as "exemplars[2].output: ..."
        message, own = str(exc), cls._where  # type: ignore[attr-defined]
        if message.startswith((f"{own}.", f"{own}:")):
            raise ConfigError(f"{where}{message[len(own):]}") from None
        raise ConfigError(f"{where}: {message}") from None


# ----------------------------------------------------------------------------- components

@dataclass
class Exemplar:
    """One demonstration: the input's fields and the output the model should give.

    ``input`` maps field names to text (``{"text": "great film"}``); a plain string means
    ``{"text": string}``.
    """

    input: dict[str, str]
    output: str

    _where = "exemplar"

    def __post_init__(self) -> None:
        if isinstance(self.input, str):
            self.input = {"text": self.input}
        if not isinstance(self.input, Mapping) or not self.input:
            raise ConfigError(
                f"exemplar.input: expected a string or a non-empty mapping of field -> text, got {self.input!r}"
            )
        self.input = {str(k): _text(v, f"exemplar.input.{k}") for k, v in self.input.items()}  # type: ignore[misc]
        self.output = _text(self.output, "exemplar.output")  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """``input`` as a plain string when it is only ``text``: shorter YAML."""
        only_text = list(self.input) == ["text"]
        return {"input": self.input["text"] if only_text else dict(self.input), "output": self.output}


@dataclass
class OutputFormat:
    """What the answer looks like: free ``text``, one of ``labels``, or a ``json`` object
    (optionally following ``schema``, a JSON Schema). ``description``: more words on it."""

    kind: FormatKind = "text"
    labels: list[str] | None = None
    schema: dict | None = None
    description: str | None = None

    _where = "output_format"

    def __post_init__(self) -> None:
        self.kind = coerce(self.kind, FormatKind, "output_format.kind")
        self.description = _text(self.description, "output_format.description", optional=True)
        if self.labels is not None:
            if self.kind != "labels":
                raise ConfigError(f"output_format.labels: given, but kind is {self.kind!r}; set kind: labels")
            self.labels = _texts(self.labels, "output_format.labels")
            repeated = sorted({x for x in self.labels if self.labels.count(x) > 1})
            if repeated:
                raise ConfigError(f"output_format.labels: repeated {', '.join(map(repr, repeated))}")
        if self.kind == "labels" and not self.labels:
            raise ConfigError(
                "output_format: kind 'labels' needs labels, e.g. labels: [negative, positive]"
            )
        if self.schema is not None:
            if self.kind != "json":
                raise ConfigError(f"output_format.schema: given, but kind is {self.kind!r}; set kind: json")
            if not isinstance(self.schema, dict):
                raise ConfigError(
                    f"output_format.schema: a JSON Schema is a mapping (e.g. {{type: object, properties: "
                    f"...}}), got {type(self.schema).__name__} {self.schema!r}"
                )
            try:
                json.dumps(self.schema, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"output_format.schema: not JSON: {exc}") from None

    def instruction(self) -> str:
        """The format's section of the prompt ("" for free text without a description)."""
        lines = []
        if self.kind == "labels":
            lines.append(f"Answer with one of: {', '.join(self.labels or [])}.")
        elif self.kind == "json":
            if self.schema is None:
                lines.append("Reply with only a JSON object.")
            else:
                lines.append(
                    "Reply with only a JSON object that follows this JSON Schema: "
                    + json.dumps(self.schema, sort_keys=True)
                )
        if self.description:
            lines.append(self.description.strip())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.kind != "text":
            out["kind"] = self.kind
        if self.labels:
            out["labels"] = list(self.labels)
        if self.schema is not None:
            out["schema"] = self.schema
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Constraints:
    """Limits on the answer: ``max_words``, words/phrases to ``avoid``, any other ``rules``."""

    max_words: int | None = None
    avoid: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    _where = "constraints"

    def __post_init__(self) -> None:
        self.max_words = coerce(self.max_words, int | None, "constraints.max_words")
        if self.max_words is not None and self.max_words < 1:
            raise ConfigError(f"constraints.max_words: must be positive, got {self.max_words}")
        self.avoid = _texts(self.avoid, "constraints.avoid")
        self.rules = _texts(self.rules, "constraints.rules")

    def instruction(self) -> str:
        lines = []
        if self.max_words is not None:
            lines.append(f"Use at most {self.max_words} word{'s' if self.max_words != 1 else ''}.")
        if self.avoid:
            lines.append(f"Do not use: {', '.join(a.strip() for a in self.avoid)}.")
        lines += [rule.strip() for rule in self.rules]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.max_words is not None:
            out["max_words"] = self.max_words
        if self.avoid:
            out["avoid"] = list(self.avoid)
        if self.rules:
            out["rules"] = list(self.rules)
        return out


@dataclass
class Turn:
    """An earlier turn of the conversation (dynamic context)."""

    role: Role
    content: str

    _where = "turn"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(
                f"turn.role: must be 'user' or 'assistant', got {self.role!r} (persona and task "
                "make the system message)"
            )
        self.content = _text(self.content, "turn.content")  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}


# ----------------------------------------------------------------------------- the spec

# A rendered prompt before it becomes text: literal strings and parts of the input template.
Piece = str | Part


@lru_cache(maxsize=256)
def _parse_input(text: str) -> Template:
    return Template(text.strip())


@dataclass
class PromptSpec:
    """A prompt built from named components; see the module docstring for the rendering order.

    Plain text (``render``): persona, task, output format, constraints, tone, context,
    exemplars, history, each a section of its own after a blank line, then the example's input
    and, on the next line, the answer cue (``answer_prefix``). Chat (``messages``): system =
    persona + instructions; exemplars and history as turns; last user turn = context + input
    (+ reasoning request). Component texts are used without their surrounding whitespace.

    ``input`` is deltaprompt template syntax without the mask: fields (``{text}``, ``{text_b}``,
    any meta key), fixed text, soft tokens. ``template()`` adds the answer slot (``{mask}``) so
    the spec classifies through ``PromptClassifier`` and every delta method. ``chain_of_thought``
    and ``self_check`` need generated text, so they are for generation only.
    """

    input: str = "{text}"
    task: str | None = None
    context: str | None = None
    exemplars: list[Exemplar] = field(default_factory=list)
    persona: str | None = None
    output_format: OutputFormat = field(default_factory=OutputFormat)
    tone: str | None = None
    constraints: Constraints = field(default_factory=Constraints)
    history: list[Turn] = field(default_factory=list)
    chain_of_thought: bool = False
    self_check: bool = False
    answer_prefix: str = "Answer:"
    name: str | None = None

    _where = "prompt spec"

    def __post_init__(self) -> None:
        self.input = _text(self.input, "input")  # type: ignore[assignment]
        for key in ("task", "context", "persona", "tone", "name"):
            setattr(self, key, _text(getattr(self, key), key, optional=True))
        self.exemplars = _items(self.exemplars, Exemplar, "exemplars")
        self.history = _items(self.history, Turn, "history")
        self.output_format = _build(OutputFormat, self.output_format, "output_format")
        self.constraints = _build(Constraints, self.constraints, "constraints")
        self.chain_of_thought = coerce(self.chain_of_thought, bool, "chain_of_thought")
        self.self_check = coerce(self.self_check, bool, "self_check")
        self.answer_prefix = coerce(self.answer_prefix, str, "answer_prefix")
        if self.chain_of_thought and not self.answer_prefix.strip():
            raise ConfigError(
                "answer_prefix: chain_of_thought ends with a line '<answer_prefix> <answer>', so it "
                "needs an answer_prefix such as 'Answer:'"
            )
        try:
            template = _parse_input(self.input)
        except TemplateError as exc:
            raise ConfigError(f"input: not a valid template: {exc}") from None
        if template.num_masks:
            raise ConfigError(
                "input: holds {mask}; leave it out, the spec puts the answer slot after answer_prefix"
            )
        for i, exemplar in enumerate(self.exemplars):
            try:
                self._input_pieces(exemplar.input, fields=True)
            except KeyError as exc:
                raise ConfigError(f"exemplars[{i}].input: {exc.args[0]}") from None

    # -- the parts
    @property
    def input_template(self) -> Template:
        """``input`` parsed (surrounding whitespace dropped)."""
        return _parse_input(self.input)

    @property
    def cue(self) -> str:
        return self.answer_prefix.strip()

    def instructions(self) -> list[str]:
        """Task, output format, constraints and tone: the sections the system message holds."""
        sections = [
            self.task.strip() if self.task else "",
            self.output_format.instruction(),
            self.constraints.instruction(),
            f"Tone: {self.tone.strip()}" if self.tone else "",
        ]
        return [s for s in sections if s]

    def _system(self) -> list[str]:
        return ([self.persona.strip()] if self.persona else []) + self.instructions()

    def _context(self) -> list[str]:
        return [f"Context:\n{self.context.strip()}"] if self.context else []

    def _history(self) -> list[str]:
        if not self.history:
            return []
        return ["\n".join(f"{t.role.capitalize()}: {t.content.strip()}" for t in self.history)]

    def _cot_request(self) -> str:
        return (
            f'Think step by step, then give the final answer on a last line of the form "{self.cue} <answer>".'
        )

    def _check_request(self) -> str:
        how = f', as "{self.cue} <answer>"' if self.cue else ""
        return (
            "Check your answer against the instructions above and correct it if needed. "
            f"Reply with the corrected final answer only{how}."
        )

    def _input_pieces(self, example: Any, fields: bool) -> list[Piece]:
        """The input for one example; ``fields=False`` keeps field parts as parts (for templates).
        Fixed text becomes literal; soft tokens and special tokens stay parts."""
        template = self.input_template
        pieces: list[Piece] = []
        for part in template.parts:
            if part.kind == "text" and not part.shortenable:
                pieces.append(part.prefix + (part.value or ""))
            elif part.kind == "field" and fields:
                pieces.append(template.field_text(part, example))
            else:
                pieces.append(part)
        return pieces

    def _exemplar_output(self, exemplar: Exemplar) -> str:
        output = exemplar.output.strip()
        return f"{self.cue} {output}" if self.cue else output

    # -- plain text
    def _plain_pieces(self, example: Any, fields: bool = True) -> list[Piece]:
        sections: list[list[Piece]] = [[s] for s in self._system() + self._context()]
        for exemplar in self.exemplars:
            sections.append([*self._input_pieces(exemplar.input, True), "\n" + self._exemplar_output(exemplar)])
        sections += [[s] for s in self._history()]
        query = self._input_pieces(example, fields)
        if self.chain_of_thought:
            sections += [query, [self._cot_request()]]
        else:
            sections.append(query + (["\n" + self.cue] if self.cue else []))
        pieces: list[Piece] = []
        for i, section in enumerate(sections):
            pieces += (["\n\n"] if i else []) + section
        return pieces

    def render(self, example: Any) -> str:
        """The prompt as plain text for one example (an ``Example``, a dict of fields or a string).
        Ends with the answer cue (with ``chain_of_thought``: with the request to reason)."""
        return self._text(self._plain_pieces(example), example)

    def _text(self, pieces: Sequence[Piece], example: Any) -> str:
        return "".join(p if isinstance(p, str) else _part_text(self.input_template, p, example) for p in pieces)

    # -- chat
    def _chat_pieces(self, example: Any, fields: bool = True) -> list[tuple[str, list[Piece]]]:
        turns: list[tuple[str, list[Piece]]] = []
        system = "\n\n".join(self._system())
        if system:
            turns.append(("system", [system]))
        for exemplar in self.exemplars:
            turns.append(("user", self._input_pieces(exemplar.input, True)))
            output = self._exemplar_output(exemplar) if self.chain_of_thought else exemplar.output.strip()
            turns.append(("assistant", [output]))
        turns += [(t.role, [t.content.strip()]) for t in self.history]
        final: list[Piece] = []
        for context in self._context():
            final += [context, "\n\n"]
        final += self._input_pieces(example, fields)
        if self.chain_of_thought:
            final += ["\n\n", self._cot_request()]
        turns.append(("user", final))
        return turns

    def messages(self, example: Any) -> list[dict[str, str]]:
        """The prompt as chat messages: ``[{"role": ..., "content": ...}, ...]``."""
        return [{"role": role, "content": self._text(pieces, example)} for role, pieces in self._chat_pieces(example)]

    def render_chat(self, tokenizer: Any, example: Any) -> str:
        """``messages(example)`` through the tokenizer's chat template, ready for the answer."""
        tokenizer = _chat_tokenizer(tokenizer)
        return tokenizer.apply_chat_template(self.messages(example), tokenize=False, add_generation_prompt=True)

    # -- self-check
    def self_check_messages(self, example: Any, draft: str) -> list[dict[str, str]]:
        """The conversation, the ``draft`` (stripped) as the assistant's answer, and a user turn
        asking to verify it against the instructions and reply with the corrected final answer
        only, after the answer cue."""
        return self.messages(example) + [
            {"role": "assistant", "content": draft.strip()},
            {"role": "user", "content": self._check_request()},
        ]

    def self_check_text(self, example: Any, draft: str) -> str:
        """Plain-text ``self_check_messages``: the prompt, the draft, the request, the answer cue."""
        prompt = self.render(example)
        joint = " " if self.cue and not self.chain_of_thought else "\n\n"
        text = f"{prompt}{joint}{draft.strip()}\n\n{self._check_request()}"
        return text + (f"\n{self.cue}" if self.cue else "")

    # -- classification template
    def template(self, tokenizer: Any = None, chat: bool = False) -> Template:
        """A classification ``Template`` with the answer slot ``{"mask"}`` where the answer goes.

        Plain (``chat=False``): ``render`` with the mask after the answer cue, separated by a
        space, so a decoder LM is asked for the label word with its leading space (" positive")
        as it follows "Answer:"; ``Template(...).render(example)`` equals
        ``spec.render(example) + " [MASK]"``. Chat (``chat=True``, needs ``tokenizer``):
        ``render_chat`` with the mask right after the generation prompt (label words without a
        leading space); a BOS the tokenizer adds by itself is not repeated from the chat
        template. Fixed text is escaped, so braces in instructions or schemas stay text.
        """
        if self.chain_of_thought or self.self_check:
            which = "chain_of_thought" if self.chain_of_thought else "self_check"
            raise ValueError(
                f"{which} needs generated text, which a classification template does not produce: use "
                f"PromptForGeneration with this spec, or set {which}: false to classify with it"
            )
        if not chat:
            pieces = self._plain_pieces(None, fields=False)
            return Template(_serialise(pieces + [Part("mask", None, " ")], self.input_template))
        if tokenizer is None:
            raise ValueError("template(chat=True) needs the tokenizer whose chat template wraps the prompt")
        tokenizer = _chat_tokenizer(tokenizer)
        parts: list[Part] = []
        messages = []
        for role, turn in self._chat_pieces(None, fields=False):
            content = []
            for piece in turn:
                if isinstance(piece, str):
                    if "\ue000" in piece or "\ue001" in piece:
                        raise ValueError("the prompt holds U+E000/U+E001, which template(chat=True) reserves")
                    content.append(piece)
                else:
                    content.append(f"\ue000{len(parts)}\ue001")
                    parts.append(piece)
            messages.append({"role": role, "content": "".join(content)})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = _drop_own_bos(tokenizer, text)
        chunks = _SENTINEL.split(text)
        seen = [int(i) for i in chunks[1::2]]
        if sorted(seen) != list(range(len(parts))):
            raise ValueError(
                "the tokenizer's chat template does not keep each message's content exactly once; "
                "use template(chat=False) with this tokenizer"
            )
        pieces: list[Piece] = [chunk if n % 2 == 0 else parts[int(chunk)] for n, chunk in enumerate(chunks)]
        return Template(_serialise(pieces + [Part("mask", None, "")], self.input_template))

    # -- YAML
    def to_dict(self) -> dict[str, Any]:
        """Plain data, defaults and empty components left out, in rendering order."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        for key in ("persona", "task"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        for key in ("output_format", "constraints"):
            value = getattr(self, key).to_dict()
            if value:
                out[key] = value
        for key in ("tone", "context"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.exemplars:
            out["exemplars"] = [e.to_dict() for e in self.exemplars]
        if self.history:
            out["history"] = [t.to_dict() for t in self.history]
        if self.input != "{text}":
            out["input"] = self.input
        if self.chain_of_thought:
            out["chain_of_thought"] = True
        if self.self_check:
            out["self_check"] = True
        if self.answer_prefix != "Answer:":
            out["answer_prefix"] = self.answer_prefix
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "prompt spec") -> PromptSpec:
        """Build from plain data (YAML); unknown keys are refused, naming the allowed ones."""
        return _build(cls, data, where)

    def to_yaml(self) -> str:
        """YAML for version control: stable key order, defaults left out, multi-line text as
        ``|`` blocks, one line per sentence (no folding), so a change diffs as the lines it touched."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         default_flow_style=False, width=1_000_000)

    @classmethod
    def from_yaml(cls, text: str, where: str = "prompt spec") -> PromptSpec:
        from .config import read_yaml  # the project's one safe YAML reader

        data = read_yaml(text, where)
        if data is None:
            raise ConfigError(f"{where}: empty; a prompt spec needs at least 'input' or 'task'")
        return cls.from_dict(data, where)

    def save(self, path: str | Path) -> Path:
        """Write ``to_yaml()`` to ``path`` atomically; returns the path."""
        with atomic_write(path) as handle:
            handle.write(self.to_yaml())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PromptSpec:
        return cls.from_yaml(Path(path).read_text(encoding="utf-8"), where=str(path))


# ----------------------------------------------------------------------------- helpers

class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _chat_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer itself, or a PLM's; an error that says how to get a chat template."""
    if not hasattr(tokenizer, "apply_chat_template") and hasattr(tokenizer, "tokenizer"):
        tokenizer = tokenizer.tokenizer  # a PLM
    if not hasattr(tokenizer, "apply_chat_template"):
        raise TypeError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat template; {_CHAT_TEMPLATE_HINT}")
    return tokenizer


def _drop_own_bos(tokenizer: Any, text: str) -> str:
    """A chat template that writes the BOS token, for a tokenizer that adds it on encoding too,
    would give the model two: keep the tokenizer's."""
    from .tokenization import special_affixes

    prefix_ids, _ = special_affixes(tokenizer)
    if not prefix_ids:
        return text
    bos = tokenizer.decode(prefix_ids)
    return text[len(bos):] if bos and text.startswith(bos) else text


def _part_text(template: Template, part: Part, example: Any) -> str:
    """What ``Template.render`` shows for one part."""
    if part.kind == "field":
        return template.field_text(part, example)
    if part.kind == "mask":
        return part.prefix + MASK_MARKER
    if part.kind == "soft":
        group = template.soft_groups[part.soft_group or 0]
        return part.prefix + (group.init_text or _SOFT_MARKER * (group.length or 1))
    return part.prefix + (part.value or "")


def _serialise(pieces: Sequence[Piece], template: Template) -> str:
    """Template text for literal strings and parts, rendering exactly as they read."""
    soft_counts: dict[int, int] = {}
    for piece in pieces:
        if isinstance(piece, Part) and piece.kind == "soft":
            soft_counts[piece.soft_group or 0] = soft_counts.get(piece.soft_group or 0, 0) + 1
    taken = {g.soft_id for g in template.soft_groups if g.soft_id is not None}
    soft_ids: dict[int, Any] = {}
    for group in template.soft_groups:
        if group.soft_id is not None:
            soft_ids[group.index] = group.soft_id
        elif soft_counts.get(group.index, 0) > 1:  # the input's soft tokens, shared by every exemplar
            name = f"spec_soft_{group.index}"
            while name in taken:
                name += "_"
            soft_ids[group.index] = name
            taken.add(name)
    out: list[str] = []
    literal: list[str] = []
    defined: set[int] = set()
    for piece in pieces:
        if isinstance(piece, str):
            literal.append(piece)
            continue
        out.append(_literal("".join(literal)))
        literal.clear()
        out.append(_block(piece, template, soft_ids, defined))
    out.append(_literal("".join(literal)))
    return "".join(out)


def _block(part: Part, template: Template, soft_ids: dict[int, Any], defined: set[int]) -> str:
    """One part as a template block, its prefix space written before it (or as a key)."""
    keys: list[tuple[str, Any]] = []
    if part.kind == "field":
        keys.append(("meta", part.value))
        if not part.shortenable:
            keys.append(("shortenable", False))
        if part.post_processing:
            keys.append(("post_processing", list(part.post_processing)))
    elif part.kind == "text":
        keys += [("text", part.value or ""), ("shortenable", True)]
    elif part.kind == "special":
        keys.append(("special", part.value))
    elif part.kind == "mask":
        keys.append(("mask", None))
    else:
        group = template.soft_groups[part.soft_group or 0]
        soft_id = soft_ids.get(group.index)
        if soft_id is not None and group.index in defined:
            keys.append(("soft_id", soft_id))
        else:
            keys.append(("soft", group.init_text))
            if group.init_text is None and (group.length or 1) != 1:
                keys.append(("duplicate", group.length))
            if soft_id is not None:
                keys.append(("soft_id", soft_id))
            defined.add(group.index)
    space = ""
    if part.prefix == " ":
        space = " "
    elif part.prefix:
        keys.append(("add_prefix_space", part.prefix))
    role, value = keys[0]
    if len(keys) == 1 and role == "mask":
        return space + "{mask}"
    if len(keys) == 1 and role == "meta" and _IDENTIFIER.fullmatch(value) and value not in ("mask", "soft"):
        return space + "{" + value + "}"
    return space + "{" + ", ".join(f"{_literal_value(k)}: {_literal_value(v)}" for k, v in keys) + "}"


def _literal_value(value: Any) -> str:
    """A Python literal that ``ast.literal_eval`` reads back (double-quoted strings, as in the docs)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal_value(v) for v in value) + "]"
    return repr(value)


def _literal(text: str) -> str:
    """Template text that renders as exactly ``text``, whatever parts come before or after it.

    The parser keeps plain text verbatim except that braces open blocks and spaces at its edges
    fold into one prefix space; so lines with braces, and runs that start with two spaces or
    end with one, become ``{"text": ...}`` blocks, and the rest stays readable plain text.
    """
    if not text:
        return ""
    lines = [line for line in re.split(r"(?<=\n)", text) if line]
    runs: list[tuple[bool, str]] = []  # (needs a block, text)
    for line in lines:
        braces = "{" in line or "}" in line
        if runs and runs[-1][0] == braces:
            runs[-1] = (braces, runs[-1][1] + line)
        else:
            runs.append((braces, line))
    out: list[str] = []
    pending = ""
    for braces, run in runs:
        lead = len(run) - len(run.lstrip(" "))
        plain = not braces and lead <= 1 and not run.endswith(" ") and bool(run.strip(" "))
        if plain:
            if pending:
                out.append("{" + f'"text": {_literal_value(pending)}' + "}")
                pending = ""
            out.append(run)
        else:
            pending += run
    if pending:
        out.append("{" + f'"text": {_literal_value(pending)}' + "}")
    return "".join(out)


__all__ = [
    "Constraints",
    "Exemplar",
    "OutputFormat",
    "PromptSpec",
    "Turn",
]
