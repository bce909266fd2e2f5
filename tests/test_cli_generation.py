"""Generation from the command line: run configs with ``classifier.kind: generation``,
``deltaprompt train / eval`` on them, and ``deltaprompt generate``, on a tiny GPT-2 saved to disk."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from deltaprompt import Example, PromptForGeneration, PromptSpec
from deltaprompt.cli import main
from deltaprompt.config import build_config, load_config, load_run_data
from deltaprompt.entity_records import entity_record_examples, entity_record_schema, record_types
from deltaprompt.generation import target_of
from deltaprompt.postprocess import make_pipeline
from deltaprompt.schema import ConfigError
from deltaprompt.spans import tagged_example

from .conftest import responsive, tiny_plm

TEMPLATE = "Echo: {text} Answer: {mask}"
PAIRS = [("the movie was great", "great movie"), ("a dull plot", "dull plot"),
         ("a terrible boring film", "boring film"),
         ("great acting", "great acting"), ("the plot was dull", "dull plot"), ("a wonderful film", "wonderful film")]
TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generation_raw(**classifier):
    return {"model": {"name": "some-model"}, "data": {"train": "/data/train.jsonl"},
            "classifier": {"kind": "generation", "template": TEMPLATE, **classifier}}


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(raw, "run.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("run.yaml: ")
    return message


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().split("\n") if line]


def printed_lines(text: str) -> list[str]:
    """Output lines split at newlines only (generated text may hold other line separators)."""
    return text.split("\n")[:-1]


def shown(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize(("raw", "expected"), [
    (generation_raw(max_new_token=5), "unknown key 'max_new_token'; did you mean 'max_new_tokens'?"),
    (generation_raw(decoding={"num_beam": 2}),
     "classifier.decoding: unknown key 'num_beam'; did you mean 'num_beams'?"),
    (generation_raw(decoding={"top_p": 1.5}), "classifier.decoding.top_p must be in (0, 1]"),
    (generation_raw(postprocess=["stirp"]), "unknown post-processing step 'stirp' (did you mean 'strip'?)"),
    (generation_raw(postprocess=[{"truncate": {"max_word": 3}}]), "(did you mean 'max_words'?)"),
    (generation_raw(metrics=["rogue"]), "classifier.metrics[0]: unknown metric 'rogue'; did you mean 'rouge'?"),
    (generation_raw(spec={"task": "Summarise."}), "exactly one of template, spec, spec_file (got template and spec)"),
    (generation_raw(template=None), "exactly one of template, spec, spec_file"),
    (generation_raw(template=None, spec={"tsk": "Summarise."}),
     "classifier.spec: unknown key 'tsk'; did you mean 'task'?"),
    (generation_raw(template=None, spec_file="/nowhere/spec.yaml"), "classifier.spec_file: no such file"),
    (generation_raw(label_words={"a": "yes"}), "classifier.label_words: kind: generation writes text"),
    (generation_raw(verbalizer="soft"), "classifier.verbalizer applies to kind: prompt, not to kind: generation"),
    (generation_raw(template="{text} {mask} and {mask}"), "one answer slot {mask}"),
    (generation_raw(retry_invalid=True), "classifier.retry_invalid retries outputs that post-processing rejects"),
    (generation_raw(max_new_tokens=0), "classifier.max_new_tokens must be positive"),
    ({**generation_raw(), "classifier": {"template": "{text} {mask}", "label_words": {"a": "x", "b": "y"},
                                         "chat": True}},
     "classifier.chat applies to kind: generation, not to kind: prompt"),
    ({**generation_raw(), "classifier": {"template": "{text} {mask}", "label_words": {"a": "x", "b": "y"},
                                         "max_new_tokens": 8}},
     "classifier.max_new_tokens applies to kind: generation, not to kind: prompt"),
    ({**generation_raw(), "data": {"train": "/t.jsonl", "labels": ["a", "b"]}}, "data.labels: a generation model"),
    ({**generation_raw(), "classifier": {"kind": "tagger"}, "data": {"train": "/t.jsonl", "entity_records": True}},
     "data.entity_records applies to classifier kind: generation, not to kind: tagger"),
])
def test_generation_config_errors_name_the_key(raw, expected):
    assert expected in error_of(raw)


def test_generation_config_reads_back_and_builds_its_settings(tmp_path):
    spec = tmp_path / "spec.yaml"
    PromptSpec(task="Shorten the review.", input="Review: {text}").save(spec)
    run = tmp_path / "run.yaml"
    run.write_text("model: {name: m}\ndata: {train: t.jsonl, target_column: summary}\n"
                   "classifier: {kind: generation, spec_file: spec.yaml, chat: true, max_new_tokens: 12,\n"
                   "  decoding: {num_beams: 3, no_repeat_ngram_size: 2},\n"
                   "  postprocess: [strip, {truncate: {max_words: 4}}],\n"
                   "  retry_invalid: true, metrics: [bleu]}\n")
    config = load_config(run)
    c = config.classifier
    assert c.spec_file == str(spec) and config.data.train == str(tmp_path / "t.jsonl")  # beside the config
    assert c.prompt_spec() == PromptSpec.load(spec)
    assert build_config(config.to_dict()) == config  # what train writes to config.yaml reads back
    settings = c.generation_settings()
    assert settings["decoding"] == {"num_beams": 3, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                                    "top_k": None, "repetition_penalty": 1.0, "no_repeat_ngram_size": 2,
                                    "seed": None}
    assert settings["postprocess"] == ["strip", {"truncate": {"max_words": 4}}]
    assert settings["retry_invalid"] is True and settings["metrics"] == ["bleu"]
    assert load_config(run, ["classifier.decoding.top_k=5"]).classifier.decoding_section().top_k == 5
    with pytest.raises(ConfigError, match="classifier.decoding: unknown key 'topk'; did you mean 'top_k'"):
        load_config(run, ["classifier.decoding.topk=5"])


def test_the_target_column_few_shot_draw_and_missing_outputs(tmp_path):
    rows = [{"text": t, "summary": s, "label": "x"} for t, s in PAIRS]
    train = write_rows(tmp_path / "train.jsonl", rows)
    test = write_rows(tmp_path / "test.jsonl", [{"text": "no output here"}])
    raw = {**generation_raw(), "data": {"train": str(train), "test": str(test), "target_column": "summary",
                                        "shots": 2, "dev_per_class": 1, "seed": 3}}
    data = load_run_data(build_config(raw))
    assert data.classes == () and len(data.train) == 2 and len(data.dev) == 1
    assert {target_of(e) for e in [*data.train, *data.dev]} <= {s for _, s in PAIRS}
    assert all("summary" not in e.meta for e in data.train)  # moved to meta["target"], not the label
    assert [target_of(e) for e in data.test] == [None]  # a test split may lack outputs
    again = load_run_data(build_config(raw))
    assert [e.text for e in again.train] == [e.text for e in data.train]  # the seed fixes the draw
    write_rows(train, [*rows, {"text": "orphan"}])
    whole = {**raw, "data": {"train": str(train), "target_column": "summary"}}
    with pytest.raises(ValueError, match="every training example needs its output \\(column 'summary'\\); example 7"):
        load_run_data(build_config(whole))


def test_tagged_sentences_become_entity_records(tmp_path):
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(TAGS))
    sentences = [{"tokens": ["Ada", "Lovelace", "met", "Ada", "Lovelace", "in", "Paris"],
                  "tags": ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC"]},
                 {"tokens": ["ACME", "rejects", "French", "offer"], "tags": ["B-ORG", "O", "B-MISC", "O"]}]
    write_rows(folder / "train.jsonl", sentences)
    write_rows(folder / "test.jsonl", sentences[1:])
    raw = {**generation_raw(), "data": {"task": str(folder), "entity_records": True}}
    data = load_run_data(build_config(raw))
    first = json.loads(target_of(data.train[0]))
    assert data.train[0].text == "Ada Lovelace met Ada Lovelace in Paris"
    assert first == {"persons": ["Ada Lovelace"], "organizations": [], "locations": ["Paris"], "misc": []}
    assert list(first) == ["persons", "organizations", "locations", "misc"]  # a fixed field order
    assert json.loads(target_of(data.test[0])) == {"persons": [], "organizations": ["ACME"], "locations": [],
                                                   "misc": ["French"]}
    schema = entity_record_schema(record_types(TAGS))
    for example in [*data.train, *data.test]:
        jsonschema.validate(json.loads(target_of(example)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"persons": []}, schema)  # every field is required
    with pytest.raises(ValueError, match="set data.entity_records: true"):
        load_run_data(build_config({**raw, "data": {"task": str(folder)}}))
    odd = [tagged_example(["Ada", "codes"], ["B-DEV", "O"])]
    assert record_types(["B-DEV", "B-PER", "I-PER", "O"]) == ["PER", "DEV"]
    assert json.loads(target_of(entity_record_examples(odd)[0])) == {"dev": ["Ada"]}


# ----------------------------------------------------------------------------- train / eval

@pytest.fixture(scope="module")
def gen_model_dir(tmp_path_factory, gpt2_tokenizer) -> str:
    """The tiny GPT-2 of ``model_dir``, made responsive (its outputs differ from input to input
    and from one decoding setting to another, so a setting that went missing would show)."""
    folder = tmp_path_factory.mktemp("tiny-gpt2-responsive")
    responsive(tiny_plm("gpt2", gpt2_tokenizer)).model.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, gen_model_dir):
    folder = tmp_path_factory.mktemp("generation-run")
    write_rows(folder / "train.jsonl", [{"text": t, "target": s} for t, s in PAIRS])
    write_rows(folder / "test.jsonl", [{"text": t, "target": s} for t, s in PAIRS[:4]])
    config = {
        "model": {"name": gen_model_dir},
        "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "classifier": {"kind": "generation", "template": TEMPLATE, "max_new_tokens": 6, "batch_size": 3,
                       "postprocess": ["strip"], "metrics": ["exact_match", "token_f1", "bleu", "rouge"]},
        "methods": [{"method": "prompt_tuning", "num_tokens": 4}],
        "training": {"epochs": 1, "batch_size": 3, "tensorboard": False, "seed": 7},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def trained(workspace):
    out = workspace / "out"
    assert main(["train", str(workspace / "run.yaml"), "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def gold_examples(workspace):
    return [Example(t, meta={"target": s}) for t, s in PAIRS[:4]]


def test_train_saves_the_model_its_settings_metrics_and_predictions(trained, gold_examples):
    model = trained / "model"
    assert (model / "deltaprompt.json").is_file() and (trained / "config.yaml").is_file()
    settings = json.loads((model / "generation.json").read_text())
    assert settings["postprocess"] == ["strip"] and settings["retry_invalid"] is False
    assert settings["metrics"] == ["exact_match", "token_f1", "bleu", "rouge"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["kind"] == "generation" and metrics["classes"] == []
    assert metrics["examples"] == {"train": 6, "dev": 0, "test": 4} and metrics["training"]["epochs"] == 1
    test = metrics["test"]
    assert set(test) == {"n", "exact_match", "token_f1", "bleu", "rouge1", "rouge2", "rougeL", "invalid"}
    assert test["n"] == 4 and 0 <= test["bleu"] <= 100
    assert all(0 <= test[k] <= 1 for k in ("exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "invalid"))
    assert metrics["exact_match"] == test["exact_match"] and metrics["invalid"] == test["invalid"]

    gen = PromptForGeneration.load(model)
    assert isinstance(gen, PromptForGeneration) and gen.model.max_new_tokens == 6 and gen.batch_size == 3
    raw = gen.generate(gold_examples)
    rows = read_jsonl(trained / "test_predictions.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [(r["text"], r["target"]) for r in rows] == [(e.text, target_of(e)) for e in gold_examples]
    assert [r["output"] for r in rows] == raw
    assert [r["prediction"] for r in rows] == [text.strip() for text in raw] and all(r["valid"] for r in rows)
    assert test == gen.evaluate(gold_examples, metrics=settings["metrics"], postprocess=["strip"])


def test_eval_reports_generation_metrics_and_writes_predictions(trained, workspace, gold_examples, tmp_path, capsys):
    out, scores = tmp_path / "preds.jsonl", tmp_path / "metrics.json"
    code = main(["eval", str(trained / "model"), "--data", str(workspace / "test.jsonl"), "--output", str(out),
                 "--metrics", str(scores), "--postprocess", "strip", "truncate:max_chars=3", "--metric", "exact_match"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "generation model" in printed and "exact_match" in printed and "(n = 4)" in printed
    summary = json.loads(scores.read_text())
    assert set(summary) >= {"n", "exact_match", "invalid", "settings"} and "token_f1" not in summary
    assert summary["settings"]["postprocess"] == ["strip", {"truncate": {"max_chars": 3}}]
    rows = read_jsonl(out)
    pipeline = make_pipeline(["strip", {"truncate": {"max_chars": 3}}])
    assert [r["prediction"] for r in rows] == [pipeline(r["output"]) for r in rows]
    assert any(len(r["output"].strip()) > 3 for r in rows) and all(len(r["prediction"]) <= 3 for r in rows)
    gen = PromptForGeneration.load(trained / "model")
    expected = gen.evaluate(gold_examples, metrics=["exact_match"], postprocess=pipeline)
    assert {k: summary[k] for k in expected} == expected

    unlabelled = write_rows(tmp_path / "bare.jsonl", [{"text": "no output"}])
    assert main(["eval", str(trained / "model"), "--data", str(unlabelled)]) == 2
    assert "have no output (column 'target')" in capsys.readouterr().err
    assert main(["predict", str(trained / "model"), "--input", str(unlabelled)]) == 2
    assert "use deltaprompt generate" in capsys.readouterr().err


def test_eval_and_generate_read_tagged_sentences_as_entity_records(trained, tmp_path, capsys):
    folder = tmp_path / "ner"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(TAGS))
    write_rows(folder / "test.jsonl", [{"tokens": ["Ada", "Lovelace", "in", "Paris"],
                                        "tags": ["B-PER", "I-PER", "O", "B-LOC"]}])
    out = tmp_path / "records.jsonl"
    assert main(["generate", str(trained / "model"), "--data", str(folder), "--entity-records", "--out", str(out),
                 "--evaluate"]) == 0
    [row] = read_jsonl(out)
    assert row["text"] == "Ada Lovelace in Paris"
    # Every type of labels.json has its field, MISC and ORG too although this split has none.
    assert json.loads(row["target"]) == {"persons": ["Ada Lovelace"], "organizations": [], "locations": ["Paris"],
                                         "misc": []}
    assert "(n = 1)" in capsys.readouterr().out
    assert main(["eval", str(trained / "model"), "--data", str(folder), "--entity-records"]) == 0
    assert "(n = 1)" in capsys.readouterr().out
    assert main(["eval", str(trained / "model"), "--data", str(folder)]) == 2  # tagged sentences have no output
    assert "have no output" in capsys.readouterr().err


# ----------------------------------------------------------------------------- generate

@pytest.mark.parametrize(("flags", "options"), [
    ([], {}),
    (["--num-beams", "2", "--no-repeat-ngram-size", "2", "--max-new-tokens", "4"],
     {"num_beams": 2, "no_repeat_ngram_size": 2, "max_new_tokens": 4}),
    (["--do-sample", "--top-k", "5", "--temperature", "0.7", "--seed", "3"],
     {"do_sample": True, "top_k": 5, "temperature": 0.7, "seed": 3}),
])
def test_generate_from_a_saved_model_equals_loading_it(trained, workspace, gold_examples, tmp_path, flags, options):
    out = tmp_path / "generated.jsonl"
    code = main(["generate", str(trained / "model"), "--data", str(workspace / "test.jsonl"), "--out", str(out),
                 "--no-postprocess", *flags])
    assert code == 0
    rows = read_jsonl(out)
    gen = PromptForGeneration.load(trained / "model")
    expected = gen.generate(gold_examples, **options)
    assert [r["prediction"] for r in rows] == expected
    if options:  # the flags changed what was generated
        assert expected != gen.generate(gold_examples)
    assert all("valid" not in r and "output" not in r for r in rows)  # no post-processing: the text only


def test_generate_prints_post_processed_outputs_for_texts(trained, capsys):
    texts = ["the movie was great", "a dull plot"]
    assert main(["generate", str(trained / "model"), "--text", texts[0], "--text", texts[1]]) == 0
    lines = printed_lines(capsys.readouterr().out)
    gen = PromptForGeneration.load(trained / "model")
    expected = gen.generate([Example(t) for t in texts], postprocess=["strip"])  # the saved steps
    assert lines == [shown(text) for text in expected] and expected[0] != expected[1]


def test_generate_with_a_template_on_the_base_model(gen_model_dir, capsys):
    texts = ["great acting", "a dull plot"]
    code = main(["generate", "--model", gen_model_dir, "--template", "Q: {text}\\nA: {mask}", "--text", texts[0],
                 "--text", texts[1], "--max-new-tokens", "3", "--show-prompt"])
    assert code == 0
    lines = printed_lines(capsys.readouterr().out)
    assert lines[:3] == ["prompt of the first example:", "Q: great acting", "A:"]
    gen = PromptForGeneration(gen_model_dir, "Q: {text}\nA: {mask}", max_new_tokens=3)
    assert lines[3:] == [shown(t) for t in gen.generate([Example(t) for t in texts])]


def test_generate_renders_a_spec_as_text_or_through_the_chat_template(gen_model_dir, gpt2_tokenizer, tmp_path,
                                                                     capsys):
    spec = PromptSpec(task="Repeat the review's main word.", persona="You are terse.", input="Review: {text}",
                      constraints={"max_words": 2})
    path = spec.save(tmp_path / "spec.yaml")
    example = Example("the movie was great")
    args = ["generate", "--model", gen_model_dir, "--spec", str(path), "--text", example.text, "--max-new-tokens", "2",
            "--show-prompt"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prompt of the first example:\n" + spec.render(example) + "\n")

    chat_model = tmp_path / "chat-model"
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    tiny_plm("gpt2", gpt2_tokenizer).model.save_pretrained(chat_model)
    tokenizer.save_pretrained(chat_model)
    assert main([*args[:2], str(chat_model), *args[3:], "--chat"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prompt of the first example:\n" + spec.render_chat(tokenizer, example) + "\n")
    assert "<system>You are terse." in printed


def test_generate_evaluates_and_reports_rejected_outputs(trained, workspace, tmp_path, capsys):
    out = tmp_path / "json.jsonl"
    steps = tmp_path / "steps.yaml"
    steps.write_text("- strip\n- json\n")
    code = main(["generate", str(trained / "model"), "--data", str(workspace / "test.jsonl"), "--out", str(out),
                 "--postprocess-file", str(steps), "--evaluate"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = read_jsonl(out)
    # An untrained-to-JSON model writes no JSON object: every output is rejected, with its error.
    assert all(r["valid"] is False and r["prediction"] is None for r in rows)
    rejections = ("no_json", "invalid_json", "truncated_json", "empty")
    assert all(r["error"]["step"] == "json" and r["error"]["reason"] in rejections for r in rows)
    assert "invalid 1.0000" in printed and "exact_match 0.0000" in printed

    code = main(["generate", str(trained / "model"), "--data", str(workspace / "test.jsonl"), "--out", str(out),
                 "--postprocess", "json", "--retry-invalid", "--limit", "2"])
    assert code == 0
    rows = read_jsonl(out)
    assert len(rows) == 2 and all("output" not in r and r["error"]["step"] == "json" for r in rows)


@pytest.mark.parametrize(("args", "message"), [
    (["--text", "a", "--data", "x.jsonl"], "give the inputs as --data FILE/TASK or as --text"),
    (["--text", "a", "--template", "{text} {mask}"], "--template applies with --model"),
    (["--text", "a", "--evaluate"], "--evaluate: 1 of 1 examples have no output"),
    (["--text", "a", "--retry-invalid", "--no-postprocess"], "--retry-invalid retries outputs"),
    (["--text", "a", "--postprocess", "truncate:max_word=2"], "did you mean 'max_words'?"),
    (["--text", "a", "--top-p", "2"], "--top-p must be in (0, 1]"),
])
def test_generate_argument_errors(trained, capsys, args, message):
    assert main(["generate", str(trained / "model"), *args]) == 2
    assert message in capsys.readouterr().err


def test_generate_without_a_model_or_a_prompt(capsys):
    assert main(["generate", "--text", "a"]) == 2
    assert "give a saved generation model folder, or a prompt" in capsys.readouterr().err


def test_classifiers_refuse_generation_and_its_flags(gen_model_dir, workspace, tmp_path, capsys):
    from deltaprompt import PromptClassifier

    classifier = PromptClassifier(gen_model_dir, "{text} It was {mask}", {"neg": "bad", "pos": "good"})
    folder = classifier.save(tmp_path / "clf")
    data = write_rows(tmp_path / "labelled.jsonl", [{"text": "great", "label": "pos"}])
    assert main(["eval", str(folder), "--data", str(data), "--num-beams", "2"]) == 2
    assert "--num-beams applies to generation models" in capsys.readouterr().err
    assert main(["eval", str(folder), "--data", str(data)]) == 0  # without them, eval is unchanged
    capsys.readouterr()
    assert main(["generate", str(folder), "--text", "a"]) == 2
    assert "holds a prompt classifier, not a generation model" in capsys.readouterr().err
