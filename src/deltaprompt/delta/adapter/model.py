from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..base import DeltaMethod
from .config import AdapterConfig
from .layer import AdapterHook, Bottleneck, find_sites, first_weight, hidden_size, is_norm, site_key

if TYPE_CHECKING:
    from ...model import TaskModel


class Adapter(DeltaMethod):
    """Adds ``task.adapters`` (a ModuleDict keyed by the adapted projection's path, dots as
    dashes: ``adapters.bert-encoder-layer-0-output-dense.down.weight``) and hooks each adapter
    onto its projection's output, before the residual add. Re-applying the method to a freshly
    loaded PLM gives the same names, so saved adapters load by name."""

    name = "adapter"
    config_class = AdapterConfig
    config: AdapterConfig
    order = 40

    def __init__(self, config: AdapterConfig | None = None):
        super().__init__(config)
        self.handles: list[RemovableHandle] = []

    def apply(self, task: TaskModel) -> None:
        if "adapters" in task._modules or hasattr(task, "adapters"):
            raise ValueError("this task model already has adapters")
        config = self.config
        model = task.model
        hidden = hidden_size(model)
        adapters = nn.ModuleDict()
        sites = find_sites(model, config.sites)
        for path, projection in sites:
            weight = first_weight(projection)
            adapters[site_key(path)] = Bottleneck(
                hidden, config.width(hidden), config.non_linearity, device=weight.device, dtype=weight.dtype
            )
        task.adapters = adapters
        for path, projection in sites:
            self.handles.append(projection.register_forward_hook(AdapterHook(adapters[site_key(path)])))
        trained = list(adapters.parameters())
        if config.trains_layer_norm:
            norms = [p for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)]
            trained += [p.requires_grad_(True) for p in norms if not p.requires_grad]
        task.claim(trained, "delta", config.lr)
