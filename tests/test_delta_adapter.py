"""Bottleneck adapters on every family: placement read from the model's structure, zero start,
only adapters (and, for Houlsby, layer norms) train, and they learn."""

from __future__ import annotations

import pytest
import torch

from deltaprompt import PromptModel
from deltaprompt.delta import make_method
from deltaprompt.delta.adapter.layer import is_norm
from deltaprompt.schema import ConfigError

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

# What the structural search must find in layer 0 of each family (attention, then feed-forward).
LAYER0 = {
    "bert": ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"],
    "roberta": ["roberta.encoder.layer.0.attention.output.dense", "roberta.encoder.layer.0.output.dense"],
    "gpt2": ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"],
    "llama": ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"],
    "t5": ["encoder.block.0.layer.0.SelfAttention.o", "encoder.block.0.layer.1.DenseReluDense.wo"],
}


def build(request, kind: str, methods=None) -> PromptModel:
    return prompt_model(responsive(plm_of(request, kind)), methods)


def adapter_paths(model: PromptModel) -> list[str]:
    return [key.replace("-", ".") for key in model.adapters]


def houlsby_sites(kind: str) -> list[str]:
    """(attention, feed-forward) of every layer, in model order; T5's decoder layers have their
    feed-forward network third, after cross-attention."""
    sites = [p.replace(".0.", f".{i}.", 1) for i in range(2) for p in LAYER0[kind]]
    if kind == "t5":
        decoder = ["decoder.block.{}.layer.0.SelfAttention.o", "decoder.block.{}.layer.2.DenseReluDense.wo"]
        sites += [p.format(i) for i in range(2) for p in decoder]
    return sites


def hooked_modules(model: PromptModel) -> list[str]:
    return [name for name, module in model.model.named_modules() if module._forward_hooks]


@pytest.mark.parametrize("kind", KINDS)
def test_houlsby_adapts_attention_and_ffn_of_every_layer(request, kind):
    model = build(request, kind, [{"method": "adapter", "variant": "houlsby"}])
    assert adapter_paths(model) == houlsby_sites(kind)  # two per layer
    assert hooked_modules(model) == houlsby_sites(kind)  # one hook each, nowhere else
    projection = model.model.get_submodule(houlsby_sites(kind)[0])
    assert type(projection).__name__ == ("Conv1D" if kind == "gpt2" else "Linear")
    hidden = model.model.config.hidden_size
    for adapter in model.adapters.values():
        assert adapter.down.weight.shape == (hidden // 16, hidden)  # reduction factor 16
        assert adapter.up.weight.shape == (hidden, hidden // 16)


@pytest.mark.parametrize("kind", KINDS)
def test_pfeiffer_adapts_only_the_ffn(request, kind):
    model = build(request, kind, ["adapter"])
    ffn = houlsby_sites(kind)[1::2]  # one per layer
    assert adapter_paths(model) == ffn
    assert hooked_modules(model) == ffn


def test_projections_wrapped_by_lora_are_adapted_as_a_whole(request):
    lora = {"method": "lora", "target_modules": ["o_proj", "down_proj"]}
    model = build(request, "llama", [lora, {"method": "adapter", "variant": "houlsby"}])
    assert adapter_paths(model) == houlsby_sites("llama")  # the wrapper, not its base_layer
    assert hasattr(model.model.get_submodule(houlsby_sites("llama")[0]), "base_layer")
    roles = {model.role_of(n, p) for n, p in model.trainable_parameters().items()}
    assert roles == {("delta", 5e-4), ("delta", 1e-4)}  # LoRA's and the adapters' rates


def test_positions_override_and_cross_attention_on_t5(request):
    model = build(request, "t5", [{"method": "adapter", "positions": ["cross_attention"], "bottleneck": 3}])
    assert adapter_paths(model) == [
        "decoder.block.0.layer.1.EncDecAttention.o",
        "decoder.block.1.layer.1.EncDecAttention.o",
    ]
    assert all(a.down.weight.shape == (3, 32) for a in model.adapters.values())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["houlsby", "pfeiffer"])
def test_only_adapters_and_houlsby_norms_train(request, kind, variant):
    model = build(request, kind, [{"method": "adapter", "variant": variant, "non_linearity": "gelu"}])
    norms = {id(p) for m in model.model.modules() if is_norm(m) for p in m.parameters()}
    trainable = model.trainable_parameters()
    expected = {n for n, p in model.named_parameters() if n.startswith("adapters.")}
    if variant == "houlsby":
        expected |= {n for n, p in model.named_parameters() if id(p) in norms}
    assert set(trainable) == expected
    assert all(model.role_of(n, p) == ("delta", 1e-4) for n, p in trainable.items())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, TRAIN, steps=2, lr=1e-2)  # up starts at zero: down gets its first gradient at step 2
    assert_only_trainable_moved(model, before, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_starts_equal_to_the_base_model_and_learns(request, kind):
    base = class_log_probs(build(request, kind))
    model = build(request, kind, [{"method": "adapter", "variant": "houlsby"}])
    assert torch.equal(class_log_probs(model), base)
    losses = train_steps(model, TRAIN, steps=30, lr=3e-2)
    assert losses[-1] < 0.6 * losses[0], losses


def test_saved_adapters_load_by_name_into_a_fresh_model(request):
    method = {"method": "adapter", "variant": "houlsby", "reduction_factor": 8}
    model = build(request, "gpt2", [method])
    train_steps(model, TRAIN, steps=3, lr=1e-2)
    again = build(request, "gpt2", [method])
    load_trained(again, model)
    torch.testing.assert_close(class_log_probs(again), class_log_probs(model), atol=1e-6, rtol=0)
    assert not torch.allclose(class_log_probs(again), class_log_probs(build(request, "gpt2")), atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{"reduction_factor": 0}, {"bottleneck": 0}, {"positions": []}, {"positions": ["ffn", "ffn"]},
     {"positions": ["mlp"]}, {"variant": "lora"}, {"non_linearity": "tanh"}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ConfigError):
        make_method({"method": "adapter", **options})
