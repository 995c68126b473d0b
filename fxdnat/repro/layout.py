"""A study's vocabulary and folder, without torch: the methods a study compares and the files
the harness (``fxdnat.repro``) writes and its report (`fxdnat.repro.report`) reads, defined once
for both.

A study folder holds ``OUT/repro.json`` (the manifest), ``OUT/report.md`` with its CSVs and
plots, and one folder per run, ``OUT/<model>/<method>/seed<k>/``, with the engine's files and the
harness's ``run.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from fxdnat._files import CHECKPOINT, METRICS, SUMMARY
from fxdnat.ir import TIES

__all__ = ["CHECKPOINT", "METRICS", "SUMMARY"]  # a run's files, as the study reads them

DNAT_METHODS: tuple[str, ...] = TIES  # DNAT, by θ's tie; a random run copies the first listed
STUDY_METHODS = ("original", *DNAT_METHODS, "random", "nat")
"""What a study compares, each a run folder's name: the original model, DNAT with each θ tie,
the random control, the NAT baseline. Not :data:`fxdnat.ir.METHODS`, what one run trains: a
study's ``cell`` and ``full`` runs are both ``--method dnat``."""
DEFAULT_METHODS = ("original", "cell", "full")  # `fxdnat repro`'s --methods default

MANIFEST, REPORT = "repro.json", "report.md"
RUN_RECORD, RUN_LOG = "run.json", "log.txt"
OUTPUT_LOG = "output.log"  # a run subprocess's stdout and stderr


def model_name(spec: str) -> str:
    """The folder and table name of a spec: "zoo:resnet20" → "resnet20"."""
    name = spec.split(":")[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def random_source(methods: Sequence[str]) -> str | None:
    """The DNAT method whose runs a study's random runs copy: the first of cell and full in
    ``methods``, as the user ordered them (``--methods original,full,cell,random`` copies full)."""
    return next((m for m in methods if m in DNAT_METHODS), None)


def read_json(path: Path) -> dict:
    """The file's object, {} when it does not exist (every writer replaces files atomically)."""
    return json.loads(path.read_text()) if path.exists() else {}
