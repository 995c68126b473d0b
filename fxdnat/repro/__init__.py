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
- `fxdnat.repro.report`: the report, ``OUT/report.md`` with its CSVs and plots, without torch.

Importing the package does not import torch: the harness imports the engine and torch inside the
functions that train, so ``fxdnat repro --report`` aggregates a study without them.
"""

from __future__ import annotations

from fxdnat.repro.layout import DEFAULT_METHODS, DNAT_METHODS, METHODS, REPORT
from fxdnat.repro.plan import (
    Job,
    ReproConfig,
    changes_text,
    jobs,
    parse_methods,
    parse_seeds,
    parse_shard,
    random_changes,
    run_config,
    shard,
)
from fxdnat.repro.report import (
    METHOD_LABELS,
    MISSING,
    Agreement,
    Report,
    RunRow,
    aggregate,
    agreement,
    collect,
)
from fxdnat.repro.run import LineReporter, ReproReporter, RunResult, run_one, run_study

__all__ = [
    "DEFAULT_METHODS",
    "DNAT_METHODS",
    "METHODS",
    "METHOD_LABELS",
    "MISSING",
    "REPORT",
    "Agreement",
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
    "parse_methods",
    "parse_seeds",
    "parse_shard",
    "random_changes",
    "run_config",
    "run_one",
    "run_study",
    "shard",
]
