"""The benchmark suite: a declared matrix of tasks x methods x K x seeds, run with caching and
resume (``runner``), the baselines users would pick instead (``baselines``), statistics over
seeds and paired significance (``stats``), and the HTML/Markdown report (``report``).

    deltaprompt bench quick --out results/quick
    deltaprompt report results/quick
"""

from .baselines import BaselineUnavailable, make_baseline
from .report import write_report
from .runner import SuiteRunner, run_suite
from .stats import aggregate, load_results, paired_bootstrap
from .suite import Suite, load_suite, preset_names

__all__ = [
    "BaselineUnavailable",
    "Suite",
    "SuiteRunner",
    "aggregate",
    "load_results",
    "load_suite",
    "make_baseline",
    "paired_bootstrap",
    "preset_names",
    "run_suite",
    "write_report",
]
