"""Automatic label-word search: reading the mask, whole words, the search, the saved file."""

from __future__ import annotations

import pytest
import torch

from deltaprompt import Example, PromptClassifier, Verbalizer
from deltaprompt.search import MaskReader, search_label_words, whole_word_tokens
from deltaprompt.template import Template
from deltaprompt.tokenization import PromptTokenizer

from .conftest import TEMPLATE, TRAIN, plm_of, responsive

# Planted label words that occur in no training text, so a model can only prefer them if it
# was taught to: the search must find them among the whole vocabulary.
PLANTED = {"negative": "sports", "positive": "news"}


def plant(plm, template: str, examples, words: dict[str, str], steps: int = 40, lr: float = 0.02) -> None:
    """Teach the tiny PLM, with its own Hugging Face LM loss over the whole vocabulary (not
    the code under test), to predict ``words[label]`` where the template's mask is. The model
    is first made responsive to its input, so it can tell the examples apart."""
    responsive(plm)
    tokenizer, family = plm.tokenizer, plm.family
    prompt_tokenizer = PromptTokenizer(tokenizer, Template(template), family)
    batch = prompt_tokenizer.collate(prompt_tokenizer.encode(examples))
    targets = []
    for example in examples:
        ids = tokenizer(" " + words[example.label], add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, "planted words must be single tokens"
        targets.append(ids[0])
    target = torch.tensor(targets)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if family == "masked":
        labels = torch.full_like(ids, -100)
        labels[torch.arange(len(ids)), batch["predict_positions"][:, 0]] = target
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    elif family == "causal":  # the word follows the left-padded prompt
        ids = torch.cat([ids, target[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(target)[:, None]], 1)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = target
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                  "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    else:  # T5 answers "<extra_id_0> word </s>"
        labels = torch.stack([torch.full_like(target, prompt_tokenizer.mask_id), target,
                              torch.full_like(target, tokenizer.eos_token_id)], 1)
        inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    optimizer = torch.optim.Adam(plm.model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        plm.model(**inputs).loss.backward()
        optimizer.step()
    plm.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_the_mask_reader_gives_the_models_own_log_probabilities(request, kind):
    plm = plm_of(request, kind)
    template = TEMPLATE[plm.family]
    reader = MaskReader(plm, template)
    rows = torch.tensor([3, 7, 50, 60])
    read = reader.log_probs(TRAIN[:3], rows)
    prompt_tokenizer = PromptTokenizer(plm.tokenizer, Template(template), plm.family)
    for n, example in enumerate(TRAIN[:3]):  # one example at a time, no padding, full logits
        encoding = prompt_tokenizer.encode([example])[0]
        ids = torch.tensor([encoding.input_ids])
        with torch.no_grad():
            if plm.family == "seq2seq":
                start = plm.model.config.decoder_start_token_id
                decoder = torch.tensor([[start, prompt_tokenizer.mask_id]])
                logits = plm.model(input_ids=ids, decoder_input_ids=decoder).logits[0, 1]
            else:
                logits = plm.model(input_ids=ids).logits[0, encoding.predict_positions[0]]
        expected = torch.log_softmax(logits, -1)[rows]
        assert torch.allclose(read[n], expected, atol=1e-4), (kind, n)


def test_whole_words_are_single_tokens_behind_the_masks_space(gpt2_tokenizer):
    words = whole_word_tokens(gpt2_tokenizer, " ")
    by_word = {w: i for i, w in words.items()}
    assert by_word["great"] == gpt2_tokenizer(" great", add_special_tokens=False)["input_ids"][0]
    assert gpt2_tokenizer.convert_ids_to_tokens(by_word["great"]) == "\u0120great"
    for token_id, word in words.items():
        token = gpt2_tokenizer.convert_ids_to_tokens(token_id)
        assert token.startswith("\u0120") and word.isalpha() and len(word) >= 2
        assert token_id not in gpt2_tokenizer.all_special_ids
    # Without a space before the mask, the words are the pieces without the space marker.
    glued = whole_word_tokens(gpt2_tokenizer, "")
    assert glued and not set(glued) & set(words)
    assert all(not gpt2_tokenizer.convert_ids_to_tokens(i).startswith("\u0120") for i in glued)


def test_whole_words_of_wordpiece_leave_out_pieces_and_specials(bert_tokenizer):
    words = whole_word_tokens(bert_tokenizer, " ")
    tokens = set(bert_tokenizer.convert_ids_to_tokens(list(words)))
    assert {"great", "terrible", "news"} <= tokens
    assert not any(t.startswith("##") or t.startswith("[") for t in tokens)
    assert "##ing" in bert_tokenizer.get_vocab() and "[CLS]" in bert_tokenizer.get_vocab()
    assert all(w.isalpha() for w in words.values())


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_the_search_finds_the_planted_words(request, kind, tmp_path):
    plm = plm_of(request, kind)
    template = TEMPLATE[plm.family]
    plant(plm, template, TRAIN, PLANTED)
    result = search_label_words(plm, template, TRAIN, TRAIN, candidates=20, per_class=4, max_assignments=10)
    assert result.label_words == PLANTED
    assert result.best.dev_accuracy == 1.0
    assert [c.word for c in result.candidates["positive"]][0] == "news"
    assert [c.word for c in result.candidates["negative"]][0] == "sports"
    # The cached dev accuracy is what a classifier with those words really gets.
    for assignment in result.assignments[:3]:
        classifier = PromptClassifier(plm, template, Verbalizer(assignment.words))
        assert classifier.evaluate(TRAIN).accuracy == pytest.approx(assignment.dev_accuracy)


def test_assignments_never_reuse_a_word_and_are_ranked(request):
    # An untrained model prefers the same words whatever the class: the classes compete for them.
    plm = plm_of(request, "gpt2")
    result = search_label_words(plm, TEMPLATE["causal"], TRAIN, TRAIN[:6], candidates=8, per_class=4,
                                max_assignments=12)
    top = {c: [w.word for w in words[:3]] for c, words in result.candidates.items()}
    assert set(top["negative"]) & set(top["positive"]), "the classes should share candidates here"
    assert 1 <= len(result.assignments) <= 12
    for assignment in result.assignments:
        assert len(set(assignment.words.values())) == len(result.classes)
        for cls, word in assignment.words.items():
            assert word in [w.word for w in result.pruned[cls]]
    keys = [(a.dev_accuracy, a.train_accuracy, a.train_log_prob) for a in result.assignments]
    assert keys == sorted(keys, reverse=True)
    for words in result.pruned.values():
        assert len(words) == 4
        assert [(w.train_accuracy, w.train_log_prob) for w in words] == sorted(
            [(w.train_accuracy, w.train_log_prob) for w in words], reverse=True)


@pytest.mark.parametrize("suffix", [".yaml", ".txt", ".json"])
def test_the_saved_file_loads_back_as_the_same_verbalizer(request, tmp_path, suffix):
    plm = plm_of(request, "gpt2")
    plant(plm, TEMPLATE["causal"], TRAIN, PLANTED)
    result = search_label_words(plm, TEMPLATE["causal"], TRAIN, TRAIN, candidates=10, per_class=3,
                                max_assignments=5)
    path = result.save(tmp_path / f"words{suffix}")
    loaded = Verbalizer(str(path), classes=result.classes)
    assert loaded.label_words == result.verbalizer.label_words == {"negative": ("sports",), "positive": ("news",)}
    if suffix == ".yaml":
        text = path.read_text()
        assert text.startswith("# ") and "Runners-up" in text and TEMPLATE["causal"] in text


def test_ratio_scoring_prefers_words_that_tell_classes_apart(request):
    plm = plm_of(request, "gpt2")
    plant(plm, TEMPLATE["causal"], TRAIN, PLANTED)
    summed = search_label_words(plm, TEMPLATE["causal"], TRAIN, None, candidates=30, per_class=2, max_assignments=4)
    ratio = search_label_words(plm, TEMPLATE["causal"], TRAIN, None, candidates=30, per_class=2,
                               max_assignments=4, scoring="ratio")
    assert ratio.label_words == PLANTED and summed.label_words == PLANTED
    # The ratio of a class's own planted word is large; the other class's planted word is
    # likely on both (a high summed score) but never distinctive (a negative ratio).
    ratios = {w.word: w.score for w in ratio.candidates["positive"]}
    assert ratios["news"] > 0 and ratios.get("sports", -1.0) < 0
    assert summed.best.dev_accuracy is None and summed.dev_size == 0


def test_vocabulary_restriction_and_sampling(request):
    plm = plm_of(request, "gpt2")
    plant(plm, TEMPLATE["causal"], TRAIN, PLANTED)
    allowed = ["great", "terrible", "boring", "wonderful"]
    result = search_label_words(plm, TEMPLATE["causal"], TRAIN, TRAIN, vocabulary=allowed, candidates=4, per_class=2)
    assert result.vocabulary_size == 4
    assert set(result.label_words.values()) <= set(allowed)
    first = search_label_words(plm, TEMPLATE["causal"], TRAIN, TRAIN, max_per_class=2, seed=3, candidates=5)
    again = search_label_words(plm, TEMPLATE["causal"], TRAIN, TRAIN, max_per_class=2, seed=3, candidates=5)
    assert first.train_size == 4
    assert first.to_dict() | {"seconds": 0} == again.to_dict() | {"seconds": 0}


def test_bad_inputs_are_clear_errors(request):
    plm = plm_of(request, "gpt2")
    with pytest.raises(ValueError, match="soft tokens"):
        search_label_words(plm, '{text} {"soft": "It was"} {mask}', TRAIN)
    with pytest.raises(ValueError, match="exactly one"):
        search_label_words(plm, "{text} It was", TRAIN)
    with pytest.raises(ValueError, match="no training example"):
        search_label_words(plm, TEMPLATE["causal"], TRAIN, classes=["negative", "positive", "neutral"])
    with pytest.raises(ValueError, match="dev labels"):
        search_label_words(plm, TEMPLATE["causal"], TRAIN, [Example("meh", label="neutral")])
    with pytest.raises(ValueError, match="scoring"):
        search_label_words(plm, TEMPLATE["causal"], TRAIN, scoring="pmi")
    result = search_label_words(plm, TEMPLATE["causal"], TRAIN, candidates=3, per_class=2)
    with pytest.raises(ValueError, match=r"\.yaml"):
        result.save("words.csv")


def test_cli_search_verbalizer_prints_the_ranking_and_writes_the_words(request, tmp_path, capsys):
    from deltaprompt.cli import main

    from .test_data import write_task

    task = write_task(tmp_path, labels=("negative", "positive"), per_label=6)
    examples = [Example(f"{label} example {i}", label=label) for label in ("negative", "positive") for i in range(6)]
    plm = plm_of(request, "gpt2")
    plant(plm, TEMPLATE["causal"], examples, PLANTED)
    model_dir = tmp_path / "planted"
    plm.model.save_pretrained(model_dir)
    plm.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "found" / "words.yaml"
    code = main(["search-verbalizer", "--model", str(model_dir), "--data", str(task), "--k", "3", "--seed", "1",
                 "--template", TEMPLATE["causal"], "--candidates", "10", "--per-class", "3", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "data: 6 train and 6 dev examples" in printed
    assert "chosen: negative: sports; positive: news" in printed
    assert "assignments, best first" in printed and "dev acc" in printed
    assert Verbalizer(str(out)).label_words == {"negative": ("sports",), "positive": ("news",)}
    assert main(["search-verbalizer", "--model", str(model_dir), "--data", str(task), "--k", "3"]) == 2
    assert "exactly one of --template and --template-file" in capsys.readouterr().err
