"""LoRA through PEFT: injected in place, only its own parameters train, PEFT's options reach
PEFT, and the exported adapter is one PEFT loads with the same logits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

from deltaprompt import PromptModel, Verbalizer
from deltaprompt.delta import make_method
from deltaprompt.delta.lora.model import attention_projections
from deltaprompt.head import HeadModel
from deltaprompt.model import TaskModel
from deltaprompt.plm import PLM
from deltaprompt.schema import ConfigError

from .conftest import (
    TEMPLATE,
    TOKENIZER_OF,
    TRAIN,
    assert_only_trainable_moved,
    labelled_batch,
    load_trained,
    responsive,
    tiny_plm,
    train_steps,
)
from .test_delta_prefix import WORDS, scores

# PEFT asks transformers about gradient checkpointing by a deprecated name when loading.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def build(plm: PLM, **options) -> PromptModel:
    return PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS), methods=[{"method": "lora", **options}])


def lora_modules(model: torch.nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def randomise_b(model: TaskModel) -> None:
    """LoRA starts with B = 0 (no change, no gradient for A): give B values, as after training."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)


def test_zero_initialised_update_leaves_predictions_unchanged(any_tiny_plm):
    plm = any_tiny_plm
    hf, cls = plm.model, type(plm.model)
    before = scores(PromptModel(plm, TEMPLATE[plm.family], Verbalizer(WORDS)))
    model = build(plm)
    # Injected in place: the scoring code calls the same Hugging Face object, now with LoRA layers.
    assert model.model is hf and plm.model is hf and type(hf) is cls
    assert lora_modules(hf)
    assert model.efficient_head
    torch.testing.assert_close(scores(model), before, atol=1e-6, rtol=1e-6)


def test_only_lora_trains(any_tiny_plm):
    model = build(any_tiny_plm)
    randomise_b(model)
    trainable = set(model.trainable_parameters())
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(dict(model.named_parameters())) == len(list(model.parameters()))  # no name twice
    for name, parameter in model.named_parameters():
        assert model.role_of(name, parameter) == (("delta", 5e-4) if name in trainable else ("plm", None)), name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    train_steps(model, TRAIN, steps=1, lr=1e-3)
    assert_only_trainable_moved(model, before, trainable)


def test_loss_falls_on_a_small_task(any_tiny_plm):
    model = build(responsive(any_tiny_plm))
    model.eval()  # no dropout: the loss curve is the method's alone
    losses = train_steps(model, TRAIN, steps=30, lr=1e-2)
    assert losses[-1] < 0.85 * losses[0], losses


def test_trained_lora_reloads_by_parameter_name_onto_a_fresh_plm(roberta_tokenizer):
    model = build(tiny_plm("roberta", roberta_tokenizer))
    randomise_b(model)
    model.eval()
    fresh = build(tiny_plm("roberta", roberta_tokenizer)).eval()
    load_trained(fresh, model)
    torch.testing.assert_close(scores(fresh), scores(model))


def test_a_plm_that_already_has_lora_is_refused(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    build(plm)
    with pytest.raises(ValueError, match="fresh"):
        build(plm)


def test_a_head_model_on_t5s_encoder_gets_lora_in_the_encoder_only(t5_tokenizer):
    plm = tiny_plm("t5", t5_tokenizer)
    model = HeadModel(plm, ["negative", "positive"], methods=["lora"])
    chosen = lora_modules(plm.model)
    assert chosen and all(name.startswith("encoder.") for name in chosen)
    randomise_b(model)
    batch, labels = labelled_batch(model)
    F.nll_loss(model(batch), labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters().values())


# ----------------------------------------------------------------------------- which modules

def test_default_targets_are_pefts_and_our_structural_search_finds_the_same(any_tiny_plm):
    plm = any_tiny_plm
    model_type = plm.model.config.model_type
    assert attention_projections(plm.model) == sorted(PEFT_DEFAULTS[model_type])
    build(plm)
    suffixes = {name.rsplit(".", 1)[-1] for name in lora_modules(plm.model)}
    assert suffixes == set(PEFT_DEFAULTS[model_type])


def test_without_a_peft_default_the_query_and_value_projections_are_found(llama_tokenizer, monkeypatch):
    monkeypatch.delitem(PEFT_DEFAULTS, "llama")
    plm = tiny_plm("llama", llama_tokenizer)
    model = build(plm)
    (method,) = model.methods
    assert sorted(method.peft_model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    assert len(lora_modules(plm.model)) == 2 * plm.model.config.num_hidden_layers


def test_name_list_and_regex_targets(roberta_tokenizer):
    plm = tiny_plm("roberta", roberta_tokenizer)
    build(plm, target_modules=["value", "output.dense"])
    chosen = lora_modules(plm.model)
    assert chosen == {
        f"roberta.encoder.layer.{i}.{part}"
        for i in range(2)
        for part in ("attention.self.value", "attention.output.dense", "output.dense")
    }
    plm = tiny_plm("roberta", roberta_tokenizer)
    build(plm, target_modules=r".*layer\.1\.attention\.self\.(query|key)")
    assert lora_modules(plm.model) == {"roberta.encoder.layer.1.attention.self.query",
                                       "roberta.encoder.layer.1.attention.self.key"}


def test_dora_rslora_and_bias_options_reach_peft(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = build(plm, r=4, alpha=8, use_dora=True, use_rslora=True, bias="lora_only")
    (method,) = model.methods
    config = method.peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert config.use_dora and config.use_rslora and config.bias == "lora_only"
    layer = plm.model.get_submodule("transformer.h.0.attn.c_attn")
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA: alpha / sqrt(r)
    trainable = set(model.trainable_parameters())
    assert any("lora_magnitude_vector" in n for n in trainable)  # DoRA's magnitudes train
    assert "model.transformer.h.0.attn.c_attn.base_layer.bias" in trainable  # bias of an adapted layer
    assert "model.transformer.h.0.attn.c_proj.bias" not in trainable
    assert all(model.role_of(n, p)[0] == "delta" for n, p in model.trainable_parameters().items())


def test_config_from_a_mapping_and_its_checks():
    method = make_method({"method": "lora", "r": 4, "target_modules": ".*query"})
    assert method.config.r == 4 and method.config.target_modules == ".*query"
    assert make_method({"method": "lora", "target_modules": ["query"]}).config.target_modules == ["query"]
    assert method.order == 10 and method.peft_format
    assert method.config.lr == 5e-4 and (method.config.alpha, method.config.dropout) == (16, 0.1)
    with pytest.raises(ConfigError, match="regular expression"):
        make_method({"method": "lora", "target_modules": "(query"})
    with pytest.raises(ConfigError, match="bias"):
        make_method({"method": "lora", "bias": "some"})
    with pytest.raises(ConfigError, match="r must be"):
        make_method({"method": "lora", "r": 0})


# ----------------------------------------------------------------------------- PEFT format

@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama", "t5"])
def test_exported_adapter_loads_in_peft_with_the_same_logits(kind, request, tmp_path):
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    base, untouched = copy.deepcopy(plm.model), copy.deepcopy(plm.model)
    model = build(plm, use_dora=kind == "gpt2")
    train_steps(model, TRAIN, steps=2, lr=1e-2)  # the second step moves A too (B is non-zero after the first)
    model.eval()
    batch, _ = labelled_batch(model)
    (method,) = model.methods
    directory = method.export(model, tmp_path / "adapter")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = PeftModel.from_pretrained(base, directory).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if plm.family == "seq2seq":
        inputs["decoder_input_ids"] = batch["input_ids"][:, :3]
    with torch.no_grad():
        ours = plm.model(**inputs).logits
        theirs = peft_model(**inputs).logits
        assert not torch.allclose(untouched(**inputs).logits, ours, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
