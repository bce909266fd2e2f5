"""Prefix tuning / P-Tuning v2: trained keys and values before every layer, on every family.

The strongest checks set the prefix to the keys/values real tokens X would have, and compare
with the model reading X in front of the input for real: then masks, positions, left padding,
the cache layout and the multi-token continuation must all be right.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DynamicCache,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from deltaprompt import Example, PromptModel, Verbalizer
from deltaprompt.delta import make_method
from deltaprompt.delta.prefix.layer import PrefixKV
from deltaprompt.head import HeadModel
from deltaprompt.kv_cache import CACHE_ARGUMENT, get_cache
from deltaprompt.plm import PLM
from deltaprompt.schema import ConfigError
from deltaprompt.scoring import causal_word_scores

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

WORDS = {"negative": ["terrible", "boring"], "positive": ["great", "wonderful"]}
EXAMPLES = [
    Example("the movie was great"),
    Example("a terrible boring film with a dull plot and the acting was wonderful"),
    Example("film"),
]
P = 4  # virtual tokens in most tests

# PEFT asks transformers about gradient checkpointing by a deprecated name when loading.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def build(plm: PLM, template: str | None = None, words=WORDS, **options) -> PromptModel:
    method = {"method": "prefix", "num_virtual_tokens": P, **options}
    return PromptModel(plm, template or TEMPLATE[plm.family], Verbalizer(words), methods=[method])


def scores(model: PromptModel, examples=EXAMPLES, efficient: bool | None = None) -> torch.Tensor:
    batch = model.collate(model.encode(examples))
    with torch.no_grad():
        return model.verbalizer.aggregate(model.word_scores(batch, efficient=efficient), model.label_words)


def load_prefix(prefix: PrefixKV, pairs) -> None:
    """Set a (projection-free) prefix to given per-layer keys/values of shape (1, H, P, D)."""
    rows = [t[0] for keys, values in pairs for t in (keys, values)]  # 2 x layers of (H, P, D)
    table = torch.stack(rows).permute(2, 0, 1, 3).reshape(rows[0].size(1), -1)
    with torch.no_grad():
        prefix.prompt_encoder.embedding.weight.copy_(table)


def token_ids(plm: PLM, text: str, count: int) -> list[int]:
    ids = plm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= count
    return ids[:count]


# ----------------------------------------------------------------------------- parameters and training

def test_only_the_prefix_trains(any_tiny_plm):
    plm = any_tiny_plm
    model = build(plm)
    sides = {"masked": ["encoder"], "causal": ["decoder"], "seq2seq": ["decoder", "encoder"]}[plm.family]
    assert sorted(model.prefix) == sides
    expected = {f"prefix.{side}.prompt_encoder.embedding.weight" for side in sides}
    assert set(model.trainable_parameters()) == expected
    for name, parameter in model.named_parameters():
        role = model.role_of(name, parameter)
        assert role == (("delta", 1e-2) if name in expected else ("plm", None)), name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    train_steps(model, TRAIN, steps=1, lr=1e-2)
    assert_only_trainable_moved(model, before, expected)


def test_loss_falls_on_a_small_task(any_tiny_plm):
    model = PromptModel(responsive(any_tiny_plm), TEMPLATE[any_tiny_plm.family], Verbalizer(WORDS), methods=["prefix"])
    model.eval()  # no dropout: the loss curve is the method's alone
    losses = train_steps(model, TRAIN, steps=30, lr=0.1)
    assert losses[-1] < 0.9 * losses[0], losses


def test_changing_the_prefix_changes_predictions(any_tiny_plm):
    model = build(any_tiny_plm, init="random")  # unit-scale keys/values: a change is visible
    model.eval()
    first = scores(model)
    assert model.efficient_head
    with torch.no_grad():
        for prefix in model.prefix.values():
            prefix.prompt_encoder.embedding.weight.mul_(-3.0)
    assert not torch.allclose(scores(model), first, atol=1e-4)


def test_fold_replaces_the_mlp_and_keeps_predictions(any_tiny_plm):
    model = build(any_tiny_plm, prefix_projection=True, encoder_hidden_size=16)
    model.eval()
    assert any(n.startswith("prefix.") and "transform" in n for n in model.trainable_parameters())
    with torch.no_grad():  # a non-zero MLP output, as after training
        for prefix in model.prefix.values():
            torch.nn.init.normal_(prefix.prompt_encoder.transform[-1].weight)
    before = scores(model)
    assert model.fold() is True
    assert not any(n.startswith("prefix.") and "transform" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(scores(model), before, atol=1e-5, rtol=1e-5)
    for name, parameter in model.trainable_parameters().items():
        assert model.role_of(name, parameter)[0] == "delta"
    assert model.fold() is False


def test_config_from_a_mapping_and_its_checks():
    method = make_method({"method": "prefix", "num_virtual_tokens": 8, "prefix_projection": True})
    assert method.config.num_virtual_tokens == 8 and method.config.prefix_projection
    assert method.order == 20 and method.peft_format
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        make_method({"method": "prefix", "num_virtual_tokens": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        make_method({"method": "prefix", "virtual_tokens": 8})


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "t5"])
def test_trained_prefix_reloads_by_parameter_name_onto_a_fresh_plm(kind, request):
    tokenizer = request.getfixturevalue(TOKENIZER_OF[kind])
    model = build(tiny_plm(kind, tokenizer))
    train_steps(model, TRAIN, steps=1, lr=1e-2)
    model.eval()
    fresh = build(tiny_plm(kind, tokenizer)).eval()
    load_trained(fresh, model)
    torch.testing.assert_close(scores(fresh), scores(model))


def test_a_masked_lm_whose_layers_ignore_the_cache_is_refused(roberta_tokenizer):
    config = DistilBertConfig(vocab_size=len(roberta_tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              pad_token_id=roberta_tokenizer.pad_token_id)
    plm = PLM.from_model(DistilBertForMaskedLM(config).eval(), roberta_tokenizer)
    assert plm.family == "masked"
    with pytest.raises(NotImplementedError, match="ignores its cache argument"):
        build(plm)


def test_a_plm_carrying_another_models_prefix_hooks_is_refused(t5_tokenizer):
    plm = tiny_plm("t5", t5_tokenizer)
    build(plm)
    with pytest.raises(ValueError, match="fresh"):
        build(plm)


# ----------------------------------------------------------------------------- equivalence with real tokens

@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_prefix_equals_real_tokens_in_front_including_multi_token_words(kind, request):
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    words = {"negative": ["unwatchable", "terrible"], "positive": ["extraordinarily good", "great"]}
    model = build(plm, "Review: {text}\nSentiment: {mask}", words)
    assert max(len(ids) for ids in model.label_words.token_ids) >= 3
    front = token_ids(plm, "the acting was wonderful and", P)
    with torch.no_grad():
        cache = get_cache(plm.model(input_ids=torch.tensor([front]), use_cache=True))
    load_prefix(model.prefix["decoder"], [(layer.keys, layer.values) for layer in cache.layers])
    batch = model.collate(model.encode(EXAMPLES))  # left-padded, three lengths
    with torch.no_grad():
        fast = model.word_scores(batch)
        plain = model.word_scores(batch, efficient=False)
        chunked = causal_word_scores(plm.model, model.embed(batch), batch["predict_positions"], model.label_words,
                                     chunk_rows=1)
    for row, example in zip(fast, EXAMPLES, strict=True):
        (enc,) = model.prompt_tokenizer.encode([example])
        for w, ids in enumerate(model.label_words.token_ids):
            full = torch.tensor([front + enc.input_ids + list(ids)])
            with torch.no_grad():
                log_probs = torch.log_softmax(plm.model(input_ids=full).logits[0], -1)
            start = P + len(enc.input_ids) - 1
            expected = sum(log_probs[start + j, t] for j, t in enumerate(ids))
            torch.testing.assert_close(row[w], expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(plain, fast, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, fast, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masked_prefix_equals_real_tokens_in_front_of_a_one_layer_encoder(kind, request):
    """With one layer, real tokens' keys/values do not depend on what follows them, so a
    prefix set to them must give exactly the logits of reading them (right padding too)."""
    tokenizer = request.getfixturevalue(TOKENIZER_OF[kind])
    torch.manual_seed(0)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64)
    if kind == "bert":
        hf = BertForMaskedLM(BertConfig(max_position_embeddings=128, **sizes))
    else:
        hf = RobertaForMaskedLM(RobertaConfig(max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, **sizes))
    plm = PLM.from_model(hf.eval(), tokenizer)
    model = build(plm)
    front = token_ids(plm, "the acting was wonderful and", P)
    cache = DynamicCache()
    with torch.no_grad():
        hf(input_ids=torch.tensor([front]), **{CACHE_ARGUMENT: cache})
    load_prefix(model.prefix["encoder"], [(layer.keys, layer.values) for layer in cache.layers])
    batch = model.collate(model.encode(EXAMPLES))
    with torch.no_grad():
        logits = hf(**model.embed(batch)).logits
    for row, example in zip(logits, EXAMPLES, strict=True):
        (enc,) = model.prompt_tokenizer.encode([example])
        with torch.no_grad():
            expected = hf(input_ids=torch.tensor([front + enc.input_ids])).logits[0, P:]
        torch.testing.assert_close(row[: len(enc.input_ids)], expected, atol=2e-5, rtol=1e-4)


def test_t5_prefixes_equal_real_tokens_in_front_of_encoder_and_decoder(t5_tokenizer):
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                      decoder_start_token_id=t5_tokenizer.pad_token_id, pad_token_id=t5_tokenizer.pad_token_id,
                      eos_token_id=t5_tokenizer.eos_token_id)
    hf = T5ForConditionalGeneration(config).eval()
    clean = copy.deepcopy(hf)  # the prefix's hooks stay on ``hf``; the reading by hand needs none
    plm = PLM.from_model(hf, t5_tokenizer)
    model = build(plm, words={"a": ["wonderful", "unwatchable"], "b": ["great", "superb"]})
    assert max(len(ids) for ids in model.label_words.token_ids) > 1
    front, back = token_ids(plm, "the acting was wonderful", P), token_ids(plm, "a dull boring plot", P)

    def layer0_kv(stack, ids):
        attention = stack.block[0].layer[0]
        hidden = attention.layer_norm(stack.embed_tokens(torch.tensor([ids])))
        split = lambda x: x.view(1, P, 4, 8).transpose(1, 2)  # noqa: E731
        return [(split(attention.SelfAttention.k(hidden)), split(attention.SelfAttention.v(hidden)))]

    with torch.no_grad():
        load_prefix(model.prefix["encoder"], layer0_kv(hf.encoder, front))
        load_prefix(model.prefix["decoder"], layer0_kv(hf.decoder, back))
        batch = model.collate(model.encode(EXAMPLES))
        fast, plain = model.word_scores(batch), model.word_scores(batch, efficient=False)
    sentinel, start = model.prompt_tokenizer.mask_id, config.decoder_start_token_id
    for row, example in zip(fast, EXAMPLES, strict=True):
        (enc,) = model.prompt_tokenizer.encode([example])
        with torch.no_grad():
            encoded = clean.encoder(input_ids=torch.tensor([front + enc.input_ids])).last_hidden_state[:, P:]
            for w, ids in enumerate(model.label_words.token_ids):
                decoder = torch.tensor([back + [start, sentinel, *ids[:-1]]])
                out = clean(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=decoder)
                log_probs = torch.log_softmax(out.logits[0, P:], -1)
                expected = sum(log_probs[1 + j, t] for j, t in enumerate(ids))
                torch.testing.assert_close(row[w], expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(plain, fast, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- combinations

def test_soft_tokens_in_the_template_and_a_prefix_train_together(any_tiny_plm):
    plm = any_tiny_plm
    template = TEMPLATE[plm.family].replace("It was", '{"soft": "It was"}')
    model = build(plm, template)
    assert model.efficient_head
    trainable = model.trainable_parameters()
    assert "soft_prompt.weight" in trainable and any(n.startswith("prefix.") for n in trainable)
    batch, labels = labelled_batch(model)
    F.nll_loss(model(batch), labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_lora_and_prefix_combine(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = PromptModel(plm, TEMPLATE["causal"], Verbalizer(WORDS), methods=["prefix", "lora"])
    assert [m.name for m in model.methods] == ["lora", "prefix"]
    assert model.efficient_head
    names = set(model.trainable_parameters())
    assert {n for n in names if not n.startswith("prefix.")} == {n for n in names if "lora_" in n}
    assert any(n.startswith("prefix.") for n in names)


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "t5"])
def test_a_head_model_on_the_trunk_gets_the_prefix_too(kind, request):
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    model = HeadModel(plm, ["negative", "positive"], methods=[{"method": "prefix", "num_virtual_tokens": P}])
    # T5's head model runs the encoder alone: a decoder prefix would never be used.
    assert sorted(model.prefix) == (["decoder"] if kind == "gpt2" else ["encoder"])
    assert model.prompt_tokenizer.max_length == (None if kind == "t5" else plm.max_length() - P)
    batch, labels = labelled_batch(model)
    model.eval()
    first = model(batch)
    F.nll_loss(first, labels).backward()
    trainable = model.trainable_parameters()
    assert {n for n in trainable if not n.startswith("prefix.")} == {"head.1.weight", "head.1.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    with torch.no_grad():
        next(iter(model.prefix.values())).prompt_encoder.embedding.weight.mul_(-3.0)
        assert not torch.allclose(model(batch), first)


def test_prompt_length_leaves_room_for_the_prefix(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    model = build(plm)
    assert model.prompt_tokenizer.max_length == 128 - P
    long = Example(" ".join(["great film"] * 200))
    assert scores(model, [long]).shape == (1, 2)  # positions stay inside GPT-2's table


# ----------------------------------------------------------------------------- PEFT format

@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama"])
@pytest.mark.parametrize("projection", [False, True])
def test_exported_adapter_loads_in_peft_with_the_same_logits(kind, projection, request, tmp_path):
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    base = copy.deepcopy(plm.model)
    model = build(plm, prefix_projection=projection, encoder_hidden_size=16)
    train_steps(model, TRAIN, steps=1, lr=1e-2)
    model.eval()
    (method,) = model.methods
    directory = method.export(model, tmp_path / "adapter")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = PeftModel.from_pretrained(base, directory).eval()
    batch, _ = labelled_batch(model)
    with torch.no_grad():
        ours = plm.model(**model.embed(batch)).logits
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        theirs = peft_model(**inputs).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_t5_exports_no_peft_adapter(t5_tokenizer, tmp_path):
    model = build(tiny_plm("t5", t5_tokenizer))
    (method,) = model.methods
    assert method.export(model, tmp_path / "adapter") is None
    assert not (tmp_path / "adapter").exists()


# ----------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_text_init_starts_from_the_models_own_keys_and_values(kind, request):
    """init="text": the prefix is what the PLM computes for those tokens, so training starts
    from a prefix the model can read; "vocab" does the same for common tokens; "random" is
    PEFT's N(0, 1) table."""
    plm = tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))
    text = "the acting was wonderful and"
    model = build(plm, init="text", init_text=text)
    ids = token_ids(plm, text, P)
    cache = DynamicCache()
    with torch.no_grad():
        plm.model(input_ids=torch.tensor([ids]), **{CACHE_ARGUMENT: cache})
    for layer, (keys, values) in zip(cache.layers, model.prefix[next(iter(model.prefix))](1), strict=True):
        torch.testing.assert_close(keys, layer.keys)
        torch.testing.assert_close(values, layer.values)
    vocab = build(tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind])))
    random = build(tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind])), init="random")
    with torch.no_grad():
        vocab_std = float(next(iter(vocab.prefix.values())).table().std())
        random_std = float(next(iter(random.prefix.values())).table().std())
    assert vocab_std < 0.5 * random_std  # activations of real tokens, not unit-variance noise
