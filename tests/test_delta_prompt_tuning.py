"""Prompt tuning: soft tokens prepended, only they train, and a PEFT adapter reproduces them."""

import copy
import logging
import warnings

import pytest
import torch

from deltaprompt import PromptModel, Template, Verbalizer
from deltaprompt.delta import make_methods
from deltaprompt.delta.prompt_tuning.model import common_token_ids
from deltaprompt.schema import ConfigError

from .conftest import TEMPLATE, TRAIN, WORDS, plm_of, responsive, train_steps


def build(plm, template=None, **options) -> PromptModel:
    spec = {"method": "prompt_tuning", "num_tokens": 4, **options}
    return PromptModel(plm, template or TEMPLATE[plm.family], Verbalizer(WORDS), methods=[spec])


def test_rewrite_puts_the_soft_tokens_first_and_keeps_the_rest():
    (method,) = make_methods([{"method": "prompt_tuning", "num_tokens": 5}])
    original = Template("Review: {text} It was {mask}.", post_processors={"shout": str.upper})
    rewritten = method.rewrite_template(original)
    first = rewritten.parts[0]
    assert first.kind == "soft" and rewritten.soft_groups[first.soft_group].length == 5
    assert rewritten.parts[1:] and [(p.kind, p.value, p.prefix) for p in rewritten.parts[1:]] == [
        (p.kind, p.value, p.prefix) for p in original.parts
    ]
    assert rewritten.post_processors == original.post_processors


def test_num_tokens_zero_uses_the_template_soft_tokens_or_refuses():
    (method,) = make_methods([{"method": "prompt_tuning", "num_tokens": 0}])
    own = Template('{text} {"soft": "It was"} {mask}')
    assert method.rewrite_template(own) is own
    with pytest.raises(ConfigError, match="has none"):
        method.rewrite_template(Template("{text} It was {mask}"))


def test_config_is_checked():
    with pytest.raises(ConfigError, match="init_text"):
        make_methods([{"method": "prompt_tuning", "init": "text"}])
    with pytest.raises(ConfigError, match="one of"):
        make_methods([{"method": "prompt_tuning", "init": "class"}])
    with pytest.raises(ConfigError, match="cannot be combined"):
        make_methods(["prompt_tuning", "p_tuning"])
    (method,) = make_methods(["prompt_tuning"])
    assert method.config.lr == 3e-2 and method.config.num_tokens == 20 and method.order == 70


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_only_the_prepended_tokens_train_and_the_loss_falls(request, kind):
    plm = responsive(plm_of(request, kind))
    model = build(plm)
    assert set(model.trainable_parameters()) == {"soft_prompt.weight"}
    table = model.soft_prompt.weight
    assert model.role_of("soft_prompt.weight", table) == ("soft", 3e-2)
    batch = model.collate(model.encode(TRAIN))
    # The four soft tokens come right after the tokenizer's own prefix ([CLS], <s>), in every row.
    for row in range(len(TRAIN)):
        columns = (batch["soft_index"][row] >= 0).nonzero().flatten()
        first = int(batch["attention_mask"][row].nonzero()[0]) + len(model.prompt_tokenizer.prefix_ids)
        assert columns.tolist() == list(range(first, first + 4))

    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    old = table.detach().clone()
    losses = train_steps(model, TRAIN, steps=1, lr=3e-2)
    assert (table.grad.abs().sum(1) > 0).all()
    assert all(p.grad is None for p in model.model.parameters())
    assert not torch.equal(old, table.detach())
    losses += train_steps(model, TRAIN, steps=29, lr=3e-2)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_text_init_rows_are_the_text_embeddings_cycled(request, kind):
    plm = plm_of(request, kind)
    ids = plm.tokenizer("great movie", add_special_tokens=False)["input_ids"]
    model = build(plm, num_tokens=2 * len(ids) + 1, init="text", init_text="great movie")
    expected = plm.model.get_input_embeddings()(torch.tensor((ids * 3)[: 2 * len(ids) + 1]))
    torch.testing.assert_close(model.soft_prompt.weight.detach(), expected.detach())


def test_vocab_init_draws_distinct_ordinary_tokens(request):
    plm = plm_of(request, "bert")
    model = build(plm, num_tokens=6)
    embeddings = plm.model.get_input_embeddings().weight.detach()
    pool = common_token_ids(plm.tokenizer, embeddings.size(0))
    assert len(pool) == 5000 and not set(pool) & set(plm.tokenizer.all_special_ids)
    assert not any(plm.tokenizer.convert_ids_to_tokens(i).startswith("[unused") for i in pool)
    rows = []
    for vector in model.soft_prompt.weight.detach():
        matches = (embeddings == vector).all(1).nonzero().flatten().tolist()
        assert len(matches) == 1
        rows.append(matches[0])
    assert len(set(rows)) == 6 and set(rows) <= set(pool)
    # The draw is part of the model's seeded initialisation: same seed, same prompt.
    torch.testing.assert_close(build(plm, num_tokens=6).soft_prompt.weight, model.soft_prompt.weight)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_peft_adapter_gives_the_same_logits(request, kind, tmp_path):
    from peft import PeftModel

    plm = plm_of(request, kind)
    base = copy.deepcopy(plm.model)
    model = build(plm, num_tokens=5)
    assert model.prompt_tokenizer.prefix_ids == []  # PEFT puts its tokens before everything
    with torch.no_grad():
        model.soft_prompt.weight.add_(torch.randn_like(model.soft_prompt.weight))  # as if trained
    (method,) = model.methods
    assert method.peft_format
    written = method.export(model, tmp_path / "peft")
    assert written == tmp_path / "peft" and (written / "adapter_model.safetensors").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(base, str(written)).eval()
    # One example at a time: PEFT ignores position ids, so left padding would shift positions.
    for example in TRAIN[:3]:
        batch = model.collate(model.encode([example]))
        with torch.no_grad():
            ours = model.model(**model.embed(batch)).logits
            text = slice(5, None)  # PEFT is given the text only; it adds the virtual tokens
            theirs = peft_model(input_ids=batch["input_ids"][:, text], attention_mask=batch["attention_mask"][:, text]).logits
        assert theirs.shape == ours.shape
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_peft_adapter_for_t5_feeds_the_encoder(request, tmp_path):
    from peft import PeftModel

    plm = plm_of(request, "t5")
    base = copy.deepcopy(plm.model)
    model = build(plm, num_tokens=3)
    written = model.methods[0].export(model, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(base, str(written)).eval()
    batch = model.collate(model.encode(TRAIN[:1]))
    decoder = torch.tensor([[plm.model.config.decoder_start_token_id, model.prompt_tokenizer.mask_id]])
    with torch.no_grad():
        ours = model.model(**model.embed(batch), decoder_input_ids=decoder).logits
        theirs = peft_model(
            input_ids=batch["input_ids"][:, 3:], attention_mask=batch["attention_mask"][:, 3:], decoder_input_ids=decoder
        ).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_no_peft_adapter_when_peft_cannot_express_the_model(request, tmp_path, caplog):
    bert = plm_of(request, "bert")
    with caplog.at_level(logging.INFO, logger="deltaprompt.delta.prompt_tuning.model"):
        model = build(bert)
        assert model.methods[0].export(model, tmp_path / "a") is None
    assert "before the input" in caplog.text  # [CLS] comes before the soft tokens
    gpt2 = plm_of(request, "gpt2")
    middle = build(gpt2, template='{text} {"soft": "It was"} {mask}', num_tokens=0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deltaprompt.delta.prompt_tuning.model"):
        assert middle.methods[0].export(middle, tmp_path / "b") is None
    assert "very start" in caplog.text
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
