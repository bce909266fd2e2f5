"""Soft tokens of the template itself, trained with a frozen PLM (``methods=[]``)."""

import pytest
import torch
import torch.nn.functional as F

from deltaprompt import Example, PromptModel, Verbalizer

from .conftest import labelled_batch, plm_of

WORDS = Verbalizer({"negative": "terrible", "positive": "great"})
EXAMPLES = [Example("the movie was great", label="positive"), Example("a boring film with a dull plot", label="negative")]
END = {"masked": ".", "causal": "", "seq2seq": "."}  # a causal LM predicts at the end


def build(request, kind: str, template: str) -> PromptModel:
    plm = plm_of(request, kind)
    return PromptModel(plm, template + END[plm.family], WORDS, methods=[])


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_soft_tokens_in_the_middle_are_placed_there_and_get_gradients(request, kind):
    model = build(request, kind, '{text} {"soft": None, "duplicate": 2} It was {mask}')
    assert set(model.trainable_parameters()) == {"soft_prompt.weight"}
    assert model.role_of("soft_prompt.weight", model.soft_prompt.weight) == ("soft", None)
    batch, labels = labelled_batch(model, EXAMPLES)
    soft_index = batch["soft_index"]
    for row in range(len(EXAMPLES)):
        columns = (soft_index[row] >= 0).nonzero().flatten().tolist()
        valid = batch["attention_mask"][row].nonzero().flatten().tolist()
        assert len(columns) == 2 and valid[0] < columns[0] and columns[-1] < valid[-1]  # neither end
        assert soft_index[row, columns].tolist() == [0, 1]
    # The rows really are what the PLM reads at those columns; the others are the tokens.
    embeds = model.embed(batch)["inputs_embeds"]
    table = model.soft_prompt.weight
    hard = model.model.get_input_embeddings()(batch["input_ids"])
    picked = soft_index >= 0
    torch.testing.assert_close(embeds[picked], table[soft_index[picked]].to(embeds.dtype))
    torch.testing.assert_close(embeds[~picked], hard[~picked])

    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    optimizer = torch.optim.AdamW([table], lr=1e-2)
    F.nll_loss(model(batch), labels).backward()
    assert table.grad is not None and (table.grad.abs().sum(1) > 0).all()
    assert all(p.grad is None for p in model.model.parameters())
    old = table.detach().clone()
    optimizer.step()
    assert not torch.equal(old, table.detach())
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_a_soft_id_shares_one_row_and_its_gradient_sums_both_slots(request, kind):
    model = build(request, kind, '{"soft": None, "soft_id": 1} {text} {"soft_id": 1} It was {mask}')
    assert model.soft_prompt.weight.shape[0] == 1  # one vector for the two slots
    batch, labels = labelled_batch(model, EXAMPLES)
    assert ((batch["soft_index"] == 0).sum(1) == 2).all()

    captured = {}
    plain_embed = model.embed

    def embed_keeping_grad(b):
        inputs = plain_embed(b)
        inputs["inputs_embeds"].retain_grad()
        captured["embeds"] = inputs["inputs_embeds"]
        return inputs

    model.embed = embed_keeping_grad
    F.nll_loss(model(batch), labels).backward()
    per_slot = captured["embeds"].grad[batch["soft_index"] == 0]  # (2 examples x 2 slots, H)
    assert (per_slot.abs().sum(1) > 0).all()  # both slots contribute
    torch.testing.assert_close(model.soft_prompt.weight.grad[0], per_slot.sum(0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_text_initialised_soft_tokens_start_as_their_text_embeddings(request, kind):
    model = build(request, kind, '{text} {"soft": "great movie"} It was {mask}')
    ids = model.plm.tokenizer(" great movie", add_special_tokens=False)["input_ids"]
    assert model.prompt_tokenizer.soft_init_ids == ids
    embed = model.model.get_input_embeddings()
    torch.testing.assert_close(model.soft_prompt.weight.detach(), embed(torch.tensor(ids)).detach())


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_duplicate_expands_to_distinct_rows(request, kind):
    model = build(request, kind, '{"soft": None, "duplicate": 4} {text} It was {mask}')
    table = model.soft_prompt.weight.detach()
    assert table.shape[0] == 4
    assert all(not torch.equal(table[i], table[j]) for i in range(4) for j in range(i + 1, 4))
    (encoding,) = model.encode(EXAMPLES[:1])
    assert encoding.soft_tokens == [0, 1, 2, 3]
    start = len(model.prompt_tokenizer.prefix_ids)
    assert encoding.soft_positions == list(range(start, start + 4))
