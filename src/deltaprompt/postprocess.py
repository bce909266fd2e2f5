"""Post-processing of generated text: small named steps composed into a pipeline.

    pipeline = make_pipeline(["strip", "answer", {"labels": {"labels": ["negative", "positive"]}}])
    pipeline("Let me think step by step... The film is dull.\\nAnswer: **Negative**")  # 'negative'
    pipeline.apply("no idea")       # Processed(value=None, error=PostProcessError(...), text='no idea')
    pipeline.describe()             # ['strip', 'answer', {'labels': {'labels': ['negative', 'positive']}}]

Steps are named as they are in YAML configs: a name (``"strip"``) or a one-key mapping from a
name to its options (``{"json": {"schema": {...}}}``). Each one takes the value the previous
step returned and gives back a new one; most work on text, ``json`` returns the parsed object
and ``labels`` one of its labels. A step that cannot do its job raises a
:class:`PostProcessError` that says which step, why (a short ``reason`` code), on what text, and
details a program can act on; :meth:`PostProcessError.retry_hint` turns it into one sentence a
generator can append to the prompt for a second try.

The built-in steps, in ``STEPS``:

- ``strip``: trim, collapse whitespace runs (``keep_newlines`` keeps line breaks);
- ``normalize``: Unicode NFKC, straight quotes, optional lower case and punctuation removal;
- ``answer``: the text after the last answer cue ("Answer:", "**Final answer:**"), the final
  answer after chain-of-thought reasoning; the last non-empty line when there is no cue;
- ``json``: the first complete JSON object in the text (code fences, nested braces, braces in
  strings), validated against an optional JSON Schema (Draft 2020-12, ``jsonschema``);
- ``labels``: free text to one label of a set: exact match, then whole word, then fuzzy;
- ``dedupe``: collapse immediately repeated phrases and sentences ("the cat the cat" -> "the cat");
- ``blocklist``: remove listed words and phrases, or reject the output when it has one;
- ``truncate``: at most ``max_words`` words and/or ``max_chars`` characters, cut between words.

Add your own with ``register_step("name", cls)``: any class whose instances are callables from
value to value and raise :class:`PostProcessError` when the value is unusable.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# ----------------------------------------------------------------------------- errors

_REASONS = {
    "empty": "the output is empty",
    "not_text": "the step needs text",
    "no_answer": "no answer cue found",
    "no_json": "no JSON object found",
    "truncated_json": "the JSON object is cut off before its end",
    "invalid_json": "no valid JSON object found",
    "schema": "the JSON object does not match the schema",
    "no_label": "no label found",
    "ambiguous": "more than one label found",
    "blocked": "the output contains blocked words",
    "exception": "the step failed",
}


class PostProcessError(ValueError):
    """A step could not turn the output into a usable value.

    ``step`` names the step, ``reason`` is a short code (``"truncated_json"``, ``"schema"``,
    ``"no_label"``...), ``output`` the text the step was given and ``details`` what a program
    needs to act on it (for a schema failure: the JSON path of the first error and every
    message). It is a ``ValueError`` so callers that do not know this module still catch it."""

    def __init__(self, step: str, reason: str, output: Any = "", details: dict | None = None,
                 message: str | None = None):
        self.step = step
        self.reason = reason
        self.output = output
        self.details = dict(details or {})
        self.message = message or _REASONS.get(reason, reason)
        super().__init__(f"{step} step: {self.message}")

    def __reduce__(self):  # keyword-only state does not survive the default pickling of exceptions
        return (type(self), (self.step, self.reason, self.output, self.details, self.message))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for logs and prediction files."""
        output = self.output if isinstance(self.output, str) else repr(self.output)
        return {"step": self.step, "reason": self.reason, "message": self.message,
                "output": output, "details": self.details}

    def retry_hint(self) -> str:
        """One instruction to append to the prompt for a single retry: what was wrong with the
        previous output and what to reply with instead."""
        d = self.details
        if self.step == "json" or self.reason in ("no_json", "truncated_json", "invalid_json", "schema"):
            wanted = "Reply with only a JSON object" + _keys_phrase(d) + ", and nothing else."
            if self.reason == "schema":
                where = d.get("path", "$")
                return f"Your previous output did not match the required JSON schema: at {where}, " \
                       f"{d.get('message', self.message)}. {wanted}"
            if self.reason == "truncated_json":
                return "Your previous output was not valid JSON: it was cut off before the object " \
                       f"was closed. Reply with only a short, complete JSON object{_keys_phrase(d)}, and " \
                       "nothing else; close every quote and brace."
            if self.reason == "invalid_json" and d.get("error"):
                return f"Your previous output was not valid JSON: {d['error']}. {wanted}"
            return f"Your previous output was not valid JSON: {self.message}. {wanted}"
        if self.reason in ("no_label", "ambiguous"):
            labels = ", ".join(d.get("labels", []))
            return f"Your previous answer did not name exactly one of the labels ({self.message}). " \
                   f"Reply with exactly one of: {labels}."
        if self.reason == "blocked":
            found = ", ".join(f'"{w}"' for w in d.get("found", []))
            return f"Your previous output used words that are not allowed: {found}. " \
                   "Reply again without them."
        if self.reason == "no_answer":
            cue = d.get("answer_prefix", "Answer:")
            return f'Your previous output had no final answer. End your reply with a line "{cue} <answer>".'
        if self.reason == "empty":
            return "Your previous output was empty. Reply with a complete answer."
        return f"Your previous output was rejected ({self.message}). Reply again."


def _keys_phrase(details: dict) -> str:
    """' with the keys "name" (string), "age" (integer)' from a schema's required keys."""
    keys = details.get("required") or []
    if not keys:
        return ""
    types = details.get("types", {})
    named = [f'"{k}"' + (f" ({types[k]})" if k in types else "") for k in keys]
    return " with the keys " + ", ".join(named)


@dataclass
class Processed:
    """What :meth:`Pipeline.apply` gives back: the final ``value`` (None on failure), the
    ``error`` that stopped the pipeline (None on success) and the original ``text``."""

    value: Any
    error: PostProcessError | None
    text: str

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "error": None if self.error is None else self.error.to_dict(),
                "text": self.text}


# ----------------------------------------------------------------------------- steps

class Step:
    """Base of the built-in steps: options are constructor arguments stored under the same
    names, so :meth:`describe` can give back the config entry that builds an equal step."""

    name: ClassVar[str] = "step"

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError

    def fail(self, reason: str, output: Any, message: str | None = None, /, **details: Any) -> PostProcessError:
        return PostProcessError(self.name, reason, output, details, message)

    def text(self, value: Any) -> str:
        """The value as text, or a clear error when an earlier step already parsed it."""
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        raise self.fail("not_text", value, f"the {self.name} step needs text but got a {type(value).__name__}; "
                        "put text steps before json/labels in the pipeline")

    def options(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        options = {}
        for parameter in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            value = getattr(self, parameter.name)
            if parameter.default is inspect.Parameter.empty or value != parameter.default:
                options[parameter.name] = list(value) if isinstance(value, tuple) else value
        return options

    def describe(self) -> str | dict[str, dict[str, Any]]:
        options = self.options()
        return {self.name: options} if options else self.name

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.describe() == other.describe()  # type: ignore[union-attr]

    __hash__ = None  # type: ignore[assignment]


def _check_type(step: str, option: str, value: Any, kinds: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise ValueError(f"{step}: option {option} must be {what}, got {value!r}")


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _positive_int(step: str, option: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{step}: option {option} must be a positive whole number, got {value!r}")


def _string_list(step: str, option: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{step}: option {option} must be a list of strings, got {value!r}")
    items = tuple(value)
    bad = [v for v in items if not isinstance(v, str) or not v.strip()]
    if bad:
        raise ValueError(f"{step}: option {option} must hold non-empty strings, got {bad!r}")
    return items


_ZERO_WIDTH = re.compile("[\u200b\ufeff]")


class Strip(Step):
    """Trim and collapse whitespace runs (Unicode spaces included, zero-width spaces removed)
    to one space; ``keep_newlines`` keeps single line breaks and one blank line between
    paragraphs, so lists and code stay readable."""

    name = "strip"

    def __init__(self, keep_newlines: bool = False):
        _check_type(self.name, "keep_newlines", keep_newlines, bool, "true or false")
        self.keep_newlines = keep_newlines

    def __call__(self, value: Any) -> str:
        text = _ZERO_WIDTH.sub("", self.text(value))
        if not self.keep_newlines:
            return " ".join(text.split())
        lines = [" ".join(line.split()) for line in text.splitlines()]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                         "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'"})


class Normalize(Step):
    """Unicode NFKC (full-width letters, ligatures and non-breaking spaces become their plain
    forms), straight quotes, collapsed whitespace; ``lower`` folds case; ``strip_punctuation``
    drops punctuation (apostrophes inside words vanish, "don't" -> "dont"; other marks become
    spaces, so "well-known" -> "well known")."""

    name = "normalize"

    def __init__(self, lower: bool = False, strip_punctuation: bool = False, quotes: bool = True,
                 form: str = "NFKC"):
        for option, value in (("lower", lower), ("strip_punctuation", strip_punctuation), ("quotes", quotes)):
            _check_type(self.name, option, value, bool, "true or false")
        if form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"{self.name}: option form must be one of NFC, NFKC, NFD, NFKD, got {form!r}")
        self.lower, self.strip_punctuation, self.quotes, self.form = lower, strip_punctuation, quotes, form

    def __call__(self, value: Any) -> str:
        text = unicodedata.normalize(self.form, self.text(value))
        if self.quotes:
            text = text.translate(_QUOTES)
        if self.lower:
            text = text.casefold() if self.form.startswith("NFK") else text.lower()
        if self.strip_punctuation:
            text = re.sub(r"(?<=\w)['\u2019](?=\w)", "", text)
            text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
        return " ".join(_ZERO_WIDTH.sub("", text).split())


# -- answer

def _cue_pattern(answer_prefix: str) -> re.Pattern:
    """The cue as written, any case, with markdown emphasis allowed around it and before its
    colon: "Answer:", "answer :", "**Answer:**", "**Final Answer**:", "__Answer__:"."""
    cue = answer_prefix.strip()
    colon = cue.endswith(":")
    words = cue.rstrip(":").strip().split()
    if not words:
        raise ValueError(f"answer_prefix must contain a word, got {answer_prefix!r}")
    body = r"\s+".join(re.escape(w) for w in words)
    start = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    end = r"[ \t]*[*_]*[ \t]*:" if colon else r"(?!\w)"
    return re.compile(start + body + end + r"[ \t]*[*_]*", re.IGNORECASE)


_WRAPPED = re.compile(r"^([*_`]+)(.+?)\1$", re.DOTALL)
_BOLD = re.compile(r"(\*\*|__)(.+?)\1", re.DOTALL)


def _clean_answer(text: str) -> str:
    """Without markdown emphasis: "**positive**" -> "positive", "**positive**." -> "positive."."""
    text = text.strip()
    while match := _WRAPPED.match(text):
        text = match.group(2).strip()
    return _BOLD.sub(r"\2", text).strip("*`").strip()


def extract_answer(text: str, answer_prefix: str = "Answer:", multiline: bool = False) -> str:
    """The final answer of a chain-of-thought output: what follows the last answer cue (any
    case, markdown emphasis tolerated, "Final answer:" included), its first non-empty line
    unless ``multiline``; with no cue, the last non-empty line. Never raises: "" when there is
    nothing."""
    answer, _ = _find_answer(text or "", _cue_pattern(answer_prefix), multiline)
    return answer


def _find_answer(text: str, pattern: re.Pattern, multiline: bool) -> tuple[str, bool]:
    matches = list(pattern.finditer(text))
    if not matches:
        lines = [line for line in text.splitlines() if line.strip()]
        return (_clean_answer(lines[-1]) if lines else ""), False
    rest = text[matches[-1].end():]
    if not multiline:
        lines = [line for line in rest.splitlines() if line.strip()]
        rest = lines[0] if lines else ""
    return _clean_answer(rest), True


class Answer(Step):
    """The text after the last answer cue (chain-of-thought puts reasoning first and the answer
    on a last "Answer: ..." line), first line only unless ``multiline``. Without a cue: the last
    non-empty line, or a "no_answer" error when ``strict``. An empty answer is an "empty" error."""

    name = "answer"

    def __init__(self, answer_prefix: str = "Answer:", strict: bool = False, multiline: bool = False):
        _check_type(self.name, "answer_prefix", answer_prefix, str, "text such as 'Answer:'")
        _check_type(self.name, "strict", strict, bool, "true or false")
        _check_type(self.name, "multiline", multiline, bool, "true or false")
        self.answer_prefix, self.strict, self.multiline = answer_prefix, strict, multiline
        self._pattern = _cue_pattern(answer_prefix)

    def __call__(self, value: Any) -> str:
        text = self.text(value)
        answer, found = _find_answer(text, self._pattern, self.multiline)
        if not found and self.strict:
            raise self.fail("no_answer", text, f"no {self.answer_prefix!r} cue in the output",
                            answer_prefix=self.answer_prefix)
        if not answer:
            raise self.fail("empty", text, "the output has no answer" + (" after its cue" if found else ""),
                            cue_found=found, answer_prefix=self.answer_prefix)
        return answer


# -- json

_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class _Candidate:
    start: int
    end: int | None  # index after the closing brace; None when the text ends first
    depth: int = 0
    in_string: bool = False


def _match_braces(text: str, start: int) -> _Candidate:
    """Follow braces from ``text[start] == '{'``, skipping those inside strings (with escapes)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return _Candidate(start, i + 1)
    return _Candidate(start, None, depth, in_string)


class Json(Step):
    """The first complete JSON object in the output, parsed; validated against ``schema`` (a
    JSON Schema, Draft 2020-12) when one is given.

    Fenced blocks (```json ... ```) are searched first, then the whole text. From each "{" the
    braces are matched, ignoring those inside strings; a candidate that does not parse is
    skipped and the search goes on, so prose with a stray brace or a broken first object before
    a good one still works. Errors: "no_json" (no "{" at all), "truncated_json" (the text ends
    inside an object: details say where and how many braces were open), "invalid_json" (the
    decoder's message for the first candidate), "schema" (details: ``path`` of the first error,
    ``message``, every error in ``errors``, the schema's ``required`` keys). A dict or list
    given by an earlier step is only validated."""

    name = "json"

    def __init__(self, schema: dict | None = None):
        self.schema = schema
        self._validator = None
        if schema is not None:
            _check_type(self.name, "schema", schema, dict, "a JSON Schema (a mapping)")
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as error:
                raise ValueError(f"{self.name}: the schema is not a valid JSON Schema: {error.message} "
                                 f"(at {error.json_path})") from None
            self._validator = Draft202012Validator(schema)

    def _schema_details(self) -> dict[str, Any]:
        if not self.schema:
            return {}
        required = [k for k in self.schema.get("required", []) if isinstance(k, str)]
        types = {k: p["type"] for k, p in self.schema.get("properties", {}).items()
                 if isinstance(p, dict) and isinstance(p.get("type"), str)}
        return {"required": required, "types": types}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return self.validate(value, json.dumps(value, ensure_ascii=False))
        text = self.text(value)
        fenced = [i for m in _FENCE.finditer(text) for i in range(m.start(1), m.end(1)) if text[i] == "{"]
        seen = set(fenced)
        starts = fenced + [i for i, c in enumerate(text) if c == "{" and i not in seen]
        if not text.strip():
            raise self.fail("empty", text, "the output is empty; expected a JSON object", **self._schema_details())
        if not starts:
            raise self.fail("no_json", text, "the output contains no JSON object (no '{')", **self._schema_details())
        first_invalid: dict[str, Any] | None = None
        truncated: _Candidate | None = None
        for start in starts:
            candidate = _match_braces(text, start)
            if candidate.end is None:
                truncated = truncated or candidate
                continue
            try:
                parsed = json.loads(text[start:candidate.end])
            except json.JSONDecodeError as error:
                first_invalid = first_invalid or {"error": f"{error.msg} at line {error.lineno} column {error.colno}",
                                                  "start": start, "end": candidate.end,
                                                  "position": start + error.pos}
                continue
            return self.validate(parsed, text)
        if truncated is not None:
            inside = " inside a string" if truncated.in_string else ""
            raise self.fail("truncated_json", text,
                            f"the JSON object starting at character {truncated.start} is cut off: the text ends "
                            f"with {truncated.depth} brace(s) open{inside}",
                            start=truncated.start, end=len(text), open_braces=truncated.depth,
                            in_string=truncated.in_string, tail=text[-40:], **self._schema_details())
        assert first_invalid is not None
        raise self.fail("invalid_json", text, f"no valid JSON object ({first_invalid['error']})",
                        **first_invalid, **self._schema_details())

    def validate(self, parsed: Any, text: str) -> Any:
        if self._validator is None:
            return parsed
        from jsonschema.exceptions import best_match

        errors = list(self._validator.iter_errors(parsed))
        if not errors:
            return parsed
        first = best_match(errors)
        listed = sorted(({"path": e.json_path, "message": e.message} for e in errors),
                        key=lambda e: (e["path"], e["message"]))
        raise self.fail("schema", text, f"at {first.json_path}: {first.message}", path=first.json_path,
                        message=first.message, validator=first.validator, errors=listed, value=parsed,
                        **self._schema_details())


# -- labels

def _label_pattern(label: str) -> re.Pattern:
    """A label as a whole word: not inside a longer word (hyphens count as part of a word, so
    "non-negative" is not "negative"); spaces, "_" and "-" inside the label are interchangeable."""
    parts = [re.escape(p) for p in re.split(r"[\s_-]+", label.strip()) if p]
    return re.compile(r"(?<![\w-])" + r"[\s_-]+".join(parts) + r"(?![\w-])", re.IGNORECASE)


def _bare(text: str) -> str:
    """Casefolded, with surrounding quotes, punctuation, markdown and spaces removed."""
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    return re.sub(r"^[\W_]+|[\W_]+$", "", text)


class Labels(Step):
    """Map free text to one of ``labels`` (returned as spelled in ``labels``), trying in order:

    1. the whole text is a label (any case, quotes and punctuation around it ignored);
    2. exactly one label occurs as a whole word ("unpositive" does not contain "positive"; a
       label inside a longer label that also occurs, "entailment" in "not entailment", does not
       count); two or more: "ambiguous", unless ``first`` takes the earliest;
    3. a word within ``cutoff`` similarity of a label (difflib ratio; typos like "postive").
       Words of fewer than four characters and words that contain a label are left out: for
       them one letter makes another word.

    Nothing found: "no_label". Negations are not understood: "not positive" is "positive"."""

    name = "labels"

    def __init__(self, labels: Sequence[str], first: bool = False, cutoff: float = 0.8):
        self.labels = list(_string_list(self.name, "labels", labels))
        if not self.labels:
            raise ValueError(f"{self.name}: option labels must list at least one label")
        folded = [_bare(label) for label in self.labels]
        repeated = sorted({lab for lab, f in zip(self.labels, folded, strict=True) if folded.count(f) > 1})
        if repeated:
            raise ValueError(f"{self.name}: labels {repeated} are the same label up to case/punctuation")
        _check_type(self.name, "first", first, bool, "true or false")
        _check_type(self.name, "cutoff", cutoff, (int, float), "a number between 0 and 1")
        if not 0 < cutoff <= 1:
            raise ValueError(f"{self.name}: option cutoff must be in (0, 1], got {cutoff!r}")
        self.first, self.cutoff = first, float(cutoff)
        self._folded = dict(zip(folded, self.labels, strict=True))
        self._patterns = [(label, _label_pattern(label)) for label in self.labels]

    def __call__(self, value: Any) -> str:
        text = self.text(value)
        if not text.strip():
            raise self.fail("empty", text, "the output is empty; expected one of the labels", labels=self.labels)
        bare = _bare(text)
        if bare in self._folded:
            return self._folded[bare]
        spaced = _bare(re.sub(r"[\s_-]+", " ", text))
        for folded, label in self._folded.items():
            if re.sub(r"[\s_-]+", " ", folded) == spaced:
                return label
        found = self._word_matches(text)
        if not found:
            found = self._fuzzy_matches(text)
        if not found:
            raise self.fail("no_label", text, f"none of the labels {self.labels} in the output", labels=self.labels)
        if len(found) == 1 or self.first:
            return min(found.items(), key=lambda item: item[1])[0]
        order = sorted(found, key=found.__getitem__)
        raise self.fail("ambiguous", text, f"the output names {len(order)} labels: {', '.join(order)}",
                        found=order, labels=self.labels)

    def _word_matches(self, text: str) -> dict[str, int]:
        """label -> position of its first occurrence not covered by a longer label's occurrence."""
        spans = [(m.start(), m.end(), label) for label, pattern in self._patterns for m in pattern.finditer(text)]
        found: dict[str, int] = {}
        for start, end, label in spans:
            covered = any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
            if not covered and start < found.get(label, len(text) + 1):
                found[label] = start
        return found

    def _fuzzy_matches(self, text: str) -> dict[str, int]:
        words = [(m.start(), m.group().casefold()) for m in re.finditer(r"[^\W_]+(?:[-'][^\W_]+)*", text)]
        longest = max(len(re.split(r"[\s_-]+", label)) for label in self.labels)
        candidates = []
        for n in range(1, longest + 1):
            for i in range(len(words) - n + 1):
                phrase = " ".join(w for _, w in words[i:i + n])
                candidates.append((words[i][0], phrase))
        folded = {re.sub(r"[\s_-]+", " ", f): label for f, label in self._folded.items()}
        found: dict[str, int] = {}
        for position, phrase in candidates:
            if len(phrase) < 4 or any(f in phrase for f in folded):
                continue
            close = difflib.get_close_matches(phrase, list(folded), n=1, cutoff=self.cutoff)
            if close and position < found.get(folded[close[0]], len(text) + 1):
                found[folded[close[0]]] = position
        return found


# -- dedupe

_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


class Dedupe(Step):
    """Collapse immediately repeated phrases, sentences and lines, the loop a small model
    falls into: "the cat the cat the cat" -> "the cat", "I agree. I agree." -> "I agree.".

    A phrase is ``min_words`` to ``max_words`` words; repeats are compared ignoring case and
    punctuation at word edges, and the last copy is kept (it carries the final punctuation).
    The default ``min_words=2`` leaves single repeated words ("very very", "had had") alone;
    set 1 to collapse those too. Line breaks between the kept words are kept."""

    name = "dedupe"

    def __init__(self, min_words: int = 2, max_words: int = 64):
        _positive_int(self.name, "min_words", min_words, allow_none=False)
        _positive_int(self.name, "max_words", max_words, allow_none=False)
        if max_words < min_words:
            raise ValueError(f"{self.name}: max_words ({max_words}) is smaller than min_words ({min_words})")
        self.min_words, self.max_words = min_words, max_words

    def __call__(self, value: Any) -> str:
        text = self.text(value)
        tokens = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        keys = [_EDGE_PUNCT.sub("", text[a:b]).casefold() or text[a:b] for a, b in tokens]
        # separator[i]: the whitespace that goes before kept token i
        separators = [text[tokens[i - 1][1]:tokens[i][0]] if i else "" for i in range(len(tokens))]
        alive = list(range(len(tokens)))  # indices of the kept tokens, in order
        changed = True
        while changed:
            changed = False
            i = 0
            while i < len(alive):
                for n in range(self.min_words, min(self.max_words, (len(alive) - i) // 2) + 1):
                    if keys[alive[i]] != keys[alive[i + n]]:
                        continue
                    first, second = alive[i:i + n], alive[i + n:i + 2 * n]
                    if [keys[k] for k in first] == [keys[k] for k in second]:
                        separators[second[0]] = separators[first[0]]
                        del alive[i:i + n]  # keep the later copy
                        changed = True
                        break
                else:
                    i += 1
        return "".join(separators[k] + text[tokens[k][0]:tokens[k][1]] for k in alive)


# -- blocklist

def _phrase_pattern(phrase: str) -> str:
    words = phrase.split()
    body = r"\s+".join(re.escape(w) for w in words)
    start = r"(?<!\w)" if re.match(r"\w", words[0]) else ""
    end = r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
    return start + body + end


class Blocklist(Step):
    """Words and phrases that must not appear, matched as whole words in any case ("damn"
    matches "Damn," and "(damn)", not "damnation"). ``mode="remove"`` deletes them and tidies
    the spaces left behind; ``mode="reject"`` raises "blocked" with the words found."""

    name = "blocklist"

    def __init__(self, words: Sequence[str], mode: str = "remove"):
        self.words = list(_string_list(self.name, "words", words))
        if mode not in ("remove", "reject"):
            raise ValueError(f"{self.name}: option mode must be 'remove' or 'reject', got {mode!r}")
        self.mode = mode
        ordered = sorted(self.words, key=len, reverse=True)  # longest first: phrases before their words
        self._pattern = re.compile("|".join(_phrase_pattern(w) for w in ordered), re.IGNORECASE) if ordered else None

    def __call__(self, value: Any) -> str:
        text = self.text(value)
        if self._pattern is None:
            return text
        if self.mode == "reject":
            found = list(dict.fromkeys(" ".join(m.group().split()).lower() for m in self._pattern.finditer(text)))
            if found:
                raise self.fail("blocked", text, f"the output contains blocked words: {', '.join(found)}",
                                found=found)
            return text
        removed = re.sub(r"[ \t]*(?:" + self._pattern.pattern + ")", "", text, flags=re.IGNORECASE)
        # tidy what a removal leaves: double spaces, empty brackets, a comma or colon at a line's start
        removed = re.sub(r"[ \t]*(?:\(\s*\)|\[\s*\]|\"\s*\")", "", removed)
        lines = [re.sub(r"^[ \t]*[,;:]+", "", re.sub(r"[ \t]{2,}", " ", line)).strip() for line in removed.splitlines()]
        return "\n".join(lines).strip()


# -- truncate

class Truncate(Step):
    """At most ``max_words`` words and/or ``max_chars`` characters, cut between words (a single
    word longer than ``max_chars`` is cut inside). ``ellipsis`` (True for "…", or any text)
    marks a cut and counts toward ``max_chars``. Text within the limits is returned unchanged."""

    name = "truncate"

    def __init__(self, max_words: int | None = None, max_chars: int | None = None, ellipsis: bool | str = False):
        _positive_int(self.name, "max_words", max_words)
        _positive_int(self.name, "max_chars", max_chars)
        if max_words is None and max_chars is None:
            raise ValueError(f"{self.name}: give max_words, max_chars or both")
        _check_type(self.name, "ellipsis", ellipsis, (bool, str), "true, false or the text to append")
        mark = "\u2026" if ellipsis is True else (ellipsis or "")
        if max_chars is not None and len(mark) >= max_chars:
            raise ValueError(f"{self.name}: the ellipsis {mark!r} does not fit in max_chars={max_chars}")
        self.max_words, self.max_chars, self.ellipsis = max_words, max_chars, ellipsis
        self._mark = mark

    def __call__(self, value: Any) -> str:
        text = self.text(value)
        cut = False
        if self.max_words is not None:
            words = list(re.finditer(r"\S+", text))
            if len(words) > self.max_words:
                text, cut = text[:words[self.max_words - 1].end()], True
        if self.max_chars is not None and len(text.rstrip()) > self.max_chars:
            text, cut = self._cut_chars(text, self.max_chars - len(self._mark)), True
        if not cut:
            return text
        return re.sub(r"[\s,;:\-\u2013\u2014]+$", "", text) + self._mark

    @staticmethod
    def _cut_chars(text: str, limit: int) -> str:
        if text[limit].isspace():
            return text[:limit]
        head = text[:limit]
        boundary = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        return head[:boundary] if boundary > 0 and head[:boundary].strip() else head


# ----------------------------------------------------------------------------- pipeline

STEPS: dict[str, type] = {cls.name: cls for cls in (Strip, Normalize, Answer, Json, Labels, Dedupe, Blocklist,
                                                    Truncate)}

StepEntry = str | dict[str, Any] | Callable[[Any], Any]


def register_step(name: str, cls: type, replace: bool = False) -> None:
    """Make ``cls`` available to configs as ``name``. Its constructor takes the options as
    keyword arguments; its instances map a value to a new value and raise PostProcessError."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ValueError(f"a step name must be a word such as 'my_step', got {name!r}")
    if not callable(cls):
        raise TypeError(f"step {name!r} must be a class (or factory) whose instances are callable, got {cls!r}")
    if name in STEPS and STEPS[name] is not cls and not replace:
        raise ValueError(f"a step named {name!r} is already registered ({STEPS[name].__name__}); "
                         "pass replace=True to override it")
    STEPS[name] = cls


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; known: {', '.join(known)}"


def make_step(entry: StepEntry) -> Callable[[Any], Any]:
    """One step from a config entry: ``"strip"``, ``{"truncate": {"max_words": 50}}``, or an
    already built step (any callable)."""
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, dict):
        if len(entry) != 1:
            raise ValueError(f"a step entry is a name or a one-key mapping {{name: {{options}}}}, got {entry!r}")
        name, options = next(iter(entry.items()))
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ValueError(f"the options of step {name!r} must be a mapping, got {options!r}")
    elif isinstance(entry, type):
        raise ValueError(f"give a step instance ({entry.__name__}()) or register the class with register_step")
    elif callable(entry):
        return entry
    else:
        raise ValueError(f"a step entry is a name or a one-key mapping {{name: {{options}}}}, got {entry!r}")
    if name not in STEPS:
        raise ValueError(_unknown("post-processing step", name, STEPS))
    cls = STEPS[name]
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if parameters and not accepts_any:
        for option in options:
            if option not in parameters:
                raise ValueError(_unknown(f"option of step {name!r}:", option, parameters))
        missing = [p.name for p in parameters.values()
                   if p.default is inspect.Parameter.empty and p.name not in options
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if missing:
            raise ValueError(f"step {name!r} needs the option(s) {', '.join(missing)}, e.g. "
                             f"{{{name}: {{{missing[0]}: ...}}}}")
    step = cls(**options)
    if getattr(step, "name", None) != name:
        with contextlib.suppress(AttributeError):  # a step whose name is read-only keeps it
            step.name = name
    return step


class Pipeline:
    """Steps applied in order. ``pipeline(text)`` returns the final value or raises the first
    step's PostProcessError; ``pipeline.apply(text)`` never raises and returns a Processed."""

    def __init__(self, steps: Iterable[StepEntry] = ()):
        self.steps = [make_step(entry) for entry in steps]

    def __call__(self, text: str) -> Any:
        value: Any = text
        for step in self.steps:
            try:
                value = step(value)
            except PostProcessError:
                raise
            except Exception as error:  # a user step's own exception: still one structured error
                name = getattr(step, "name", type(step).__name__)
                raise PostProcessError(name, "exception", value, {"type": type(error).__name__},
                                       f"{type(error).__name__}: {error}") from error
        return value

    def apply(self, text: str) -> Processed:
        try:
            return Processed(self(text), None, text)
        except PostProcessError as error:
            return Processed(None, error, text)

    def describe(self) -> list[str | dict[str, Any]]:
        """The config entries that rebuild this pipeline (``make_pipeline(p.describe())``)."""
        described = []
        for step in self.steps:
            if hasattr(step, "describe"):
                described.append(step.describe())
            else:
                described.append(getattr(step, "name", type(step).__name__))
        return described

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({self.describe()!r})"


def make_pipeline(steps: Pipeline | Iterable[StepEntry] | None) -> Pipeline:
    """A pipeline from config entries, e.g. ``["strip", {"json": {"schema": {...}}}]``; None or
    an empty list gives the identity pipeline."""
    if isinstance(steps, Pipeline):
        return steps
    if steps is None:
        return Pipeline()
    if isinstance(steps, str | dict):
        steps = [steps]
    return Pipeline(steps)
