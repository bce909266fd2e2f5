"""P-Tuning: a prompt encoder produces the template's soft tokens, and folds back into a table."""


import pytest
import torch

from deltaprompt import PromptModel, Template, Verbalizer
from deltaprompt.delta import make_methods
from deltaprompt.delta.p_tuning.layer import PromptEncoder
from deltaprompt.model import SoftPrompt
from deltaprompt.schema import ConfigError

from .conftest import TRAIN, WORDS, plm_of, responsive, train_steps

# P-Tuning's layout: prompts around the input (random block in front, text-initialised before the mask).
TEMPLATE = '{"soft": None, "duplicate": 3} {text} {"soft": "It was"} {mask}'
END = {"masked": ".", "causal": "", "seq2seq": "."}


def build(plm, template=TEMPLATE, methods=None, **options) -> PromptModel:
    methods = methods if methods is not None else [{"method": "p_tuning", **options}]
    return PromptModel(plm, template + END[plm.family], Verbalizer(WORDS), methods=methods)


def test_config_and_rewrite():
    (method,) = make_methods(["p_tuning"])
    assert method.config.encoder == "lstm" and method.config.num_tokens == 0 and method.order == 70
    own = Template(TEMPLATE)
    assert method.rewrite_template(own) is own  # the template places the prompts
    with pytest.raises(ConfigError, match="has none"):
        method.rewrite_template(Template("{text} It was {mask}"))
    (prepending,) = make_methods([{"method": "p_tuning", "num_tokens": 3}])
    rewritten = prepending.rewrite_template(Template("{text} It was {mask}"))
    assert rewritten.parts[0].kind == "soft" and rewritten.soft_groups[0].length == 3
    with pytest.raises(ConfigError, match="even"):
        make_methods([{"method": "p_tuning", "hidden_size": 33}])
    with pytest.raises(ConfigError, match="must be one of"):
        make_methods([{"method": "p_tuning", "encoder": "gru"}])


@pytest.mark.parametrize(
    ("kind", "encoder"),
    [("bert", "lstm"), ("gpt2", "lstm"), ("llama", "lstm"), ("t5", "lstm"), ("bert", "mlp"), ("gpt2", "mlp")],
)
def test_only_the_encoder_trains_and_the_loss_falls(request, kind, encoder):
    plm = responsive(plm_of(request, kind))
    model = build(plm, encoder=encoder, lr=1e-2)
    assert isinstance(model.soft_prompt, PromptEncoder)
    trainable = model.trainable_parameters()
    assert trainable and all(name.startswith("soft_prompt.") for name in trainable)
    assert {n.split(".")[1] for n in trainable} == ({"embedding", "lstm", "mlp"} if encoder == "lstm" else {"embedding", "mlp"})
    assert all(model.role_of(n, p) == ("soft", 1e-2) for n, p in trainable.items())
    # One output row per soft token of the template: 3 random + the tokens of " It was".
    rows = 3 + len(plm.tokenizer(" It was", add_special_tokens=False)["input_ids"])
    assert model.soft_prompt().shape == (rows, plm.model.get_input_embeddings().weight.size(1))

    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    old = {n: p.detach().clone() for n, p in trainable.items()}
    losses = train_steps(model, TRAIN, steps=1, lr=1e-2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in model.model.parameters())
    assert all(not torch.equal(old[n], p.detach()) for n, p in trainable.items())
    losses += train_steps(model, TRAIN, steps=29, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    assert losses[-1] < 0.8 * losses[0], losses


def test_lstm_encoder_is_the_papers(request):
    plm = plm_of(request, "bert")
    encoder = build(plm).soft_prompt
    assert encoder.lstm.bidirectional and encoder.lstm.num_layers == 2
    assert encoder.lstm.hidden_size * 2 == 32  # PLM width, half per direction
    linears = [m for m in encoder.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and linears[-1].out_features == 32
    # Bidirectional: changing the last input vector changes the first output row.
    with torch.no_grad():
        first = encoder()[0].clone()
        encoder.embedding[-1] += 1.0
        assert not torch.equal(first, encoder()[0])


@pytest.mark.parametrize(("kind", "encoder"), [("bert", "lstm"), ("gpt2", "mlp"), ("t5", "lstm")])
def test_fold_keeps_predictions_and_leaves_a_plain_table(request, kind, encoder):
    plm = plm_of(request, kind)
    model = build(plm, encoder=encoder, dropout=0.0 if encoder == "mlp" else 0.3).eval()
    batch = model.collate(model.encode(TRAIN))
    with torch.no_grad():
        expected = model(batch)
        table = model.soft_prompt()
    assert model.fold() is True
    assert type(model.soft_prompt) is SoftPrompt
    assert [n for n, _ in model.named_parameters() if n.startswith("soft_prompt.")] == ["soft_prompt.weight"]
    assert not any(isinstance(m, PromptEncoder | torch.nn.LSTM) for m in model.modules())
    torch.testing.assert_close(model.soft_prompt.weight.detach(), table, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected, atol=0, rtol=0)
    assert model.role_of("soft_prompt.weight", model.soft_prompt.weight)[0] == "soft"
    assert model.fold() is False  # already folded


def test_shared_soft_id_slots_read_the_same_encoder_row(request):
    plm = plm_of(request, "gpt2")
    model = build(plm, template='{"soft": None, "soft_id": "s"} {text} {"soft_id": "s"} It was {mask}', encoder="mlp")
    assert model.soft_prompt().shape[0] == 1
    batch = model.collate(model.encode(TRAIN[:2]))
    embeds = model.embed(batch)["inputs_embeds"]
    slots = embeds[batch["soft_index"] == 0]
    assert slots.shape[0] == 4  # two slots in each of two rows
    torch.testing.assert_close(slots, model.soft_prompt()[0].expand_as(slots))


def test_with_finetune_the_plm_trains_too(request):
    plm = plm_of(request, "gpt2")
    model = build(plm, methods=["p_tuning", "finetune"])
    assert all(p.requires_grad for p in model.model.parameters())
    assert isinstance(model.soft_prompt, PromptEncoder)
    name, parameter = next(iter(model.model.named_parameters()))
    assert model.role_of("model." + name, parameter)[0] == "plm"
