from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..base import DeltaConfig

PromptInit = Literal["vocab", "text", "random"]


@dataclass
class PromptTuningConfig(DeltaConfig):
    """Soft tokens prepended to the template; nothing else trains.

    ``num_tokens``: how many. 20, because Lester et al. found little gain beyond 20 tokens
    except for the smallest models (their default runs used 100). 0 trains the template's own
    soft tokens instead (``{"soft": ...}`` blocks placed anywhere), and needs some.
    ``init``: how the prepended tokens start. "vocab" (default): embeddings of tokens drawn from
    the 5,000 most common ones, Lester et al.'s best task-agnostic choice (without a frequency
    list, the first 5,000 ordinary ids stand in: BPE and SentencePiece vocabularies are roughly
    frequency-ordered). "text": embeddings of ``init_text``'s tokens, cycled or cut to
    ``num_tokens`` (their class-label init is this with the label words as text). "random":
    normal vectors at the scale of the embedding matrix (their worst choice).
    ``lr``: 3e-2, the usual rate for soft prompts with AdamW; Lester et al. used 0.3 with
    Adafactor, whose updates are relative to the parameters' scale.
    """

    num_tokens: int = 20
    init: PromptInit = "vocab"
    init_text: str | None = None
    lr: float | None = 3e-2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise ValueError(f"num_tokens must be a non-negative integer, got {self.num_tokens!r}")
        if self.init not in ("vocab", "text", "random"):
            raise ValueError(f"init must be 'vocab', 'text' or 'random', got {self.init!r}")
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise ValueError("init='text' needs init_text, the text whose token embeddings start the prompt")
        if self.init_text is not None and self.init != "text":
            raise ValueError(f"init_text is only read with init='text' (init is {self.init!r})")
        if self.num_tokens == 0 and self.init != "vocab":
            raise ValueError(
                "init applies to the prepended tokens; with num_tokens=0 the template's own soft "
                "blocks say how they start ({\"soft\": \"text\"} or {\"soft\": None})"
            )
