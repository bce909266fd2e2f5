"""benchmarks/multitask_transfer.py on tiny task folders made here and the tiny GPT-2: each kind of
run (leave one out, prompt transfer, structure search) writes its row, and --resume keeps them."""

import json
from pathlib import Path

import pytest

from deltaprompt import PromptClassifier, load_plm

from .conftest import import_benchmark

WORDS = {
    "sst2": ("the movie was great and wonderful", "a terrible boring film with a dull plot"),
    "mr": ("wonderful acting it was great", "dull and boring plot"),
}
TOPICS = {"World": "world news", "Sports": "sports news", "Business": "business news", "Sci/Tech": "science technology"}


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("multitask_transfer")


def write_task(folder: Path, labels: list[str], texts: dict[str, str], train: int = 6, test: int = 2) -> None:
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(labels))
    for split, count in (("train", train), ("test", test)):
        rows = [{"text": f"{texts[label]} {split} {i}", "label": label} for label in labels for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    for task in ("sst2", "mr"):
        positive, negative = WORDS[task]
        write_task(root / task, ["negative", "positive"], {"positive": positive, "negative": negative})
    write_task(root / "agnews", list(TOPICS), TOPICS)
    return root


def run(bench, model_dir, data_dir, tmp_path, *extra):
    args = ["--model", model_dir, "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "results"),
            "--work-dir", str(tmp_path / "work"), "--threads", "1", "--test-limit", "4", "--batch-size", "4",
            "--mixture", "sst2", "agnews", "mr", "--held-out", "mr", "--mix-shots", "2", "--mix-steps", "4",
            "--lora-r", "2", "--targets", "mr", "--k", "2", "--seeds", "1", "2", "--num-tokens", "4",
            "--source-shots", "2", "--source-epochs", "1", "--transfer-epochs", "1", "--budget", "5%",
            "--search-trials", "2", "--search-epochs", "1", "--search-methods", "bitfit", "prompt_tuning",
            "--max-methods", "1", *extra]
    return bench.main(args)


def results(tmp_path) -> dict:
    return json.loads((tmp_path / "results" / "multitask_transfer.json").read_text())


def test_leave_one_out_row_compares_with_the_untouched_model(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "loo_mr") == 0
    row = results(tmp_path)["runs"]["loo_mr"]
    assert row["held_out"] == "mr" and row["n_test"] == 4
    assert set(row["mixture"]) == {"sst2", "agnews"} and sum(row["batches_drawn"].values()) == 4
    assert row["train_examples"] == {"sst2": 4, "agnews": 8}  # --mix-shots 2 per class
    assert row["steps"] == 4 and row["trainable"] > 0
    # plain zero-shot is the same prompt on the model as loaded
    prompt = bench.PROMPTS["mr"]
    test = bench.Data(data_dir).test("mr", 4)
    untouched = PromptClassifier(load_plm(model_dir), prompt.template, prompt.label_words).evaluate(test)
    assert row["zero_shot"] == {"accuracy": round(untouched.accuracy, 4), "macro_f1": round(untouched.macro_f1, 4)}
    assert row["gain_accuracy"] == pytest.approx(row["multitask"]["accuracy"] - row["zero_shot"]["accuracy"])
    assert "| mr | sst2 " in (tmp_path / "results" / "multitask_transfer.md").read_text()


def test_transfer_row_has_every_init_and_seed_and_reuses_the_source(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "transfer_sst2_mr") == 0
    row = results(tmp_path)["runs"]["transfer_sst2_mr"]
    assert [(r["init"], r["seed"]) for r in row["runs"]] == [(i, s) for s in (1, 2) for i in bench.INITS]
    assert all(r["num_tokens"] == 4 for r in row["runs"])
    assert [r["source"] for r in row["runs"] if r["init"] == "transfer"] == ["sst2", "sst2"]
    assert set(row["summary"]) == set(bench.INITS) and all(s["runs"] == 2 for s in row["summary"].values())
    assert row["source"]["task"] == "sst2" and row["source"]["train"] == 4 and "accuracy" in row["source"]["test"]
    assert row["transfer_minus_random"] == pytest.approx(
        row["summary"]["transfer"]["accuracy"] - row["summary"]["random"]["accuracy"], abs=1e-4)
    assert (tmp_path / "work" / "source_sst2" / "soft_prompt.safetensors").is_file()
    assert "sst2 → mr" in (tmp_path / "results" / "multitask_transfer.md").read_text()


def test_search_row_compares_the_best_structure_with_the_best_baseline(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "search_sst2") == 0
    row = results(tmp_path)["runs"]["search_sst2"]
    assert row["budget"] == "5%" and row["trials"] == 2 and row["train"] == 4 and row["dev"] == 4
    assert {b["method"] for b in row["baselines"]} == {"bitfit", "prompt_tuning"}
    for key in ("best", "best_baseline"):
        entry = row[key]
        assert entry["trainable"] <= row["cap"] and set(entry["test"]) == {"accuracy", "macro_f1"}
        assert entry["structure"].split("(")[0] in {"bitfit", "prompt_tuning"}
    assert row["verdict"] and (tmp_path / "work" / "search_sst2" / "study.db").is_file()
    assert "best baseline" in (tmp_path / "results" / "multitask_transfer.md").read_text()


def test_transfer_resumes_from_the_rows_it_kept(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "transfer_sst2_mr") == 0
    kept = tmp_path / "work" / "transfer_sst2_mr" / "rows.jsonl"
    rows = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(r["seed"], r["init"]) for r in rows] == [(s, i) for s in (1, 2) for i in bench.INITS]
    # as if killed after four rows, one of them marked so a re-run would show
    rows[0]["accuracy"] = 0.123
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (tmp_path / "results" / "multitask_transfer.json").unlink()
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "transfer_sst2_mr", "--resume") == 0
    again = results(tmp_path)["runs"]["transfer_sst2_mr"]["runs"]
    assert again[0]["accuracy"] == 0.123 and again[1:4] == rows[1:4]  # kept, not trained again
    assert len(again) == 6 and len(kept.read_text().splitlines()) == 6
    # other settings: the kept rows are dropped, not mixed in
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "transfer_sst2_mr", "--resume", "--name", "other",
               "--transfer-epochs", "2") == 0
    assert all(r["accuracy"] != 0.123 for r in map(json.loads, kept.read_text().splitlines()))


def test_resume_keeps_recorded_rows_and_refuses_other_settings(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "loo_mr") == 0
    before = results(tmp_path)["runs"]
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "loo_mr", "--resume") == 0
    assert results(tmp_path)["runs"] == before  # nothing ran again
    with pytest.raises(SystemExit, match="other settings"):
        run(bench, model_dir, data_dir, tmp_path, "--runs", "loo_mr", "--resume", "--mix-steps", "5")
    with pytest.raises(SystemExit):
        run(bench, model_dir, data_dir, tmp_path, "--runs", "loo_sst5")  # not held out by these options


def test_search_row_tests_the_best_structure_against_the_best_baseline_on_test(bench, model_dir, data_dir, tmp_path):
    assert run(bench, model_dir, data_dir, tmp_path, "--runs", "search_sst2", "--search-trials", "5") == 0
    row = results(tmp_path)["runs"]["search_sst2"]
    assert row["trained"] == 5 and row["trials"] >= 5
    best, baseline, test = row["best"], row["best_baseline"], row["test_mcnemar"]
    assert best["trial"] != baseline["trial"]  # with these seeds the search found another structure
    assert test["n"] == row["n_test"] and test["b"] + test["c"] <= test["n"]
    assert test["difference"] == pytest.approx(best["test"]["accuracy"] - baseline["test"]["accuracy"], abs=1e-4)
    assert "best structure minus best baseline" in (tmp_path / "results" / "multitask_transfer.md").read_text()
