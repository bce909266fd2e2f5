"""Full fine-tuning: every PLM weight trains (prompt-oriented fine-tuning with a template and
verbalizer, as in LM-BFF and PET; classic fine-tuning with a head)."""

from .config import FinetuneConfig as Config
from .model import Finetune as Method

__all__ = ["Config", "Method"]
