"""Prefix tuning / P-Tuning v2 on any family, with PEFT's parameters and cache layout.

Every self-attention layer sees ``num_virtual_tokens`` trained key/value pairs before the
sequence's own. The pairs come from PEFT's ``PrefixEncoder`` and reach each layer through the
model's own cache (``cache.update`` puts them in front), so no attention code is rewritten:

- Masked LMs (BERT, RoBERTa): in transformers 5 (checked on 5.23, 5.24 and 5.25), ``BertModel`` and
  ``RobertaModel`` hand their cache to every self-attention layer even as encoders,
  accept an attention mask covering prefix + sequence, and start positions after the cache (as
  in P-Tuning v2's original code). So an input transform serves, as for decoder LMs. Masked
  LMs whose layers ignore the cache (DistilBERT, ALBERT, DeBERTa-v2 in 5.23) are detected when
  the method is applied and refused with a clear error.
- Decoder LMs (GPT-2, Llama with grouped-query attention): the same input transform; the
  mask gets the prefix's columns in front of any left padding, explicit ``position_ids`` move
  past the prefix (as PEFT does), and multi-token label words continue from the cache that
  already holds the prefix.
- Encoder-decoders (T5): the scoring code calls the encoder and builds the decoder call itself,
  so prefixes arrive by hooks: on the decoder stack (its native cache, as PEFT's prefix) and,
  since T5's encoder stack drops any cache, on each encoder self-attention module.

Key/value shapes are read by one probing pass with an empty cache, so grouped-query heads and
head sizes that differ from hidden / heads need no configuration. The hooks live on the PLM
itself, so a PLM serves one prefix-tuned encoder-decoder task model (a second is refused).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel

from ...kv_cache import CACHE_ARGUMENT
from ..base import DeltaMethod
from .config import PrefixConfig
from .layer import (
    DecoderPrefixHook,
    EncoderPrefixHooks,
    PrefixCache,
    PrefixInputs,
    PrefixKV,
    cache_attention_modules,
    cache_shapes,
)

if TYPE_CHECKING:
    from ...model import TaskModel

logger = logging.getLogger(__name__)
PEFT_TASK_TYPES = {"masked": "FEATURE_EXTRACTION", "causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


class PrefixTuning(DeltaMethod):
    name = "prefix"
    config_class = PrefixConfig
    config: PrefixConfig
    order = 20  # after PEFT injections (LoRA), which freeze whatever is not theirs
    peft_format = True  # for masked and decoder LMs; encoder-decoders export nothing

    def apply(self, task: TaskModel) -> None:
        """Add ``task.prefix`` (a ModuleDict: "encoder" and/or "decoder" -> PrefixKV, so the
        parameters are named ``prefix.<side>.prompt_encoder...``) and route it into the PLM.
        A task model running only T5's encoder (a classification head) gets no decoder prefix."""
        if hasattr(task, "prefix"):
            raise ValueError("this task model already has a prefix")
        model = task.model
        if any(isinstance(hook, DecoderPrefixHook) or _bound_to(hook, EncoderPrefixHooks)
               for module in model.modules() for hook in module._forward_pre_hooks.values()):
            raise ValueError("this PLM already carries prefix hooks (from another task model?); load a fresh one")
        device = next(model.parameters()).device
        prefixes = nn.ModuleDict()
        count = self.config.num_virtual_tokens
        family = task.plm.family
        if model.config.is_encoder_decoder:
            encoder_only = _runs_encoder_only(task)
            if encoder_only and not self.config.encoder_prefix:
                raise ValueError("this task model runs only the encoder, and encoder_prefix is false")
            if not encoder_only:
                prefixes["decoder"] = self._prefix(_decoder_shapes(model), family).to(device)
                model.get_decoder().register_forward_pre_hook(
                    DecoderPrefixHook(prefixes["decoder"], model), with_kwargs=True
                )
            if self.config.encoder_prefix:
                stack = model.get_encoder()
                attentions = cache_attention_modules(stack)
                prefixes["encoder"] = self._prefix(_encoder_shapes(model, stack, attentions), family).to(device)
                EncoderPrefixHooks(PrefixCache(prefixes["encoder"], model)).install(stack, attentions)
        else:
            side = "decoder" if family == "causal" else "encoder"
            prefixes[side] = self._prefix(_stack_shapes(model), family).to(device)
            self._init_from_tokens(task, prefixes[side])
            task.input_transforms.append(PrefixInputs(PrefixCache(prefixes[side], model), count))
            _leave_room(task, count)
        task.prefix = prefixes
        task.claim(prefixes.parameters(), "delta", self.config.lr)

    def _init_from_tokens(self, task: TaskModel, prefix: PrefixKV) -> None:
        """Start the prefix as the keys/values the PLM computes for real tokens (``init``)."""
        config = self.config
        if config.init == "random" or config.prefix_projection:
            return
        from ..prompt_tuning.model import common_token_ids

        tokenizer = task.plm.tokenizer
        count = config.num_virtual_tokens
        if config.init == "text":
            ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
            ids = (ids * (count // max(len(ids), 1) + 1))[:count]
        else:
            pool = common_token_ids(tokenizer, task.model.get_input_embeddings().weight.size(0))
            ids = [pool[i] for i in torch.randperm(len(pool))[:count].tolist()]
        model = task.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                ids_tensor = torch.tensor([ids], device=device)
                cache = DynamicCache()  # filled in place, by decoder and (BERT-style) encoder layers
                model(input_ids=ids_tensor, attention_mask=torch.ones_like(ids_tensor), **{CACHE_ARGUMENT: cache})
        finally:
            model.train(was_training)
        layers = getattr(cache, "layers", None)
        if not layers or len(layers) != prefix.peft_config.num_layers or getattr(layers[0], "keys", None) is None:
            logger.warning("the PLM returned no usable cache for prefix initialisation; the prefix starts random")
            return
        rows = [t[0] for layer in layers for t in (layer.keys, layer.values)]  # 2 x layers of (H, P, D)
        table = torch.stack(rows).permute(2, 0, 1, 3).reshape(count, -1)
        with torch.no_grad():
            prefix.prompt_encoder.embedding.weight.copy_(table)

    def _prefix(self, shapes: list[tuple[int, int]], family: str) -> PrefixKV:
        from peft import PrefixTuningConfig

        if len(set(shapes)) != 1:
            raise NotImplementedError(f"layers with different key/value shapes {sorted(set(shapes))}")
        heads, head_dim = shapes[0]
        config = PrefixTuningConfig(
            task_type=PEFT_TASK_TYPES[family],
            num_virtual_tokens=self.config.num_virtual_tokens,
            token_dim=heads * head_dim,
            num_attention_heads=heads,
            num_layers=len(shapes),
            num_transformer_submodules=1,
            encoder_hidden_size=self.config.encoder_hidden_size,
            prefix_projection=self.config.prefix_projection,
        )
        return PrefixKV(config)

    def fold(self, task: TaskModel) -> bool:
        """Replace the re-parameterising MLP by the prefix it computes (what PEFT saves); the
        predictions stay the same. The folded tables keep the role "delta"."""
        prefixes: nn.ModuleDict = task.prefix  # type: ignore[assignment]
        changed = any([prefix.fold() for prefix in prefixes.values()])
        if changed:
            task.claim(prefixes.parameters(), "delta", self.config.lr)
        return changed

    def export(self, task: TaskModel, directory: Path) -> Path | None:
        """A PEFT prefix-tuning adapter (``adapter_config.json``, ``adapter_model.safetensors``
        holding ``prompt_embeddings``, the computed prefix, as PEFT saves it). None for
        encoder-decoders: PEFT prefixes only their decoder, and lays it out differently."""
        from safetensors.torch import save_file

        if task.model.config.is_encoder_decoder:
            logger.warning("PEFT cannot represent prefixes of an encoder-decoder model this way; no adapter written")
            return None
        (prefix,) = task.prefix.values()  # type: ignore[union-attr]
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = copy.copy(prefix.peft_config)
        config.inference_mode = True
        config.base_model_name_or_path = getattr(task.model, "name_or_path", None) or None
        config.save_pretrained(str(directory))
        with torch.no_grad():
            table = prefix.table().detach().cpu().contiguous()
        save_file({"prompt_embeddings": table}, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
        return directory


# ----------------------------------------------------------------------------- probing

def _probe_ids(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    return ids, torch.ones_like(ids)


def _stack_shapes(model: PreTrainedModel) -> list[tuple[int, int]]:
    """Keys/values shapes per layer of a model that is not an encoder-decoder, from one pass
    with an empty cache; refuses a model that ignores the cache."""
    ids, mask = _probe_ids(model)
    cache = DynamicCache()
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **{CACHE_ARGUMENT: cache})
    except TypeError as exc:
        raise NotImplementedError(f"{type(model).__name__} does not take a cache: {exc}") from exc
    if not cache.layers:
        raise NotImplementedError(
            f"{type(model).__name__} ignores its cache argument (its layers keep no keys/values), "
            "so it cannot take prefixes"
        )
    return cache_shapes(cache)


def _decoder_shapes(model: PreTrainedModel) -> list[tuple[int, int]]:
    ids, mask = _probe_ids(model)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids, **{CACHE_ARGUMENT: cache})
    return cache_shapes(cache.self_attention_cache)


def _encoder_shapes(model: PreTrainedModel, stack: nn.Module, attentions: list[nn.Module]) -> list[tuple[int, int]]:
    if not attentions:
        raise NotImplementedError(
            f"found no self-attention modules taking a cache in {type(stack).__name__}; set encoder_prefix: false"
        )
    ids, mask = _probe_ids(model)
    cache = DynamicCache()
    handles = EncoderPrefixHooks(lambda batch_size: cache).install(stack, attentions)
    try:
        with torch.no_grad():
            stack(input_ids=ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    shapes = cache_shapes(cache)
    if len(shapes) != len(attentions):
        raise NotImplementedError(f"{len(attentions)} self-attention modules but {len(shapes)} cached layers")
    return shapes


def _bound_to(hook: Any, cls: type) -> bool:
    return isinstance(getattr(hook, "__self__", None), cls)


def _runs_encoder_only(task: Any) -> bool:
    """Whether the task model runs only an encoder-decoder's encoder (a classification head on
    T5's encoder says so through its ``trunk()``); a decoder prefix would then never be used."""
    trunk = getattr(task, "trunk", None)
    return callable(trunk) and trunk() is task.model.get_encoder()


def _leave_room(task: Any, count: int) -> None:
    """Positions start after the prefix, so a model with absolute positions (BERT, GPT-2)
    would run past its table on the longest inputs: shorten the task's prompt tokenizers'
    limit by the prefix length."""
    from ...tokenization import PromptTokenizer

    for tokenizer in vars(task).values():
        if isinstance(tokenizer, PromptTokenizer) and isinstance(tokenizer.max_length, int):
            tokenizer.max_length = max(1, tokenizer.max_length - count)
