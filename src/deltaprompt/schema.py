"""Typed dataclasses from plain dicts (YAML, JSON, CLI flags), with errors a user can act on.

Configs are data, never code: values are checked against the dataclass's type hints (bool,
int, float, str, Literal choices, lists, optional values, nested dataclasses); unknown keys
are refused with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names where it is."""


def relocated(exc: ConfigError, root: str, where: str) -> ConfigError:
    """The first line of ``exc`` told from ``where`` (a file) instead of the section path
    ``root`` it was checked under, so the user reads "suite.yaml: tasks.sst2 ..."."""
    message = str(exc).splitlines()[0] if str(exc) else f"invalid {root}"
    for prefix in (f"{root}.", f"{root}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return ConfigError(f"{where}: {message}")


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    if origin in (list, tuple):
        args = get_args(hint)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against (and, for int -> float and str/list -> tuple, converted to)
    ``hint``; ConfigError naming ``where`` otherwise."""
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(hint):
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, get_args(hint)))}; got {value!r}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        (item,) = get_args(hint)[:1] or (Any,)
        if isinstance(value, (list, tuple)):
            items = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
    else:  # pragma: no cover - a hint this module does not know
        return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and ill-typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
        raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(instance: Any) -> dict[str, Any]:
    """JSON-ready dict of a dataclass (tuples become lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(instance)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
