"""benchmarks/json_records.py on a tiny CoNLL-like folder made here and the tiny GPT-2: the data it
builds, its metrics on outputs with known answers, and its runs with the results files."""

import copy
import json
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from deltaprompt.generation import target_of

from .conftest import import_benchmark
from .test_cli_generation import TAGS, write_rows

SENTENCES = [
    {"tokens": ["Ada", "Lovelace", "visited", "Paris"], "tags": ["B-PER", "I-PER", "O", "B-LOC"]},
    {"tokens": ["ACME", "rejects", "French", "offer"], "tags": ["B-ORG", "O", "B-MISC", "O"]},
    {"tokens": ["the", "film", "was", "great"], "tags": ["O", "O", "O", "O"]},
    {"tokens": ["Reuters", "reported", "from", "London"], "tags": ["B-ORG", "O", "O", "B-LOC"]},
    {"tokens": ["Clinton", "met", "Yeltsin"], "tags": ["B-PER", "O", "B-PER"]},
    {"tokens": ["a", "dull", "plot"], "tags": ["O", "O", "O"]},
]
METRIC_KEYS = {"exact_match", "token_f1", "valid_json", "schema_valid", "entity_f1", "entity_f1_per_field"}


@pytest.fixture(scope="module")
def bench():
    return import_benchmark("json_records")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data" / "conll2003"
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text(json.dumps(TAGS))
    write_rows(folder / "train.jsonl", SENTENCES)
    write_rows(folder / "test.jsonl", SENTENCES[:3])
    return folder.parent


def test_the_task_is_built_from_the_conll_folder(bench, data_dir):
    data = bench.build_data(data_dir, train=4, test=2, seed=13)
    assert len(data["train"]) == 4 and len(data["test"]) == 2
    train_texts = {" ".join(s["tokens"]) for s in SENTENCES}
    test_texts = {" ".join(s["tokens"]) for s in SENTENCES[:3]}
    assert {e.text for e in data["train"]} <= train_texts and {e.text for e in data["test"]} <= test_texts
    assert [e.text for e in bench.build_data(data_dir, 4, 2, 13)["train"]] == [e.text for e in data["train"]]
    records = {e.text: json.loads(target_of(e)) for e in bench.build_data(data_dir, 6, 3, 0)["train"]}
    assert records["Clinton met Yeltsin"] == {"persons": ["Clinton", "Yeltsin"], "organizations": [], "locations": [],
                                              "misc": []}
    assert data["schema"]["required"] == ["persons", "organizations", "locations", "misc"]


def test_the_metrics_on_outputs_with_known_answers(bench, data_dir):
    data = bench.build_data(data_dir, 6, 3, 0)
    examples = sorted(data["test"], key=lambda e: e.text)  # ACME..., Ada..., the film...
    gold = [json.loads(target_of(e)) for e in examples]
    texts = [
        json.dumps(dict(reversed(list(gold[0].items())))),        # the record, keys in another order: exact
        '{"persons": ["Ada Lovelace"], "locations": []}',        # JSON, but fields missing: not schema-valid
        "no JSON at all",
    ]
    scores = bench.score(texts, examples, data["schema"])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["valid_json"] == pytest.approx(2 / 3) and scores["schema_valid"] == pytest.approx(1 / 3)
    # Entities: ACME (org) and French (misc) found; Ada Lovelace and Paris missed (the second
    # output is rejected, so it predicts none): precision 2/2, recall 2/4.
    assert scores["entity_f1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert scores["entity_f1_per_field"] == {"persons": 0.0, "organizations": 1.0, "locations": 0.0, "misc": 1.0}
    assert 0 < scores["token_f1"] < 1 and scores["n"] == 3


def test_prompt_tuning_and_lora_runs_write_results_and_resume(bench, data_dir, model_dir, tmp_path):
    out = tmp_path / "results"
    args = ["--model", model_dir, "--data-dir", str(data_dir), "--train", "4", "--test", "2", "--epochs", "1",
            "--max-new-tokens", "6", "--batch-size", "2", "--threads", "1", "--out-dir", str(out),
            "--runs", "prompt_tuning", "lora"]
    assert bench.main(args) == 0
    payload = json.loads((out / "json_records.json").read_text())
    runs = payload["runs"]
    assert set(runs) == {"prompt_tuning", "lora"}
    for row in runs.values():
        assert set(row) >= METRIC_KEYS and row["train"] == 4 and row["test"] == 2 and row["trainable"] > 0
        assert all(0 <= row[k] <= 1 for k in METRIC_KEYS - {"entity_f1_per_field"})
        assert set(row["entity_f1_per_field"]) == {"persons", "organizations", "locations", "misc"}
    assert runs["prompt_tuning"]["trainable"] != runs["lora"]["trainable"]
    table = (out / "json_records.md").read_text()
    assert "| prompt_tuning | 4 | 2 |" in table and "| lora | 4 | 2 |" in table

    assert bench.main([*args, "--resume"]) == 0  # nothing left to run: the rows stay as they were
    assert json.loads((out / "json_records.json").read_text())["runs"] == runs
    with pytest.raises(SystemExit, match="other settings"):
        bench.main([*args[:5], "3", *args[6:], "--resume"])


def test_zero_shot_uses_the_spec_through_the_chat_template(bench, data_dir, gpt2_tokenizer, tmp_path):
    # The schema-bearing spec needs more positions than the 128 of the shared tiny model.
    model = tmp_path / "chat-model"
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=1024,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    out = tmp_path / "results"
    assert bench.main(["--model", str(model), "--data-dir", str(data_dir), "--train", "2", "--test", "2",
                       "--max-new-tokens", "4", "--out-dir", str(out), "--runs", "zero_shot"]) == 0
    payload = json.loads((out / "json_records.json").read_text())
    row = payload["runs"]["zero_shot"]
    assert set(row) >= METRIC_KEYS and row["chat"] is True and row["train"] == 0 and row["trainable"] == 0
    assert payload["zero_shot_spec"]["output_format"]["kind"] == "json"
    assert payload["zero_shot_spec"]["output_format"]["schema"]["required"] == ["persons", "organizations",
                                                                                "locations", "misc"]
    assert "| zero_shot (chat) | 0 | 2 |" in (out / "json_records.md").read_text()
