"""LoRA: trainable low-rank updates beside frozen weight matrices (Hu et al. 2022), injected
by PEFT so the weights, the options (DoRA, rsLoRA) and the saved adapters are PEFT's own."""

from .config import LoraConfig as Config
from .model import Lora as Method

__all__ = ["Config", "Method"]
