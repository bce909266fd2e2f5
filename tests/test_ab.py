"""A/B tests of prompt variants: McNemar and the paired bootstrap on constructed tables whose
answers are known, intervals, verdicts, Holm's correction, the diff view, variant YAML, and the
whole path on a tiny model and through the command line."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from deltaprompt.ab import (
    ABReport,
    Variant,
    compare_variants,
    evaluate_variants,
    format_p,
    holm,
    load_variants,
    mcnemar,
    metric_interval,
    paired_bootstrap,
    sample_examples,
    score,
    wilson_interval,
)
from deltaprompt.cli import main
from deltaprompt.data import Example
from deltaprompt.metrics import confusion_matrix, macro_f1
from deltaprompt.schema import ConfigError

from .conftest import has_package, tiny_plm
from .test_data import write_task


def table(b: int, c: int, both_right: int = 0, both_wrong: int = 0) -> tuple[list[bool], list[bool]]:
    """Paired right/wrong lists with b examples only A got right and c only B got right."""
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return a, bb


def predictions_for(gold: list[str], correct: list[bool]) -> list[str]:
    """Predictions over two classes that are right exactly where ``correct`` says."""
    flip = {"neg": "pos", "pos": "neg"}
    return [g if ok else flip[g] for g, ok in zip(gold, correct, strict=True)]


# ----------------------------------------------------------------------------- McNemar

def test_mcnemar_small_table_is_the_exact_two_sided_binomial_test():
    result = mcnemar(*table(10, 2, both_right=30, both_wrong=8))
    # 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert round(result.p_value, 4) == 0.0386
    assert (result.b, result.c, result.n) == (10, 2, 50)
    assert result.name == "McNemar exact"
    assert result.difference == pytest.approx((2 - 10) / 50)  # accuracy(B) - accuracy(A)
    assert mcnemar(*table(2, 10)).p_value == pytest.approx(result.p_value)  # two-sided: symmetric


def test_mcnemar_large_table_is_chi_square_with_continuity_correction_by_hand():
    result = mcnemar(*table(40, 20, both_right=100))
    statistic = (abs(40 - 20) - 1) ** 2 / (40 + 20)                      # 361 / 60
    assert result.name == "McNemar chi-square (corrected)"
    assert result.statistic == pytest.approx(statistic)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi-square, 1 df
    plain = mcnemar(*table(40, 20), correction=False)
    assert plain.statistic == pytest.approx(400 / 60)
    assert plain.p_value == pytest.approx(math.erfc(math.sqrt(400 / 60 / 2)))
    exact = mcnemar(*table(40, 20), exact=True)                        # forced exact on a large table
    assert exact.p_value == pytest.approx(2 * sum(math.comb(60, k) for k in range(21)) / 2**60)
    assert mcnemar(*table(13, 12)).name.startswith("McNemar chi-square")  # b + c = 25: chi-square
    assert mcnemar(*table(12, 12)).name == "McNemar exact"                # 24: exact


def test_mcnemar_without_discordant_pairs_gives_p_one():
    for exact in (None, True, False):
        result = mcnemar(*table(0, 0, both_right=7, both_wrong=3), exact=exact)
        assert result.p_value == 1.0 and result.b == result.c == 0
    assert mcnemar(*table(15, 15), exact=False).p_value == 1.0   # |b - c| - 1 floors at 0
    with pytest.raises(ValueError, match="equally long"):
        mcnemar([True, False], [True])


# ----------------------------------------------------------------------------- bootstrap

GOLD = ["neg", "pos"] * 50


def test_bootstrap_of_identical_predictions_finds_no_difference():
    predicted = predictions_for(GOLD, [i % 3 != 0 for i in range(100)])
    for metric in ("accuracy", "macro_f1"):
        result = paired_bootstrap(GOLD, predicted, predicted, metric, resamples=500)
        assert result.p_value == 1.0
        assert result.difference == 0.0 and result.low == result.high == 0.0


def test_bootstrap_finds_a_clearly_better_b_with_the_right_sign():
    a = predictions_for(GOLD, [i % 2 == 0 for i in range(100)])      # 50% right
    b = predictions_for(GOLD, [i % 10 != 0 for i in range(100)])     # 90% right, a superset
    result = paired_bootstrap(GOLD, a, b, "accuracy", resamples=2000)
    assert result.difference == pytest.approx(0.4)
    assert result.p_value == pytest.approx(2 / 2001)  # no resample reaches zero: the +1 floor
    assert 0 < result.low < 0.4 < result.high
    swapped = paired_bootstrap(GOLD, b, a, "accuracy", resamples=2000)
    assert swapped.difference == pytest.approx(-0.4) and swapped.p_value == result.p_value
    f1 = paired_bootstrap(GOLD, a, b, "macro_f1", resamples=2000)
    by_hand = (macro_f1(confusion_matrix(GOLD, b, ["neg", "pos"]))
               - macro_f1(confusion_matrix(GOLD, a, ["neg", "pos"])))
    assert f1.difference == pytest.approx(by_hand) and f1.difference > 0 and f1.p_value < 0.01


def test_bootstrap_is_deterministic_per_seed_and_a_metric_function_sees_the_same_resamples():
    a = predictions_for(GOLD, [i % 4 != 0 for i in range(100)])
    b = predictions_for(GOLD, [i % 5 != 0 for i in range(100)])
    first = paired_bootstrap(GOLD, a, b, "macro_f1", resamples=300, seed=7)
    assert paired_bootstrap(GOLD, a, b, "macro_f1", resamples=300, seed=7) == first
    other = paired_bootstrap(GOLD, a, b, "macro_f1", resamples=300, seed=8)
    assert (other.low, other.high) != (first.low, first.high)

    def accuracy(gold, predicted):
        return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)

    named = paired_bootstrap(GOLD, a, b, "accuracy", resamples=300, seed=7)
    custom = paired_bootstrap(GOLD, a, b, accuracy, resamples=300, seed=7)
    assert custom.p_value == named.p_value
    assert (custom.low, custom.high) == pytest.approx((named.low, named.high))
    with pytest.raises(ValueError, match="not one of"):
        paired_bootstrap(GOLD, a, b, "f1")


# ----------------------------------------------------------------------------- intervals

def test_wilson_interval_against_a_hand_value():
    # 8 of 10 at 95%: centre (0.8 + z^2/20) / (1 + z^2/10), z = 1.95996
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    gold = ["neg", "pos"] * 5
    predicted = predictions_for(gold, [True] * 8 + [False] * 2)
    assert metric_interval(gold, predicted) == pytest.approx(wilson_interval(8, 10))


def test_macro_f1_interval_is_a_percentile_bootstrap_around_the_value():
    predicted = predictions_for(GOLD, [i % 4 != 0 for i in range(100)])
    low, high = metric_interval(GOLD, predicted, "macro_f1", resamples=1000)
    assert 0 < low < score(GOLD, predicted, "macro_f1") < high < 1
    assert metric_interval(GOLD, GOLD, "macro_f1", resamples=200) == (1.0, 1.0)


# ----------------------------------------------------------------------------- verdicts

def two_variant_report(b: int, c: int, both_right: int, both_wrong: int = 0, **kwargs) -> ABReport:
    right_a, right_b = table(b, c, both_right, both_wrong)
    gold = (["neg", "pos"] * len(right_a))[: len(right_a)]
    return compare_variants({"plain": predictions_for(gold, right_a), "instructed": predictions_for(gold, right_b)},
                            gold, **kwargs)


def test_verdicts_name_the_better_variant_with_p_or_say_no_difference():
    assert two_variant_report(2, 10, 38).verdict() == "instructed better than plain (p = 0.0386)"
    assert two_variant_report(10, 2, 38).verdict() == "plain better than instructed (p = 0.0386)"
    assert two_variant_report(2, 20, 78).verdict() == "instructed better than plain (p < 0.001)"
    report = two_variant_report(5, 6, 150, 39)
    assert report.verdict() == "no significant difference between plain and instructed at n = 200"
    assert report.n == 200 and report.correction is None
    pair = report.pairs[0]
    assert (pair.a, pair.b, pair.test.b, pair.test.c, pair.better) == ("plain", "instructed", 5, 6, None)
    assert report.variants["plain"].value == pytest.approx(155 / 200)
    assert report.variants["plain"].low < 155 / 200 < report.variants["plain"].high
    assert two_variant_report(2, 10, 38, alpha=0.01).verdict().startswith("no significant difference")
    assert [format_p(p) for p in (0.0034567, 0.0386, 0.0004, 1.0)] == ["p = 0.00346", "p = 0.0386", "p < 0.001",
                                                                        "p = 1"]


def test_macro_f1_comparison_uses_the_bootstrap():
    report = two_variant_report(2, 30, 68, metric="macro_f1", resamples=1000)
    assert report.pairs[0].test.name == "paired bootstrap"
    assert report.verdict().startswith("instructed better than plain (p")
    with pytest.raises(ValueError, match="McNemar"):
        two_variant_report(2, 30, 68, metric="macro_f1", test="mcnemar")
    forced = two_variant_report(2, 10, 38, test="bootstrap", resamples=500)
    assert forced.pairs[0].test.name == "paired bootstrap" and forced.metric == "accuracy"


def test_holm_correction_across_three_variants():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    right_a, right_b = table(2, 10, 38)
    gold = (["neg", "pos"] * 25)[:50]
    a, b = predictions_for(gold, right_a), predictions_for(gold, right_b)
    # Alone, b beats a at p = 0.0386; with a copy of a as a third variant, Holm multiplies the
    # two 0.0386 p-values by 3 and 2 (kept monotone): 0.116, not significant at 0.05.
    assert compare_variants({"a": a, "b": b}, gold).pairs[0].significant
    report = compare_variants({"a": a, "b": b, "c": list(a)}, gold)
    assert report.correction == "holm"
    assert [(p.a, p.b) for p in report.pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    raw = [p.test.p_value for p in report.pairs]
    assert raw == pytest.approx([2 * 79 / 4096, 1.0, 2 * 79 / 4096])
    assert [p.p_adjusted for p in report.pairs] == pytest.approx(holm(raw))
    assert report.pairs[0].p_adjusted == pytest.approx(3 * 2 * 79 / 4096)
    assert report.verdict().splitlines() == [
        "no significant difference between a and b at n = 50",
        "no significant difference between a and c at n = 50",
        "no significant difference between b and c at n = 50",
    ]
    assert "p (Holm)" in report.to_markdown()


# ----------------------------------------------------------------------------- diff view and files

def test_diff_lists_the_disagreements_with_who_was_right():
    gold = ["pos", "neg", "pos", "neg", "pos", "neg"]
    report = compare_variants({"A": ["pos", "neg", "neg", "pos", "pos", "pos"],
                               "B": ["pos", "neg", "pos", "neg", "neg", "pos"]}, gold,
                              texts=["t0", "t1", "t2", "t3", "a | b", "t5"])
    diff = report.diff()
    assert [r["index"] for r in diff.records] == [2, 3, 4]             # index 5: both wrong alike
    assert diff.records[0] == {"index": 2, "gold": "pos", "predictions": {"A": "neg", "B": "pos"},
                               "correct": {"A": False, "B": True}, "text": "t2"}
    assert diff.records[2]["correct"] == {"A": True, "B": False}
    assert diff.counts == [{"a": "A", "b": "B", "a_right_b_wrong": 1, "b_right_a_wrong": 2}]
    assert (diff.counts[0]["a_right_b_wrong"], diff.counts[0]["b_right_a_wrong"]) == (report.pairs[0].test.b,
                                                                                     report.pairs[0].test.c)
    limited = report.diff(limit=1)
    assert limited.total == 3 and len(limited.records) == 1
    markdown = report.diff(examples=["x0", "x1", "x2", "x3", "x4", "x5"]).to_markdown()
    assert "| 2 | pos | neg ✗ | pos ✓ | x2 |" in markdown
    assert "3 of 6 examples where the variants disagree (A right, B wrong: 1; B right, A wrong: 2)" in markdown
    assert r"a \| b" in report.diff().to_markdown()                    # a pipe in a text stays in its cell
    assert "1 more" not in markdown and "2 more not shown" in limited.to_markdown()


def test_report_to_dict_is_json_and_save_writes_both_files(tmp_path):
    report = two_variant_report(2, 10, 38)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n"] == 50 and data["metric"] == "accuracy"
    assert [v["name"] for v in data["variants"]] == ["plain", "instructed"]
    assert data["pairs"][0]["p_value"] == pytest.approx(2 * 79 / 4096)
    assert data["pairs"][0]["test"]["b"] == 2 and data["pairs"][0]["better"] == "instructed"
    assert data["diff"]["total"] == 12 and len(data["diff"]["records"]) == 12
    assert data["verdict"] == "instructed better than plain (p = 0.0386)"
    json_path, markdown_path = report.save(tmp_path / "out")
    assert json.loads(json_path.read_text())["verdict"] == data["verdict"]
    markdown = markdown_path.read_text()
    assert "| plain | 0.800 |" in markdown and "- instructed better than plain (p = 0.0386)" in markdown
    assert "## Where the variants disagree" in markdown
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]  # no temp files


def test_compare_variants_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="at least two variants"):
        compare_variants({"a": ["x"]}, ["x"])
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        compare_variants({"a": ["x", "y"], "b": ["x"]}, ["x", "y"])
    with pytest.raises(ValueError, match="test 'chi' is not one of"):
        compare_variants({"a": ["x"], "b": ["x"]}, ["x"], test="chi")


# ----------------------------------------------------------------------------- variants from YAML

VARIANTS_YAML = """\
model: tiny-model
label_words: {negative: " terrible", positive: " great"}
variants:
  plain: {template: "Review: {text}\\nSentiment: {mask}"}
  short: "{text} It was {mask}"
  loud:
    template: "{text} It was {mask}"
    label_words: {negative: bad, positive: good}
    calibrate: true
"""


def test_load_variants_reads_templates_defaults_and_overrides(tmp_path):
    path = tmp_path / "variants.yaml"
    path.write_text(VARIANTS_YAML)
    loaded = load_variants(path)
    assert loaded.model == "tiny-model" and loaded.names == ["plain", "short", "loud"]
    plain, short, loud = loaded.variants
    assert plain.template == "Review: {text}\nSentiment: {mask}"
    assert plain.label_words == {"negative": " terrible", "positive": " great"} and not plain.calibrate
    assert short.template == "{text} It was {mask}"
    assert loud.label_words == {"negative": "bad", "positive": "good"} and loud.calibrate
    assert load_variants(VARIANTS_YAML).names == loaded.names            # YAML text works too


@pytest.mark.parametrize(("text", "message"), [
    ("variants: {a: '{text} {mask}', b: {templte: '{text} {mask}'}}\nlabel_words: 'n: x; p: y'",
     r"variant 'b': unknown key 'templte'; did you mean 'template'\?"),
    ("variants: {a: '{text} {mask}', b: {template: '{text} {mask}', spec: {task: t}}}\nlabel_words: 'n: x; p: y'",
     r"variant 'b': give exactly one of template, spec, spec_file"),
    ("variants: {a: '{text} {mask}', b: '{text} {mask}'}", r"variant 'a': no label_words"),
    ("variants: {a: '{text} {mask}'}\nlabel_words: 'n: x; p: y'", "at least two names"),
    ("variants: {a: '{text} {mask', b: '{text} {mask}'}\nlabel_words: 'n: x; p: y'",
     r"variant 'a': template: .*never closed"),
    ("variants: {a: '{text}', b: '{text} {mask}'}\nlabel_words: 'n: x; p: y'",
     r"variant 'a': template: .*one \{mask\}"),
    ("variants: {a: {template: '{text} {mask}', chat: true}, b: '{text} {mask}'}\nlabel_words: 'n: x; p: y'",
     r"variant 'a': chat: true applies to spec variants"),
    ("variants: {a: '{text} {mask}', b: {template: '{text} {mask}', label_words: 'n: x; q: y'}}\n"
     "label_words: 'n: x; p: y'", r"variant 'b' has classes \['n', 'q'\] but variant 'a' has \['n', 'p'\]"),
    ("variants: {a: '{text} {mask}', b: {template: '{text} {mask}', calibrate: 'yes'}}\nlabel_words: 'n: x; p: y'",
     r"variant 'b': calibrate: expected true or false"),
    ("modle: x\nvariants: {a: '{text} {mask}', b: '{text} {mask}'}", r"unknown key 'modle'; did you mean 'model'"),
])
def test_variant_yaml_errors_name_the_variant_and_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        load_variants(text)


def test_missing_variants_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such variants file"):
        load_variants(str(tmp_path / "nope.yaml"))


def test_sample_examples_is_a_fixed_seeded_sample_in_file_order():
    examples = [Example(f"e{i}", label="neg") for i in range(50)]
    first = sample_examples(examples, 10, seed=3)
    assert first == sample_examples(examples, 10, seed=3) and len(first) == 10
    assert [examples.index(e) for e in first] == sorted(examples.index(e) for e in first)
    assert sample_examples(examples, 10, seed=4) != first
    assert sample_examples(examples, 80) == examples


# ----------------------------------------------------------------------------- end to end

REVIEWS = [
    Example("the movie was great", label="positive"),
    Example("a terrible boring film", label="negative"),
    Example("great acting and a wonderful plot", label="positive"),
    Example("the plot was dull", label="negative"),
    Example("a wonderful film", label="positive"),
    Example("boring and terrible", label="negative"),
]
WORDS = {"negative": "terrible", "positive": "great"}


def test_evaluate_variants_on_a_tiny_model(gpt2_tokenizer):
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    variants = [Variant("A", WORDS, template="{text} It was {mask}"),
                Variant("B", WORDS, template="{text} It was {mask}")]
    report = evaluate_variants(variants, REVIEWS, plm, classes=("negative", "positive"), batch_size=4)
    assert list(report.variants) == ["A", "B"] and report.n == len(REVIEWS)
    assert report.predictions["A"] == report.predictions["B"]
    assert set(report.predictions["A"]) <= {"negative", "positive"}
    assert report.verdict() == f"no significant difference between A and B at n = {len(REVIEWS)}"
    assert report.diff().total == 0
    assert report.meta["variants"]["A"]["classification_template"] == "{text} It was {mask}"
    assert report.texts == [e.text for e in REVIEWS]
    # a different prompt on the same model: the report follows that classifier's predictions
    from deltaprompt import PromptClassifier

    other = Variant("C", WORDS, template="Review: {text}\nSentiment: {mask}", calibrate=True)
    mixed = evaluate_variants([variants[0], other], REVIEWS, plm, batch_size=4)
    expected = PromptClassifier(plm, other.template, WORDS, calibrate=True, batch_size=4).predict(REVIEWS)
    assert mixed.predictions["C"] == expected
    with pytest.raises(ValueError, match="labels \\['neutral'\\] of the examples are not classes of variant 'A'"):
        evaluate_variants(variants, [Example("fine", label="neutral")], plm)


def test_ab_command_on_a_tiny_task_and_model(model_dir, tmp_path, capsys):
    task = write_task(tmp_path, labels=("negative", "positive"), per_label=6)
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        "label_words: {negative: terrible, positive: great}\n"
        "variants:\n"
        "  plain: 'Review: {text}\\nSentiment: {mask}'\n"
        "  short: '{text} It was {mask}'\n"
    )
    out = tmp_path / "report"
    code = main(["ab", str(variants), "--data", str(task), "--model", model_dir, "--limit", "8", "--seed", "1",
                 "--out", str(out), "--show-diff", "3", "--resamples", "200", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "2 variants (plain, short) on 8 examples" in printed and "a sample of 8 of 12 (seed 1)" in printed
    assert "plain vs short: McNemar exact" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["n"] == 8 and [v["name"] for v in data["variants"]] == ["plain", "short"]
    assert data["verdict"] in printed
    expected = sample_examples(write_task_examples(task), 8, seed=1)
    assert data["texts"] == [e.text for e in expected] and data["gold"] == [e.label for e in expected]
    assert data["meta"]["seed"] == 1 and data["meta"]["model"] == model_dir
    assert "## Where the variants disagree" in (out / "report.md").read_text()

    bad = tmp_path / "bad.yaml"
    bad.write_text("label_words: {negative: terrible, positive: great}\n"
                   "variants: {plain: '{text} {mask}', short: {tempalte: '{text} {mask}'}}\n")
    assert main(["ab", str(bad), "--data", str(task), "--model", model_dir]) == 2
    assert "variant 'short': unknown key 'tempalte'" in capsys.readouterr().err


def write_task_examples(task) -> list[Example]:
    from deltaprompt.data import load_task

    return load_task(task).load("test")


@pytest.mark.skipif(not has_package("deltaprompt.prompt_spec"), reason="deltaprompt.prompt_spec is not there yet")
def test_spec_variants_from_yaml_and_spec_file(tmp_path, gpt2_tokenizer):
    from deltaprompt import PLM, PromptClassifier
    from deltaprompt.prompt_spec import PromptSpec

    (tmp_path / "specs").mkdir()
    PromptSpec(input="Review: {text}", task="Classify the sentiment of the review.").save(tmp_path / "specs/s.yaml")
    (tmp_path / "variants.yaml").write_text(
        "label_words: {negative: terrible, positive: great}\n"
        "variants:\n"
        "  plain: '{text} It was {mask}'\n"
        "  instructed:\n"
        "    spec: {task: Classify the sentiment of the review., input: 'Review: {text}',\n"
        "           output_format: {kind: labels, labels: [negative, positive]}}\n"
        "  from_file: {spec_file: specs/s.yaml}\n"
    )
    loaded = load_variants(tmp_path / "variants.yaml")
    instructed, from_file = loaded.variants[1:]
    assert isinstance(instructed.spec, PromptSpec) and instructed.spec.task == "Classify the sentiment of the review."
    assert from_file.spec.input == "Review: {text}"
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    report = evaluate_variants(loaded, REVIEWS, plm, batch_size=4)
    assert list(report.variants) == ["plain", "instructed", "from_file"] and report.correction == "holm"
    template = report.meta["variants"]["instructed"]["classification_template"]
    assert "Classify the sentiment of the review." in template and "mask" in template
    # chat: the spec goes through the tokenizer's own chat template, label words without a space
    chat_tokenizer = copy.deepcopy(gpt2_tokenizer)  # the session's tokenizer stays without one
    chat_tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                                    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    chat_plm = PLM.from_model(plm.model, chat_tokenizer)
    chat = Variant("chat", {"negative": "terrible", "positive": "great"}, spec=instructed.spec, chat=True)
    report = evaluate_variants([loaded.variants[0], chat], REVIEWS, chat_plm, batch_size=4)
    described = report.meta["variants"]["chat"]
    assert described["chat"] and "<|user|>Review: {text}\n" in described["classification_template"]
    assert described["classification_template"].endswith("<|assistant|>{mask}")
    expected = PromptClassifier(chat_plm, instructed.spec.template(chat_tokenizer, chat=True), chat.label_words,
                                batch_size=4).predict(REVIEWS)
    assert report.predictions["chat"] == expected
    with pytest.raises(ValueError, match="variant 'chat': .*no chat template"):
        evaluate_variants([loaded.variants[0], chat], REVIEWS, plm)
    with pytest.raises(ConfigError, match="variant 'cot': spec"):
        load_variants("label_words: 'n: x; p: y'\nvariants:\n  a: '{text} {mask}'\n"
                      "  cot: {spec: {task: t, chain_of_thought: true}}\n")


def test_the_shipped_variants_file_loads():
    path = Path(__file__).resolve().parents[1] / "examples" / "ab" / "sst2-variants.yaml"
    variants = load_variants(path)
    assert [v.name for v in variants.variants] == ["plain", "chat_instruction", "chat_exemplars"]
    assert [v.chat for v in variants.variants] == [False, True, True]
    assert variants.variants[2].spec is not None and len(variants.variants[2].spec.exemplars) == 2
