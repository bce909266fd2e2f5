"""The prefix parameters (PEFT's ``PrefixEncoder``) and the three ways they reach attention.

All three hand each self-attention layer a cache that already holds the prefix, so the layer's
own ``cache.update`` puts the prefix keys/values before the sequence's, exactly as PEFT does:

- ``PrefixInputs``: an input transform adding the cache (BERT and RoBERTa pass a cache to
  every layer even as encoders; decoder LMs of course do);
- ``DecoderPrefixHook``: a pre-hook on an encoder-decoder's decoder stack (the scoring code
  builds the decoder call itself, so an input transform cannot reach it);
- ``EncoderPrefixHooks``: for a stack that drops the cache (T5's encoder), a cache made per pass
  and handed to each self-attention module, whose attention mask gets the prefix's columns.

The transform and hooks are callable objects, not closures, so a deep copy of the task model
copies them along with the modules they refer to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import Cache, DynamicCache, EncoderDecoderCache, PreTrainedModel

from ...kv_cache import cache_argument, get_cache, put_cache

KV = list[tuple[torch.Tensor, torch.Tensor]]


class PrefixKV(nn.Module):
    """Key/value prefixes for every layer of one attention stack.

    ``prompt_encoder`` is PEFT's ``PrefixEncoder`` (a (tokens, layers x 2 x heads x head_dim)
    table, or a smaller table and an MLP producing it), so its weights and layout are PEFT's:
    row ``2i`` of the unflattened table holds layer ``i``'s keys, row ``2i + 1`` its values.
    """

    def __init__(self, peft_config: Any):
        from peft import PrefixEncoder

        super().__init__()
        self.peft_config = peft_config  # peft.PrefixTuningConfig, a plain dataclass
        self.prompt_encoder = PrefixEncoder(peft_config)

    @property
    def num_virtual_tokens(self) -> int:
        return self.peft_config.num_virtual_tokens

    def table(self) -> torch.Tensor:
        """(tokens, layers x 2 x heads x head_dim): what PEFT saves as ``prompt_embeddings``."""
        weight = self.prompt_encoder.embedding.weight
        tokens = torch.arange(self.num_virtual_tokens, device=weight.device)
        return self.prompt_encoder(tokens[None])[0]

    def forward(self, batch_size: int, dtype: torch.dtype | None = None) -> KV:
        """Per layer, (keys, values) of shape (batch, heads, tokens, head_dim)."""
        config = self.peft_config
        heads = config.num_attention_heads
        table = self.table()
        if dtype is not None:
            table = table.to(dtype)
        kv = table.view(self.num_virtual_tokens, 2 * config.num_layers, heads, config.token_dim // heads)
        kv = kv.permute(1, 2, 0, 3)[:, None].expand(-1, batch_size, -1, -1, -1)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(config.num_layers)]

    def fold(self) -> bool:
        """Replace the MLP by the table it computes (what PEFT saves); True if there was one."""
        encoder = self.prompt_encoder
        if not encoder.prefix_projection:
            return False
        trainable = encoder.embedding.weight.requires_grad
        with torch.no_grad():
            table = self.table().clone()
        encoder.embedding = nn.Embedding.from_pretrained(table, freeze=not trainable)
        del encoder.transform
        encoder.prefix_projection = False
        return True


class PrefixCache:
    """A fresh cache holding the prefix for a batch (an empty one without a prefix: probing)."""

    def __init__(self, prefix: PrefixKV | None, model: PreTrainedModel):
        self.prefix = prefix
        self.model = model

    def __call__(self, batch_size: int) -> DynamicCache:
        if self.prefix is None:
            return DynamicCache()
        return DynamicCache(self.prefix(batch_size, self.model.dtype))


class PrefixInputs:
    """Input transform: the prefix as the cache, the attention mask widened by the
    prefix (always visible, also to left-padded rows), explicit positions moved past it (as
    PEFT does, and as models do by themselves from the cache length when none are given)."""

    def __init__(self, cache: PrefixCache, count: int):
        self.cache = cache
        self.count = count

    def __call__(self, inputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        out = dict(inputs)
        states = _first(out.get("input_ids"), out.get("inputs_embeds"))
        batch_size = states.size(0)
        put_cache(out, self.cache(batch_size))
        mask = out.get("attention_mask")
        if mask is not None:
            out["attention_mask"] = torch.cat([mask.new_ones(batch_size, self.count), mask], 1)
        if out.get("position_ids") is not None:
            out["position_ids"] = out["position_ids"] + self.count
        return out


class DecoderPrefixHook:
    """Forward pre-hook (with kwargs) of an encoder-decoder's decoder stack: start its
    self-attention cache with the prefix, unless it already holds one (later generation
    steps), and widen a 2-D decoder attention mask by the prefix."""

    def __init__(self, prefix: PrefixKV, model: PreTrainedModel):
        self.prefix = prefix
        self.model = model

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        cache = get_cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            return None
        states = _first(kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1])
        batch_size = states.size(0)
        if cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        own = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        for layer, (keys, values) in enumerate(self.prefix(batch_size, self.model.dtype)):
            own.update(keys, values, layer)
        put_cache(kwargs, cache, cache_argument(module) or "past_key_values")
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            count = self.prefix.num_virtual_tokens
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch_size, count), mask], 1)
        return args, kwargs


class EncoderPrefixHooks:
    """Prefixes for a stack that does not pass a cache to its layers (T5's encoder sets it to
    None): the stack's pre-hook makes the batch's cache, each self-attention module's pre-hook
    passes it in and widens the (4-D) attention mask by the prefix, the stack's hook drops it."""

    def __init__(self, source: Callable[[int], Cache]):
        self.source = source
        self.cache: Cache | None = None

    def install(self, stack: nn.Module, attentions: list[nn.Module]) -> list[RemovableHandle]:
        handles = [
            stack.register_forward_pre_hook(self.start, with_kwargs=True),
            stack.register_forward_hook(self.finish, with_kwargs=True, always_call=True),
        ]
        handles += [m.register_forward_pre_hook(self.attend, with_kwargs=True) for m in attentions]
        return handles

    def start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        states = _first(kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1])
        self.cache = self.source(states.size(0))

    def finish(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        self.cache = None

    def attend(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        if self.cache is None or kwargs.get("key_value_states") is not None:
            return None
        count = self.cache.get_seq_length(module.layer_idx)
        put_cache(kwargs, self.cache, cache_argument(module) or "past_key_values")
        for name in ("mask", "attention_mask"):
            if kwargs.get(name) is not None:
                kwargs[name] = pad_key_mask(kwargs[name], count)
        return args, kwargs


def pad_key_mask(mask: Any, count: int) -> torch.Tensor:
    """A prepared (batch, 1, queries, keys) mask with ``count`` visible key columns in front:
    True for boolean masks, 0 for additive ones."""
    if count == 0:
        return mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise NotImplementedError(
            f"prefix tuning cannot widen an attention mask of type {type(mask).__name__}; "
            "use the eager or sdpa attention implementation"
        )
    fill = True if mask.dtype == torch.bool else 0.0
    return torch.cat([mask.new_full((*mask.shape[:-1], count), fill), mask], -1)


def cache_attention_modules(stack: nn.Module) -> list[nn.Module]:
    """The self-attention modules of ``stack``, found by what they are, not what they are
    called: the innermost modules that know their layer index and take a cache."""
    found = []
    for module in stack.modules():
        if isinstance(getattr(module, "layer_idx", None), int) and cache_argument(module):
            found.append(module)
    ids = {id(m) for m in found}
    return [m for m in found if not any(id(c) in ids for c in m.modules() if c is not m)]


def cache_shapes(cache: Cache) -> list[tuple[int, int]]:
    """(heads, head_dim) of every layer a probing pass wrote to ``cache``, in layer order;
    raises when some layer was skipped (a prefix per layer needs every layer)."""
    shapes = []
    for index, layer in enumerate(cache.layers):
        keys = getattr(layer, "keys", None) if getattr(layer, "is_initialized", True) else None
        if keys is None or keys.numel() == 0:
            raise NotImplementedError(f"layer {index} of this model does not keep its own keys and values")
        shapes.append((keys.size(1), keys.size(-1)))
    return shapes


def _first(*tensors: Any) -> torch.Tensor:
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor):
            return tensor
    raise ValueError("prefix tuning needs input_ids or inputs_embeds to know the batch size")
