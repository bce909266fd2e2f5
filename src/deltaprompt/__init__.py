"""deltaprompt: prompt learning and delta tuning for pretrained language models."""

from .classifier import HeadClassifier, PromptClassifier, load
from .data import (
    Example,
    few_shot_split,
    from_hf_dataset,
    load_examples,
    load_task,
    sample_per_class,
)
from .metrics import Evaluation
from .model import PromptModel
from .plm import PLM, load_plm
from .structure import count_parameters, structure
from .template import Template, TemplateError, register_post_processor
from .tokenization import PromptTokenizer
from .trainer import TrainConfig, Trainer
from .verbalizer import Verbalizer

__version__ = "0.1.0"
__all__ = [
    "PLM",
    "Evaluation",
    "Example",
    "HeadClassifier",
    "PromptClassifier",
    "PromptModel",
    "PromptTokenizer",
    "Template",
    "TemplateError",
    "TrainConfig",
    "Trainer",
    "Verbalizer",
    "count_parameters",
    "few_shot_split",
    "from_hf_dataset",
    "load",
    "load_examples",
    "load_plm",
    "load_task",
    "register_post_processor",
    "sample_per_class",
    "structure",
]
