"""Intrinsic-dimension tuning: the Fastfood and sparse projections (exact structure, scale,
transpose, reproducibility from the seed), and the method on every family (only z and the SAID
scales train, the model starts unchanged, it learns, saved z reloads)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import parametrize

from deltaprompt import PromptModel
from deltaprompt.delta import make_method
from deltaprompt.delta.intrinsic.layer import (
    Fastfood,
    SparseProjection,
    fwht,
    hadamard,
    project,
)
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

SMALL = {"method": "intrinsic", "dimension": 64}


def build(request, kind: str, methods=None) -> PromptModel:
    return prompt_model(responsive(plm_of(request, kind)), methods)


def columns(projection, dtype=torch.float64) -> torch.Tensor:
    """The projection as a dense (numel, dimension) matrix: its images of the basis vectors."""
    basis = torch.eye(projection.dimension, dtype=dtype)
    return torch.stack([projection.forward_map(e) for e in basis], 1)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- projections

def textbook_fwht(x: torch.Tensor) -> torch.Tensor:
    """Radix-2 butterflies, one bit of the index at a time."""
    *lead, n = x.shape
    half = 1
    while half < n:
        pairs = x.reshape(*lead, n // (2 * half), 2, half)
        x = torch.stack((pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]), -2)
        half *= 2
    return x.reshape(*lead, n)


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128, 512])  # 0 to 2 passes, even and uneven splits
def test_fwht_is_the_sylvester_hadamard_matrix(n):
    x = torch.randn(2, 3, n, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ hadamard(n, torch.float64))
    torch.testing.assert_close(textbook_fwht(x), x @ hadamard(n, torch.float64))
    torch.testing.assert_close(fwht(fwht(x)), n * x)  # H H = n I
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(3))


def test_fwht_of_long_vectors_matches_radix_2():
    x = torch.randn(2, 1 << 16, dtype=torch.float64)  # 3 passes (6 + 5 + 5 bits)
    torch.testing.assert_close(fwht(x), textbook_fwht(x))


def test_fastfood_blocks_are_h_g_pi_h_b():
    fastfood = Fastfood(numel=100, dimension=12, generator=generator())
    assert fastfood.block == 16 and fastfood.gauss.shape == (7, 16)  # 7 blocks cover 100 entries
    h = hadamard(16, torch.float64)
    b = torch.diag(fastfood.signs.double())
    assert set(fastfood.signs.tolist()) == {-1, 1}
    blocks = []
    for j in range(7):
        pi = torch.eye(16, dtype=torch.float64)[fastfood.permutation[j].long()]
        assert sorted(fastfood.permutation[j].tolist()) == list(range(16))
        g = torch.diag(fastfood.gauss[j].double())
        blocks.append(h @ g @ pi @ h @ b)
    dense = torch.cat(blocks)[:100, :12]  # keep D rows; z is zero-padded to the block
    z = torch.randn(12, dtype=torch.float64)
    torch.testing.assert_close(fastfood.forward_map(z), dense @ z)
    torch.testing.assert_close(columns(fastfood), dense)


def test_fastfood_columns_have_unit_norm_and_are_nearly_orthogonal():
    exact = columns(Fastfood(numel=4096, dimension=16, generator=generator()))  # 16 divides 4096
    torch.testing.assert_close(exact.norm(dim=0), torch.ones(16, dtype=torch.float64))
    gram = exact.T @ exact
    off_diagonal = gram - torch.diag(torch.diag(gram))
    assert off_diagonal.abs().max() < 0.15  # std ~ sqrt(3 / (16 * 256)) = 0.027
    truncated = columns(Fastfood(numel=1000, dimension=16, generator=generator(1)))
    assert truncated.norm(dim=0).sub(1).abs().max() < 0.05
    single_block = columns(Fastfood(numel=512, dimension=500, generator=generator(2)))
    torch.testing.assert_close(single_block.norm(dim=0), torch.ones(500, dtype=torch.float64))


def test_sparse_projection_has_sqrt_d_entries_per_column_of_unit_expected_norm():
    sparse = SparseProjection(numel=10_000, dimension=200, generator=generator())
    dense = columns(sparse)
    assert sparse.per_column == 100
    assert ((dense != 0).sum(0) <= 100).all() and ((dense != 0).sum(0) >= 90).all()
    squared = dense.square().sum(0)
    assert abs(squared.mean().item() - 1) < 0.05
    assert dense.abs().max() <= 2 / math.sqrt(100) + 1e-12  # ±1/sqrt(k), twice where a row repeats


@pytest.mark.parametrize("kind", [Fastfood, SparseProjection])
@pytest.mark.parametrize("numel", [1, 50, 300])
def test_backward_is_the_transpose(kind, numel):
    projection = kind(numel=numel, dimension=8, generator=generator(numel))
    z = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: project(v, projection), (z,))
    grad = torch.randn(numel, dtype=torch.float64)
    torch.testing.assert_close(projection.transpose_map(grad), columns(projection).T @ grad)


@pytest.mark.parametrize("kind", [Fastfood, SparseProjection])
def test_projection_depends_only_on_its_generator(kind):
    first = kind(numel=700, dimension=20, generator=generator(5))
    torch.manual_seed(123)  # the global RNG plays no part
    second = kind(numel=700, dimension=20, generator=generator(5))
    other = kind(numel=700, dimension=20, generator=generator(6))
    assert torch.equal(columns(first), columns(second))
    assert not torch.allclose(columns(first), columns(other))


# ----------------------------------------------------------------------------- the method

@pytest.mark.parametrize("kind", KINDS)
def test_only_z_trains_and_the_model_learns(request, kind):
    base = class_log_probs(build(request, kind))
    model = build(request, kind, [SMALL])
    assert torch.equal(class_log_probs(model), base)  # z = 0: exactly the base model
    targets = model.methods[0].target_names
    trainable = model.trainable_parameters()
    assert set(trainable) == {"intrinsic.z", "intrinsic.scales"}
    assert sum(p.numel() for p in trainable.values()) == 64 + len(targets)
    assert all(model.role_of(n, p) == ("delta", 3e-2) for n, p in trainable.items())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_steps(model, TRAIN, steps=2, lr=3e-2)  # the scales' first gradient comes once z moved
    # The frozen base weights (now ...parametrizations.<name>.original) neither get gradients nor move.
    assert_only_trainable_moved(model, before, trainable)
    losses += train_steps(model, TRAIN, steps=28, lr=3e-2)
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_default_targets_are_every_weight_but_the_embeddings(request, kind):
    plm = plm_of(request, kind)
    names = [n for n, _ in plm.model.named_parameters()]
    model = prompt_model(plm, [{**SMALL, "said": False}])
    targets = model.methods[0].target_names
    embeddings = {n for n in names if any(e in n for e in ("wte", "wpe", "embed_tokens"))}
    assert embeddings and set(targets) == set(names) - embeddings
    assert not parametrize.is_parametrized(model.model.get_input_embeddings())
    assert not parametrize.is_parametrized(model.model.get_output_embeddings())
    assert sum(p.numel() for p in model.trainable_parameters().values()) == 64  # no scales without SAID


def test_parameters_another_method_trains_are_not_targets(request):
    model = build(request, "gpt2", ["bitfit", SMALL])
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert biases and not any(n.endswith(".bias") for n in model.methods[1].target_names)
    assert set(model.trainable_parameters()) == biases | {"intrinsic.z", "intrinsic.scales"}


def test_a_tied_embedding_target_moves_in_both_places(request):
    model = build(request, "llama", [{**SMALL, "target": r"embed_tokens"}])
    assert model.methods[0].target_names == ["model.embed_tokens.weight"]
    embed, head = model.model.get_input_embeddings(), model.model.get_output_embeddings()
    assert parametrize.is_parametrized(embed) and parametrize.is_parametrized(head)
    train_steps(model, TRAIN, steps=3, lr=3e-2)
    assert torch.equal(embed.weight, head.weight)
    assert not torch.equal(embed.weight, embed.parametrizations.weight.original)
    batch = model.collate(model.encode(TRAIN))
    with torch.no_grad():  # the scoring's fast path reads the output matrix itself
        torch.testing.assert_close(model.word_scores(batch, efficient=True), model.word_scores(batch, efficient=False))


def test_sparse_projection_learns(request):
    model = build(request, "gpt2", [{**SMALL, "projection": "sparse"}])
    losses = train_steps(model, TRAIN, steps=30, lr=3e-2)
    assert losses[-1] < 0.6 * losses[0], losses


def test_saved_z_reloads_with_the_same_projection_from_the_seed(request):
    method = {**SMALL, "seed": 7}
    model = build(request, "llama", [method])
    train_steps(model, TRAIN, steps=5, lr=3e-2)
    torch.manual_seed(999)  # whatever the global RNG did since

    def rebuilt(seed: int) -> PromptModel:
        again = build(request, "llama", [{**method, "seed": seed}])
        load_trained(again, model)
        return again

    same = rebuilt(7)
    for first, second in zip(model.intrinsic.projections, same.intrinsic.projections, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(first.buffers(), second.buffers(), strict=True))
    assert torch.equal(class_log_probs(same), class_log_probs(model))
    assert not model.fold() and torch.equal(class_log_probs(model), class_log_probs(same))  # no folded form
    other = rebuilt(8)
    assert not torch.equal(other.intrinsic.projections[0].gauss, model.intrinsic.projections[0].gauss)
    assert not torch.allclose(class_log_probs(other), class_log_probs(model), atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{"dimension": 0}, {"projection": "dense"}, {"target": "(unclosed"}, {"said": "yes"}, {"dim": 10}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ConfigError):
        make_method({"method": "intrinsic", **options})


def test_a_target_matching_nothing_is_refused(request):
    with pytest.raises(ValueError, match="no frozen parameter matching"):
        build(request, "gpt2", [{**SMALL, "target": "no_such_layer"}])
