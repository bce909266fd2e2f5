from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig


@dataclass
class IntrinsicConfig(DeltaConfig):
    """The subspace: its dimension, the random projection into each weight, and which weights.

    ``target``: a regular expression searched in the PLM's parameter names (as in
    ``model.named_parameters()``, e.g. ``layers\\.\\d+\\.mlp``); None: every weight, bias and
    norm of the PLM except the embedding tables (input, position and output embeddings: the
    largest tensors of small models, where a shared random direction mostly perturbs rare
    words' rows). Parameters another method already trains are never targets.
    """

    dimension: int = 500
    """d, the number of trained coordinates (Aghajanyan et al. find d90 of a few hundred to a
    few thousand for RoBERTa on GLUE tasks)."""
    projection: Literal["fastfood", "sparse"] = "fastfood"
    """The paper's Fastfood transform, or a very sparse random matrix."""
    said: bool = True
    """Structure-aware intrinsic dimension: one trained scale per target tensor (the paper's
    best variant). These scales come on top of ``dimension``."""
    seed: int = 0
    """Seeds the projections (each tensor's from this and its name), never the global RNG, so
    re-applying the method to a freshly loaded model gives the same P."""
    target: str | None = None
    lr: float | None = 3e-2
    """T-Few's rate for SAID (Liu et al. 2022); one coordinate of z moves whole tensors, and
    Adam's steps are about lr per coordinate."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dimension < 1:
            raise ValueError(f"dimension must be a positive integer, got {self.dimension}")
        if self.target is not None:
            try:
                re.compile(self.target)
            except re.error as exc:
                raise ValueError(f"target is not a valid regular expression: {exc}") from None
