"""BitFit on every family: exactly the bias terms (plus norms when asked) train, models without
biases get zero ones (or are refused), the model class and the scoring stay as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltaprompt import PromptModel
from deltaprompt.delta.adapter.layer import is_norm

from .conftest import (
    KINDS,
    TRAIN,
    assert_only_trainable_moved,
    class_log_probs,
    load_trained,
    plm_of,
    prompt_model,
    responsive,
    train_steps,
)

WITHOUT_BIASES = {"llama", "t5"}


def build(request, kind: str, methods=None) -> PromptModel:
    return prompt_model(responsive(plm_of(request, kind)), methods)


def expected_counts(model: nn.Module) -> tuple[int, int, int]:
    """(existing bias elements, biases to add, norm gains), counted on the untouched model: one
    bias per output of each linear layer without one, except the output embedding."""
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    output = model.get_output_embeddings()
    added = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None and m is not output)
    gains = sum(m.weight.numel() for m in model.modules() if is_norm(m))
    return biases, added, gains


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train_layer_norm", [False, True])
def test_trainable_count_is_the_bias_elements(request, kind, train_layer_norm):
    biases, added, gains = expected_counts(plm_of(request, kind).model)
    assert (biases == 0) == (kind in WITHOUT_BIASES)
    assert (added == 0) == (kind not in WITHOUT_BIASES)  # GPT-2's lm_head, the output embedding, gets none
    model = build(request, kind, [{"method": "bitfit", "train_layer_norm": train_layer_norm}])
    trainable = model.trainable_parameters()
    assert sum(p.numel() for p in trainable.values()) == biases + added + (gains if train_layer_norm else 0)
    for name, parameter in trainable.items():
        assert name.endswith(".bias") or (train_layer_norm and parameter.ndim == 1), name
        assert model.role_of(name, parameter) == ("delta", 1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_only_biases_change_and_the_loss_falls(request, kind):
    base = class_log_probs(build(request, kind))
    model = build(request, kind, ["bitfit"])
    torch.testing.assert_close(class_log_probs(model), base, atol=1e-6, rtol=0)  # added biases are zero
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model, TRAIN, steps=30, lr=3e-2)
    assert_only_trainable_moved(model, before, set(model.trainable_parameters()))
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("kind", KINDS)
def test_every_bias_gets_a_gradient(request, kind):
    model = build(request, kind, ["bitfit"])
    batch = model.collate(model.encode(TRAIN))
    model(batch)[:, 0].sum().backward()
    for name, parameter in model.trainable_parameters().items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", sorted(WITHOUT_BIASES))
def test_models_without_biases_get_zero_ones_and_keep_their_class(request, kind):
    plm = plm_of(request, kind)
    cls = type(plm.model)
    model = prompt_model(plm, ["bitfit"])
    assert type(model.model) is cls
    assert model.efficient_head  # the scoring's fast path still agrees with the model's logits
    added = [m for m in model.model.modules() if isinstance(m, nn.Linear) and m is not model.model.get_output_embeddings()]
    assert added and all(m.bias is not None and torch.equal(m.bias, torch.zeros_like(m.bias)) for m in added)
    assert model.model.get_output_embeddings().bias is None
    with pytest.raises(ValueError, match="no bias terms"):
        build(request, kind, [{"method": "bitfit", "add_missing": False}])


def test_add_missing_off_trains_only_existing_biases(request):
    biases, _, _ = expected_counts(plm_of(request, "gpt2").model)
    model = build(request, "gpt2", [{"method": "bitfit", "add_missing": False}])
    assert sum(p.numel() for p in model.trainable_parameters().values()) == biases


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_saved_biases_load_by_name_into_a_fresh_model(request, kind):
    model = build(request, kind, ["bitfit"])
    train_steps(model, TRAIN, steps=3, lr=3e-2)
    again = build(request, kind, ["bitfit"])
    load_trained(again, model)
    torch.testing.assert_close(class_log_probs(again), class_log_probs(model), atol=1e-6, rtol=0)
