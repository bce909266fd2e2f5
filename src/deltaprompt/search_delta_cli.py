"""``deltaprompt search-delta CONFIG.yaml``: the delta-structure search from the command line.

The config is a run config (as ``deltaprompt train`` reads) with an optional ``search``
section (``deltaprompt.search.delta_structure.SearchSection``); flags override that section.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config, read_config_file, resolve_paths
from .schema import from_dict

DESCRIPTION = (
    "Search delta structures (which methods, where, how big) under a trainable-parameter budget with Optuna. "
    "Each trial builds the classifier with one structure and counts its trainable parameters first: one over "
    "--budget-params is recorded and never trained. The others train as 'deltaprompt train' would (the config's "
    "training section) and are scored on the dev split; Optuna's median pruner stops trials that trail. Each "
    "method alone at its default size runs first as a baseline. The study is stored in OUTPUT/study.db: running "
    "the command again continues it until --trials structures have trained. Writes search.md/.json (the ranked "
    "structures), best.yaml (a run config for 'deltaprompt train'), frontier.png and trials/NNNN/."
)


def add_search_delta_command(commands: Any) -> None:
    parser = commands.add_parser("search-delta", help="search delta structures under a parameter budget (Optuna)",
                                 description=DESCRIPTION)
    parser.add_argument("config", help="run config YAML, optionally with a 'search' section")
    parser.add_argument("--budget-params", help="trainable-parameter cap: a share of the model (0.5%%) or a count "
                        "(12000, 12k, 1.5M)")
    parser.add_argument("--budget-seconds", type=float, help="start no trial after this many seconds")
    parser.add_argument("--trials", type=int, help="structures to train; over-budget proposals and repeats do not count (default 40)")
    parser.add_argument("--output-dir", help="where the study and report go (default: the config's output_dir)")
    parser.add_argument("--seed", type=int, help="seeds the sampler (default 0)")
    parser.add_argument("--no-baselines", action="store_true", help="do not train the single-method baselines")
    parser.add_argument("--save-models", action="store_true", help="keep every trained trial's classifier")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config value, e.g. training.epochs=5 (repeatable)")
    parser.add_argument("--top", type=int, help="rows of the ranked table printed (default all)")
    parser.set_defaults(run=run_search_delta)


def load_search_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, Any]:
    """The run config and its ``search`` section (defaults when absent) from one YAML file."""
    from .search.delta_structure import SearchSection

    path = Path(path)
    raw = dict(read_config_file(path))
    search = raw.pop("search", None) or {}
    section = from_dict(SearchSection, search, f"{path}: search")
    return load_config(resolve_paths(raw, path.resolve().parent), overrides), section


def run_search_delta(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import optuna

    from .search.delta_structure import StructureTrial, search_delta_structures

    config, section = load_search_config(args.config, args.set)
    flags = {"budget_params": args.budget_params, "budget_seconds": args.budget_seconds, "trials": args.trials,
             "seed": args.seed}
    changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.no_baselines:
        changes["baselines"] = False
    if args.save_models:
        changes["save_models"] = True
    if changes:
        section = from_dict(type(section), {**_fields(section), **changes}, "search")
    output = args.output_dir or config.output_dir
    if not output:
        raise ValueError("no output folder: set output_dir in the config or pass --output-dir")
    optuna.logging.set_verbosity(logging.WARNING)  # one line per trial below instead

    def show(trial: StructureTrial) -> None:
        score = "-" if trial.score is None else f"{trial.score:.4f}"
        size = "-" if trial.trainable is None else f"{trial.trainable:,}"
        tail = f" ({trial.reason})" if trial.state != "complete" and trial.reason else ""
        if trial.duplicate_of is not None:
            tail += f" (same structure as trial {trial.duplicate_of}, not trained again)"
        flag = f" [baseline {trial.baseline}]" if trial.baseline else ""
        print(f"trial {trial.number}: {trial.state}, dev {score}, {size} trainable, {trial.label}{flag}{tail}",
              flush=True)

    result = search_delta_structures(replace(config, output_dir=str(output)), section, output, on_trial=show)
    print()
    print(result.report(args.top))
    print(f"study, report, best.yaml and frontier.png in {output}")
    return 0


def _fields(section: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
