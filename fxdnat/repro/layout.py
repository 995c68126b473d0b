"""A study's vocabulary and folder, without torch: the methods a study compares and the files
the harness (``fxdnat.repro``) writes and its report (`fxdnat.repro.report`) reads, defined once
for both.

A study folder holds ``OUT/repro.json`` (the manifest), ``OUT/report.md`` with its CSVs and
plots, and one folder per run, ``OUT/<model>/<method>/seed<k>/``, with the engine's files and the
harness's ``run.json``. A run of a budget sweep (``--budgets``) has the budget in its method's
folder name after an ``@``, ``OUT/<model>/<method>@flops=0.6/seed<k>/``: the engine's canonical
budget text, so the name reads as the run's ``--budget`` and needs no escaping (letters, digits,
``=``, ``.``, ``,``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from fxdnat._files import CHECKPOINT, METRICS, SUMMARY
from fxdnat.config import format_budget, parse_budget
from fxdnat.ir import TIES

__all__ = ["CHECKPOINT", "METRICS", "SUMMARY"]  # a run's files, as the study reads them

DNAT_METHODS: tuple[str, ...] = TIES  # DNAT, by θ's tie; a random run copies the first listed
STUDY_METHODS = ("original", *DNAT_METHODS, "random", "nat", "prune", "similarity")
"""What a study compares, each a run folder's name: the original model, DNAT with each θ tie,
the random control, the NAT baseline, contribution pruning (a budget sweep's only), similarity
removal (the LLM layer-dropping heuristic). Not
:data:`fxdnat.ir.METHODS`, what one run trains: a study's ``cell`` and ``full`` runs are both
``--method dnat``."""
BUDGET_METHODS = (*DNAT_METHODS, "prune", "similarity", "random")
"""The study methods a budget sweep runs at each budget below 1 (the others have no cost term:
original and nat run once, unconstrained)."""
PAIRED_METHODS = ("random", "similarity")
"""Outside a budget sweep, these make as many changes as the same seed's DNAT run: the random
control places them at random, similarity removal where the input and output of a join are most
alike."""
DEFAULT_METHODS = ("original", "cell", "full")  # `fxdnat repro`'s --methods default
METHOD_LABELS = {
    "original": "original",
    "cell": "DNAT cell",
    "full": "DNAT full",
    "random": "random (control)",
    "nat": "NAT (adapted)",  # NAT's policy on fxdnat's edges, not NAT's DARTS-cell code
    "prune": "prune (contribution)",  # the smallest ‖op(x)‖ / ‖x + op(x)‖ go, to fit the budget
    "similarity": "similarity (ShortGPT)",  # the largest cos(x, x + op(x)) go first
}

MANIFEST, REPORT = "repro.json", "report.md"
RUN_RECORD, RUN_LOG = "run.json", "log.txt"
OUTPUT_LOG = "output.log"  # a run subprocess's stdout and stderr


def model_name(spec: str) -> str:
    """The folder and table name of a spec: "zoo:resnet20" → "resnet20"."""
    name = spec.split(":")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def run_folder(method: str, budget: str | None = None) -> str:
    """The folder of a method's runs below its model: "cell", or "cell@flops=0.6" at a budget
    (canonical text, as `fxdnat.config.format_budget` writes it)."""
    return method if budget is None else f"{method}@{budget}"


def parse_run_folder(name: str) -> tuple[str, str | None] | None:
    """`run_folder`'s inverse: "cell@flops=0.6" → ("cell", "flops=0.6"), "cell" → ("cell",
    None); None for a folder that holds no study method's runs (a budget must be canonical)."""
    method, at, budget = name.partition("@")
    if method not in STUDY_METHODS:
        return None
    if not at:
        return method, None
    try:
        canonical = format_budget(parse_budget(budget))
    except ValueError:
        return None
    return (method, budget) if canonical == budget else None


def random_source(methods: Sequence[str]) -> str | None:
    """The DNAT method whose runs a study's random and similarity runs copy the number of
    changes of: the first of cell and full in ``methods``, as the user ordered them
    (``--methods original,full,cell,random`` copies full)."""
    return next((m for m in methods if m in DNAT_METHODS), None)


def read_json(path: Path) -> dict:
    """The file's object, {} when it does not exist (every writer replaces files atomically)."""
    return json.loads(path.read_text()) if path.exists() else {}
