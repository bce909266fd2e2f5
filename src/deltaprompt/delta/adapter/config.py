from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig

Variant = Literal["houlsby", "pfeiffer"]
Position = Literal["attention", "cross_attention", "ffn"]
POSITIONS: dict[str, tuple[Position, ...]] = {
    "houlsby": ("attention", "ffn"),  # after the attention and the feed-forward sub-layers
    "pfeiffer": ("ffn",),  # half the adapters, as good on GLUE (Pfeiffer et al. 2021)
}


@dataclass
class AdapterConfig(DeltaConfig):
    """Where the adapters go and how wide they are; defaults are the papers'.

    Each adapter maps a sub-layer's output projection ``h`` to ``h + up(f(down(h)))`` before
    the residual connection. ``positions`` overrides the variant's sites: "attention" (self-
    attention output projection), "cross_attention" (an encoder-decoder's second attention)
    and "ffn" (feed-forward output projection). ``train_layer_norm``: None follows the
    variant (Houlsby et al. also train every layer norm; Pfeiffer et al. do not).
    """

    variant: Variant = "pfeiffer"
    """Pfeiffer et al. matched Houlsby's accuracy with one adapter per layer instead of two."""
    reduction_factor: int = 16
    """Bottleneck = hidden size // reduction_factor; 16 is Pfeiffer et al.'s choice."""
    bottleneck: int | None = None
    """An explicit bottleneck width, overriding ``reduction_factor``."""
    positions: list[Position] | None = None
    non_linearity: Literal["relu", "gelu", "swish"] = "relu"
    """Pfeiffer et al. use ReLU inside the bottleneck."""
    train_layer_norm: bool | None = None
    lr: float | None = 1e-4
    """Pfeiffer et al. (AdapterFusion) train adapters at 1e-4 (Houlsby et al. searched 3e-5..3e-3)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be a positive integer, got {self.reduction_factor}")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive integer, got {self.bottleneck}")
        if self.positions is not None:
            if not self.positions:
                raise ValueError("positions is an empty list; give sites or null for the variant's")
            if len(set(self.positions)) != len(self.positions):
                raise ValueError(f"positions lists a site twice: {self.positions}")

    @property
    def sites(self) -> tuple[Position, ...]:
        """The positions adapters go to: the override, else the variant's."""
        return tuple(self.positions) if self.positions is not None else POSITIONS[self.variant]

    @property
    def trains_layer_norm(self) -> bool:
        return self.variant == "houlsby" if self.train_layer_norm is None else self.train_layer_norm

    def width(self, hidden: int) -> int:
        """The bottleneck width for a model of ``hidden`` features."""
        return self.bottleneck if self.bottleneck is not None else max(1, hidden // self.reduction_factor)
