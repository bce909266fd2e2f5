"""Honest parameter accounting and a readable view of a model's structure.

Delta tuning is sold on "only 0.1% of the parameters train", so the figure must be right:
``count_parameters`` counts every distinct tensor once (tied input/output embeddings, a module
reachable by two paths as in T5's shared embedding), and the total includes everything the
task model holds: the PLM, the delta modules injected into it, soft prompts and a head.

``structure`` prints the module tree like OpenDelta's visualisation: per module the parameter
count, the trainable count and the roles those trainable parameters have (soft / delta /
head / plm, as the optimiser sees them), with runs of identical blocks collapsed
(``layers.0-29 ×30``) so a 30-layer model fits in a terminal.

    print(structure(classifier.model, max_depth=6))
    print(count_parameters(classifier.model))     # trainable 1.6M of 136.1M (1.19%): delta 1.6M
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ROLE_ORDER = ("soft", "delta", "head", "plm")
RoleOf = Callable[[str, nn.Parameter], str]


# ----------------------------------------------------------------------------- accounting

@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model, each distinct tensor counted once.

    ``by_role``: trainable parameters per role (the learning-rate groups of the trainer), in
    the order soft, delta, head, plm; roles with nothing to train are left out.
    """

    trainable: int
    total: int
    by_role: dict[str, int] = field(default_factory=dict)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def percent(self) -> float:
        """Trainable share of the total, in percent (0 for a model without parameters)."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable,
            "total": self.total,
            "percent": round(self.percent, 6),
            "by_role": dict(self.by_role),
        }

    def __str__(self) -> str:
        roles = ", ".join(f"{role} {n:,}" for role, n in self.by_role.items())
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({_percent(self.percent)})"
            + (f": {roles}" if roles else "")
        )


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters of ``model`` (a ``TaskModel`` or any ``nn.Module``).

    Roles come from ``model.role_of`` when it has one (a ``TaskModel``); for other modules
    every trainable parameter counts as the PLM's.
    """
    role_of = _role_function(model)
    total = trainable = 0
    by_role: Counter[str] = Counter()
    for name, parameter in unique_parameters(model):
        n = parameter.numel()
        total += n
        if parameter.requires_grad:
            trainable += n
            by_role[role_of(name, parameter)] += n
    return ParameterCount(trainable, total, _ordered(by_role))


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every distinct parameter tensor of ``model`` once, under the first name that reaches it,
    followed by those that delta methods keep outside the module tree (if any)."""
    seen: set[Any] = set()
    out = []
    for name, parameter in model.named_parameters(remove_duplicate=False):
        key = tensor_key(parameter)
        if key not in seen:
            seen.add(key)
            out.append((name, parameter))
    for name, parameter in _outside_parameters(model):
        key = tensor_key(parameter)
        if key not in seen:
            seen.add(key)
            out.append((name, parameter))
    return out


def tensor_key(tensor: torch.Tensor) -> Any:
    """What makes two parameters the same tensor: the same object, or the same memory viewed
    the same way (two Parameter objects wrapping one storage count once)."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta or otherwise storage-less tensors
        pointer = 0
    if not pointer:
        return ("object", id(tensor))
    return ("memory", tensor.device, pointer, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _outside_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Parameters a delta method holds itself instead of registering them in the model (a
    method object that is a module, or keeps modules or parameters as attributes)."""
    for index, method in enumerate(getattr(model, "methods", None) or []):
        label = f"methods.{getattr(method, 'name', index)}"
        if isinstance(method, nn.Module):
            for name, parameter in method.named_parameters():
                yield f"{label}.{name}", parameter
            continue
        for attribute, value in sorted(vars(method).items()):
            if isinstance(value, nn.Parameter):
                yield f"{label}.{attribute}", value
            elif isinstance(value, nn.Module) and value is not model:
                for name, parameter in value.named_parameters():
                    yield f"{label}.{attribute}.{name}", parameter


def _role_function(model: nn.Module) -> RoleOf:
    role_of = getattr(model, "role_of", None)
    if callable(role_of):
        return lambda name, parameter: str(role_of(name, parameter)[0])
    return lambda name, parameter: "plm"


def _ordered(by_role: Counter[str]) -> dict[str, int]:
    known = [r for r in ROLE_ORDER if by_role.get(r)]
    other = sorted(r for r in by_role if r not in ROLE_ORDER and by_role[r])
    return {r: by_role[r] for r in known + other}


# ----------------------------------------------------------------------------- tree view

@dataclass
class _Node:
    name: str
    kind: str
    params: int = 0  # parameters first reached in this subtree (shared ones count where first seen)
    trainable: int = 0
    roles: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)
    signature: Any = None
    count: int = 1  # > 1: a collapsed run of identical blocks
    each: int = 0  # parameters of one block of a collapsed run
    hidden: int = 0  # modules below max_depth, not shown


class _Builder:
    """Walks the module tree once, giving each tensor to the first module that reaches it (the
    same order as ``named_parameters``), so the counts of children add up to their parent's."""

    def __init__(self, role_of: RoleOf | None):
        self.role_of = role_of
        self.owner: dict[Any, str] = {}
        self.modules: dict[int, str] = {}

    def build(self, module: nn.Module, name: str, path: str) -> _Node:
        node = _Node(name, describe(module))
        if id(module) in self.modules:
            node.kind += f"  = {self.modules[id(module)] or '(root)'}"
            node.signature = ("alias", type(module).__name__)
            return node
        self.modules[id(module)] = path
        direct = []
        own: list[_Node] = []  # a line per parameter, shown when the module also has children
        for pname, parameter in module._parameters.items():
            if parameter is None:
                continue
            full = f"{path}.{pname}" if path else pname
            key = tensor_key(parameter)
            line = _Node(f".{pname}", "Parameter" + str(list(parameter.shape)).replace(" ", ""))
            own.append(line)
            if key in self.owner:
                node.notes.append(f"{pname} = {self.owner[key]}")
                line.notes.append(f"= {self.owner[key]}")
                direct.append((pname, "shared"))
                continue
            self.owner[key] = full
            n = parameter.numel()
            line.params = n
            role = None
            if parameter.requires_grad:
                line.trainable = n
                role = self.role_of(full, parameter) if self.role_of else "plm"
                line.roles[role] += n
            node.params += line.params
            node.trainable += line.trainable
            node.roles.update(line.roles)
            direct.append((pname, tuple(parameter.shape), str(parameter.dtype), parameter.requires_grad, role))
        for child_name, child in module._modules.items():
            if child is None:
                continue
            sub = self.build(child, child_name, f"{path}.{child_name}" if path else child_name)
            node.params += sub.params
            node.trainable += sub.trainable
            node.roles.update(sub.roles)
            node.children.append(sub)
        if own and node.children:
            # Parameters held directly next to submodules get a line of their own.
            node.notes = []  # the shared-weight notes move to those lines
            node.children = own + node.children
        node.signature = (
            node.kind,
            tuple(direct),
            tuple((c.name, c.signature) for c in node.children if not c.name.startswith(".")),
        )
        node.children = _collapse(node.children)
        return node


def _collapse(children: list[_Node]) -> list[_Node]:
    """Runs of consecutively numbered, identical siblings become one entry ``0-29 ×30``."""
    out: list[_Node] = []
    run: list[_Node] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            first = run[0]
            out.append(_Node(
                f"{first.name}-{run[-1].name} ×{len(run)}",
                first.kind,
                params=sum(r.params for r in run),
                trainable=sum(r.trainable for r in run),
                roles=sum((r.roles for r in run), Counter()),
                notes=first.notes,
                children=first.children,
                signature=first.signature,
                count=len(run),
                each=first.params,
            ))
        run.clear()

    for child in children:
        if (
            run
            and child.name.isdigit()
            and run[-1].name.isdigit()
            and int(child.name) == int(run[-1].name) + 1
            and child.signature == run[-1].signature
            and not child.notes
        ):
            run.append(child)
            continue
        flush()
        run.append(child)
    flush()
    return out


def describe(module: nn.Module) -> str:
    """A short name for a module's type, with its shape for the common leaf modules."""
    cls = type(module)
    kind = cls.__name__
    parts = cls.__module__.split(".")
    if parts[0] == "peft" and len(parts) > 2 and parts[1] == "tuners":
        kind = f"{parts[2]}.{kind}"  # lora.Linear, not to be confused with nn.Linear
    if isinstance(module, nn.Linear):
        bias = "" if module.bias is not None else ", no bias"
        return f"{kind}({module.in_features}→{module.out_features}{bias})"
    if isinstance(module, nn.Embedding):
        return f"{kind}({module.num_embeddings}, {module.embedding_dim})"
    if isinstance(getattr(module, "nx", None), int) and isinstance(getattr(module, "nf", None), int):
        return f"{kind}({module.nx}→{module.nf})"  # transformers' Conv1D (GPT-2)
    if isinstance(module, nn.LayerNorm):
        shape = ",".join(map(str, module.normalized_shape))
        return f"{kind}({shape})"
    weight = module._parameters.get("weight")
    if not module._modules and kind.endswith("Norm") and weight is not None:
        return f"{kind}({','.join(map(str, weight.shape))})"  # RMSNorm & co: the size, not eps
    if not module._modules:
        try:
            extra = module.extra_repr()
        except Exception:  # a third-party extra_repr should never break the view
            extra = ""
        extra = " ".join(extra.split()).replace(", inplace=False", "")
        if not extra:  # no description of its own (HF's Conv1D, RMSNorm): its weights' shapes
            extra = ", ".join("×".join(map(str, p.shape)) for p in module._parameters.values() if p is not None)
        if extra:
            extra = extra if len(extra) <= 40 else extra[:39] + "…"
            return f"{kind}({extra})"
    return kind


def _limit(node: _Node, depth: int, max_depth: int | None) -> None:
    if max_depth is not None and depth >= max_depth and node.children:
        node.hidden = _module_count(node.children)
        node.children = []
        return
    for child in node.children:
        _limit(child, depth + 1, max_depth)


def _drop_empty_leaves(node: _Node) -> None:
    """Bottom-up, so a container left holding only dropouts goes too."""
    for child in node.children:
        _drop_empty_leaves(child)
    node.children = [c for c in node.children if c.children or c.params or c.notes]


def _module_count(nodes: list[_Node]) -> int:
    return sum(1 + _module_count(n.children) for n in nodes if not n.name.startswith("."))


def human(n: int) -> str:
    """1234567 -> '1.2M'; small counts stay exact."""
    if n < 1000:
        return str(n)
    for power, unit in ((1, "K"), (2, "M"), (3, "B")):
        value = n / 1000**power
        if round(value, 1) < 1000 or unit == "B":
            return f"{value:.1f}{unit}"
    raise AssertionError  # pragma: no cover


def _percent(value: float) -> str:
    if value == 0 or value >= 1:
        return f"{value:.2f}%"
    return f"{value:.2g}%" if value >= 0.001 else f"{value:.1e}%"


def structure(
    model: nn.Module,
    max_depth: int | None = None,
    *,
    roles: bool | None = None,
    show_empty: bool = False,
) -> str:
    """The module tree of ``model`` with parameter and trainable counts per module.

    Counts are distinct tensors: a tied weight counts where it is first reached and later
    places say ``weight = <that name>``; a module reached twice says ``= <its first path>``.
    Identical consecutively numbered blocks collapse into one entry (``0-29 ×30``) whose counts
    are the run's total; the subtree shown under it is one block. ``max_depth`` hides modules
    deeper than that many levels below the root (their parameters still count). ``roles``:
    show the roles of trainable parameters (default: when the model has ``role_of``).
    ``show_empty``: also list leaf modules without parameters (dropout, activations).
    """
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth cannot be negative, got {max_depth}")
    role_of = _role_function(model) if callable(getattr(model, "role_of", None)) else None
    show_roles = role_of is not None if roles is None else roles
    builder = _Builder(role_of)
    root = builder.build(model, "", "")
    outside = [(n, p) for n, p in _outside_parameters(model) if tensor_key(p) not in builder.owner]
    if not show_empty:
        _drop_empty_leaves(root)
    _limit(root, 0, max_depth)

    rows: list[tuple[str, str, str, str, str]] = []

    def visit(node: _Node, prefix: str, connector: str) -> None:
        label = node.kind if not node.name else f"{node.name}: {node.kind}"
        notes = list(node.notes)
        if node.count > 1:
            notes.insert(0, f"each {human(node.each)}")
        if node.hidden:
            notes.append(f"+{node.hidden} modules below")
        role_text = ",".join(_ordered(node.roles)) if show_roles and node.trainable else ""
        rows.append((
            prefix + connector + label,
            human(node.params),
            human(node.trainable) if node.trainable else "-",
            role_text,
            "; ".join(notes),
        ))
        inner = prefix + ("" if not connector else ("   " if connector == "└─ " else "│  "))
        for i, child in enumerate(node.children):
            visit(child, inner, "└─ " if i == len(node.children) - 1 else "├─ ")

    visit(root, "", "")
    for name, parameter in outside:
        trainable = parameter.numel() if parameter.requires_grad else 0
        role = role_of(name, parameter) if (role_of and trainable and show_roles) else ""
        rows.append((f"{name} (held by the method)", human(parameter.numel()),
                     human(trainable) if trainable else "-", role, ""))

    width = min(max(len(r[0]) for r in rows), 72)
    header = ("module", "params", "trainable", "role" if show_roles else "", "")
    lines = []
    for label, params, trainable, role, note in [header, *rows]:
        label = label if len(label) <= width else label[: width - 1] + "…"
        line = f"{label:<{width}}  {params:>8}  {trainable:>9}"
        if show_roles:
            line += f"  {role:<10}"
        if note:
            line += f"  {note}"
        lines.append(line.rstrip())
    return "\n".join(lines)


__all__ = ["ParameterCount", "count_parameters", "describe", "human", "structure", "unique_parameters"]
