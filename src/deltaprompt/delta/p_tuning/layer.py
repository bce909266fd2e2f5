"""P-Tuning's prompt encoder, a drop-in for ``SoftPrompt``: ``forward()`` gives the table."""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderKind


class PromptEncoder(nn.Module):
    """Trainable input vectors, one per soft token of the template, run through a network.

    LSTM (the paper): a bidirectional 2-layer LSTM over all the tokens as one sequence (so each
    depends on the others, in template order), then Linear-ReLU-Linear back to the embedding
    size. MLP: Linear-ReLU-Linear on each token alone. Rows stay one per distinct soft token,
    so slots sharing a ``soft_id`` still share their vector.
    """

    def __init__(self, table: torch.Tensor, kind: EncoderKind = "lstm", hidden_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        dim = table.size(1)
        hidden = hidden_size or dim
        # float32 whatever the PLM's dtype: a few small matrices, trained from scratch.
        self.embedding = nn.Parameter(table.detach().clone().float())
        self.lstm: nn.LSTM | None = None
        if kind == "lstm":
            if hidden % 2:
                raise ValueError(f"the bidirectional LSTM needs an even hidden size, got {hidden}")
            self.lstm = nn.LSTM(dim, hidden // 2, num_layers=2, dropout=dropout, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        elif kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        else:
            raise ValueError(f"encoder must be 'lstm' or 'mlp', got {kind!r}")
        self.to(table.device)

    def forward(self) -> torch.Tensor:
        vectors = self.embedding
        if self.lstm is not None:
            vectors = self.lstm(vectors[None])[0][0]
        return self.mlp(vectors)
