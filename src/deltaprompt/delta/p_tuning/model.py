from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...model import SoftPrompt
from ...schema import ConfigError
from ...template import Template
from ..base import DeltaMethod
from ..prompt_tuning.model import prepend_soft_tokens
from .config import PTuningConfig
from .layer import PromptEncoder

if TYPE_CHECKING:
    from ...model import TaskModel


class PTuning(DeltaMethod):
    name = "p_tuning"
    config_class = PTuningConfig
    config: PTuningConfig
    order = 70  # after the methods that change the PLM; it only touches the soft tokens
    incompatible = ("prompt_tuning",)  # both own the soft tokens

    def rewrite_template(self, template: Template) -> Template:
        return prepend_soft_tokens(template, self.config.num_tokens, self.name)

    def apply(self, task: TaskModel) -> None:
        """Replace the soft-token table by an encoder whose input vectors start from it (the
        template's text or random initialisation)."""
        if task.soft_prompt is None:
            raise ConfigError(f"{self.name}: the model has no soft tokens to encode")
        with torch.no_grad():
            table = task.soft_prompt()
        encoder = PromptEncoder(table, self.config.encoder, self.config.hidden_size, self.config.dropout)
        encoder.train(task.training)
        task.soft_prompt = encoder
        task.claim(encoder.parameters(), "soft", self.config.lr)

    def fold(self, task: TaskModel) -> bool:
        """Swap the encoder for a plain table of its (eval-mode) output: same predictions, no
        encoder to run or store."""
        encoder = task.soft_prompt
        if not isinstance(encoder, PromptEncoder):
            return False
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            table = encoder().detach().clone()
        encoder.train(was_training)
        task.soft_prompt = SoftPrompt(table)
        task.claim(task.soft_prompt.parameters(), "soft", self.config.lr)
        return True
