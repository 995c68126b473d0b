"""Accuracy against cost: finished runs as points of test accuracy against what their network
costs, measured, as a fraction of the original's, grouped by method and budget over seeds; and
the figure that draws them, one line per method through its budgets. The report of a budget
sweep (`fxdnat.repro.report`) and ``fxdnat plot RUN...`` draw the same figure; without torch.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxdnat._files import check_writable
from fxdnat.config import format_budget, parse_budget
from fxdnat.ir import RESOURCES, Resource
from fxdnat.repro.layout import METHOD_LABELS, STUDY_METHODS, SUMMARY, model_name

FORMATS = (".png", ".svg", ".pdf")  # what matplotlib writes here and in fxdnat.plot
RESOURCE_LABELS = {"flops": "FLOPs", "params": "parameters", "latency": "latency"}
_MARKERS = "o^sDv<>P*X"


@dataclass(frozen=True)
class CostRun:
    """One finished run on the cost axis."""

    data: str
    model: str
    method: str  # a study method: original, cell, full, random, nat, prune
    budget: str | None  # the target, "flops=0.6"; None for an unconstrained run
    test_acc: float  # percent
    cost: Mapping[str, float]  # per resource: the network's, as a fraction of the original's


@dataclass(frozen=True)
class CostPoint:
    """The runs of one (data set, model, method, budget): their seeds' mean and sample std."""

    data: str
    model: str
    method: str
    budget: str | None
    seeds: int
    acc_mean: float  # percent
    acc_std: float | None  # None under two seeds
    cost: Mapping[str, float]  # per resource measured in any of the runs: the mean fraction
    cost_std: Mapping[str, float | None]


def measured(summary: Mapping[str, Any]) -> dict[str, float]:
    """What a run's network costs as a fraction of the original's, per resource: parameters and
    FLOPs after ÷ before, and what the engine measured of a budgeted run ("budget": "emitted",
    latency included when it was timed). {} for a summary that says neither."""
    cost = {}
    for resource in ("params", "flops"):
        before, after = summary.get(f"{resource}_before"), summary.get(f"{resource}_after")
        if before and after is not None:
            cost[resource] = after / before
    budget = summary.get("budget")
    emitted = budget.get("emitted") if isinstance(budget, Mapping) else None
    for resource, fraction in (emitted or {}).items():
        if resource in RESOURCES and isinstance(fraction, (int, float)):
            cost[resource] = float(fraction)
    return cost


def target(summary: Mapping[str, Any]) -> str | None:
    """A run's budget as its RunConfig has it, "flops=0.6"; None for an unconstrained run."""
    budget = summary.get("budget")
    wanted = budget.get("target") if isinstance(budget, Mapping) else None
    return (format_budget(wanted) or None) if wanted else None


def _wrong_field(summary: Mapping[str, Any]) -> str | None:
    """What in a summary is not what fxdnat writes, in words; None when all is."""

    def number(value: Any) -> bool:
        return type(value) in (int, float) and math.isfinite(value)

    if not number(summary["test_acc"]):
        return "its test_acc is not a number"
    for key in ("data", "spec", "method", "tie"):
        if key in summary and summary[key] is not None and type(summary[key]) is not str:
            return f"its {key} is not text"
    budget = summary.get("budget")
    if budget is None:
        return None
    if not isinstance(budget, Mapping):
        return "its budget is not a mapping"
    for part in ("target", "emitted"):
        values = budget.get(part)
        if part == "emitted" and part not in budget:  # the measured sizes stand in for it
            continue
        if not isinstance(values, Mapping) or not all(
            r in RESOURCES and number(v) and (part == "emitted" or 0 < v <= 1)
            for r, v in values.items()
        ):
            return f"its budget's {part} is not fractions by resource"
    return None


def study_method(summary: Mapping[str, Any]) -> str:
    """The study method a run is: DNAT by its θ tie (cell, full), any other by its name."""
    method = summary.get("method", "?")
    return (summary.get("tie") or "cell") if method == "dnat" else method  # RunConfig's tie


def read_runs(paths: Sequence[str | Path]) -> list[CostRun]:
    """The finished runs under ``paths``, each a run's summary.json, a run folder or a study
    folder (every summary.json below it).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a run's summary (not JSON, no test accuracy); no summary
            found; no summary with a test accuracy.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.rglob(SUMMARY))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    shown = ", ".join(map(str, paths))
    if not files:
        raise ValueError(
            f"no {SUMMARY} in {shown}; give run folders, their {SUMMARY} files or a study "
            f"folder (a run writes {SUMMARY} when it ends)"
        )
    runs = [run for run in map(_read_run, files) if run is not None]
    if not runs:
        raise ValueError(f"no run in {shown} has a test accuracy: none trained an epoch")
    return runs


def _read_run(path: Path) -> CostRun | None:
    """The run of one summary file; None when it has no test accuracy (no epoch ran)."""
    fix = f"give run folders, their {SUMMARY} files or a study folder"
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not text"
        raise ValueError(f"{path} is not JSON ({why}); {fix}") from None
    if not isinstance(summary, dict) or "test_acc" not in summary:
        raise ValueError(f"{path} is not a run's summary (it has no test_acc); {fix}")
    if summary["test_acc"] is None:
        return None
    wrong = _wrong_field(summary)
    if wrong is not None:
        raise ValueError(f"{path} is not a run's summary ({wrong}); {fix}")
    return CostRun(
        data=summary.get("data", "?"),
        model=model_name(summary.get("spec", "?")),
        method=study_method(summary),
        budget=target(summary),
        test_acc=100 * summary["test_acc"],
        cost=measured(summary),
    )


def points(runs: Iterable[CostRun]) -> list[CostPoint]:
    """The runs grouped by data set, model, method and budget: data sets and models in the order
    they come, methods in the study's order, the unconstrained run first, then budgets down."""
    groups: dict[tuple[str, str, str, str | None], list[CostRun]] = {}
    for run in runs:
        groups.setdefault((run.data, run.model, run.method, run.budget), []).append(run)
    panels = list(dict.fromkeys(key[:2] for key in groups))

    def order(key: tuple[str, str, str, str | None]) -> tuple:
        method = STUDY_METHODS.index(key[2]) if key[2] in STUDY_METHODS else len(STUDY_METHODS)
        return panels.index(key[:2]), method, key[2], _budget_order(key[3])

    return [_point(key, groups[key]) for key in sorted(groups, key=order)]


def _budget_order(budget: str | None) -> tuple:
    if budget is None:
        return (0,)
    return (1, *(-fraction for fraction in parse_budget(budget).values()))


def _point(key: tuple[str, str, str, str | None], runs: Sequence[CostRun]) -> CostPoint:
    accs = [r.test_acc for r in runs]
    costs = {res: [r.cost[res] for r in runs if res in r.cost] for res in RESOURCES}
    return CostPoint(
        *key,
        seeds=len(runs),
        acc_mean=statistics.fmean(accs),
        acc_std=statistics.stdev(accs) if len(accs) > 1 else None,
        cost={res: statistics.fmean(values) for res, values in costs.items() if values},
        cost_std={
            res: statistics.stdev(v) if len(v) > 1 else None for res, v in costs.items() if v
        },
    )


def check_format(path: str | Path) -> Path:
    """``path``, or ValueError naming it when its extension is no image format drawn here."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"unknown plot format {path.suffix or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(FORMATS)}"
        )
    return path


def plot_runs(paths: Sequence[str | Path], out: str | Path, resource: Resource = "flops") -> Path:
    """Draw the runs under ``paths`` (see `read_runs`) into ``out``: accuracy against their
    measured ``resource``. Errors as `read_runs` and `draw`; a bad ``out`` before any reading."""
    out = check_format(out)
    check_writable(out)
    return draw(points(read_runs(paths)), out, resource)


def draw(
    shown: Sequence[CostPoint], path: str | Path, resource: Resource = "flops", title: str = ""
) -> Path:
    """Test accuracy (%) against the measured ``resource`` (a fraction of the original's): one
    panel per data set and model, one line per method through its budgets (cheapest left),
    each point's error bar the sample std over its seeds, a budgeted point labelled with its
    target. Into ``path`` (PNG, SVG or PDF). ValueError when no point measured ``resource``."""
    # lazy: matplotlib takes about half a second to import, and only a plot draws.
    # No pyplot: no global backend, Agg draws the file.
    from matplotlib.figure import Figure

    shown = [p for p in shown if resource in p.cost]
    if not shown:
        raise ValueError(
            f"no run says what its network's {RESOURCE_LABELS[resource]} cost (a summary has "
            "FLOPs and parameters, latency only where the run measured it); plot another cost"
        )
    panels = list(dict.fromkeys((p.data, p.model) for p in shown))
    methods = list(dict.fromkeys(p.method for p in shown))  # in the study's order (`points`)
    fig = Figure(figsize=(1.0 + 4.2 * len(panels), 3.9), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for k, method in enumerate(methods):
            line = [p for p in shown if (p.data, p.model, p.method) == (*panel, method)]
            if line:
                _draw_line(ax, sorted(line, key=lambda p: p.cost[resource]), resource, k)
        ax.set_xlabel(f"{RESOURCE_LABELS[resource]}, fraction of the original's (measured)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{panel[1]} on {panel[0]}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=120)
    return Path(path)


def _draw_line(ax: Any, line: Sequence[CostPoint], resource: str, k: int) -> None:
    xs = [p.cost[resource] for p in line]
    ys = [p.acc_mean for p in line]
    ax.errorbar(
        xs,
        ys,
        yerr=[p.acc_std or 0.0 for p in line],
        color=f"C{k}",
        marker=_MARKERS[k % len(_MARKERS)],
        linestyle="-" if len(line) > 1 else "none",
        capsize=3,
        label=METHOD_LABELS.get(line[0].method, line[0].method),
    )
    for p, x, y in zip(line, xs, ys, strict=True):
        if p.budget is not None:
            ax.annotate(
                _budget_label(p.budget, resource),
                (x, y),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=7,
                color=f"C{k}",
            )


def _budget_label(budget: str, resource: str) -> str:
    """A point's target: its fraction where it bounds the plotted cost, else the whole text."""
    bounds = parse_budget(budget)
    return f"{bounds[resource]:g}" if list(bounds) == [resource] else budget
