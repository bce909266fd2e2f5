from __future__ import annotations

from dataclasses import dataclass

from ..base import DeltaConfig


@dataclass
class BitFitConfig(DeltaConfig):
    """Which parameters train besides the biases (LayerNorm biases are biases, so they always do).

    ``train_layer_norm``: also the norms' gains (LayerNorm/RMSNorm weights); off in BitFit
    proper, on in T-Few's BitFit for T5, whose RMS norms have no bias. ``add_missing``: give
    every linear layer without a bias (all of Llama's and T5's) a zero-initialised one, as T-Few
    did for T5; off, a model with no bias terms at all is refused.
    """

    train_layer_norm: bool = False
    add_missing: bool = True
    lr: float | None = 1e-3
    """The BitFit reference code's default (the paper searched 1e-4..1e-3): biases move little
    per step, so they take a rate ten times full fine-tuning's."""
