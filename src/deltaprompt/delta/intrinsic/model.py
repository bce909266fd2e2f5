"""Intrinsic-dimension tuning through ``torch.nn.utils.parametrize``.

Every target weight becomes ``theta0 + P_i z`` wherever it is read, inside or outside its
module's forward (the scoring code reads the output embedding directly), and a weight shared by
two modules (tied embeddings) gets the same parametrisation in both. ``theta0`` stays frozen
(under ``...parametrizations.weight.original``); the trained tensors are ``intrinsic.z`` and,
with SAID, ``intrinsic.scales``. Each projection is rebuilt from the config's seed and the
tensor's name, so a freshly loaded PLM with the method applied takes the saved z as is.

There is no folded form: baking ``P z`` into the weights would leave nothing to save, since
the weights themselves are not saved. Costs per training step: one projection and one
transposed projection per target tensor (O(D log d) with Fastfood), and the full weight
gradients that backpropagation computes before projecting them onto z.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..base import DeltaMethod
from .config import IntrinsicConfig
from .layer import Fastfood, Projection, SparseProjection, Subspace, SubspaceDelta

if TYPE_CHECKING:
    from ...model import TaskModel

PROJECTIONS: dict[str, type[Projection]] = {"fastfood": Fastfood, "sparse": SparseProjection}


def embedding_tables(model: nn.Module) -> set[int]:
    """Ids of the embedding tables' parameters: every ``nn.Embedding`` and the output embedding."""
    modules = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        modules.append(output)
    return {id(p) for m in modules for p in m.parameters(recurse=False)}


def select_targets(model: nn.Module, pattern: str | None) -> list[tuple[str, nn.Parameter]]:
    """Frozen floating-point parameters whose name matches ``pattern`` (None: all but the
    embedding tables), each tensor once, in the model's order."""
    excluded = embedding_tables(model) if pattern is None else set()
    targets = [
        (name, p)
        for name, p in model.named_parameters()
        if not p.requires_grad
        and p.is_floating_point()
        and id(p) not in excluded
        and (pattern is None or re.search(pattern, name))
    ]
    if not targets:
        what = f"matching {pattern!r}" if pattern is not None else "outside the embeddings"
        raise ValueError(f"intrinsic: {type(model).__name__} has no frozen parameter {what} to reparametrise")
    return targets


def parameter_owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """For each parameter, every (module, attribute) holding it: tied weights have two."""
    owners: dict[int, list[tuple[nn.Module, str]]] = defaultdict(list)
    for module in model.modules():
        for attribute, parameter in module.named_parameters(recurse=False, remove_duplicate=False):
            owners[id(parameter)].append((module, attribute))
    return owners


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the config's seed and a tensor's name (stable across processes,
    unlike ``hash``), so each tensor's projection is independent of which others are targets."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def build_projection(kind: str, numel: int, dimension: int, seed: int, name: str) -> Projection:
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    return PROJECTIONS[kind](numel, dimension, generator)


class Intrinsic(DeltaMethod):
    name = "intrinsic"
    config_class = IntrinsicConfig
    config: IntrinsicConfig
    order = 60  # last: it reparametrises whatever the other methods left frozen

    def __init__(self, config: IntrinsicConfig | None = None):
        super().__init__(config)
        self.target_names: list[str] = []

    def apply(self, task: TaskModel) -> None:
        if "intrinsic" in task._modules or hasattr(task, "intrinsic"):
            raise ValueError("this task model already has an intrinsic subspace")
        config = self.config
        model = task.model
        targets = select_targets(model, config.target)
        owners = parameter_owners(model)
        projections = [
            build_projection(config.projection, p.numel(), config.dimension, config.seed, name).to(p.device)
            for name, p in targets
        ]
        subspace = Subspace(config.dimension, projections, config.said, device=targets[0][1].device)
        task.intrinsic = subspace
        for index, (_, parameter) in enumerate(targets):
            delta = SubspaceDelta(subspace, index)
            for module, attribute in owners[id(parameter)]:
                parametrize.register_parametrization(module, attribute, delta, unsafe=True)
        self.target_names = [name for name, _ in targets]
        task.claim(subspace.parameters(), "delta", config.lr)
