"""BitFit on any family, the HF model's class and forward untouched.

Bias terms are found by their role, not by model: every parameter registered under the name
``bias`` (linear layers, ``Conv1D``, LayerNorms, BERT's output bias). For models whose linear
layers have none (Llama, T5), ``add_missing`` gives each linear layer except the output
embedding (a vocabulary-wide prior, tied to the input embeddings) a zero bias:
``nn.Linear`` already adds ``self.bias`` when it is set, so predictions start unchanged and the
biases get the same names on a freshly loaded model, which is what saved weights load by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..adapter.layer import is_norm
from ..base import DeltaMethod
from .config import BitFitConfig

if TYPE_CHECKING:
    from ...model import TaskModel


def add_missing_biases(model: nn.Module) -> list[str]:
    """Give every frozen ``nn.Linear`` without a bias a zero one, except the output embedding;
    the names of the modules changed. Layers another method trains (LoRA's) are left alone."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    added = []
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and module.bias is None
            and module is not output
            and not module.weight.requires_grad
        ):
            weight = module.weight
            zeros = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
            module.bias = nn.Parameter(zeros, requires_grad=False)  # frozen like the rest, until chosen
            added.append(name)
    return added


def bias_terms(model: nn.Module) -> list[nn.Parameter]:
    """Parameters named ``bias`` that no other method trains yet (each tensor once)."""
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias" and not p.requires_grad]


def norm_weights(model: nn.Module) -> list[nn.Parameter]:
    """The gains of every LayerNorm/RMSNorm that no other method trains yet."""
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if is_norm(module) and isinstance(weight, nn.Parameter) and not weight.requires_grad:
            found[id(weight)] = weight
    return list(found.values())


class BitFit(DeltaMethod):
    name = "bitfit"
    config_class = BitFitConfig
    config: BitFitConfig
    order = 50

    def apply(self, task: TaskModel) -> None:
        model = task.model
        if self.config.add_missing:
            add_missing_biases(model)
        trained = bias_terms(model)
        if not trained:
            raise ValueError(
                f"{type(model).__name__} has no bias terms to train; set add_missing: true to give its "
                "linear layers zero-initialised biases"
            )
        if self.config.train_layer_norm:
            trained += norm_weights(model)
        for parameter in trained:
            parameter.requires_grad_(True)
        task.claim(trained, "delta", self.config.lr)
