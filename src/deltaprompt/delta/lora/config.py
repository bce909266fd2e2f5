from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig


@dataclass
class LoraConfig(DeltaConfig):
    """Options passed on to ``peft.LoraConfig``; defaults are Hu et al.'s and PEFT's.

    ``r``: rank of each update; ``alpha``: its scale is ``alpha / r`` (``alpha / sqrt(r)``
    with ``use_rslora``, Kalajdzievski 2023, which keeps high ranks from learning slower);
    ``dropout``: on the update's input. ``target_modules``: module-name suffixes, or one
    regular expression full-matched against module names (both exactly as PEFT reads them);
    None: PEFT's default for the architecture, else the attention query and value
    projections found in the model. ``use_dora``: split each update into magnitude and
    direction (Liu et al. 2024). ``bias``: also train no biases, all, or those of the
    adapted layers.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | str | None = None
    use_dora: bool = False
    use_rslora: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    lr: float | None = 5e-4
    """Hu et al. trained LoRA on RoBERTa-base GLUE at 4e-4 to 5e-4, far above full fine-tuning's
    rates because the update starts at zero and has few parameters."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise ValueError(f"r must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is an empty list; give module names, a regex, or null for the default")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ValueError("target_modules is an empty string; give a regex, module names, or null")
            try:
                re.compile(self.target_modules)
            except re.error as exc:
                raise ValueError(f"target_modules is not a valid regular expression: {exc}") from None
