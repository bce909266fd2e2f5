"""Delta methods by name: ``make_methods(["lora", {"method": "bitfit", "lr": 1e-3}])``.

Methods load lazily (``peft`` is imported only by the methods that use it). Each name maps to
a folder ``delta/<name>/`` exporting ``Method`` and ``Config``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..schema import ConfigError, from_dict
from .base import DeltaConfig, DeltaMethod

if TYPE_CHECKING:
    from ..model import TaskModel

METHOD_NAMES: tuple[str, ...] = (
    "finetune",  # all PLM weights (prompt-oriented or classic fine-tuning)
    "prompt_tuning",  # soft tokens only (Lester et al. 2021)
    "p_tuning",  # soft tokens from a prompt encoder (Liu et al. 2021)
    "prefix",  # deep prompts / P-Tuning v2 (Li & Liang 2021; Liu et al. 2022), via PEFT
    "lora",  # low-rank updates (Hu et al. 2022), via PEFT
    "adapter",  # bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021)
    "bitfit",  # biases only (Ben Zaken et al. 2022)
    "intrinsic",  # random low-dimensional subspace (Aghajanyan et al. 2021)
)
MethodSpec = str | dict[str, Any] | DeltaConfig | DeltaMethod


def method_class(name: str) -> type[DeltaMethod]:
    if name not in METHOD_NAMES:
        close = difflib.get_close_matches(name, METHOD_NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(METHOD_NAMES)}"
        raise ConfigError(f"unknown delta method {name!r}; {hint}")
    return importlib.import_module(f"{__name__}.{name}").Method


def config_class(name: str) -> type[DeltaConfig]:
    return method_class(name).config_class


def make_method(spec: MethodSpec, where: str = "method") -> DeltaMethod:
    """A method from its name, a dict with a "method" key, a config, or a method object."""
    if isinstance(spec, DeltaMethod):
        return spec
    if isinstance(spec, str):
        return method_class(spec)()
    if isinstance(spec, DeltaConfig):
        for name in METHOD_NAMES:
            cls = method_class(name)
            if type(spec) is cls.config_class:
                return cls(spec)
        raise ConfigError(f"{where}: {type(spec).__name__} is not the config of any delta method")
    if isinstance(spec, dict):
        if "method" not in spec:
            raise ConfigError(f'{where}: a method given as a mapping needs a "method" key naming it')
        options = {k: v for k, v in spec.items() if k != "method"}
        cls = method_class(spec["method"])
        return cls(from_dict(cls.config_class, options, f"{where} ({spec['method']})"))
    raise ConfigError(f"{where}: expected a method name, mapping or config, got {type(spec).__name__}")


def make_methods(specs: Iterable[MethodSpec] | MethodSpec | None) -> list[DeltaMethod]:
    """Methods in application order, refusing duplicates and impossible combinations."""
    if specs is None:
        return []
    if isinstance(specs, (str, dict, DeltaConfig, DeltaMethod)):
        specs = [specs]
    methods = [make_method(s, f"methods[{i}]") for i, s in enumerate(specs)]
    names = [m.name for m in methods]
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(f"delta method {name!r} is listed twice; give it once with all its options")
    for method in methods:
        for other in method.incompatible:
            if other in names:
                raise ConfigError(f"delta methods {method.name!r} and {other!r} cannot be combined")
    return sorted(methods, key=lambda m: m.order)


def template_rewriters(methods: Iterable[DeltaMethod]) -> list[str]:
    """Names of the methods that write soft tokens into a template (prompt tuning, P-Tuning):
    models that read no single template (taggers, relation heads, sub-prompts) refuse them."""
    return [m.name for m in methods if type(m).rewrite_template is not DeltaMethod.rewrite_template]


def apply_methods(task: TaskModel, methods: Sequence[DeltaMethod]) -> None:
    """Freeze the PLM, then let each method add or unfreeze what it trains. Soft prompts and
    heads (parts of the task model, not the PLM) stay trainable."""
    for parameter in task.model.parameters():
        parameter.requires_grad_(False)
    for method in methods:
        method.apply(task)
        task.methods.append(method)


__all__ = [
    "template_rewriters",
    "METHOD_NAMES",
    "DeltaConfig",
    "MethodSpec",
    "DeltaMethod",
    "apply_methods",
    "config_class",
    "make_method",
    "make_methods",
    "method_class",
]
