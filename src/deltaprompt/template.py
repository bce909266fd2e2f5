"""Templates: OpenPrompt's syntax, parsed without ever evaluating user text.

A template is plain text with ``{...}`` blocks::

    {"placeholder": "text_a"} It was {"mask"}.
    {"meta": "premise"} Question: {"meta": "hypothesis"}? {"soft": "Answer:"} {"mask"}
    {"soft": None, "duplicate": 20} {"meta": "text", "shortenable": False} {"mask"}

Each block is read with ``ast.literal_eval`` (literals only: strings, numbers, True/False/None),
so a template can never run code. Bare names are a shorthand: ``{text}``, ``{mask}``, ``{soft}``.

As in OpenPrompt, spaces between parts are not kept as text: a part preceded by a space gets
``prefix=" "``, which the tokenizer sees in front of that part (and, for ``{"mask"}``, in front
of the label words: " positive" is the word a decoder LM predicts after "Sentiment:").
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PartKind = Literal["text", "field", "mask", "soft", "special"]

# Field names that refer to Example.text / Example.text_b rather than Example.meta.
FIELD_ALIASES = {"text_a": "text", "text": "text", "text_b": "text_b"}

_ROLE_KEYS = ("placeholder", "meta", "mask", "soft", "soft_id", "special", "text")
_MODIFIER_KEYS = ("shortenable", "post_processing", "duplicate", "add_prefix_space")
ALLOWED_KEYS = _ROLE_KEYS + _MODIFIER_KEYS
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TemplateError(ValueError):
    """A template that cannot be parsed; ``position`` is the character offset of the problem."""

    def __init__(self, message: str, template: str, position: int):
        self.position = position
        self.template = template
        line_start = template.rfind("\n", 0, position) + 1
        line_end = template.find("\n", position)
        line = template[line_start : line_end if line_end != -1 else len(template)]
        caret = " " * (position - line_start) + "^"
        super().__init__(f"{message} (at position {position})\n  {line}\n  {caret}")


# ----------------------------------------------------------------------------- post-processing

def rstrip_punct(text: str) -> str:
    """Drop trailing punctuation, so 'Is it good?' reads well before '? Yes'."""
    return text.rstrip(string.punctuation + " ")


def lstrip_punct(text: str) -> str:
    return text.lstrip(string.punctuation + " ")


def add_period(text: str) -> str:
    """End the text with a period unless it already ends with sentence punctuation."""
    text = text.rstrip()
    return text if not text or text[-1] in ".!?" else text + "."


def lowercase_first(text: str) -> str:
    """'The movie' -> 'the movie': for a field continuing a sentence of the template."""
    return text[:1].lower() + text[1:]


def capitalize_first(text: str) -> str:
    """Upper-case the first character only (str.capitalize would lower the rest)."""
    return text[:1].upper() + text[1:]


POST_PROCESSORS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "lower": str.lower,
    "upper": str.upper,
    "capitalize": capitalize_first,
    "lowercase_first": lowercase_first,
    "rstrip_punct": rstrip_punct,
    "lstrip_punct": lstrip_punct,
    "add_period": add_period,
}


def register_post_processor(name: str, function: Callable[[str], str]) -> None:
    """Make ``function`` usable by name in every template (``"post_processing": name``)."""
    if not callable(function):
        raise TypeError(f"post-processor {name!r} must be callable, got {type(function).__name__}")
    POST_PROCESSORS[name] = function


# ----------------------------------------------------------------------------- parsed form

@dataclass(frozen=True)
class SoftGroup:
    """One run of trainable soft tokens. Blocks sharing a ``soft_id`` use the same group.

    ``init_text`` set: one soft token per token of that text, initialised from its embeddings
    (how many depends on the tokenizer). ``init_text`` None: ``length`` randomly initialised
    tokens.
    """

    index: int
    init_text: str | None
    length: int | None
    soft_id: Any = None
    prefix: str = ""


@dataclass(frozen=True)
class Part:
    """One piece of a template, in order."""

    kind: PartKind
    value: str | None = None  # literal text, field name, special-token name, or None
    prefix: str = ""  # "" or " ": the space that separated this part from the previous one
    shortenable: bool = False
    post_processing: tuple[str, ...] = ()
    soft_group: int | None = None  # index into Template.soft_groups
    position: int = 0  # character offset of the part in the template string


@dataclass(frozen=True)
class Template:
    """A parsed template. Build one from text: ``Template('{text} It was {mask}.')``.

    ``post_processors`` adds named functions usable in this template only (the way to use
    your own Python callables, since the template text itself can only name them).
    """

    text: str
    post_processors: Mapping[str, Callable[[str], str]] = field(default_factory=dict)
    parts: tuple[Part, ...] = field(init=False)
    soft_groups: tuple[SoftGroup, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"a template is a string, got {type(self.text).__name__}")
        for name, function in self.post_processors.items():
            if not callable(function):
                raise TypeError(f"post-processor {name!r} must be callable")
        parts, groups = _Parser(self.text, self._post_processor_names()).parse()
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "soft_groups", groups)

    def _post_processor_names(self) -> set[str]:
        return set(POST_PROCESSORS) | set(self.post_processors)

    # -- what later stages need to know
    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the example fields the template reads, in order of first use."""
        return tuple(dict.fromkeys(p.value for p in self.parts if p.kind == "field"))

    @property
    def num_masks(self) -> int:
        return sum(p.kind == "mask" for p in self.parts)

    @property
    def mask_part(self) -> Part:
        """The single ``{"mask"}`` part (classification templates have exactly one)."""
        masks = [p for p in self.parts if p.kind == "mask"]
        if len(masks) != 1:
            raise ValueError(
                f'a classification template needs exactly one {{"mask"}}, this one has {len(masks)}: '
                f"{self.text!r}"
            )
        return masks[0]

    @property
    def has_soft_tokens(self) -> bool:
        return bool(self.soft_groups)

    def post_process(self, part: Part, value: str) -> str:
        for name in part.post_processing:
            function = self.post_processors.get(name) or POST_PROCESSORS[name]
            value = function(value)
        return value

    def field_text(self, part: Part, example: Any) -> str:
        """The text a field part contributes for one example: prefix + post-processed value."""
        return part.prefix + self.post_process(part, _example_field(example, part.value))

    def render(self, example: Any, mask: str = "[MASK]", soft: str = "[SOFT]") -> str:
        """The template filled for one example, as a human reads it (for logs and debugging)."""
        pieces = []
        for part in self.parts:
            if part.kind == "field":
                pieces.append(self.field_text(part, example))
            elif part.kind == "text":
                pieces.append(part.prefix + (part.value or ""))
            elif part.kind == "mask":
                pieces.append(part.prefix + mask)
            elif part.kind == "special":
                pieces.append(part.prefix + (part.value or ""))
            else:
                group = self.soft_groups[part.soft_group or 0]
                pieces.append(part.prefix + (group.init_text or soft * (group.length or 1)))
        return "".join(pieces)

    def __str__(self) -> str:
        return self.text


def _example_field(example: Any, name: str | None) -> str:
    if hasattr(example, "field"):
        return example.field(name)
    if isinstance(example, Mapping):
        key = FIELD_ALIASES.get(name or "", name)
        if key in example:
            return str(example[key])
        if name in example:
            return str(example[name])
        raise KeyError(f"field {name!r} missing from example; it has {sorted(example)}")
    if isinstance(example, str) and FIELD_ALIASES.get(name or "") == "text":
        return example
    raise TypeError(f"cannot read field {name!r} from {type(example).__name__}")


# ----------------------------------------------------------------------------- parser

class _Parser:
    def __init__(self, text: str, post_processor_names: set[str]):
        self.text = text
        self.post_processor_names = post_processor_names
        self.parts: list[Part] = []
        self.groups: list[SoftGroup] = []
        self.group_by_id: dict[Any, tuple[int, int]] = {}  # soft_id -> (group index, position)

    def error(self, message: str, position: int) -> TemplateError:
        return TemplateError(message, self.text, position)

    def parse(self) -> tuple[tuple[Part, ...], tuple[SoftGroup, ...]]:
        text, i, pending_space = self.text, 0, False
        while i < len(text):
            if text[i] == "{":
                end = self.block_end(i)
                self.add_block(text[i : end + 1], i, pending_space)
                pending_space, i = False, end + 1
            elif text[i] == "}":
                raise self.error("'}' without a matching '{'", i)
            else:
                end = i
                while end < len(text) and text[end] not in "{}":
                    end += 1
                chunk = text[i:end]
                body = chunk.strip(" ")
                if body:
                    leading = len(chunk) - len(chunk.lstrip(" "))
                    prefix = " " if (pending_space or leading) else ""
                    self.parts.append(Part("text", body, prefix, position=i + leading))
                    pending_space = chunk.endswith(" ")
                else:
                    pending_space = pending_space or bool(chunk)
                i = end
        if not self.parts:
            raise self.error("the template is empty", 0)
        return tuple(self.parts), tuple(self.groups)

    def block_end(self, start: int) -> int:
        """Index of the '}' closing the block at ``start``; quotes and nesting respected."""
        depth, quote, i, text = 0, "", start, self.text
        while i < len(text):
            char = text[i]
            if quote:
                if char == "\\":
                    i += 1
                elif char == quote:
                    quote = ""
            elif char in "'\"":
                quote = char
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise self.error("'{' is never closed", start)

    def read_block(self, block: str, position: int) -> dict[str, Any]:
        inner = block[1:-1].strip()
        if _IDENTIFIER.fullmatch(inner):  # shorthand: {mask}, {soft}, {text}, {premise}
            if inner in ("mask", "soft"):
                return {inner: None}
            return {"meta": inner}
        try:
            tree = ast.parse(block, mode="eval").body
        except SyntaxError as exc:
            offset = position + max((exc.offset or 1) - 1, 0)
            raise self.error(f"invalid block {block!r}: {exc.msg}", offset) from None
        if isinstance(tree, ast.Set):
            keys, values = tree.elts, [None] * len(tree.elts)
        elif isinstance(tree, ast.Dict):
            keys, values = tree.keys, tree.values
        else:
            raise self.error(f"a block must be a dict or a set of keys, got {block!r}", position)
        spec: dict[str, Any] = {}
        for key_node, value_node in zip(keys, values, strict=True):
            if key_node is None:  # {**x}
                raise self.error("'**' unpacking is not allowed in a template block", position)
            key = self.literal(key_node, position)
            if not isinstance(key, str):
                raise self.error(f"block keys are strings, got {key!r}", self.at(key_node, position))
            if key not in ALLOWED_KEYS:
                raise self.error(
                    f"unknown key {key!r}; allowed keys: {', '.join(ALLOWED_KEYS)}",
                    self.at(key_node, position),
                )
            spec[key] = None if value_node is None else self.literal(value_node, position, key)
        return spec

    def at(self, node: ast.AST, block_position: int) -> int:
        return block_position + getattr(node, "col_offset", 0)

    def literal(self, node: ast.AST, block_position: int, key: str = "") -> Any:
        if isinstance(node, ast.Lambda):
            raise self.error(
                f"{key or 'a value'} is code (a lambda); templates only hold literals. Name a "
                "registered post-processor instead (e.g. \"rstrip_punct\"), or pass your function "
                "as Template(text, post_processors={'my_name': function})",
                self.at(node, block_position),
            )
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise self.error(
                f"only literal values (strings, numbers, True/False/None) are allowed"
                f"{' for ' + repr(key) if key else ''}",
                self.at(node, block_position),
            ) from None

    def add_block(self, block: str, position: int, pending_space: bool) -> None:
        spec = self.read_block(block, position)
        roles = [k for k in _ROLE_KEYS if k in spec]
        if "soft_id" in roles and "soft" in roles:
            roles.remove("soft_id")
        if len(roles) != 1:
            raise self.error(
                f"a block needs exactly one of {', '.join(_ROLE_KEYS)}; got "
                f"{', '.join(roles) if roles else 'none'}",
                position,
            )
        role = roles[0]
        prefix = spec.get("add_prefix_space")
        if prefix is None:
            prefix = " " if pending_space else ""
        elif not isinstance(prefix, str):
            raise self.error("'add_prefix_space' is a string such as ' ' or ''", position)
        shortenable = spec.get("shortenable")
        if shortenable is not None and not isinstance(shortenable, bool):
            raise self.error("'shortenable' is True or False", position)
        post = self.post_processing(spec.get("post_processing"), position)
        if "duplicate" in spec and role not in ("soft", "soft_id"):
            raise self.error("'duplicate' applies to soft tokens only", position)
        if post and role not in ("placeholder", "meta"):
            raise self.error("'post_processing' applies to fields ({\"meta\": ...}) only", position)

        if role in ("placeholder", "meta"):
            name = spec[role]
            if not isinstance(name, str) or not name:
                raise self.error(f"{role!r} names a field, e.g. {{\"{role}\": \"text_a\"}}", position)
            name = FIELD_ALIASES.get(name, name)
            keep_whole = shortenable is False
            self.parts.append(Part("field", name, prefix, not keep_whole, post, position=position))
        elif role == "mask":
            if spec["mask"] is not None:
                raise self.error('write the mask as {"mask"}; it takes no value', position)
            if shortenable:
                raise self.error("the mask cannot be shortenable", position)
            self.parts.append(Part("mask", None, prefix, position=position))
        elif role == "special":
            if not isinstance(spec["special"], str) or not spec["special"]:
                raise self.error('"special" names a token, e.g. {"special": "<eos>"}', position)
            self.parts.append(Part("special", spec["special"], prefix, position=position))
        elif role == "text":
            if not isinstance(spec["text"], str):
                raise self.error('"text" holds a string', position)
            self.parts.append(Part("text", spec["text"], prefix, bool(shortenable), position=position))
        else:
            group = self.soft_group(spec, prefix, position)
            self.parts.append(Part("soft", None, prefix, soft_group=group, position=position))

    def post_processing(self, value: Any, position: int) -> tuple[str, ...]:
        if value is None:
            return ()
        names = (value,) if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise self.error("'post_processing' is a name or a list of names", position)
        for name in names:
            if name not in self.post_processor_names:
                raise self.error(
                    f"unknown post-processor {name!r}; known: {', '.join(sorted(self.post_processor_names))}",
                    position,
                )
        return tuple(names)

    def soft_group(self, spec: dict[str, Any], prefix: str, position: int) -> int:
        init_text = spec.get("soft")
        if init_text is not None and (not isinstance(init_text, str) or not init_text.strip()):
            raise self.error('"soft" is None or a non-empty initialisation text', position)
        duplicate = spec.get("duplicate", 1)
        if isinstance(duplicate, bool) or not isinstance(duplicate, int) or duplicate < 1:
            raise self.error("'duplicate' is a positive integer", position)
        if init_text is not None and duplicate != 1:
            raise self.error(
                "'duplicate' makes N randomly initialised soft tokens ({\"soft\": None, "
                "\"duplicate\": N}); a text-initialised block has one token per token of its text",
                position,
            )
        soft_id = spec.get("soft_id")
        if soft_id is not None:
            try:
                hash(soft_id)
            except TypeError:
                raise self.error("'soft_id' must be a number or a string", position) from None
            if soft_id in self.group_by_id:
                index, first = self.group_by_id[soft_id]
                group = self.groups[index]
                redefined = ("soft" in spec and init_text != group.init_text) or (
                    "duplicate" in spec and duplicate != group.length
                )
                if redefined:
                    raise self.error(
                        f"soft_id {soft_id!r} was defined at position {first}; later uses share "
                        "it and cannot redefine its text or length",
                        position,
                    )
                return index
        length = None if init_text is not None else duplicate
        group = SoftGroup(len(self.groups), init_text, length, soft_id, prefix)
        self.groups.append(group)
        if soft_id is not None:
            self.group_by_id[soft_id] = (group.index, position)
        return group.index
