"""Bottleneck adapters on every family: placement read from the model's structure, zero start,
only adapters (and, for Houlsby, layer norms) train, and they learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deltaprompt import Example, PromptModel, Verbalizer
from deltaprompt.delta import make_method
from deltaprompt.delta.adapter.layer import is_norm
from deltaprompt.schema import ConfigError

from .conftest import TOKENIZER_OF, tiny_plm

TEMPLATE = {"masked": "{text} It was {mask}.", "causal": "{text} It was {mask}", "seq2seq": "{text} It was {mask}."}
WORDS = {"negative": "terrible", "positive": "great"}
TRAIN = [
    Example("the movie was great", label="positive"), Example("a terrible boring film", label="negative"),
    Example("wonderful acting", label="positive"), Example("a dull plot", label="negative"),
    Example("the acting was wonderful", label="positive"), Example("boring and dull", label="negative"),
    Example("great film", label="positive"), Example("terrible acting", label="negative"),
]
KINDS = list(TOKENIZER_OF)
# What the structural search must find in layer 0 of each family (attention, then feed-forward).
LAYER0 = {
    "bert": ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"],
    "roberta": ["roberta.encoder.layer.0.attention.output.dense", "roberta.encoder.layer.0.output.dense"],
    "gpt2": ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"],
    "llama": ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"],
    "t5": ["encoder.block.0.layer.0.SelfAttention.o", "encoder.block.0.layer.1.DenseReluDense.wo"],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: threads cost more than they save, and a busy machine makes that far worse."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plm_of(request, kind: str):
    """A tiny model with its matrices at std 1/sqrt(hidden), T5's own init scale. At BERT's,
    GPT-2's and Llama's 0.02, hidden 32 carries almost nothing of the input to the prediction,
    and nothing bias- or adapter-sized can learn an input-dependent task quickly."""
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    hidden = plm.model.config.hidden_size
    with torch.no_grad():
        for parameter in plm.model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(hidden**-0.5 / parameter.std())
    return plm


def build(request, kind: str, methods=None) -> PromptModel:
    plm = plm_of(request, kind)
    return PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS), methods=methods)


def labels(model: PromptModel) -> torch.Tensor:
    return torch.tensor([model.classes.index(e.label) for e in TRAIN])


def train(model: PromptModel, steps: int, lr: float) -> list[float]:
    batch = model.collate(model.encode(TRAIN))
    target = labels(model)
    optimizer = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.nll_loss(model(batch), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def predict(model: PromptModel) -> torch.Tensor:
    with torch.no_grad():
        return model(model.collate(model.encode(TRAIN)))


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
    train(model, steps=2, lr=1e-2)  # up starts at zero: down gets its first gradient at step 2
    for name, parameter in model.named_parameters():
        if name in expected:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert not torch.equal(parameter, before[name]), name
        else:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize("kind", KINDS)
def test_starts_equal_to_the_base_model_and_learns(request, kind):
    base = predict(build(request, kind))
    model = build(request, kind, [{"method": "adapter", "variant": "houlsby"}])
    assert torch.equal(predict(model), base)
    losses = train(model, steps=30, lr=3e-2)
    assert losses[-1] < 0.6 * losses[0], losses


def test_saved_adapters_load_by_name_into_a_fresh_model(request):
    method = {"method": "adapter", "variant": "houlsby", "reduction_factor": 8}
    model = build(request, "gpt2", [method])
    train(model, steps=3, lr=1e-2)
    saved = {n: p.detach().clone() for n, p in model.trainable_parameters().items()}
    again = build(request, "gpt2", [method])
    assert set(again.trainable_parameters()) == set(saved)
    with torch.no_grad():
        for name, parameter in again.trainable_parameters().items():
            parameter.copy_(saved[name])
    torch.testing.assert_close(predict(again), predict(model), atol=1e-6, rtol=0)
    assert not torch.allclose(predict(again), predict(build(request, "gpt2")), atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{"reduction_factor": 0}, {"bottleneck": 0}, {"positions": []}, {"positions": ["ffn", "ffn"]},
     {"positions": ["mlp"]}, {"variant": "lora"}, {"non_linearity": "tanh"}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ConfigError):
        make_method({"method": "adapter", **options})
