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
from .generation import PromptForGeneration, generation_example
from .icl import ICLClassifier
from .metrics import Evaluation
from .model import PromptModel
from .multitask import (
    MixtureTask,
    MultitaskModel,
    TaskMixture,
    leave_one_out,
    load_delta,
    save_delta,
    train_mixture,
)
from .pet import PET, PVP, MaskedLMAuxiliary, ensemble_soft_labels
from .plm import PLM, load_plm
from .prompt_spec import Constraints, Exemplar, OutputFormat, PromptSpec, Turn
from .relation import RelationClassifier
from .search import LabelWordSearch, TemplateSearch, search_label_words, search_templates
from .span_ner import SpanTagger
from .spans import SpanError, entity_typing_examples, tagged_example
from .structure import count_parameters, structure
from .subprompts import SubPromptClassifier
from .tagging import Tagger, TaggingEvaluation
from .template import Template, TemplateError, register_post_processor
from .tokenization import PromptTokenizer
from .trainer import TrainConfig, Trainer
from .transfer import (
    SourcePrompt,
    compare_initialisations,
    init_from,
    load_soft_prompt,
    most_similar_source,
    prompt_pretrain_mlm,
    save_soft_prompt,
)
from .verbalizer import KnowledgeableVerbalizer, PrototypeVerbalizer, SoftVerbalizer, Verbalizer

__version__ = "0.1.0"
__all__ = [
    "PLM",
    "Constraints",
    "Evaluation",
    "Exemplar",
    "Example",
    "HeadClassifier",
    "ICLClassifier",
    "KnowledgeableVerbalizer",
    "LabelWordSearch",
    "MaskedLMAuxiliary",
    "MixtureTask",
    "MultitaskModel",
    "OutputFormat",
    "PET",
    "PVP",
    "PromptClassifier",
    "PromptForGeneration",
    "PromptModel",
    "PromptSpec",
    "PromptTokenizer",
    "PrototypeVerbalizer",
    "RelationClassifier",
    "SpanError",
    "SpanTagger",
    "SubPromptClassifier",
    "Tagger",
    "TaggingEvaluation",
    "TaskMixture",
    "Template",
    "TemplateError",
    "SoftVerbalizer",
    "SourcePrompt",
    "TemplateSearch",
    "TrainConfig",
    "Turn",
    "Trainer",
    "Verbalizer",
    "compare_initialisations",
    "count_parameters",
    "ensemble_soft_labels",
    "entity_typing_examples",
    "few_shot_split",
    "from_hf_dataset",
    "init_from",
    "leave_one_out",
    "generation_example",
    "load",
    "load_delta",
    "load_examples",
    "load_soft_prompt",
    "most_similar_source",
    "load_plm",
    "load_task",
    "prompt_pretrain_mlm",
    "register_post_processor",
    "sample_per_class",
    "search_label_words",
    "save_delta",
    "save_soft_prompt",
    "search_templates",
    "structure",
    "tagged_example",
    "train_mixture",
]
