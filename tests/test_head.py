"""HeadModel: classic fine-tuning with a classification head on pooled trunk states."""

import pytest
import torch

from deltaprompt import Example
from deltaprompt.head import HeadModel, pair_template_text

from .conftest import TRAIN, plm_of, responsive, train_steps

CLASSES = ["negative", "positive"]
TEXTS = ["the movie was great", "a terrible boring film with a dull plot", "film"]  # three lengths


def by_hand_pooled(plm, text: str, pooling: str) -> torch.Tensor:
    """One example, unpadded, through the HF model itself: its last_hidden_state pooled."""
    ids = torch.tensor([plm.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        if plm.family == "seq2seq":
            hidden = plm.model.get_encoder()(input_ids=ids).last_hidden_state[0]
        else:
            hidden = plm.model.base_model(input_ids=ids).last_hidden_state[0]
    return {"cls": hidden[0], "mean": hidden.mean(0), "last": hidden[-1]}[pooling]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_picks_the_right_hidden_states(request, kind, pooling):
    plm = plm_of(request, kind)
    model = HeadModel(plm, CLASSES, pooling=pooling).eval()
    examples = [Example(t) for t in TEXTS]
    encodings = model.encode(examples)
    assert [e.input_ids for e in encodings] == [plm.tokenizer(t)["input_ids"] for t in TEXTS]
    batch = model.collate(encodings)
    assert batch["attention_mask"].sum(1).unique().numel() == 3  # really padded
    with torch.no_grad():
        pooled = model.pool(model.hidden_states(batch), batch["attention_mask"])
        scores = model(batch)
    for row, text in enumerate(TEXTS):
        torch.testing.assert_close(pooled[row], by_hand_pooled(plm, text, pooling), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores, torch.log_softmax(model.head(pooled), -1))
    assert scores.shape == (3, 2) and torch.allclose(scores.exp().sum(-1), torch.ones(3))


def test_default_pooling_by_family(request):
    expected = {"bert": "cls", "gpt2": "last", "t5": "mean"}
    for kind, pooling in expected.items():
        assert HeadModel(plm_of(request, kind), CLASSES).pooling == pooling


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "t5"])
def test_the_lm_head_is_never_computed(request, kind):
    plm = plm_of(request, kind)
    model = HeadModel(plm, CLASSES)
    assert model.template.text == "{text}"

    def refuse(module, args):
        raise AssertionError(f"{type(module).__name__} ran")

    handles = [plm.model.get_output_embeddings().register_forward_pre_hook(refuse)]
    if plm.model.config.is_encoder_decoder:
        handles.append(plm.model.get_decoder().register_forward_pre_hook(refuse))
    try:
        batch = model.collate(model.encode([Example(t) for t in TEXTS]))
        scores = model(batch)
        scores.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    assert scores.shape == (3, 2)


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "t5"])
def test_pairs_are_joined_as_the_tokenizer_joins_them(request, kind):
    plm = plm_of(request, kind)
    model = HeadModel(plm, CLASSES)
    a, b = "the movie was great", "the acting was wonderful"
    (single, pair) = model.encode([Example(a), Example(a, b)])
    assert single.input_ids == plm.tokenizer(a)["input_ids"]
    if kind == "gpt2":  # nothing between the texts in GPT-2's pair encoding: one text, a space
        assert pair_template_text(plm.tokenizer) == "{text} {text_b}"
        assert pair.input_ids == plm.tokenizer(a + " " + b)["input_ids"]
    else:
        assert pair.input_ids == plm.tokenizer(a, b)["input_ids"]
    scores = model(model.collate([single, pair]))
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def test_a_template_of_ones_own_with_soft_tokens(request):
    plm = plm_of(request, "bert")
    model = HeadModel(plm, CLASSES, template='{"soft": "review"} {text} {"soft": None, "duplicate": 2}', methods=[])
    assert model.pair_tokenizer is None  # the user's template is used for every example
    assert set(model.trainable_parameters()) == {"soft_prompt.weight", "head.1.weight", "head.1.bias"}
    embed = plm.model.get_input_embeddings()
    review = plm.tokenizer(" review", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(model.soft_prompt.weight[: len(review)].detach(), embed(torch.tensor(review)).detach())
    batch = model.collate(model.encode(TRAIN[:2]))
    nll_two = torch.nn.functional.nll_loss(model(batch), torch.tensor([1, 1]))
    nll_two.backward()
    assert (model.soft_prompt.weight.grad.abs().sum(1) > 0).all()
    with pytest.warns(UserWarning, match="randomly initialised"):  # nothing will train them
        HeadModel(plm, CLASSES, template='{"soft": None} {text}')


def test_seed_fixes_the_initial_head(request):
    plm = plm_of(request, "bert")
    first, again, other = (HeadModel(plm, CLASSES, seed=s).head[1].weight for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_refusals(request):
    plm = plm_of(request, "bert")
    with pytest.raises(ValueError, match="mask"):
        HeadModel(plm, CLASSES, template="{text} It was {mask}.")
    with pytest.raises(ValueError, match="two"):
        HeadModel(plm, ["only"])
    with pytest.raises(ValueError, match="distinct"):
        HeadModel(plm, ["a", "a"])
    with pytest.raises(ValueError, match="pooling"):
        HeadModel(plm, CLASSES, pooling="max")


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_frozen_plm_only_the_head_trains_and_the_loss_falls(request, kind):
    plm = responsive(plm_of(request, kind))
    model = HeadModel(plm, CLASSES, methods=[]).eval()  # eval: no dropout, a deterministic check
    trainable = model.trainable_parameters()
    assert set(trainable) == {"head.1.weight", "head.1.bias"}
    assert all(model.role_of(n, p) == ("head", None) for n, p in trainable.items())
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    old = {n: p.detach().clone() for n, p in trainable.items()}
    losses = train_steps(model, TRAIN, steps=1, lr=3e-2)
    assert all(p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in model.model.parameters())
    assert all(not torch.equal(old[n], p.detach()) for n, p in trainable.items())
    losses += train_steps(model, TRAIN, steps=29, lr=3e-2)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_full_fine_tuning_trains_the_plm_and_the_loss_falls(request, kind):
    plm = plm_of(request, kind)
    model = HeadModel(plm, CLASSES, dropout=0.0, methods=["finetune"])
    parameters = dict(model.named_parameters())
    assert set(model.trainable_parameters()) == set(parameters)
    assert {model.role_of(n, p)[0] for n, p in parameters.items() if n.startswith("model.")} == {"plm"}
    assert {model.role_of(n, p)[0] for n, p in parameters.items() if not n.startswith("model.")} == {"head"}
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    losses = train_steps(model, TRAIN, steps=20, lr=1e-3)
    assert any(not torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    assert losses[-1] < 0.8 * losses[0], losses


def test_prompt_tuning_with_a_head(request):
    plm = plm_of(request, "gpt2")
    model = HeadModel(plm, CLASSES, methods=[{"method": "prompt_tuning", "num_tokens": 3}])
    assert model.template.parts[0].kind == "soft" and model.pair_template.parts[0].kind == "soft"
    assert set(model.trainable_parameters()) == {"soft_prompt.weight", "head.1.weight", "head.1.bias"}
    assert model.role_of("soft_prompt.weight", model.soft_prompt.weight) == ("soft", 3e-2)
    (single, pair) = model.encode([Example("a film"), Example("a film", "the plot")])
    assert single.soft_positions == pair.soft_positions == [0, 1, 2]
    assert model.methods[0].export(model, None) is None  # the head has no place in a PEFT adapter


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_last_token_pooling_reads_the_same_token_under_left_and_right_padding(request, kind):
    plm = plm_of(request, kind)
    model = HeadModel(plm, CLASSES).eval()
    assert model.pooling == "last"
    encodings = model.encode([Example(t) for t in TEXTS])
    left = model.collate(encodings)  # a decoder's batches pad on the left
    lengths = [len(e.input_ids) for e in encodings]
    width = max(lengths)
    assert (left["attention_mask"][:, -1] == 1).all() and len(set(lengths)) == 3
    input_ids = torch.full((len(encodings), width), model.prompt_tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, encoding in enumerate(encodings):  # the same encodings, padded on the right by hand
        input_ids[row, : lengths[row]] = torch.tensor(encoding.input_ids)
        mask[row, : lengths[row]] = 1
    right = {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    with torch.no_grad():
        pooled = {name: model.pool(model.hidden_states(batch), batch["attention_mask"])
                  for name, batch in (("left", left), ("right", right))}
        scores = {name: model(batch) for name, batch in (("left", left), ("right", right))}
    torch.testing.assert_close(pooled["left"], pooled["right"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores["left"], scores["right"], atol=1e-5, rtol=1e-4)
    for row, text in enumerate(TEXTS):  # and it is the last real token's state
        torch.testing.assert_close(pooled["right"][row], by_hand_pooled(plm, text, "last"), atol=1e-5, rtol=1e-4)
