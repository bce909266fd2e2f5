"""Bottleneck adapters: small trained networks inside every frozen transformer layer (Houlsby et
al. 2019: after attention and after the feed-forward network; Pfeiffer et al. 2021: after the
feed-forward network only)."""

from .config import AdapterConfig as Config
from .model import Adapter as Method

__all__ = ["Config", "Method"]
