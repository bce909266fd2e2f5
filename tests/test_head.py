"""HeadModel: classic fine-tuning with a classification head on pooled trunk states."""

import pytest
import torch

from deltaprompt import Example
from deltaprompt.head import HeadModel, pair_template_text

from .conftest import TOKENIZER_OF, tiny_plm

CLASSES = ["negative", "positive"]
TEXTS = ["the movie was great", "a terrible boring film with a dull plot", "film"]  # three lengths
TRAIN = [
    Example("the movie was great", label="positive"),
    Example("great acting and a wonderful plot", label="positive"),
    Example("a wonderful film", label="positive"),
    Example("the acting was great", label="positive"),
    Example("a terrible boring film", label="negative"),
    Example("the plot was dull", label="negative"),
    Example("boring and terrible", label="negative"),
    Example("a dull terrible movie", label="negative"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning OpenMP
    threads slow them down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plm_of(request, kind):
    return tiny_plm(kind, request.getfixturevalue(TOKENIZER_OF[kind]))


def input_sensitive(plm):
    """The conftest models start at BERT's 0.02 weight scale, where two random layers pass
    almost nothing of the input on (the [CLS] state barely depends on the text); a wider init
    makes a frozen one worth probing (T5's init already is)."""
    if plm.family != "seq2seq":
        torch.manual_seed(1)
        plm.model.config.initializer_range = 0.5
        plm.model.apply(plm.model._init_weights)
    return plm


def nll(model, batch) -> torch.Tensor:
    targets = torch.tensor([model.classes.index(e.label) for e in TRAIN])
    return torch.nn.functional.nll_loss(model(batch), targets)


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
    plm = input_sensitive(plm_of(request, kind))
    model = HeadModel(plm, CLASSES, methods=[]).eval()  # eval: no dropout, a deterministic check
    trainable = model.trainable_parameters()
    assert set(trainable) == {"head.1.weight", "head.1.bias"}
    assert all(model.role_of(n, p) == ("head", None) for n, p in trainable.items())
    batch = model.collate(model.encode(TRAIN))
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=3e-2)
    losses = []
    for step in range(30):
        optimizer.zero_grad()
        loss = nll(model, batch)
        loss.backward()
        if step == 0:
            assert all(p.grad.abs().sum() > 0 for p in trainable.values())
            assert all(p.grad is None for p in model.model.parameters())
            old = {n: p.detach().clone() for n, p in trainable.items()}
        optimizer.step()
        if step == 0:
            assert all(not torch.equal(old[n], p.detach()) for n, p in trainable.items())
        losses.append(loss.item())
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
    batch = model.collate(model.encode(TRAIN))
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = nll(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
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
