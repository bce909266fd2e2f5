"""``deltaprompt train / eval / predict / info`` end to end, on a tiny model saved to disk and
the tiny example config (examples/tiny.yaml)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from deltaprompt.classifier import load
from deltaprompt.cli import main
from deltaprompt.data import load_examples
from deltaprompt.structure import count_parameters

from .conftest import tiny_plm

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml"
TEXTS = {
    "positive": ["the movie was great", "wonderful acting and a great film", "great fun", "a wonderful plot",
                 "great acting", "the film was wonderful"],
    "negative": ["a terrible boring film", "a dull plot", "boring and dull", "terrible acting",
                 "the movie was terrible", "a boring film"],
}


def write_rows(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, gpt2_tokenizer):
    """A folder with examples/tiny.yaml, the model it names (tiny-model/) and its data."""
    folder = tmp_path_factory.mktemp("tiny-run")
    plm = tiny_plm("gpt2", gpt2_tokenizer)
    plm.model.save_pretrained(folder / "tiny-model")
    gpt2_tokenizer.save_pretrained(folder / "tiny-model")
    rows = [{"text": t, "label": label} for label, texts in TEXTS.items() for t in texts]
    write_rows(folder / "train.jsonl", rows)
    write_rows(folder / "test.jsonl", rows[::2])
    shutil.copy(TINY, folder / "run.yaml")
    return folder


@pytest.fixture(scope="module")
def trained(workspace):
    """One training run shared by the eval/predict/info tests (training is the slow part)."""
    out = workspace / "out"
    code = main(["train", str(workspace / "run.yaml"), "--output-dir", str(out)])
    assert code == 0
    return out


def test_train_writes_the_model_metrics_and_a_reloadable_classifier(trained, workspace, capsys):
    assert (trained / "model" / "deltaprompt.json").is_file()
    assert (trained / "model" / "weights.safetensors").is_file()
    assert (trained / "config.yaml").is_file() and (trained / "training" / "log.csv").is_file()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["examples"] == {"train": 8, "dev": 4, "test": 6}  # 4 + 2 per class, test file
    assert metrics["classes"] == ["negative", "positive"]
    assert metrics["methods"] == [{"method": "finetune", "lr": None, "freeze_embeddings": True}]
    assert metrics["training"]["steps"] == 2 and metrics["training"]["epochs"] == 1

    classifier = load(trained / "model")
    count = count_parameters(classifier.model)
    embedding = classifier.model.model.get_input_embeddings().weight.numel()
    assert metrics["parameters"] == count.to_dict()
    assert count.trainable == count.total - embedding and count.by_role == {"plm": count.trainable}

    test = load_examples(workspace / "test.jsonl")
    evaluation = classifier.evaluate(test)
    assert metrics["accuracy"] == pytest.approx(evaluation.accuracy)
    assert metrics["test"]["confusion"] == evaluation.confusion.tolist()
    saved = [json.loads(line) for line in (trained / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in saved] == evaluation.predictions
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in saved], evaluation.probabilities,
                               atol=1e-5)


def test_train_prints_accuracy_and_parameters(workspace, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(workspace / "run.yaml"), "--output-dir", str(out), "--set", "training.max_steps=1",
                 "--set", "methods=[]", "--set", "classifier.kind=head", "--set", "classifier.label_words=null",
                 "--set", "classifier.template=null", "--set", "classifier.pooling=mean"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "head" and metrics["training"]["steps"] == 1
    head = metrics["parameters"]["by_role"]
    assert set(head) == {"head"} and head["head"] == 2 * 32 + 2  # a linear layer, hidden 32 -> 2 classes
    assert f"test accuracy {metrics['accuracy']:.4f}" in printed
    assert f"trainable {head['head']:,} of {metrics['parameters']['total']:,} parameters" in printed
    assert load(out / "model").classes == ("negative", "positive")


def test_eval_prints_metrics_and_writes_them(trained, workspace, tmp_path, capsys):
    metrics_file = tmp_path / "eval.json"
    code = main(["eval", str(trained / "model"), "--data", str(workspace / "test.jsonl"), "--limit", "4",
                 "--metrics", str(metrics_file), "--output", str(tmp_path / "preds.jsonl")])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads(metrics_file.read_text())
    assert summary["n"] == 4
    assert f"accuracy  {summary['accuracy']:.4f}" in printed and "confusion" in printed
    assert len((tmp_path / "preds.jsonl").read_text().splitlines()) == 4


def test_eval_refuses_unlabelled_data(trained, tmp_path, capsys):
    data = tmp_path / "texts.jsonl"
    write_rows(data, [{"text": "great"}])
    assert main(["eval", str(trained / "model"), "--data", str(data)]) == 2
    assert "evaluation needs labels" in capsys.readouterr().err


def test_predict_to_stdout_and_to_a_file(trained, tmp_path, capsys):
    texts = tmp_path / "in.txt"
    texts.write_text("the movie was great\n\na dull plot\n")
    assert main(["predict", str(trained / "model"), "--input", str(texts)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classifier = load(trained / "model")
    expected = classifier.predict(["the movie was great", "a dull plot"])
    assert [r["prediction"] for r in rows] == expected
    assert [r["text"] for r in rows] == ["the movie was great", "a dull plot"]

    output = tmp_path / "out.jsonl"
    source = tmp_path / "in.csv"
    source.write_text("review\nthe movie was great\na dull plot\n")
    assert main(["predict", str(trained / "model"), "--input", str(source), "--text-column", "review",
                 "--output", str(output)]) == 0
    assert "2 predictions written" in capsys.readouterr().out
    assert [json.loads(line)["prediction"] for line in output.read_text().splitlines()] == expected


def test_info_on_a_saved_classifier_matches_count_parameters(trained, capsys):
    assert main(["info", str(trained / "model")]) == 0
    printed = capsys.readouterr().out
    count = count_parameters(load(trained / "model").model)
    assert printed.rstrip().splitlines()[-1] == str(count)
    assert "finetune(freeze_embeddings=True)" in printed
    assert re.search(r"0-1 ×2: GPT2Block", printed)
    assert "weight = model.transformer.wte.weight" in printed


def test_info_on_a_model_with_methods(workspace, capsys, gpt2_tokenizer):
    model = str(workspace / "tiny-model")
    assert main(["info", "--model", model, "--method", "finetune:freeze_embeddings=true",
                 "--template", '{"soft": None, "duplicate": 2} {text} {mask}', "--depth", "2"]) == 0
    printed = capsys.readouterr().out
    total = count_parameters(tiny_plm("gpt2", gpt2_tokenizer).model).total
    embedding = len(gpt2_tokenizer) * 32
    trainable = total - embedding + 2 * 32
    assert printed.rstrip().splitlines()[-1] == (
        f"trainable {trainable:,} of {total + 64:,} parameters ({100 * trainable / (total + 64):.2f}%): "
        f"soft 64, plm {total - embedding:,}"
    )
    assert "soft_prompt: SoftPrompt(2×32)" in printed and "modules below" in printed


def test_info_argument_errors(trained, capsys):
    assert main(["info"]) == 2
    assert "give a saved classifier folder or --model NAME" in capsys.readouterr().err
    assert main(["info", str(trained / "model"), "--method", "lora"]) == 2
    assert "--method applies with --model" in capsys.readouterr().err
    assert main(["info", "--model", "whatever", "--method", "lorra"]) == 2
    assert "unknown delta method 'lorra'; did you mean 'lora'?" in capsys.readouterr().err


def test_config_errors_exit_2_with_one_line(workspace, tmp_path, capsys):
    config = str(workspace / "run.yaml")
    assert main(["train", config, "--set", "training.lrr=1e-3", "--output-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "training: unknown key 'lrr'; did you mean 'lr'?" in error
    assert main(["train", config, "--set", "methods[0].freeze_embedings=true", "--output-dir", str(tmp_path)]) == 2
    assert "did you mean 'freeze_embeddings'?" in capsys.readouterr().err
    assert main(["train", config, "--set", "classifier.kind=head", "--output-dir", str(tmp_path)]) == 2
    assert "a head classifier has no label words" in capsys.readouterr().err
    assert main(["train", config, "--set", "output_dir=null"]) == 2
    assert "no output folder" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written for a refused config


def test_a_killed_run_resumes_to_the_same_weights(workspace, tmp_path):
    """SIGKILL mid-run (no chance to clean up), start the same command again: the result
    equals an uninterrupted run's, weight for weight."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "deltaprompt.cli", "train", str(workspace / "run.yaml"), "--output-dir",
                str(out), "--set", "training.epochs=60", "--set", "training.save_every=1",
                "--set", "training.log_every=1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    plain = subprocess.run(command(tmp_path / "plain"), env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "training" / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoints.is_dir() and any(p.name >= "step-00000040" for p in checkpoints.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists()

    resumed = subprocess.run(command(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = load_file(str(tmp_path / "plain" / "model" / "weights.safetensors"))
    got = load_file(str(killed / "model" / "weights.safetensors"))
    assert expected.keys() == got.keys()
    assert all((expected[n] == got[n]).all() for n in expected)
