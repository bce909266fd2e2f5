"""Prompt tuning (Lester et al. 2021): a block of soft tokens in front of the input is the only
thing that trains; the PLM stays frozen."""

from .config import PromptTuningConfig as Config
from .model import PromptTuning as Method

__all__ = ["Config", "Method"]
