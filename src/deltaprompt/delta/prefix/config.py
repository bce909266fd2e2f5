from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig


@dataclass
class PrefixConfig(DeltaConfig):
    """Deep prompts: ``num_virtual_tokens`` key/value pairs before every self-attention layer.

    Defaults follow P-Tuning v2 (Liu et al. 2022), whose classification runs on BERT and
    RoBERTa train the prefix alone with 8 to 20 virtual tokens (short prompts suit simple
    classification) at learning rates of 5e-3 to 1e-2, without re-parameterisation (its benefit
    was task-dependent). ``prefix_projection``: Li & Liang's (2021) MLP re-parameterisation,
    ``encoder_hidden_size`` wide (their 512), used in training only: ``fold`` replaces it with
    the prefix it computes. Li & Liang trained that setting at 5e-5 with 10 virtual tokens on
    GPT-2, so lower ``lr`` with it. ``encoder_prefix``: encoder-decoder models get a prefix in
    the encoder as well as in the decoder, as in Li & Liang's BART set-up; PEFT prefixes only
    the decoder, so such a model exports no PEFT adapter.
    ``init``: how the prefix starts on masked and decoder LMs without ``prefix_projection``.
    "vocab" (default): the keys/values the model itself computes for ``num_virtual_tokens``
    common tokens, so training starts from a prefix the model can read (Li & Liang found
    real-word activations far better than random ones with little data; a random prefix at
    PEFT's N(0, 1) scale starts by scrambling every layer's attention). "text": the same for
    the tokens of ``init_text`` (cycled or cut to ``num_virtual_tokens``). "random": PEFT's
    initialisation (always the case with ``prefix_projection`` and for encoder-decoders).
    """

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int = 512
    encoder_prefix: bool = True
    init: Literal["vocab", "text", "random"] = "vocab"
    init_text: str | None = None
    lr: float | None = 1e-2
    """P-Tuning v2's rate for prefixes trained alone (its scripts use 5e-3 to 1e-2): they start
    random and are few, so they need far larger steps than fine-tuning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be positive, got {self.num_virtual_tokens}")
        if self.encoder_hidden_size < 1:
            raise ValueError(f"encoder_hidden_size must be positive, got {self.encoder_hidden_size}")
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise ValueError("init='text' needs init_text, the text whose keys/values start the prefix")
        if self.init_text is not None and self.init != "text":
            raise ValueError(f"init_text is only read with init='text' (init is {self.init!r})")
