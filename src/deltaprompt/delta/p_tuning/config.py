from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig

EncoderKind = Literal["lstm", "mlp"]


@dataclass
class PTuningConfig(DeltaConfig):
    """The template's soft tokens, produced by a prompt encoder.

    ``num_tokens``: 0 (default) encodes the template's own soft tokens, since P-Tuning places
    prompts around the input in the template (LAMA: three blocks of three); N > 0 prepends N
    more, as prompt tuning does.
    ``encoder``: "lstm", the paper's bidirectional 2-layer LSTM followed by a 2-layer MLP;
    "mlp", a 2-layer MLP alone (cheaper; the token vectors no longer see one another).
    ``hidden_size``: the encoder's width; None uses the PLM's embedding size, as the paper's code.
    ``dropout``: between the LSTM's layers; 0.0 as in the paper's code.
    ``lr``: 1e-4, the paper's few-shot SuperGLUE rate (its LAMA runs with a frozen PLM used
    1e-5 with Adam; short frozen-PLM runs often need 1e-3).
    """

    num_tokens: int = 0
    encoder: EncoderKind = "lstm"
    hidden_size: int | None = None
    dropout: float = 0.0
    lr: float | None = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise ValueError(f"num_tokens must be a non-negative integer, got {self.num_tokens!r}")
        if self.encoder not in ("lstm", "mlp"):
            raise ValueError(f"encoder must be 'lstm' or 'mlp', got {self.encoder!r}")
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")
        if self.hidden_size is not None and self.encoder == "lstm" and self.hidden_size % 2:
            raise ValueError(
                f"hidden_size must be even for the bidirectional LSTM (half per direction), got {self.hidden_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
