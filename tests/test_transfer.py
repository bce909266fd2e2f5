"""Prompt transfer: saved soft prompts load bit for bit into a target's soft slots, shapes and
base models are checked, sources are ranked by similarity, and MLM prompt pre-training learns."""

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deltaprompt import Example, PromptClassifier
from deltaprompt.cli import main
from deltaprompt.plm import load_plm
from deltaprompt.transfer import (
    SourcePrompt,
    compare_initialisations,
    init_from,
    load_soft_prompt,
    most_similar_source,
    prompt_mlm_loss,
    prompt_pretrain_mlm,
    save_soft_prompt,
    soft_prompt_of,
    task_embedding,
)

from .conftest import CORPUS, TEMPLATE, TRAIN, WORDS, plm_of, responsive

OWN_SOFT = '{text} {"soft": "It was"} {mask}'  # a causal template with its own soft tokens after the block


def classifier(plm, num_tokens=4, seed=0, template=None, method="prompt_tuning", **options):
    spec = {"method": method, "num_tokens": num_tokens, **options}
    return PromptClassifier(plm, template or TEMPLATE[plm.family], WORDS, methods=[spec], seed=seed)


@pytest.fixture
def gpt2(request):
    return responsive(plm_of(request, "gpt2"))


def test_init_from_copies_the_source_bit_for_bit_into_the_prepended_rows_only(gpt2, tmp_path):
    source = classifier(gpt2, seed=1)
    path = save_soft_prompt(source, tmp_path / "src.safetensors", task="sst2")
    target = classifier(gpt2, seed=2, template=OWN_SOFT)
    table = target.model.soft_prompt.weight
    own_rows = table[4:].detach().clone()
    assert table.size(0) > 4 and not torch.equal(table[:4], source.model.soft_prompt.weight)
    returned = init_from(target, path)
    assert returned is table
    assert torch.equal(table[:4], source.model.soft_prompt.weight.detach())
    assert torch.equal(table[4:], own_rows)  # the template's own soft tokens are left alone
    assert table.dtype == torch.float32 and table.requires_grad


def test_a_shape_mismatch_names_both_shapes_and_the_fix(gpt2):
    target = classifier(gpt2, num_tokens=6)
    with pytest.raises(ValueError, match=r"\(4, 32\).*\(6, 32\).*4 vs 6 tokens.*num_tokens=4"):
        init_from(target, torch.zeros(4, 32))
    with pytest.raises(ValueError, match=r"\(6, 16\).*\(6, 32\).*hidden size 16 vs 32"):
        init_from(target, torch.zeros(6, 16))
    before = target.model.soft_prompt.weight.detach().clone()
    assert torch.equal(target.model.soft_prompt.weight, before)  # nothing was written
    plain = PromptClassifier(gpt2, TEMPLATE["causal"], WORDS, methods=[])
    with pytest.raises(ValueError, match="no soft tokens.*prompt_tuning"):
        init_from(plain, torch.zeros(4, 32))


def test_another_base_model_is_refused_or_warned_about(gpt2):
    target = classifier(gpt2)
    foreign = SourcePrompt(vectors=torch.ones(4, 32), base_model="other", base_fingerprint="0" * 20, task="x")
    with pytest.raises(ValueError, match="fingerprint"):
        init_from(target, foreign)
    assert not torch.equal(target.model.soft_prompt.weight, foreign.vectors)
    with pytest.warns(UserWarning, match="another embedding space"):
        init_from(target, foreign, base_mismatch="warn")
    assert torch.equal(target.model.soft_prompt.weight, foreign.vectors)


def test_metadata_round_trips(gpt2, tmp_path):
    source = classifier(gpt2, seed=3)
    path = save_soft_prompt(source, tmp_path / "folder", task="sst2", note="16-shot", task_examples=TRAIN)
    assert path == tmp_path / "folder" / "soft_prompt.safetensors"
    loaded = load_soft_prompt(tmp_path / "folder")
    assert torch.equal(loaded.vectors, source.model.soft_prompt.weight.detach())
    assert (loaded.num_tokens, loaded.hidden_size, loaded.vectors.dtype) == (4, 32, torch.float32)
    assert loaded.base_fingerprint == source.model.base_fingerprint and loaded.base_model == "tiny-gpt2"
    assert (loaded.task, loaded.note, loaded.method) == ("sst2", "16-shot", "prompt_tuning")
    assert loaded.template == TEMPLATE["causal"]
    assert torch.allclose(loaded.task_embedding, task_embedding(gpt2, TRAIN))
    save_file({"soft_prompt": torch.zeros(4, 32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a deltaprompt soft prompt"):
        load_soft_prompt(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="no soft prompt"):
        load_soft_prompt(tmp_path / "missing")


def test_most_similar_source_ranks_identical_first_and_negated_last(gpt2):
    torch.manual_seed(0)
    mine = torch.randn(4, 32)
    sources = [SourcePrompt(-mine, task="negated"), SourcePrompt(torch.randn(4, 32), task="other"),
               SourcePrompt(mine.clone(), task="identical"), SourcePrompt(mine[:2].clone(), task="shorter")]
    ranking = most_similar_source(mine, sources, by="prompt")
    assert [m.name for m in ranking][0] in ("identical", "shorter") and ranking[-1].name == "negated"
    by_name = {m.name: m.similarity for m in ranking}
    assert by_name["identical"] == pytest.approx(1.0) and by_name["negated"] == pytest.approx(-1.0)
    assert abs(by_name["other"]) < 0.5
    # Different lengths compare mean vectors.
    assert by_name["shorter"] == pytest.approx(float(torch.cosine_similarity(mine.mean(0), mine[:2].mean(0), dim=0)))


def test_most_similar_source_by_task_embedding(gpt2):
    positive = [e for e in TRAIN if e.label == "positive"]
    other = [Example(t) for t in ("world sports business", "question answer premise hypothesis")]
    sources = [SourcePrompt(torch.zeros(4, 32), task="news", task_embedding=task_embedding(gpt2, other)),
               SourcePrompt(torch.zeros(4, 32), task="reviews")]
    ranking = most_similar_source(positive, sources, gpt2, by="task", source_examples={"reviews": positive})
    assert [m.name for m in ranking] == ["reviews", "news"] and ranking[0].similarity == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no stored task embedding"):
        most_similar_source(positive, sources, gpt2, by="task")


def test_a_trained_prompt_transferred_to_a_new_classifier_predicts_identically(gpt2, tmp_path):
    texts = [e.text for e in TRAIN]
    source = classifier(gpt2, seed=5)
    source.fit(TRAIN, epochs=3, batch_size=4, tensorboard=False, progress=False)
    expected = source.predict_log_proba(texts)
    source.save(tmp_path / "run" / "model")
    save_soft_prompt(source, tmp_path / "p.safetensors")
    for where in (tmp_path / "p.safetensors", tmp_path / "run" / "model"):
        target = classifier(gpt2, seed=6)
        assert not np.allclose(target.predict_log_proba(texts), expected)
        init_from(target, where)
        assert torch.equal(target.model.soft_prompt.weight, source.model.soft_prompt.weight)
        np.testing.assert_array_equal(target.predict_log_proba(texts), expected)
    assert load_soft_prompt(tmp_path / "run" / "model").task == "run"


def test_p_tuning_is_saved_as_its_encoder_output(gpt2):
    source = classifier(gpt2, method="p_tuning", encoder="mlp", seed=7)
    prompt = soft_prompt_of(source)
    with torch.no_grad():
        assert torch.equal(prompt.vectors, source.model.soft_prompt())
    target = classifier(gpt2, seed=8)
    init_from(target, prompt)
    texts = [e.text for e in TRAIN]
    np.testing.assert_allclose(target.predict_log_proba(texts), source.predict_log_proba(texts), atol=1e-6)


def test_compare_initialisations_gives_one_row_per_init_and_seed(gpt2):
    prompt = soft_prompt_of(classifier(gpt2, seed=9), task="src")
    rows = compare_initialisations(gpt2, TRAIN, None, TRAIN, TEMPLATE["causal"], WORDS, prompt, seeds=[1, 2],
                                   train_options={"epochs": 1, "batch_size": 8, "progress": False})
    assert [(r["init"], r["seed"]) for r in rows] == [(i, s) for s in (1, 2) for i in ("random", "text", "transfer")]
    assert all(r["num_tokens"] == 4 and r["n_test"] == len(TRAIN) and 0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[2]["source"] == "src" and rows[0]["source"] is None


@pytest.fixture
def roberta(request):
    return responsive(plm_of(request, "roberta"))


def test_mlm_prompt_pretraining_moves_the_soft_tokens_and_lowers_the_loss(roberta, tmp_path):
    torch.manual_seed(0)
    start = torch.randn(4, 32) * 0.5
    weights = {n: p.detach().clone() for n, p in roberta.model.named_parameters()}
    prompt = prompt_pretrain_mlm(roberta, CORPUS, 4, init=start.clone(), steps=40, lr=5e-2, batch_size=16,
                                 mask_probability=0.3, seed=1)
    assert prompt.vectors.shape == (4, 32) and not torch.allclose(prompt.vectors, start)
    assert all(torch.equal(p, weights[n]) for n, p in roberta.model.named_parameters())  # the PLM stays frozen
    held_out = CORPUS[:5]
    before = np.mean([prompt_mlm_loss(roberta, held_out, start, seed=s, mask_probability=0.3) for s in range(8)])
    after = np.mean([prompt_mlm_loss(roberta, held_out, prompt.vectors, seed=s, mask_probability=0.3) for s in range(8)])
    assert after < 0.95 * before, (before, after)
    assert prompt.extra["last_loss"] < prompt.extra["first_loss"]
    path = save_soft_prompt(prompt, tmp_path / "mlm.safetensors")
    target = classifier(roberta, template=TEMPLATE["masked"])
    init_from(target, path)
    assert torch.equal(target.model.soft_prompt.weight, prompt.vectors)


def test_mlm_prompt_pretraining_refuses_a_causal_lm(gpt2):
    with pytest.raises(ValueError, match="masked-LM objective.*causal"):
        prompt_pretrain_mlm(gpt2, CORPUS, 4, steps=1)


def test_cli_transfer_picks_the_source_and_writes_the_report(tmp_path, model_dir):
    plm = load_plm(model_dir)
    data = tmp_path / "target.jsonl"
    rows = [{"text": e.text, "label": e.label} for e in TRAIN * 2]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good = classifier(plm, seed=1)
    save_soft_prompt(good, tmp_path / "good.safetensors", task="good")
    flipped = SourcePrompt(-soft_prompt_of(good).vectors, base_model=plm.name,
                           base_fingerprint=good.model.base_fingerprint, task="flipped")
    save_soft_prompt(flipped, tmp_path / "flipped.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["transfer", "--source", str(tmp_path / "flipped.safetensors"), "--source",
                     str(tmp_path / "good.safetensors"), "--data", str(data), "--test-data", str(data), "--k", "2",
                     "--dev-per-class", "0", "--template", TEMPLATE["causal"], "--label-words",
                     "negative: terrible; positive: great", "--epochs", "1", "--seeds", "1",
                     "--inits", "random,transfer", "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [r["init"] for r in result["runs"]] == ["random", "transfer"]
    assert len(result["ranking"]) == 2 and result["chosen_source"]["name"] == result["ranking"][0]["name"]
    assert result["ranking"][0]["similarity"] >= result["ranking"][1]["similarity"]
    assert result["ranking"][0]["similarity"] == pytest.approx(-result["ranking"][1]["similarity"])
    assert "| transfer | 1 |" in (tmp_path / "out" / "transfer.md").read_text()


def test_cli_transfer_by_task_embedding_picks_the_source_of_similar_texts(tmp_path, model_dir):
    plm = load_plm(model_dir)
    data = tmp_path / "target.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in TRAIN * 2))
    news = [Example(t) for t in ("world sports business science", "question answer premise hypothesis")]
    save_soft_prompt(classifier(plm, seed=1), tmp_path / "reviews.safetensors", task="reviews", task_examples=TRAIN)
    save_soft_prompt(classifier(plm, seed=2), tmp_path / "news.safetensors", task="news", task_examples=news)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["transfer", "--source", str(tmp_path / "news.safetensors"), "--source",
                     str(tmp_path / "reviews.safetensors"), "--by", "task", "--data", str(data), "--test-data",
                     str(data), "--k", "2", "--dev-per-class", "0", "--template", TEMPLATE["causal"],
                     "--label-words", "negative: terrible; positive: great", "--epochs", "1", "--seeds", "1",
                     "--inits", "transfer", "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [m["name"] for m in result["ranking"]] == ["reviews", "news"]
    assert result["chosen_source"]["name"] == "reviews" and [r["source"] for r in result["runs"]] == ["reviews"]
