"""LoRA through PEFT, injected into the Hugging Face model in place.

``peft.get_peft_model`` wraps the model, but the wrapper is kept only as a plain attribute of
the method: ``task.model`` stays the same Hugging Face object the scoring code calls (now with
``lora.Linear`` layers), and its parameters appear once, under their own names, in
``task.named_parameters()``. The wrapper is what ``export`` saves from, so the adapter on disk
is exactly PEFT's. A task model that runs only T5's encoder (a classification head) gets no
LoRA in the decoder, which it never calls.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..base import DeltaMethod
from .config import LoraConfig

if TYPE_CHECKING:
    from peft import PeftModel

    from ...model import TaskModel

ADAPTER = "default"  # PEFT's adapter name; saved files carry no adapter name
# Conventional child names of attention projections (not model names): q/query/q_proj/q_lin...
_QUERY = re.compile(r"(q|query)(_proj|_lin)?", re.IGNORECASE)
_VALUE = re.compile(r"(v|value)(_proj|_lin)?", re.IGNORECASE)
_FUSED = re.compile(r".*(qkv|query_key_value|c_attn).*", re.IGNORECASE)
PEFT_TASK_TYPES = {"masked": "FEATURE_EXTRACTION", "causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


def _projection_types() -> tuple[type[nn.Module], ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layer

    return (nn.Linear, Conv1D)


def attention_projections(model: nn.Module) -> list[str]:
    """Names (suffixes) of the query and value projections of every attention block: linear
    children of one module named like a query and a value, or, for fused projections, the
    one producing queries, keys and values together."""
    linear = _projection_types()
    names: set[str] = set()
    for module in model.modules():
        children = [n for n, c in module.named_children() if isinstance(c, linear)]
        query = [n for n in children if _QUERY.fullmatch(n)]
        value = [n for n in children if _VALUE.fullmatch(n)]
        if query and value:
            names.update(query + value)
        else:
            names.update(n for n in children if _FUSED.fullmatch(n))
    if not names:
        raise ValueError(
            f"found no attention query/value projections in {type(model).__name__}; "
            "set target_modules (module-name suffixes or a regex)"
        )
    return sorted(names)


def default_targets(model: nn.Module) -> list[str] | None:
    """None when PEFT has a default for this architecture (it then picks), else the
    attention query/value projections found in the model."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return None
    return attention_projections(model)


class Lora(DeltaMethod):
    name = "lora"
    config_class = LoraConfig
    config: LoraConfig
    order = 10  # PEFT re-freezes everything that is not its own, so it comes first
    peft_format = True

    def __init__(self, config: LoraConfig | None = None):
        super().__init__(config)
        self.peft_model: PeftModel | None = None  # the wrapper, deliberately not a submodule

    def peft_config(self, model: nn.Module, skip: str | None = None) -> Any:
        """The ``peft.LoraConfig`` this method injects into ``model``, leaving out the module
        named ``skip`` and everything in it."""
        from peft import LoraConfig as PeftLoraConfig

        config = self.config
        targets = config.target_modules
        return PeftLoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(targets) if isinstance(targets, list) else targets or default_targets(model),
            exclude_modules=None if skip is None else rf"{re.escape(skip)}(\..*)?",
            use_dora=config.use_dora,
            use_rslora=config.use_rslora,
            bias=config.bias,
        )

    def apply(self, task: TaskModel) -> None:
        from peft import get_peft_model
        from peft.tuners.lora import LoraLayer

        model = task.model
        if any(isinstance(module, LoraLayer) for module in model.modules()):
            raise ValueError("this PLM already has LoRA layers (from another task model?); load a fresh one")
        with warnings.catch_warnings():
            # GPT-2's Conv1D: PEFT notices and transposes by itself.
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to False.*")
            # PEFT asking transformers about gradient checkpointing by its old name.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            config = self.peft_config(model, _unused_decoder(task))
            self.peft_model = get_peft_model(model, config, adapter_name=ADAPTER)
        if self.peft_model.get_base_model() is not model:
            raise RuntimeError("PEFT replaced the model instead of injecting LoRA into it")
        # PEFT left trainable exactly its own parameters (and biases, if asked).
        task.claim((p for p in model.parameters() if p.requires_grad), "delta", self.config.lr)

    def export(self, task: TaskModel, directory: Path) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT does, so
        ``PeftModel.from_pretrained(base_model, directory)`` loads them."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.peft_model is None:
            raise RuntimeError("lora has not been applied to a model yet")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.copy(self.peft_model.peft_config[ADAPTER])
        config.task_type = PEFT_TASK_TYPES.get(task.plm.family)
        config.inference_mode = True
        config.base_model_name_or_path = getattr(task.model, "name_or_path", None) or None
        config.save_pretrained(str(directory))
        # LoRA weights only: PEFT would also store a resized embedding matrix (a relation model's
        # entity markers grow it), tied to the LM head; the markers travel in our own artifact.
        state = get_peft_model_state_dict(self.peft_model, adapter_name=ADAPTER, save_embedding_layers=False)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
        return directory


def _unused_decoder(task: TaskModel) -> str | None:
    """The qualified name of an encoder-decoder's decoder when the task model runs only the
    encoder (a classification head on T5's encoder says so through its ``trunk()``): LoRA
    there would train parameters nothing uses."""
    model = task.model
    trunk = getattr(task, "trunk", None)
    if not model.config.is_encoder_decoder or not callable(trunk) or trunk() is not model.get_encoder():
        return None
    decoder = model.get_decoder()
    return next(name for name, module in model.named_modules() if module is decoder)
