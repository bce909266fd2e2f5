"""The delta-structure search: budget, resuming, picking the best trial, its outputs and CLI."""

from __future__ import annotations

import json
import re
import sqlite3

import optuna
import pytest

from deltaprompt.cli import main
from deltaprompt.config import build_config, load_config
from deltaprompt.delta import make_methods
from deltaprompt.schema import ConfigError
from deltaprompt.search.delta_structure import (
    PROPOSALS_PER_TRIAL,
    STUDY_NAME,
    ParameterBudget,
    SearchSection,
    TrialRun,
    baseline_params,
    lora_targets,
    parse_budget,
    search_delta_structures,
    train_trial,
)
from deltaprompt.structure import count_parameters

from .conftest import TEMPLATE, TRAIN, WORDS, prompt_model, responsive, tiny_plm

DEV = TRAIN[:2] + TRAIN[4:6]
# Optuna's exhaustive sampler (tries every structure once) is marked experimental.
BRUTE_FORCE = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def plm(gpt2_tokenizer):
    return responsive(tiny_plm("gpt2", gpt2_tokenizer))


def write_data(folder) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in (("train", TRAIN), ("dev", DEV)):
        lines = [json.dumps({"text": e.text, "label": e.label}) for e in examples]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return {"train": str(folder / "train.jsonl"), "dev": str(folder / "dev.jsonl")}


def run_config(tmp_path, model: str = "tiny-gpt2"):
    return build_config({
        "model": {"name": model}, "data": write_data(tmp_path / "data"),
        "classifier": {"template": TEMPLATE["causal"], "label_words": WORDS},
        "training": {"epochs": 1, "batch_size": 4},
    })


def stored_trials(folder) -> list[tuple[int, str]]:
    with sqlite3.connect(folder / "study.db") as db:
        return db.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


# ----------------------------------------------------------------------------- budget and space

def test_parse_budget_reads_percentages_and_counts():
    assert parse_budget("0.5%") == ParameterBudget(0.5, relative=True)
    assert parse_budget("0.5%").cap(1_000_000) == 5000
    assert parse_budget("12000") == ParameterBudget(12000)
    assert parse_budget(12000).cap(10**9) == 12000  # absolute: the model's size does not matter
    assert parse_budget("12k").cap(0) == 12000
    assert parse_budget("1.5M").cap(0) == 1_500_000
    assert parse_budget("12_000").cap(0) == 12000


@pytest.mark.parametrize(("text", "message"), [
    ("", "not a number"), ("lots", "not a number"), ("5x", "not a number"), ("-3", "must be positive"),
    ("0", "must be positive"), ("0%", "must be positive"), ("150%", "more than the whole model"),
    ("12.5", "not a whole number"), (True, "percentage"),
])
def test_parse_budget_refuses_bad_values_with_a_hint(text, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(text)


def test_search_section_checks_its_space():
    with pytest.raises(ConfigError, match="search.budget_params"):
        SearchSection(budget_params="half")
    with pytest.raises(ConfigError, match="did you mean 'lora'"):
        SearchSection(methods=["lroa"])
    with pytest.raises(ConfigError, match="lora has no option 'rank'"):
        SearchSection(space={"lora": {"rank": [4]}})
    with pytest.raises(ConfigError, match=r"search.space.lora.r"):
        SearchSection(space={"lora": {"r": [4, 0]}})
    with pytest.raises(ConfigError, match="'everywhere' is not one of"):
        SearchSection(space={"lora": {"layers": ["everywhere"]}})
    with pytest.raises(ConfigError, match="not among search.methods"):
        SearchSection(methods=["bitfit"], space={"lora": {"r": [4]}})
    section = SearchSection(methods=["prompt_tuning", "p_tuning", "bitfit"],
                            space={"prompt_tuning": {"num_tokens": [5]}})
    # the two soft-prompt methods exclude each other, so they are never paired
    assert ("prompt_tuning", "p_tuning") not in section.combinations()
    assert ("prompt_tuning", "bitfit") in section.combinations()
    assert section.choices()["prompt_tuning"]["num_tokens"] == [5, 20]  # its default is added: the baseline
    assert baseline_params(section)["prompt_tuning"] == {"methods": "prompt_tuning", "prompt_tuning.num_tokens": 20}


def test_lora_targets_choose_modules_and_layers(plm):
    regex = lora_targets(plm.model, "attention", "top-half")
    model = prompt_model(plm, methods=[{"method": "lora", "target_modules": regex}])
    adapted = sorted(n.removesuffix(".lora_A") for n, _ in model.model.named_modules() if n.endswith(".lora_A"))
    assert adapted == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    assert lora_targets(plm.model, "qv", "all") is None  # the method's default
    every = lora_targets(plm.model, "all", "bottom-half")
    matched = [n for n, _ in plm.model.named_modules() if re.fullmatch(every, n)]
    assert matched == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                       "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


# ----------------------------------------------------------------------------- the search

def test_every_trained_trial_respects_the_parameter_budget(tmp_path, plm):
    cap = 1500  # tiny GPT-2: LoRA r=8 (2,048) and a 20-token prefix (2,560) are over; BitFit, adapters are not
    trained: dict[int, int] = {}

    def counting(run: TrialRun) -> float:
        trained[run.number] = count_parameters(run.classifier.model).trainable
        return train_trial(run)

    section = SearchSection(budget_params=cap, trials=8, pruner="none", seed=3)
    result = search_delta_structures(run_config(tmp_path), section, tmp_path / "out", plm=plm, evaluate=counting)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    stored = {t.number: t for t in study.trials}  # what the sampler learns from

    assert len(trained) == 8  # eight structures trained; over-budget proposals came on top, untrained
    assert len(result.trials) == 8 + sum(t.over_budget or t.duplicate_of is not None for t in result.trials)
    assert all(n <= cap for n in trained.values())
    over = [t for t in result.trials if t.over_budget]
    assert {t.baseline for t in over} >= {"lora", "prefix"}
    for trial in result.trials:
        if trial.over_budget:
            assert trial.state == "pruned" and trial.trainable > cap and "over the budget" in trial.reason
            assert trial.number not in trained  # recorded, never trained
            assert stored[trial.number].constraints["trainable_over_cap"] == trial.trainable - cap > 0
        elif trial.state == "complete" and trial.duplicate_of is None:
            assert trial.number in trained and trial.trainable == trained[trial.number] <= cap
    assert {t.baseline for t in result.trials[:5]} == {"lora", "adapter", "bitfit", "prefix", "prompt_tuning"}
    assert result.best is not None and result.best.trainable <= cap
    assert result.cap == cap
    first_over = sum(t.over_budget and t.duplicate_of is None for t in result.trials)
    repeats = sum(t.duplicate_of is not None for t in result.trials)
    assert (f"{len(result.trials)} trials: 8 structures trained (8 complete, 0 stopped early by the pruner, 0 failed), "
            f"{first_over} over budget (not trained), {repeats} repeats") in result.report()


def test_a_space_all_over_the_budget_stops_with_a_warning(tmp_path, plm):
    ran: list[int] = []
    section = SearchSection(methods=["lora"], space={"lora": {"r": [8, 16]}}, budget_params=100, trials=2,
                            pruner="none", seed=0)
    with pytest.warns(UserWarning, match="only 0 of 2 structures trained"):
        result = search_delta_structures(run_config(tmp_path), section, tmp_path / "out", plm=plm,
                                         evaluate=lambda run: ran.append(run.number) or 0.5)
    assert ran == [] and result.best is None
    assert len(result.trials) == 2 * PROPOSALS_PER_TRIAL  # a bounded number of (free) proposals


def test_outputs_and_the_chosen_config_run_again(tmp_path, plm):
    section = SearchSection(methods=["bitfit", "prompt_tuning", "lora"], space={"lora": {"r": [1, 2]}},
                            trials=4, pruner="none", seed=1)
    out = tmp_path / "out"
    result = search_delta_structures(run_config(tmp_path), section, out, plm=plm)
    for name in ("search.json", "search.md", "best.yaml", "frontier.png", "study.db"):
        assert (out / name).is_file(), name
    chosen = load_config(out / "best.yaml")
    assert chosen.methods == result.best.methods
    assert [m.name for m in make_methods(chosen.methods)] == [m["method"] for m in result.best.methods]
    saved = json.loads((out / "search.json").read_text())
    assert saved["best"] == result.best.number
    assert sum(not t["over_budget"] and t["duplicate_of"] is None for t in saved["trials"]) == 4  # repeats are free
    assert saved["ranked"][0] == result.best.number
    for trial in result.trials:  # every trial's own config is a run config too
        assert load_config(out / "trials" / f"{trial.number:04d}" / "config.yaml").methods == trial.methods
    markdown = (out / "search.md").read_text()
    assert "| rank |" in markdown and "baseline bitfit" in markdown and "Verdict:" in markdown


def test_the_search_resumes_without_repeating_finished_trials(tmp_path, plm):
    calls: list[int] = []

    def fake(run: TrialRun) -> float:
        calls.append(run.number)
        return run.parameters.trainable / 1e5

    config, out = run_config(tmp_path), tmp_path / "out"
    first = search_delta_structures(config, SearchSection(trials=3), out, plm=plm, evaluate=fake)
    assert calls == [0, 1, 2] and len(first.trials) == 3
    calls.clear()
    second = search_delta_structures(config, SearchSection(trials=5), out, plm=plm, evaluate=fake)
    assert calls == [3, 4] and len(second.trials) == 5
    for before, after in zip(first.trials, second.trials[:3], strict=True):
        assert (after.number, after.score, after.methods) == (before.number, before.score, before.methods)
    # the baselines are queued once: the two left over ran now, none twice
    assert [t.baseline for t in second.trials] == ["lora", "adapter", "bitfit", "prefix", "prompt_tuning"]
    calls.clear()
    assert len(search_delta_structures(config, SearchSection(trials=5), out, plm=plm, evaluate=fake).trials) == 5
    assert calls == []
    assert len(stored_trials(out)) == 5
    with pytest.raises(ValueError, match="holds a search with other"):
        search_delta_structures(config, SearchSection(methods=["bitfit"], trials=6), out, plm=plm, evaluate=fake)


@BRUTE_FORCE
def test_the_search_returns_the_best_trial_of_a_known_objective(tmp_path, plm):
    def known(run: TrialRun) -> float:  # best: LoRA of rank 4; prompt tuning scores below every LoRA
        (method,) = run.methods
        return 1 - abs(method["r"] - 4) / 100 if method["method"] == "lora" else 0.5 + method["num_tokens"] / 100

    section = SearchSection(methods=["lora", "prompt_tuning"], max_methods=1, baselines=False,
                            space={"lora": {"r": [1, 2, 4, 8, 16], "modules": ["qv"], "layers": ["all"]},
                                   "prompt_tuning": {"num_tokens": [1, 5, 10]}}, trials=9)
    result = search_delta_structures(run_config(tmp_path), section, tmp_path / "out", plm=plm, evaluate=known,
                                     sampler=optuna.samplers.BruteForceSampler(seed=0))
    assert result.best.methods == [{"method": "lora", "r": 4}] and result.best.score == 1.0
    expected = sorted([1 - abs(r - 4) / 100 for r in (1, 2, 4, 8, 16)] + [0.5 + n / 100 for n in (1, 5, 10, 20)],
                      reverse=True)
    assert [t.score for t in result.ranked] == pytest.approx(expected)
    assert result.verdict().startswith("no baseline")


@BRUTE_FORCE
def test_the_median_pruner_stops_trailing_trials(tmp_path, plm):
    steps: dict[int, int] = {}

    def reporting(run: TrialRun) -> float:  # a constant dev score per structure, reported each "epoch"
        score = run.parameters.trainable / 1e4
        for step in (1, 2, 3):
            steps[run.number] = step
            run.report(score, step)
        return score

    section = SearchSection(methods=["prompt_tuning"], baselines=False, trials=9,
                            space={"prompt_tuning": {"num_tokens": [1, 2, 3, 4, 5, 6, 7, 8]}})
    result = search_delta_structures(run_config(tmp_path), section, tmp_path / "out", plm=plm, evaluate=reporting,
                                     sampler=optuna.samplers.BruteForceSampler(seed=0))
    stopped = [t for t in result.trials if t.state == "pruned" and not t.duplicate_of]
    assert stopped, "a structure scoring below the median at step 1 is stopped"
    for trial in stopped:
        assert "pruner at step 1" in trial.reason and steps[trial.number] == 1 and not trial.over_budget


# ----------------------------------------------------------------------------- command line

def test_search_delta_command(tmp_path, model_dir, capsys):
    config = tmp_path / "search.yaml"
    data = write_data(tmp_path / "data")
    config.write_text(
        f"model: {{name: {model_dir}}}\n"
        f"data: {{train: {data['train']}, dev: {data['dev']}}}\n"
        f"classifier: {{template: {json.dumps(TEMPLATE['causal'])}, label_words: {json.dumps(WORDS)}}}\n"
        "training: {epochs: 1, batch_size: 4}\n"
        "search: {methods: [bitfit, prompt_tuning], max_methods: 1, space: {prompt_tuning: {num_tokens: [1, 5]}}}\n"
    )
    out = tmp_path / "out"
    assert main(["search-delta", str(config), "--budget-params", "5%", "--trials", "3", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trial 0: complete" in printed and "[baseline bitfit]" in printed
    assert len(stored_trials(out)) == 3
    assert load_config(out / "best.yaml").methods is not None
    assert json.loads((out / "search.json").read_text())["budget_params"] == "5%"

    assert main(["search-delta", str(config), "--budget-params", "5 params", "--output-dir", str(out)]) == 2
    assert "parameter budget" in capsys.readouterr().err
