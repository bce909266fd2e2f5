"""P-Tuning (Liu et al. 2021, "GPT Understands, Too"): the template's soft tokens come out of a
small prompt encoder (LSTM or MLP) over trainable input vectors, which makes them depend on one
another and trains more stably than free vectors."""

from .config import PTuningConfig as Config
from .model import PTuning as Method

__all__ = ["Config", "Method"]
