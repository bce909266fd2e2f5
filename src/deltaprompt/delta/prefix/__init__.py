"""Prefix tuning / P-Tuning v2: trainable keys and values before every layer's own (Li & Liang
2021; Liu et al. 2022), parameterised by PEFT's ``PrefixEncoder``."""

from .config import PrefixConfig as Config
from .model import PrefixTuning as Method

__all__ = ["Config", "Method"]
