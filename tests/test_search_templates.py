"""Automatic template search: phrases to templates, generation with decoder LMs and T5, ranking."""

from __future__ import annotations

import json

import pytest
import torch

from deltaprompt import Example, PromptClassifier, Template, Verbalizer
from deltaprompt.search import phrase_cuts, search_templates, template_from_phrase
from deltaprompt.tokenization import PromptTokenizer

from .conftest import TRAIN, WORDS, plm_of

DEV = [
    Example("a wonderful movie", label="positive"),
    Example("great plot", label="positive"),
    Example("a dull boring film", label="negative"),
    Example("terrible acting", label="negative"),
]
SMALL = {"num_candidates": 8, "keep": 4, "per_example": 2, "max_new_tokens": 5}


def test_phrases_become_templates_that_parse_and_read_as_written():
    example = Example("a fine film.")
    cases = {
        " It was": ("{text} It was {mask}", "a fine film. It was [MASK]"),
        "\nSentiment:": ("{text}\nSentiment: {mask}", "a fine film.\nSentiment: [MASK]"),
        ", really": ("{text}, really {mask}", "a fine film., really [MASK]"),
        ' A {"mask"} } {text} "q"': (None, 'a fine film. A {"mask"} } {text} "q" [MASK]'),
    }
    for phrase, (expected, rendered) in cases.items():
        text = template_from_phrase("{text}", phrase)
        if expected is not None:
            assert text == expected
        template = Template(text)
        assert template.num_masks == 1 and template.fields == ("text",)
        assert template.mask_part.prefix == " "
        assert template.render(example) == rendered
    with pytest.raises(ValueError, match="no text"):
        template_from_phrase("{text}", "  ")


def test_phrase_cuts_end_before_a_word():
    assert phrase_cuts(" It was a great film. Then") == [" It", " It was", " It was a", " It was a great",
                                                         " It was a great film."]
    assert phrase_cuts("\n\nReview: good") == ["\n\nReview:"]
    assert phrase_cuts(" ... !! more") == []  # no letters before the last word
    assert phrase_cuts(" bad\x15bytes \ufffd here now") == []


def test_decoder_search_is_deterministic_ranked_and_scored_as_a_classifier(request):
    plm = plm_of(request, "gpt2")
    result = search_templates(plm, TRAIN, DEV, WORDS, seed=1, **SMALL)
    again = search_templates(plm, TRAIN, DEV, WORDS, seed=1, **SMALL)
    assert result.to_dict() | {"seconds": 0} == again.to_dict() | {"seconds": 0}
    other = search_templates(plm, TRAIN, DEV, WORDS, seed=2, **SMALL)
    assert {c.template for c in other.candidates} != {c.template for c in result.candidates}

    assert 1 <= len(result.ranked) <= 4 and len(result.candidates) <= 8
    assert result.generated >= len(result.candidates)
    for candidate in result.candidates:
        template = Template(candidate.template)
        assert candidate.template.startswith("{text}") and candidate.template.endswith(" {mask}")
        assert template.num_masks == 1 and template.fields == ("text",)
    scores = [c.train_score for c in result.candidates]
    assert scores == sorted(scores, reverse=True)
    assert {c.template for c in result.ranked} == {c.template for c in result.candidates[:4]}
    keys = [(c.dev_accuracy, c.train_score) for c in result.ranked]
    assert keys == sorted(keys, reverse=True)

    # The search leaves the PLM in eval mode; the training score is the mean gold-word
    # log-probability over the whole vocabulary; dev accuracy is a real classifier's.
    assert not plm.model.training
    best = result.best
    prompt_tokenizer = PromptTokenizer(plm.tokenizer, Template(best.template), "causal")
    gold = []
    for example in TRAIN:
        ids = torch.tensor([prompt_tokenizer.encode([example])[0].input_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(plm.model(input_ids=ids).logits[0, -1], -1)
        word = plm.tokenizer(" " + WORDS[example.label], add_special_tokens=False)["input_ids"][0]
        gold.append(float(log_probs[word]))
    assert best.train_score == pytest.approx(sum(gold) / len(gold), abs=1e-4)
    assert PromptClassifier(plm, best.template, WORDS).evaluate(DEV).accuracy == pytest.approx(best.dev_accuracy)


def test_t5_fills_the_span_before_the_gold_label_word(request):
    t5 = plm_of(request, "t5")
    fed = []
    generate = t5.model.generate

    def spy(**kwargs):
        fed.extend(kwargs["input_ids"].tolist())
        assert kwargs["decoder_input_ids"][0].tolist() == [t5.model.config.decoder_start_token_id,
                                                            t5.tokenizer.convert_tokens_to_ids("<extra_id_0>")]
        return generate(**kwargs)

    t5.model.generate = spy
    result = search_templates(t5, TRAIN, DEV, WORDS, seed=0, **{**SMALL, "per_example": 3})
    # LM-BFF's input: the text, the span to fill, the example's own label word, the next sentinel.
    expected = {
        tuple(t5.tokenizer.tokenize(e.text) + ["<extra_id_0>", "\u2581" + WORDS[e.label], "<extra_id_1>", "</s>"])
        for e in TRAIN
    }
    fed_tokens = {tuple(t for t in t5.tokenizer.convert_ids_to_tokens(ids) if t != "<pad>") for ids in fed}
    assert fed_tokens == expected
    assert result.candidates
    for candidate in result.candidates:
        assert candidate.template.startswith("{text} ") and candidate.template.endswith(" {mask}")
        assert Template(candidate.template).num_masks == 1
        assert candidate.proposals >= 1
    assert sum(c.proposals for c in result.candidates) <= len(TRAIN) * 3


def test_a_masked_lm_scores_but_cannot_generate(request):
    bert = plm_of(request, "bert")
    with pytest.raises(ValueError, match="masked LM, which cannot write template text; pass generator="):
        search_templates(bert, TRAIN, DEV, WORDS)
    gpt2 = plm_of(request, "gpt2")
    result = search_templates(bert, TRAIN, DEV, WORDS, generator=gpt2, seed=0, **SMALL)
    assert result.model == "tiny-bert" and result.generator == "tiny-gpt2"
    best = result.best
    assert PromptClassifier(bert, best.template, WORDS).evaluate(DEV).accuracy == pytest.approx(best.dev_accuracy)


def test_saved_rankings(request, tmp_path):
    plm = plm_of(request, "gpt2")
    result = search_templates(plm, TRAIN, DEV, Verbalizer({"negative": ["terrible", "dull"], "positive": "great"}),
                              seed=0, **SMALL)
    assert result.label_words == {"negative": ["terrible", "dull"], "positive": ["great"]}
    best = result.save(tmp_path / "best.txt").read_text().rstrip("\n")
    assert best == result.best.template and Template(best).num_masks == 1
    saved = json.loads(result.save(tmp_path / "ranking.json").read_text())
    assert [r["template"] for r in saved["ranked"]] == result.templates
    assert [r["dev_accuracy"] for r in saved["ranked"]] == [c.dev_accuracy for c in result.ranked]
    with pytest.raises(ValueError, match=r"\.json"):
        result.save(tmp_path / "ranking.csv")


def test_without_dev_the_training_score_ranks(request):
    plm = plm_of(request, "gpt2")
    result = search_templates(plm, TRAIN, None, WORDS, seed=0, **SMALL)
    assert all(c.dev_accuracy is None for c in result.ranked)
    assert [c.train_score for c in result.ranked] == sorted((c.train_score for c in result.ranked), reverse=True)


def test_bad_inputs_are_clear_errors(request):
    plm = plm_of(request, "gpt2")
    with pytest.raises(ValueError, match="without \\{mask\\}"):
        search_templates(plm, TRAIN, DEV, WORDS, context="{text} {mask}")
    with pytest.raises(ValueError, match="dev labels"):
        search_templates(plm, TRAIN, [Example("x", label="neutral")], WORDS)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        search_templates(plm, TRAIN, DEV, WORDS, keep=0)


def test_cli_search_template_ranks_and_writes_the_best(request, tmp_path, capsys):
    from deltaprompt.cli import main

    from .test_data import write_task

    task = write_task(tmp_path, labels=("negative", "positive"), per_label=4)
    gpt2, roberta = plm_of(request, "gpt2"), plm_of(request, "roberta")
    folders = {}
    for name, plm in (("gpt2", gpt2), ("roberta", roberta)):
        folders[name] = str(tmp_path / name)
        plm.model.save_pretrained(folders[name])
        plm.tokenizer.save_pretrained(folders[name])
    out = tmp_path / "best.txt"
    common = ["--data", str(task), "--k", "2", "--verbalizer", "negative: terrible; positive: great",
              "--num-candidates", "6", "--keep", "3", "--per-example", "2", "--max-new-tokens", "4"]
    code = main(["search-template", "--model", folders["gpt2"], *common, "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    best = out.read_text().rstrip("\n")
    assert Template(best).num_masks == 1 and best.startswith("{text}")
    assert f"best: {json.dumps(best)}" in printed
    rows = [line for line in printed.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert 1 <= len(rows) <= 3 and json.dumps(best) in rows[0]
    code = main(["search-template", "--model", folders["roberta"], *common])
    assert code == 2
    assert "masked LM, which cannot write template text" in capsys.readouterr().err
    code = main(["search-template", "--model", folders["roberta"], "--generator", folders["gpt2"], *common])
    assert code == 0 and "best: " in capsys.readouterr().out
