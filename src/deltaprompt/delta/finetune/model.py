from __future__ import annotations

from typing import TYPE_CHECKING

from ..base import DeltaMethod
from .config import FinetuneConfig

if TYPE_CHECKING:
    from ...model import TaskModel


class Finetune(DeltaMethod):
    name = "finetune"
    config_class = FinetuneConfig
    config: FinetuneConfig
    order = 30  # after PEFT injections, which freeze whatever is not theirs
    incompatible = ("lora", "adapter", "bitfit", "intrinsic")  # they exist to avoid this

    def apply(self, task: TaskModel) -> None:
        parameters = list(task.model.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        if self.config.freeze_embeddings:
            task.model.get_input_embeddings().weight.requires_grad_(False)
        task.claim((p for p in parameters if p.requires_grad), "plm", self.config.lr)
