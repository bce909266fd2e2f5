"""The cache argument's name follows the installed transformers (``past_key_values`` before
5.24, ``cache`` after), so code that hands caches around works on both."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from deltaprompt.kv_cache import CACHE_ARGUMENT, CACHE_NAMES, cache_argument, get_cache, put_cache


class TakesOld(nn.Module):
    def forward(self, hidden_states, past_key_values=None):
        return hidden_states


class TakesNew(nn.Module):
    def forward(self, hidden_states, cache=None):
        return hidden_states


class TakesNone(nn.Module):
    def forward(self, hidden_states, **kwargs):
        return hidden_states


def test_the_argument_name_is_read_from_each_modules_signature():
    assert cache_argument(TakesOld()) == "past_key_values"
    assert cache_argument(TakesNew()) == "cache"
    assert cache_argument(TakesNone()) is None
    assert CACHE_ARGUMENT in CACHE_NAMES
    patched = TakesNone()
    patched.forward = TakesNew().forward  # a forward set on the instance is read, not the class's
    assert cache_argument(patched) == "cache"


@pytest.mark.parametrize("old_name", CACHE_NAMES)
def test_put_cache_leaves_exactly_one_name(old_name):
    stale, fresh = object(), object()
    inputs = {"input_ids": 1, old_name: stale}
    for name in CACHE_NAMES:
        out = put_cache(dict(inputs), fresh, name)
        assert out[name] is fresh
        assert [n for n in CACHE_NAMES if n in out] == [name]
        assert get_cache(out) is fresh
    assert get_cache({"input_ids": 1}) is None


def test_the_installed_models_fill_a_cache_handed_under_the_name_and_return_it():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    cache = DynamicCache()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        output = model(input_ids=ids, use_cache=True, **{CACHE_ARGUMENT: cache})
    assert cache.get_seq_length() == 3  # the model used the cache it was handed
    assert get_cache(output) is cache
