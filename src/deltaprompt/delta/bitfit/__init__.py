"""BitFit: only the bias terms train (Ben Zaken et al. 2022); models without biases get
zero-initialised ones on their linear layers."""

from .config import BitFitConfig as Config
from .model import BitFit as Method

__all__ = ["Config", "Method"]
