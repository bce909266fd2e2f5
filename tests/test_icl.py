"""In-context learning: demonstration selection, prompt layouts, the shared-prefix cache,
calibration, saving and the ``icl`` command, on tiny models."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from deltaprompt import Example, ICLClassifier, PromptClassifier, load
from deltaprompt.cli import main
from deltaprompt.icl import SentenceEncoder
from deltaprompt.scoring import trunk

from .conftest import TRAIN, plm_of, responsive, tiny_plm
from .test_data import write_task

WORDS = {"negative": "terrible", "positive": "great"}
QUERIES = ["the movie was great", "a boring plot", "wonderful", "the acting", "dull and slow"]
KEYWORDS = ["great", "wonderful", "acting", "terrible", "boring", "dull", "plot", "film", "movie"]


def keyword_embeddings(texts):
    """Bag-of-keywords vectors (plus a small constant, so no text is all zeros)."""
    return np.array([[t.split().count(w) for w in KEYWORDS] + [0.1] for t in texts], dtype=np.float32)


def three_class_pool(per_class=4):
    return [Example(f"{label}{i}", label=label) for label in ("a", "b", "c") for i in range(per_class)]


@pytest.fixture
def gpt2(gpt2_tokenizer):
    return responsive(tiny_plm("gpt2", gpt2_tokenizer))


def icl(plm, **options):
    options.setdefault("demonstrations", TRAIN)
    return ICLClassifier(plm, options.pop("template", "{text} It was {mask}"), options.pop("words", WORDS), **options)


def texts(examples):
    return [e.text for e in examples]


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("selection", ["random", "balanced"])
def test_a_seed_fixes_the_shared_demonstrations(gpt2, selection):
    first = icl(gpt2, shots=4, selection=selection, seed=0).shared_demonstrations
    assert first is not None and len(first) == 4
    assert icl(gpt2, shots=4, selection=selection, seed=0).shared_demonstrations == first
    assert icl(gpt2, shots=4, selection=selection, seed=1).shared_demonstrations != first
    # Every query gets that set (none of them is in it).
    assert icl(gpt2, shots=4, selection=selection).demonstrations_for(["x y", "z"]) == [first, first]


def test_per_query_draws_are_seeded_by_the_seed_and_the_query(gpt2):
    queries = [f"query {i}" for i in range(6)]
    clf = icl(gpt2, shots=3, per_query=True, seed=5)
    assert clf.shared_demonstrations is None
    drawn = clf.demonstrations_for(queries)
    assert icl(gpt2, shots=3, per_query=True, seed=5).demonstrations_for(queries[::-1])[::-1] == drawn
    assert len({tuple(texts(d)) for d in drawn}) > 1  # not one set for all
    assert icl(gpt2, shots=3, per_query=True, seed=6).demonstrations_for(queries) != drawn


@pytest.mark.parametrize("shots", [2, 4, 5, 7])
@pytest.mark.parametrize("per_query", [False, True])
def test_balanced_selection_spreads_the_shots_over_the_classes(gpt2, shots, per_query):
    clf = icl(gpt2, words={"a": "great", "b": "terrible", "c": "movie"}, demonstrations=three_class_pool(),
              shots=shots, selection="balanced", per_query=per_query)
    for demonstrations in clf.demonstrations_for(["q one", "q two", "b1"]):
        counts = Counter(e.label for e in demonstrations)
        assert len(demonstrations) == shots
        assert max(counts.values()) - min(counts.get(c, 0) for c in "abc") <= 1


def test_the_query_is_never_its_own_demonstration(gpt2):
    clf = icl(gpt2, shots=4, seed=3)
    shared = clf.shared_demonstrations
    query = shared[1]
    [chosen] = clf.demonstrations_for([query])
    assert query.text not in texts(chosen) and len(chosen) == 4
    assert set(texts(shared)) - {query.text} <= set(texts(chosen))  # the rest of the shared set stays
    # Duplicates of the query in the pool are all passed over; the same text with another text_b is not the query.
    pool = [Example("same", label="positive"), Example("same", label="negative"), Example("other", label="positive"),
            Example("same", "b", label="negative"), Example("fourth", label="negative")]
    for selection in ("random", "balanced", "knn"):
        clf = icl(gpt2, demonstrations=pool, shots=3, selection=selection, encoder=keyword_embeddings)
        [chosen] = clf.demonstrations_for([Example("same")])
        assert [(e.text, e.text_b) for e in chosen].count(("same", None)) == 0, selection
        assert len(chosen) == 3 and ("same", "b") in [(e.text, e.text_b) for e in chosen], selection


def test_knn_picks_the_nearest_by_embedding_and_embeds_the_pool_once(gpt2):
    calls = []

    def encoder(batch):
        calls.append(len(batch))
        return keyword_embeddings(batch)

    clf = icl(gpt2, shots=3, selection="knn", encoder=encoder)
    query = "great acting and a great wonderful film"
    pool = keyword_embeddings(texts(TRAIN))
    vector = keyword_embeddings([query])[0]
    similarity = pool @ vector / np.linalg.norm(pool, axis=1) / np.linalg.norm(vector)
    nearest = [TRAIN[i].text for i in np.argsort(-similarity, kind="stable")[:3]]
    [chosen] = clf.demonstrations_for([query])
    assert texts(chosen) == nearest[::-1]  # most similar last, next to the query
    assert calls == [len(TRAIN), 1]
    clf.predict(["a dull film", "great"])
    assert calls == [len(TRAIN), 1, 2]  # the pool was embedded once
    assert icl(gpt2, shots=3, selection="knn", order="fixed", encoder=encoder).demonstrations_for([query]) == [
        sorted(chosen, key=TRAIN.index)]


def test_sentence_encoder_mean_pools_real_tokens_to_unit_vectors(bert_tokenizer):
    plm = tiny_plm("bert", bert_tokenizer)
    sentences = ["a great film", "dull"]
    embeddings = SentenceEncoder(plm)(sentences)
    for sentence, vector in zip(sentences, embeddings, strict=True):
        encoded = bert_tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            hidden = plm.model.base_model(**encoded).last_hidden_state[0]
        torch.testing.assert_close(vector, torch.nn.functional.normalize(hidden.mean(0), dim=0))


def test_a_token_budget_drops_the_least_relevant_demonstrations_not_the_query(gpt2):
    query = "the acting was great and the plot was wonderful"
    unlimited = icl(gpt2, shots=5, selection="knn", encoder=keyword_embeddings)
    budget = 40
    limited = icl(gpt2, shots=5, selection="knn", encoder=keyword_embeddings, max_length=budget)
    [everything] = unlimited.demonstrations_for([query])
    [kept] = limited.demonstrations_for([query])
    assert 0 < len(kept) < len(everything)
    assert kept == everything[-len(kept):]  # the most similar stay (they stand last)
    [feature] = limited.model.encode([query])
    ids = feature.feature.input_ids
    [alone] = limited.model.query_tokenizer.encode([Example(query)])
    assert len(ids) <= budget and feature.feature.num_truncated == 0
    assert ids[-len(alone.input_ids):] == alone.input_ids  # the query, whole, at the end
    with_one_more = limited.model.demonstration_ids(limited.model.selector.arrange(
        [TRAIN.index(e) for e in everything[::-1][: len(kept) + 1]], False))
    assert len(with_one_more) + len(alone.input_ids) > budget  # and no more would have fitted
    # The shared set gives way the same way, for long queries only.
    model = icl(gpt2, shots=6).model
    room = len(model.demonstration_ids(model.shared_plan)) + len(model.query_tokenizer.encode(["great"])[0].input_ids)
    shared = icl(gpt2, shots=6, max_length=room)
    short, long = shared.demonstrations_for(["great", "great and wonderful"])
    assert len(short) == 6 and len(long) < 6


# ----------------------------------------------------------------------------- prompt layouts

def test_decoder_prompts_put_the_demonstrations_before_the_query(gpt2, gpt2_tokenizer):
    clf = icl(gpt2, shots=2, separator=" || ")
    first, second = clf.shared_demonstrations
    words = {"positive": " great", "negative": " terrible"}
    expected = (f"{first.text} It was{words[first.label]} || {second.text} It was{words[second.label]} || "
                "a film It was [MASK]")
    assert clf.render_prompt("a film") == expected
    [feature] = icl(gpt2, shots=2, separator=" || ", share_prefix=False).model.encode(["a film"])
    demonstrations = gpt2_tokenizer(expected.split("a film")[0], add_special_tokens=False)["input_ids"]
    query = gpt2_tokenizer("a film It was", add_special_tokens=False)["input_ids"]
    assert feature.feature.input_ids == demonstrations + query
    assert feature.feature.predict_positions == [len(demonstrations + query) - 1]


def test_masked_lm_demonstrations_follow_the_query_as_in_lm_bff(bert_tokenizer):
    clf = icl(tiny_plm("bert", bert_tokenizer), template="{text} It was {mask}.", shots=2)
    first, second = clf.shared_demonstrations
    [feature] = clf.model.encode(["a film"])
    tokens = bert_tokenizer.convert_ids_to_tokens(feature.feature.input_ids)
    assert not feature.shared  # a masked LM reads both ways: nothing to cache
    expected = ["[CLS]", "a", "film", "it", "was", "[MASK]", ".", "[SEP]"]
    for demonstration in (first, second):
        expected += bert_tokenizer.tokenize(f"{demonstration.text} It was {WORDS[demonstration.label]}.") + ["[SEP]"]
    assert tokens == expected
    assert feature.feature.predict_positions == [5]
    np.testing.assert_allclose(clf.predict_proba(QUERIES).sum(1), 1, atol=1e-6)


def test_t5_reads_the_demonstrations_before_the_query_and_answers_its_sentinel(t5_tokenizer):
    clf = icl(tiny_plm("t5", t5_tokenizer), template="{text} It was {mask}.", shots=2)
    [feature] = clf.model.encode(["a film"])
    ids = feature.feature.input_ids
    sentinel = t5_tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert ids.count(sentinel) == 1 and feature.feature.predict_positions == [ids.index(sentinel)]
    query = t5_tokenizer("a film It was", add_special_tokens=False)["input_ids"]
    assert ids[ids.index(sentinel) - len(query) : ids.index(sentinel)] == query
    assert ids.index(sentinel) > len(query) + 4  # demonstrations stand before it
    np.testing.assert_allclose(clf.predict_proba(QUERIES).sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_zero_shots_is_the_plain_prompt(request, kind):
    plm = responsive(plm_of(request, kind))
    template = "{text} It was {mask}" + ("." if kind == "bert" else "")
    zero = icl(plm, template=template, shots=0, demonstrations=())
    plain = PromptClassifier(plm, template, WORDS)
    np.testing.assert_allclose(zero.predict_proba(QUERIES), plain.predict_proba(QUERIES), atol=1e-6)


# ----------------------------------------------------------------------------- the shared prefix

@pytest.mark.parametrize("kind, words", [
    ("gpt2", {"negative": "terrible boring", "positive": "great"}),
    ("llama", {"negative": "fantabulously bad", "positive": "great"}),
])
def test_the_shared_prefix_cache_gives_the_full_prompt_scores(request, kind, words):
    plm = responsive(plm_of(request, kind))
    assert any(len(ids) > 1 for ids in icl(plm, words=words, shots=0, demonstrations=()).model.label_words.token_ids)
    template = "Review: {text}\nSentiment: {mask}"
    cached = icl(plm, template=template, words=words, shots=4, selection="balanced", batch_size=2)
    full = icl(plm, template=template, words=words, shots=4, selection="balanced", batch_size=2, share_prefix=False)
    queries = [*QUERIES, cached.shared_demonstrations[0].text]  # the last one gets other demonstrations
    features = cached.model.encode(queries)
    assert [f.shared for f in features] == [True] * len(QUERIES) + [False]
    assert not any(f.shared for f in full.model.encode(queries))

    widths = []
    hook = trunk(plm.model).register_forward_pre_hook(
        lambda module, args, kwargs: widths.append((kwargs.get("input_ids") if args == () else args[0]).size(1)),
        with_kwargs=True)
    try:
        got = cached.predict_log_proba(queries)
        prefix = len(cached.model.shared_prefix)
        query_widths = widths[:]
        widths.clear()
        expected = full.predict_log_proba(queries)
    finally:
        hook.remove()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    # The demonstrations ran through the model once; afterwards, shared batches held queries only. Only
    # the query with demonstrations of its own was read whole (as every batch is without the cache).
    assert prefix in query_widths and len([w for w in query_widths if w >= prefix]) == 2
    assert len([w for w in widths if w >= prefix]) == 3
    # Batches after the first got a fresh copy of the cache, not the one the first batch extended.
    np.testing.assert_allclose(cached.predict_log_proba(queries[::-1])[::-1], expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- calibration

def test_calibration_divides_out_the_prior_under_the_same_demonstrations(gpt2):
    plain = icl(gpt2, shots=3, batch_size=2)
    calibrated = icl(gpt2, shots=3, batch_size=2, calibrate=["N/A", ""])
    prior = plain.predict_proba(["N/A", ""]).mean(0)  # content-free queries get the shared demonstrations
    np.testing.assert_allclose(calibrated.calibration.exp().numpy(), prior, atol=1e-5)
    zero_shot_prior = icl(gpt2, shots=0, demonstrations=()).predict_proba(["N/A", ""]).mean(0)
    assert not np.allclose(prior, zero_shot_prior, atol=1e-3)  # the demonstrations move the prior
    expected = plain.predict_proba(QUERIES) / prior
    np.testing.assert_allclose(calibrated.predict_proba(QUERIES), expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_knn_calibrates_each_query_with_its_own_demonstrations(gpt2):
    options = {"shots": 2, "selection": "knn", "encoder": keyword_embeddings}
    plain = icl(gpt2, **options)
    calibrated = icl(gpt2, calibrate=["N/A", ""], **options)
    assert calibrated.calibration is None  # no set shared by all
    plans = plain.model.plan([Example(q) for q in QUERIES])
    assert len(set(plans)) > 1
    raw = plain.predict_proba(QUERIES)
    expected = []
    for row, plan in zip(raw, plans, strict=True):
        content_free = plain.model.encode([Example("N/A", "N/A"), Example("", "")], [plan, plan])
        prior = plain.model.log_proba(content_free).exp().mean(0).numpy()
        expected.append(row / prior / (row / prior).sum())
    np.testing.assert_allclose(calibrated.predict_proba(QUERIES), expected, atol=1e-5)


# ----------------------------------------------------------------------------- fit, save, load

def test_fit_sets_the_pool_and_refuses_training_options(gpt2):
    clf = icl(gpt2, shots=2, demonstrations=TRAIN[:4])
    assert set(texts(clf.shared_demonstrations)) <= set(texts(TRAIN[:4]))
    assert clf.fit(TRAIN[4:]) is clf
    assert set(texts(clf.shared_demonstrations)) <= set(texts(TRAIN[4:]))
    with pytest.raises(ValueError, match="trains no weights.*epochs"):
        clf.fit(TRAIN, epochs=3)
    with pytest.raises(ValueError, match="5 shots asked for but the pool holds 4"):
        icl(gpt2, shots=5, demonstrations=TRAIN[:4])
    with pytest.raises(ValueError, match="has label 'meh', not one of the classes"):
        icl(gpt2, demonstrations=[*TRAIN, Example("so so", label="meh")])


def test_save_and_load_keep_demonstrations_settings_and_calibration(gpt2, tmp_path):
    clf = icl(gpt2, shots=3, selection="balanced", seed=4, calibrate=True, separator="\n---\n")
    clf.save(tmp_path / "icl")
    loaded = load(tmp_path / "icl", plm=gpt2)
    assert isinstance(loaded, ICLClassifier) and loaded.kind == "icl"
    assert loaded.shared_demonstrations == clf.shared_demonstrations and loaded.pool == clf.pool
    assert loaded.model.separator == "\n---\n" and loaded.settings == clf.settings
    torch.testing.assert_close(loaded.calibration, clf.calibration)
    np.testing.assert_allclose(loaded.predict_proba(QUERIES), clf.predict_proba(QUERIES), atol=1e-6)
    # The saved set is the one used, even if drawing again would give another.
    description = json.loads((tmp_path / "icl" / "deltaprompt.json").read_text())
    other = [i for i in range(len(TRAIN)) if i not in description["icl"]["fixed_demonstrations"]][:3]
    description["icl"]["fixed_demonstrations"] = other
    description["calibration"] = None
    (tmp_path / "icl" / "deltaprompt.json").write_text(json.dumps(description))
    restored = load(tmp_path / "icl", plm=gpt2)
    assert restored.model.selector.fixed == tuple(other)
    assert sorted(restored.shared_demonstrations, key=TRAIN.index) == [TRAIN[i] for i in sorted(other)]


def test_a_function_encoder_cannot_be_saved(gpt2, tmp_path):
    with pytest.raises(ValueError, match="give the encoder as a model name"):
        icl(gpt2, selection="knn", encoder=keyword_embeddings).save(tmp_path / "knn")


# ----------------------------------------------------------------------------- command line

def test_icl_command_draws_a_pool_and_prints_the_evaluation(model_dir, tmp_path, capsys):
    task = write_task(tmp_path, labels=("negative", "positive"), per_label=4)
    out = tmp_path / "preds.jsonl"
    code = main(["icl", "--model", model_dir, "--data", str(task), "--limit", "6", "--k", "2", "--shots", "3",
                 "--selection", "balanced", "--seed", "1", "--template", "Review: {text}\\nSentiment: {mask}",
                 "--verbalizer", "negative: terrible; positive: great", "--calibrate", "--show-prompt",
                 "--output", str(out), "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 demonstrations per query from a pool of 4: balanced selection, random order, seed 1" in printed
    assert "(encoded once, cached)" in printed
    assert "Sentiment: great\n\nReview:" in printed or "Sentiment: terrible\n\nReview:" in printed
    assert "accuracy" in printed and "confusion" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] in ("negative", "positive") for r in rows)


def test_icl_command_errors_say_what_to_do(model_dir, tmp_path, capsys):
    task = write_task(tmp_path, labels=("negative", "positive"), per_label=4)
    common = ["--template", "{text} {mask}", "--verbalizer", "negative: terrible; positive: great"]
    assert main(["icl", "--model", model_dir, "--data", str(task), "--k", "1", "--shots", "3", *common]) == 2
    assert "3 shots asked for but the pool holds 2" in capsys.readouterr().err
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "great"}\n')
    assert main(["icl", "--model", model_dir, "--data", str(data), *common]) == 2
    assert "give --pool FILE" in capsys.readouterr().err
