"""Intrinsic-dimension subspace tuning: every targeted weight moves along a fixed random
projection of one small trained vector, theta = theta0 + P z (Aghajanyan et al. 2021; SAID adds
one trained scale per tensor)."""

from .config import IntrinsicConfig as Config
from .model import Intrinsic as Method

__all__ = ["Config", "Method"]
