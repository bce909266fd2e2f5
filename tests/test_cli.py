"""The command line, end to end on a tiny saved model and a tiny task."""

import json

from deltaprompt.cli import main, unescape

from .test_data import write_task


def test_zero_shot_on_a_task_folder_prints_metrics_and_writes_predictions(model_dir, tmp_path, capsys):
    task = write_task(tmp_path, labels=("negative", "positive"), per_label=4)
    out = tmp_path / "out" / "preds.jsonl"
    code = main([
        "zero-shot", "--model", model_dir, "--data", str(task), "--split", "test", "--limit", "6",
        "--template", "Review: {text}\\nSentiment: {mask}", "--verbalizer", "negative: terrible; positive: great",
        "--output", str(out), "--batch-size", "4",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert "accuracy" in printed and "macro-F1" in printed and "confusion" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    assert [r["index"] for r in rows] == list(range(6))
    for row in rows:
        assert row["prediction"] in ("negative", "positive")
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["prediction"] == max(row["probabilities"], key=row["probabilities"].get)
    gold = [r["label"] for r in rows]
    accuracy = sum(r["prediction"] == g for r, g in zip(rows, gold, strict=True)) / 6
    assert f"accuracy  {accuracy:.4f}" in printed


def test_zero_shot_with_a_knowledgeable_verbalizer_reports_its_words(model_dir, tmp_path, capsys):
    task = write_task(tmp_path, labels=("negative", "positive"), per_label=4)
    args = ["zero-shot", "--model", model_dir, "--data", str(task), "--split", "test", "--template",
            "{text} It was {mask}", "--verbalizer", "negative: terrible; positive: great"]
    assert main([*args, "--related", "negative: awful"]) == 2
    assert "add --knowledgeable" in capsys.readouterr().err
    code = main([*args, "--knowledgeable", "--related", "negative: awful, bad; positive: good", "--neighbours", "0",
                 "--prior-examples", "5"])
    printed = capsys.readouterr().out
    assert code == 0 and "accuracy" in printed
    for word in ("awful", "bad", "good"):  # every related word is reported, kept or dropped
        assert word in printed


def test_unlabelled_file_prints_the_predicted_counts(model_dir, tmp_path, capsys):
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "great"}\n{"text": "terrible"}\n')
    code = main(["zero-shot", "--model", model_dir, "--data", str(data), "--template", "{text} {mask}",
                 "--verbalizer", "neg: terrible; pos: great"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "predicted: neg" in printed and "accuracy" not in printed


def test_bad_template_exits_with_the_position(model_dir, tmp_path, capsys):
    task = write_task(tmp_path)
    code = main(["zero-shot", "--model", model_dir, "--data", str(task), "--template", "{text} {mask",
                 "--verbalizer", "neg: terrible; pos: great"])
    error = capsys.readouterr().err
    assert code == 2
    assert "never closed (at position 7)" in error


def test_missing_task_and_wrong_classes_are_user_errors(model_dir, tmp_path, capsys):
    assert main(["zero-shot", "--model", model_dir, "--data", str(tmp_path / "nope"), "--template", "{text} {mask}",
                 "--verbalizer", "a: b"]) == 2
    assert "no task at" in capsys.readouterr().err
    task = write_task(tmp_path)
    assert main(["zero-shot", "--model", model_dir, "--data", str(task), "--template", "{text} {mask}",
                 "--verbalizer", "neg: terrible; positive: great"]) == 2
    assert "no label words for ['pos']" in capsys.readouterr().err


def test_unescape_turns_backslash_n_into_newlines():
    assert unescape("Review: {text}\\nSentiment: {mask}") == "Review: {text}\nSentiment: {mask}"
