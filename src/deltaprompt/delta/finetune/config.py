from __future__ import annotations

from dataclasses import dataclass

from ..base import DeltaConfig


@dataclass
class FinetuneConfig(DeltaConfig):
    """``freeze_embeddings``: keep the input embedding matrix fixed (it is the largest tensor
    of small models, and few-shot updates to rare rows are noise). ``lr``: None uses the
    trainer's PLM rate (LM-BFF: 1e-5)."""

    freeze_embeddings: bool = False
