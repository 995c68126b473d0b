"""Reproducibility harness: a multi-seed study of (model, method, seed) runs, resumable and
shardable, aggregated into the paper's tables (Kim & Lee 2020: mean / std / cost over 5 seeds)
and into how sure DNAT was of its decisions. ``fxdnat.repro`` is the one import of a study; its
modules, one job each:

- `fxdnat.repro.layout`: the study's vocabulary (methods) and file names, without torch;
- `fxdnat.repro.plan`: the study (``ReproConfig``), its jobs, shards, each run's config, the
  random control's changes, and the manifest a folder's study is checked against;
- `fxdnat.repro.run`: running the jobs, one after another or one subprocess per GPU, and the
  reporters of their progress (``python -m fxdnat.repro`` is one run's subprocess);
- `fxdnat.repro.records`: each run's ``run.json``, the record of its attempts and their cost;
- `fxdnat.repro.report`: the report, ``OUT/report.md`` with its CSVs and plots, without torch;
- `fxdnat.repro.pareto`: accuracy against measured cost over runs (a budget sweep's), the
  figure the report and ``fxdnat plot RUN...`` draw, without torch.

The names below are imported on first use, as ``fxdnat``'s own are, so that a caller loads only
the modules it needs: ``fxdnat --help`` the layout, ``fxdnat repro --report`` the layout and the
report, not the harness. No module imports torch until a run trains: the harness imports the
engine and torch inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fxdnat._lazy import lazy_exports

# public name -> module that defines it (loaded on first use)
_LAZY: dict[str, str] = {
    "BUDGET_METHODS": "fxdnat.repro.layout",
    "DEFAULT_METHODS": "fxdnat.repro.layout",
    "DNAT_METHODS": "fxdnat.repro.layout",
    "STUDY_METHODS": "fxdnat.repro.layout",
    "METHOD_LABELS": "fxdnat.repro.layout",
    "REPORT": "fxdnat.repro.layout",
    "CostPoint": "fxdnat.repro.pareto",
    "CostRun": "fxdnat.repro.pareto",
    "plot_runs": "fxdnat.repro.pareto",
    "Job": "fxdnat.repro.plan",
    "ReproConfig": "fxdnat.repro.plan",
    "changes_text": "fxdnat.repro.plan",
    "jobs": "fxdnat.repro.plan",
    "parse_budgets": "fxdnat.repro.plan",
    "parse_methods": "fxdnat.repro.plan",
    "parse_seeds": "fxdnat.repro.plan",
    "parse_shard": "fxdnat.repro.plan",
    "random_changes": "fxdnat.repro.plan",
    "run_config": "fxdnat.repro.plan",
    "shard": "fxdnat.repro.plan",
    "MISSING": "fxdnat.repro.report",
    "Agreement": "fxdnat.repro.report",
    "Report": "fxdnat.repro.report",
    "RunRow": "fxdnat.repro.report",
    "aggregate": "fxdnat.repro.report",
    "agreement": "fxdnat.repro.report",
    "collect": "fxdnat.repro.report",
    "LineReporter": "fxdnat.repro.run",
    "ReproReporter": "fxdnat.repro.run",
    "RunResult": "fxdnat.repro.run",
    "run_one": "fxdnat.repro.run",
    "run_study": "fxdnat.repro.run",
}

__all__ = [
    "BUDGET_METHODS",
    "DEFAULT_METHODS",
    "DNAT_METHODS",
    "METHOD_LABELS",
    "MISSING",
    "REPORT",
    "STUDY_METHODS",
    "Agreement",
    "CostPoint",
    "CostRun",
    "Job",
    "LineReporter",
    "Report",
    "ReproConfig",
    "ReproReporter",
    "RunResult",
    "RunRow",
    "aggregate",
    "agreement",
    "changes_text",
    "collect",
    "jobs",
    "parse_budgets",
    "parse_methods",
    "parse_seeds",
    "parse_shard",
    "plot_runs",
    "random_changes",
    "run_config",
    "run_one",
    "run_study",
    "shard",
]

if TYPE_CHECKING:
    from fxdnat.repro.layout import (
        BUDGET_METHODS,
        DEFAULT_METHODS,
        DNAT_METHODS,
        METHOD_LABELS,
        REPORT,
        STUDY_METHODS,
    )
    from fxdnat.repro.pareto import CostPoint, CostRun, plot_runs
    from fxdnat.repro.plan import (
        Job,
        ReproConfig,
        changes_text,
        jobs,
        parse_budgets,
        parse_methods,
        parse_seeds,
        parse_shard,
        random_changes,
        run_config,
        shard,
    )
    from fxdnat.repro.report import (
        MISSING,
        Agreement,
        Report,
        RunRow,
        aggregate,
        agreement,
        collect,
    )
    from fxdnat.repro.run import LineReporter, ReproReporter, RunResult, run_one, run_study


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
