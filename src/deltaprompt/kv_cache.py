"""The one place that knows what transformers calls the key/value cache argument.

transformers up to 5.23 calls it ``past_key_values`` everywhere; 5.24 renamed it ``cache`` (the
old name still works on the top-level models, with a warning, until 5.40, but the attention
modules and stacks only take ``cache``). Prefix tuning hands caches to attention modules and
stacks through hooks, and generation, scoring and in-context learning put caches into model
inputs, so they ask here for the name instead of spelling it, and run on either release.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

CACHE_NAMES = ("cache", "past_key_values")  # the current name first


def _installed_name() -> str:
    """The name the installed transformers' models take, read from a model's signature rather
    than from its version number, so a back-port or a pre-release answers truthfully."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    return "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


CACHE_ARGUMENT = _installed_name()


def cache_argument(module: nn.Module) -> str | None:
    """The cache argument ``module.forward`` takes by name, or None when it takes none. The
    prefix hooks ask on every attention call, so the answer is kept per class (a forward set
    on the instance itself is read afresh)."""
    if "forward" in vars(module):
        return _argument_of(module.forward)
    return _class_argument(type(module))


@functools.cache
def _class_argument(cls: type) -> str | None:
    return _argument_of(cls.forward)


def _argument_of(forward: Any) -> str | None:
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in CACHE_NAMES if name in parameters), None)


def get_cache(inputs: Mapping[str, Any]) -> Any:
    """The cache among ``inputs`` (keyword arguments or a model output), whatever its name."""
    for name in CACHE_NAMES:
        value = inputs.get(name) if isinstance(inputs, Mapping) else getattr(inputs, name, None)
        if value is not None:
            return value
    return None


def put_cache(inputs: dict[str, Any], cache: Any, name: str = CACHE_ARGUMENT) -> dict[str, Any]:
    """``inputs`` with ``cache`` under ``name`` and under no other cache name (a model handed
    both names would have to choose, and the deprecated one may be dropped silently)."""
    for other in CACHE_NAMES:
        inputs.pop(other, None)
    inputs[name] = cache
    return inputs
