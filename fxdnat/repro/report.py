"""A study's report: reads a study folder (``OUT/repro.json`` and each run's ``summary.json``
and ``run.json``, see `fxdnat.repro.layout`) and writes ``OUT/report.md``, one CSV per table and
data set and a plot of the per-seed accuracies; safe while the study still runs, and without torch.

The tables follow the paper (Kim & Lee 2020, Table 1: mean / std / cost over seeds), with DNAT
against the random control at equal changes, the networks' size, the edge choices with the seeds'
agreement and how sure DNAT was of them, and θ's reach: when DNAT will change the network. They
hold the unconstrained runs; a budget sweep adds accuracy against the measured cost, each
method at each budget, as a table and a figure (`fxdnat.repro.pareto`).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxdnat.ir import CHANGE_KINDS, CHOICES, IDENTITY, NONE, RESOURCES, SAME
from fxdnat.reach import NEEDED, NOISY, UNSURE
from fxdnat.repro import pareto
from fxdnat.repro.layout import (
    DNAT_METHODS,
    MANIFEST,
    METHOD_LABELS,
    REPORT,
    RUN_RECORD,
    STUDY_METHODS,
    SUMMARY,
    model_name,
    parse_run_folder,
    random_source,
    read_json,
    run_folder,
)

MISSING = "—"  # a report's cell for what no run says (yet)


@dataclass(frozen=True)
class Metric:
    """What a data set's tables compare: a run's headline number (``RunRow.score``)."""

    label: str  # a table's header, with its unit
    higher_is_better: bool
    digits: int  # decimals shown
    points: str  # what a difference is counted in

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` beats ``b``."""
        return a > b if self.higher_is_better else a < b


ACCURACY = Metric("test accuracy (%)", True, 2, "points")
VALIDATION_LOSS = Metric("validation loss (nats per token)", False, 3, "nats per token")
METRICS = {"classification": ACCURACY, "causal-lm": VALIDATION_LOSS}
"""A task's metric (fxdnat.tasks): accuracy for classifiers, the mean cross-entropy of the next
token on the validation split for language models (perplexity is its exp)."""


def metric_of(rows: Iterable[RunRow]) -> Metric:
    """The metric of a data set's runs (one task per data set; a run still without a summary
    does not say which)."""
    tasks = {r.task for r in rows if r.status == "done"}
    return METRICS.get(tasks.pop(), ACCURACY) if len(tasks) == 1 else ACCURACY


@dataclass(frozen=True)
class Agreement:
    """How alike the seeds decided: the mean over edges of the fraction of seed pairs that
    chose alike, and the share of edges on which every seed chose alike."""

    pairwise: float
    unanimous: float
    edges: int
    seeds: int


def agreement(
    decisions: Sequence[Mapping[str, str]], edges: int | None = None, default: str = SAME
) -> Agreement | None:
    """Seed agreement of ``decisions`` (one {edge: choice} per seed); None under two seeds.

    A mapping may list only the edges that changed (a summary's "changed"): an edge it does not
    name took ``default``, and ``edges`` counts the network's edges, named or not.
    """
    if len(decisions) < 2:
        return None
    names = sorted(set().union(*decisions))
    total = len(names) if edges is None else edges
    if total < len(names):
        raise ValueError(
            f"{len(names)} edges are named but edges={edges}; pass the network's count"
        )
    if total == 0:
        return None
    pairs = len(decisions) * (len(decisions) - 1) / 2
    alike = unanimous = float(total - len(names))  # unnamed edges: every seed took the default
    for name in names:
        counts = Counter(d.get(name, default) for d in decisions)
        alike += sum(c * (c - 1) / 2 for c in counts.values()) / pairs
        unanimous += len(counts) == 1
    return Agreement(alike / total, unanimous / total, total, len(decisions))


@dataclass
class RunRow:
    """One run of a study as the report sees it: its summary and the harness's record."""

    data: str
    model: str
    method: str
    seed: int
    status: str  # "done", "failed", "interrupted", "killed", "running"
    budget: str | None = None  # a budget sweep's run below 1: its target, "flops=0.6"
    test_acc: float | None = None  # percent
    task: str = "classification"  # fxdnat.tasks: "classification" or "causal-lm"
    test_loss: float | None = None  # mean cross-entropy per example (per token for an LM)
    wall_seconds: float = 0.0  # the harness's, over every attempt (failed ones cost too)
    train_seconds: float | None = None  # the engine's: training epochs only
    device: str = "?"
    device_name: str = "?"
    edges: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)
    params: tuple[int | None, int | None] = (None, None)  # before, after
    flops: tuple[int | None, int | None] = (None, None)
    cost: dict[str, float] = field(default_factory=dict)  # fractions of the original's
    error: str | None = None
    # how sure DNAT was; None where the summary does not say (older fxdnat, original runs)
    tie: str | None = None  # a DNAT or random run's θ tie
    margins: dict[str, float] | None = None  # per edge: θ's largest allowed entry − the second
    flipped: list[str] | None = None  # edges whose decision changed in the last arch. epochs
    finalize: dict[str, Any] | None = None  # accuracy (0..1) before and after finalize
    reach: dict[str, Any] | None = None  # θ's steps and lr, lr·T, lr·√T
    changes: str | None = None  # the changes by kind, "identity=2,skip-none=1"
    dead_joins: int | None = None  # joins left without an operand (NAT's; DNAT never has one)

    @property
    def score(self) -> float | None:
        """The run's headline number, as its task's metric has it (:data:`METRICS`): test
        accuracy in percent, or a language model's validation loss; None without a result."""
        if self.status != "done":
            return None
        return self.test_loss if METRICS.get(self.task) is VALIDATION_LOSS else self.test_acc


@dataclass
class Report:
    """An aggregated study: its runs, the Markdown report and the files written."""

    rows: list[RunRow]
    markdown: str
    files: list[Path]


def collect(out: str | Path) -> list[RunRow]:
    """Every run folder ``OUT/<model>/<method>/seed<k>`` (``<method>@<budget>`` in a budget
    sweep) that holds a summary or a record."""
    out = Path(out)
    default_data = read_json(out / MANIFEST).get("settings", {}).get("data", "?")
    rows = []
    for folder in sorted(out.glob("*/*/seed*")):
        match = re.fullmatch(r"seed(\d+)", folder.name)
        method = parse_run_folder(folder.parent.name)
        if match is None or method is None or not folder.is_dir():
            continue
        row = _row(folder, int(match[1]), default_data)
        if row is not None:
            row.method, row.budget = method
            rows.append(row)
    return rows


def _row(folder: Path, seed: int, default_data: str) -> RunRow | None:
    summary = read_json(folder / SUMMARY)
    record = read_json(folder / RUN_RECORD)
    if not summary and not record:
        return None
    attempts = record.get("attempts", [])
    last = next((a for a in reversed(attempts) if "device" in a), {})
    row = RunRow(
        data=summary.get("data") or record.get("data") or default_data,
        model=folder.parent.parent.name,
        method=folder.parent.name,
        seed=seed,
        status="done" if summary else record.get("status", "running"),
        error=None if summary else record.get("error"),
    )
    if not summary:
        row.wall_seconds = record.get("wall_seconds", 0.0)
        row.device, row.device_name = last.get("device", "?"), last.get("device_name", "?")
        return row
    device = summary.get("device", "?").split(":")[0]
    row.test_acc = 100 * summary["test_acc"] if summary.get("test_acc") is not None else None
    row.task, row.test_loss = summary.get("task", "classification"), summary.get("test_loss")
    row.train_seconds = summary.get("seconds")
    # a run trained outside the harness has no record: its training time is all we know
    row.wall_seconds = record.get("wall_seconds") or summary.get("seconds") or 0.0
    row.device, row.device_name = last.get("device", device), last.get("device_name", device)
    row.edges, row.decisions = summary.get("edges", 0), summary.get("decisions", {})
    row.changed = summary.get("changed", {})
    row.params = (summary.get("params_before"), summary.get("params_after"))
    row.flops = (summary.get("flops_before"), summary.get("flops_after"))
    row.cost = pareto.measured(summary)
    row.tie = summary.get("tie")
    row.margins, row.flipped = summary.get("margins"), summary.get("flipped")
    row.finalize, row.reach = summary.get("finalize"), summary.get("reach")
    row.changes = summary.get("changes")
    dead = summary.get("dead_joins")
    row.dead_joins = len(dead) if isinstance(dead, list) else None
    return row


def aggregate(out: str | Path) -> Report:
    """Write the study's tables into OUT: report.md (Table 1 in the paper's layout with DNAT
    against the random control, Table 2 per seed, Table 3 the networks' size, edge choices with
    seed agreement and how sure DNAT was, when DNAT will change the network, failures), one CSV
    per table and data set, and a plot per data set. Returns them; safe to call while the study
    still runs."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(
            f"no study folder at {out}; run `fxdnat repro SPEC --out {out}` first"
        )
    rows = collect(out)
    if not rows:
        raise ValueError(f"{out} holds no runs (no {out}/<model>/<method>/seed<k>/ folders)")
    models = _model_order(out, rows)
    files: list[Path] = []
    sections = [_headline(rows)]
    for data in sorted({r.data for r in rows}):
        sections.append(
            _data_section(out, data, [r for r in rows if r.data == data], models, files)
        )
    markdown = "\n\n".join(sections) + "\n"
    (out / REPORT).write_text(markdown)
    return Report(rows, markdown, [out / REPORT, *files])


def _model_order(out: Path, rows: Sequence[RunRow]) -> list[str]:
    """Models in the order the study named them, then any others found on disk."""
    specs = read_json(out / MANIFEST).get("specs", [])
    named = [model_name(s) for s in specs]
    return [m for m in named if any(r.model == m for r in rows)] + sorted(
        {r.model for r in rows} - set(named)
    )


def _headline(rows: Sequence[RunRow]) -> str:
    status = Counter(r.status for r in rows)
    hours = sum(r.wall_seconds for r in rows) / 3600
    parts = ", ".join(f"{n} {s}" for s, n in sorted(status.items()))
    return (
        f"# Reproducibility report\n\n{len(rows)} runs ({parts}); total cost "
        f"{_hours(hours)} device-hours of wall time, every attempt counted."
    )


def _data_section(
    out: Path, data: str, rows: Sequence[RunRow], models: Sequence[str], files: list[Path]
) -> str:
    """One data set's tables: those of the unconstrained runs, with a budget sweep's accuracy
    against cost after Table 1, then the failures of either."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", data)
    plain = [r for r in rows if r.budget is None]
    parts = [f"## {data}"]
    if plain:  # a sweep of budgeted methods only has none
        parts += _plain_tables(out, data, stem, plain, models, files)
    if any(r.budget is not None for r in rows):
        at = next((k for k, p in enumerate(parts) if p.startswith("### Table 2")), len(parts))
        parts[at:at] = _cost_section(out, data, stem, rows, models, files)
    failures = _failures(rows)
    if failures:
        parts.append(failures)
    return "\n\n".join(parts)


def _plain_tables(
    out: Path,
    data: str,
    stem: str,
    rows: Sequence[RunRow],
    models: Sequence[str],
    files: list[Path],
) -> list[str]:
    """The paper's tables, DNAT against random, sizes, choices, θ's reach and the per-seed
    plot, each written to its CSV or image in ``out`` (listed in ``files``)."""
    models = [m for m in models if any(r.model == m for r in rows)]
    methods = [m for m in STUDY_METHODS if any(r.method == m for r in rows)]
    groups = {
        (m, k): [r for r in rows if (r.model, r.method) == (m, k)] for m in models for k in methods
    }
    parts = []
    for name, (lines, table) in (
        ("table1", _table1(groups, models, methods)),
        ("random", _versus(groups, models, methods, "random")),
        ("similarity", _versus(groups, models, methods, "similarity")),
        ("table2", _table2(groups, models, methods)),
        ("table3", _table3(groups, models, methods)),
        ("choices", _choices(groups, models, methods)),
    ):
        if not lines:  # a study without random runs has no pairs
            continue
        path = out / f"{name}-{stem}.csv"
        _write_csv(path, table)
        files.append(path)
        parts.append(lines)
    reach = _reach(rows)
    if reach:
        parts.append(reach)
    metric = metric_of(rows)  # what the plot draws: a language model's validation loss
    plot = out / f"{'accuracy' if metric is ACCURACY else 'loss'}-{stem}.png"
    _plot(groups, models, methods, data, plot)
    files.append(plot)
    parts.append(f"![per-seed {metric.label} on {data}]({plot.name})")
    return parts


def _cost_section(
    out: Path,
    data: str,
    stem: str,
    rows: Sequence[RunRow],
    models: Sequence[str],
    files: list[Path],
) -> list[str]:
    """A budget sweep: every model × method × budget's accuracy against its measured cost, as
    a table (``cost-DATA.csv``) and a figure against FLOPs (``pareto-DATA.png``)."""
    order = {m: k for k, m in enumerate(models)}
    done = sorted(
        (r for r in rows if r.status == "done" and r.test_acc is not None),
        key=lambda r: order.get(r.model, len(order)),
    )
    found = pareto.points(
        pareto.CostRun(r.data, r.model, r.method, r.budget, r.test_acc, r.cost) for r in done
    )
    if not found:
        return []
    lines, table = _cost_table(found)
    path = out / f"cost-{stem}.csv"
    _write_csv(path, table)
    files.append(path)
    parts = [lines]
    if any("flops" in p.cost for p in found):  # summaries written before FLOPs were counted
        title = f"{data}: accuracy against cost (bars: std over seeds; labels: budget)"
        figure = pareto.draw(found, out / f"pareto-{stem}.png", "flops", title)
        files.append(figure)
        parts.append(f"![test accuracy against measured FLOPs on {data}]({figure.name})")
    return parts


def _cost_table(found: Sequence[pareto.CostPoint]) -> tuple[str, list[dict]]:
    """Per model × method × budget: accuracy mean ± std, each measured cost's mean, seeds."""
    resources = [r for r in RESOURCES if any(r in p.cost for p in found)]  # latency if timed
    header = ["model", "method", "budget", "test accuracy (%)"]
    header += [pareto.RESOURCE_LABELS[r] for r in resources] + ["seeds"]
    lines = [
        "### Accuracy against cost: test accuracy (%), mean ± sample std over seeds; the "
        "trained network's measured cost, a fraction of the original's (mean over seeds)",
        "",
        _md_row(header),
        _md_row(["---"] * len(header)),
    ]
    table = []
    for p in found:
        std = MISSING if p.acc_std is None else f"{p.acc_std:.2f}"
        cells = [p.model, METHOD_LABELS.get(p.method, p.method), p.budget or "none"]
        cells += [f"{p.acc_mean:.2f} ± {std}", *(_num(p.cost.get(r), 3) for r in resources)]
        lines.append(_md_row([*cells, str(p.seeds)]))
        row = {"model": p.model, "method": p.method, "budget": p.budget, "seeds": p.seeds}
        row.update(mean_acc=p.acc_mean, std_acc=p.acc_std)
        for r in resources:
            row.update({r: p.cost.get(r), f"{r}_std": p.cost_std.get(r)})
        table.append(row)
    lines += [
        "",
        "Budget: what the run was asked to fit (none: unconstrained); the costs are what the "
        "network it emitted measures, so a run may land under its budget.",
    ]
    return "\n".join(lines), table


def _stats(runs: Sequence[RunRow]) -> dict[str, Any]:
    """Mean, sample std (over seeds) and summed cost of one (model, method) cell."""
    accs = [r.score for r in runs if r.score is not None]
    return {
        "seeds": len(accs),
        "mean_acc": statistics.fmean(accs) if accs else None,
        "std_acc": statistics.stdev(accs) if len(accs) > 1 else None,
        "device_hours": sum(r.wall_seconds for r in runs) / 3600,
        "devices": "+".join(sorted({r.device for r in runs if r.device != "?"})),
        "failed": sum(r.status == "failed" for r in runs),
        "incomplete": sum(r.status not in ("done", "failed") for r in runs),
    }


def _cell(s: dict[str, Any], seeds: int, metric: Metric) -> str:
    """ "mean / std / hours device", with notes on missing seeds."""
    notes = [f"n={s['seeds']}"] if 0 < s["seeds"] < seeds else []
    notes += [f"{s[k]} {k}" for k in ("failed", "incomplete") if s[k]]
    text = MISSING
    if s["mean_acc"] is not None:
        std = _num(s["std_acc"], metric.digits)
        mean = _num(s["mean_acc"], metric.digits)
        text = f"{mean} / {std} / {_hours(s['device_hours'])} {s['devices']}"
    return f"{text.rstrip()} ({', '.join(notes)})" if notes else text.rstrip()


def _table1(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    seeds = max(len({r.seed for r in runs}) for runs in groups.values())
    metric = metric_of(r for runs in groups.values() for r in runs)
    lines = [
        f"### Table 1: {metric.label}, mean / sample std over seeds / cost in device-hours",
        "",
        _md_row(["model", *(METHOD_LABELS[m] for m in methods)]),
        _md_row(["---"] * (len(methods) + 1)),
    ]
    table = [
        {"model": model, "method": method, **_stats(groups[model, method])}
        for model in models
        for method in methods
    ]
    for model in models:
        cells = (_cell(s, seeds, metric) for s in table if s["model"] == model)
        lines.append(_md_row([model, *cells]))
    runs = [r for rs in groups.values() for r in rs]
    names = sorted({(r.device, r.device_name) for r in runs if r.device != "?"})
    devices = "; ".join(f"{kind} = {name}" for kind, name in names)
    lines += [
        "",
        f"Cost: the harness's wall time of every attempt of every seed, summed; {devices}.",
    ]
    return "\n".join(lines), table


def _table2(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    seeds = sorted({r.seed for runs in groups.values() for r in runs})
    metric = metric_of(r for runs in groups.values() for r in runs)
    lines = [
        f"### Table 2: {metric.label} per seed",
        "",
        _md_row(["model", "method", *(f"seed {s}" for s in seeds)]),
        _md_row(["---"] * (len(seeds) + 2)),
    ]
    table = []
    for model in models:
        for method in methods:
            by_seed = {r.seed: r for r in groups[model, method]}
            cells = [_seed_cell(by_seed.get(s), metric) for s in seeds]
            lines.append(_md_row([model, METHOD_LABELS[method], *cells]))
            table += [_csv_run(r) for r in sorted(groups[model, method], key=lambda r: r.seed)]
    return "\n".join(lines), table


def _seed_cell(row: RunRow | None, metric: Metric) -> str:
    if row is None:
        return MISSING
    return row.status if row.score is None else _num(row.score, metric.digits)


def _csv_run(r: RunRow) -> dict[str, Any]:
    return {
        "model": r.model,
        "method": r.method,
        "seed": r.seed,
        "status": r.status,
        "test_acc": r.test_acc,
        "test_loss": r.test_loss,
        "wall_seconds": r.wall_seconds,
        "train_seconds": r.train_seconds,
        "device": r.device,
        "device_name": r.device_name,
        "edges": r.edges,
        **{choice: r.decisions.get(choice, 0) for choice in CHOICES},
        "params_before": r.params[0],
        "params_after": r.params[1],
        "flops_before": r.flops[0],
        "flops_after": r.flops[1],
        "error": r.error,
    }


PAIRED_TEXT = {
    "random": "a random run makes as many changes of each kind as the DNAT run of its seed, "
    "placed at random",
    "similarity": "a similarity run removes as many branches as the DNAT run of its seed "
    "changed, those whose join's output is most like their input",
}


def _versus(
    groups: dict, models: Sequence[str], methods: Sequence[str], control: str
) -> tuple[str, list[dict]]:
    """Each ``control`` run (random, similarity) against the DNAT run whose number of changes
    it copied (same model and seed): what DNAT's choice of edges is worth over the control's."""
    if control not in methods:
        return "", []
    metric = metric_of(r for runs in groups.values() for r in runs)
    table = [pair for model in models for pair in _pairs(groups, model, methods, control)]
    lines = [
        f"**DNAT vs {control} at equal changes** ({PAIRED_TEXT[control]}; {metric.label} "
        f"difference in {metric.points}, paired by seed; seeds where DNAT changed nothing "
        "compare the original with itself and are left out):",
        "",
    ]
    for model in (m for m in models if groups[m, control]):
        pairs = [p for p in table if p["model"] == model]
        unchanged = [p for p in pairs if p["changes"] == 0]
        fair = [p for p in pairs if p["equal_changes"] and p not in unchanged]
        if not fair:
            why = "DNAT changed no edge" if unchanged else "no seed has both results yet"
            lines.append(f"- {model}: nothing to compare ({why})")
            continue
        differences = [p["difference"] for p in fair]
        wins = sum(metric.better(p["dnat"], p[control]) for p in fair)
        lines.append(
            f"- {model}, {METHOD_LABELS[fair[0]['dnat_method']]} − {control}: "
            f"{statistics.fmean(differences):+.{metric.digits}f} {metric.points} on average "
            f"over {len(fair)} seed{'s' if len(fair) != 1 else ''}; DNAT better on {wins} of "
            f"{len(fair)}"
        )
        if unchanged:
            lines[-1] += f" ({len(unchanged)} seeds without a change left out)"
        if len(fair) + len(unchanged) < len(pairs):
            lines[-1] += (
                f" ({len(pairs) - len(fair) - len(unchanged)} left out: the {control} run's "
                "changes differ from its DNAT run's, which was redone after it; delete the "
                f"{control} run to redo it)"
            )
    return "\n".join(lines), table


def _pairs(groups: dict, model: str, methods: Sequence[str], control: str) -> list[dict[str, Any]]:
    def finished(runs: Sequence[RunRow]) -> dict[int, RunRow]:
        return {r.seed: r for r in runs if r.score is not None}

    pairs = []
    for seed, run in sorted(finished(groups[model, control]).items()):
        source = run.tie if run.tie in DNAT_METHODS else random_source(methods)
        dnat = finished(groups.get((model, source), [])).get(seed)
        if dnat is None:
            continue
        counts = [{k: r.decisions.get(k, 0) for k in (IDENTITY, NONE)} for r in (dnat, run)]
        changed = [sum(c.values()) for c in counts]
        # similarity removes (none) as many branches as DNAT changed (identity or none)
        equal = counts[0] == counts[1] if control == "random" else changed[0] == changed[1]
        pairs.append(
            {
                "model": model,
                "dnat_method": source,
                "seed": seed,
                "dnat": dnat.score,
                control: run.score,
                "difference": dnat.score - run.score,
                IDENTITY: counts[0][IDENTITY],
                NONE: counts[0][NONE],
                "changes": changed[0],
                "equal_changes": equal,
            }
        )
    return pairs


def _table3(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    """Parameters and FLOPs of each method's trained network, % of the original's."""
    lines = [
        "### Table 3: the trained network's size, % of the original: parameters / FLOPs (mean "
        "over seeds of after ÷ before)",
        "",
        _md_row(["model", *(METHOD_LABELS[m] for m in methods)]),
        _md_row(["---"] * (len(methods) + 1)),
    ]
    table = []
    for model in models:
        cells = []
        for method in methods:
            done = [r for r in groups[model, method] if r.status == "done"]
            row = {"model": model, "method": method, "seeds": len(done)}
            for what in ("params", "flops"):
                sizes = [getattr(r, what) for r in done]
                row[f"{what}_before"] = _mean([b for b, _ in sizes])
                row[f"{what}_after"] = _mean([a for _, a in sizes])
                row[f"{what}_pct"] = _mean([100 * a / b for b, a in sizes if a is not None and b])
            table.append(row)
            cells.append(f"{_num(row['params_pct'], 1)} / {_num(row['flops_pct'], 1)}")
        lines.append(_md_row([model, *cells]))
    return "\n".join(lines), table


def _choices(groups: dict, models: Sequence[str], methods: Sequence[str]) -> tuple[str, list[dict]]:
    """Per DNAT method, and the random control (the agreement chance gives): mean edge counts
    per choice, how alike the seeds decided, and how sure θ was of its decisions."""
    table = [
        _choice_row(model, method, done)
        for model, method in itertools.product(models, methods)
        if method != "original"  # the original has no edges to choose
        and (done := [r for r in groups[model, method] if r.status == "done"])
    ]
    sure = _sure_lines(table) if any(row["method"] != "nat" for row in table) else []
    return "\n".join([*_choice_lines(table), "", *sure]).rstrip(), table


def _choice_lines(table: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "### Edge choices: mean edges per choice over seeds; seed agreement (mean over edges of "
        "the fraction of seed pairs choosing alike) and edges on which all seeds agree",
        "",
        _md_row(
            [
                "model",
                "method",
                "edges",
                *CHOICES,
                "changes by kind",
                "dead joins",
                "seed agreement",
                "unanimous edges",
            ]
        ),
        _md_row(["---"] * (len(CHOICES) + 7)),
    ]
    for row in table:
        counts = (f"{row[c]:.1f}" for c in CHOICES)
        cells = [
            str(row["edges"]),
            *counts,
            row["changes"] or "none",
            _num(row["dead_joins"], 1),
            _percent(row["agreement"]),
            _percent(row["unanimous"]),
        ]
        lines.append(_md_row([row["model"], METHOD_LABELS[row["method"]], *cells]))
    lines += [
        "",
        "Changes by kind: mean per seed (identity: a branch became the identity; none: a branch "
        "removed; skip-none: a skip removed). Dead joins: joins every operand of which was "
        "removed, so a zero tensor flows on — NAT emits them, DNAT's decide never does.",
    ]
    return lines


_SURE_COLUMNS = (
    "model",
    "method",
    "median margin",
    "min margin",
    "unsure edges",
    "flipped edges",
    "finalize gap",
    "after BN re-estimation",
)


def _sure_lines(table: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "### How sure DNAT was: θ's margin at decide (its largest allowed entry minus the second; "
        f"median and min over edges and seeds), unsure edges (margin < {UNSURE}) and edges whose "
        "decision flipped in the last architecture epochs (mean per seed), and what finalize "
        "cost: the accuracy points it lost (gated network before − finalized after), for a "
        "language model the validation loss it added (after − before, nats per token); mean / "
        "max over seeds",
        "",
        _md_row(_SURE_COLUMNS),
        _md_row(["---"] * len(_SURE_COLUMNS)),
    ]
    for row in table:
        if row["method"] == "nat":  # a policy's samples, not θ: no margins, no finalize
            continue
        cells = [
            _num(row["margin_median"], 3),
            _num(row["margin_min"], 3),
            _num(row["unsure"], 1),
            _num(row["flipped"], 1),
            _gap(row["finalize_gap_mean"], row["finalize_gap_max"]),
            _gap(row["finalize_gap_bn_mean"], row["finalize_gap_bn_max"]),
        ]
        lines.append(_md_row([row["model"], METHOD_LABELS[row["method"]], *cells]))
    return lines


def _choice_row(model: str, method: str, done: Sequence[RunRow]) -> dict[str, Any]:
    edges = max(r.edges for r in done)
    agreed = agreement([r.changed for r in done], edges=edges)  # None under two seeds
    margins = [m for r in done for m in (r.margins or {}).values()]
    unsure = [sum(m < UNSURE for m in r.margins.values()) for r in done if r.margins]
    gaps = {key: _finalize_gaps(done, key) for key in ("acc_after", "acc_after_bn")}
    return {
        "model": model,
        "method": method,
        "seeds": len(done),
        "edges": edges,
        **{c: statistics.fmean(r.decisions.get(c, 0) for r in done) for c in CHOICES},
        "changes": _mean_changes(done),
        "dead_joins": _mean([r.dead_joins for r in done if r.dead_joins is not None]),
        "agreement": agreed.pairwise if agreed else None,
        "unanimous": agreed.unanimous if agreed else None,
        "margin_median": statistics.median(margins) if margins else None,
        "margin_min": min(margins, default=None),
        "unsure": _mean(unsure),
        "flipped": _mean([len(r.flipped) for r in done if r.flipped is not None]),
        "finalize_gap_mean": _mean(gaps["acc_after"]),
        "finalize_gap_max": max(gaps["acc_after"], default=None),
        "finalize_gap_bn_mean": _mean(gaps["acc_after_bn"]),
        "finalize_gap_bn_max": max(gaps["acc_after_bn"], default=None),
    }


def _mean_changes(done: Sequence[RunRow]) -> str | None:
    """The runs' changes by kind, mean per seed: "identity 2.0, skip-none 0.4"."""
    totals: Counter[str] = Counter()
    for r in done:
        for part in filter(None, (r.changes or "").split(",")):
            kind, _, count = part.partition("=")
            totals[kind] += int(count)
    kinds = [k for k in CHANGE_KINDS if totals[k]]
    return ", ".join(f"{k} {totals[k] / len(done):.1f}" for k in kinds) or None


def _finalize_gaps(done: Sequence[RunRow], after: str) -> list[float]:
    """Per run, what finalize cost: the accuracy points it lost (the gated network's before −
    ``after``'s), or a language model's validation loss it added (``after``'s − before)."""
    loss = metric_of(done) is VALIDATION_LOSS
    key = {"acc_before": "loss_before", after: after.replace("acc_", "loss_")} if loss else {}
    gaps = []
    for r in done:
        record = r.finalize or {}
        before = record.get(key.get("acc_before", "acc_before"))
        then = record.get(key.get(after, after))
        if before is not None and then is not None:
            gaps.append(then - before if loss else 100 * (before - then))
    return gaps


def _reach(rows: Sequence[RunRow]) -> str:
    """When will DNAT change the network: θ's reach lr·T and noise lr·√T, median over the
    DNAT runs, and the regime they put the study in."""
    done = [r.reach for r in rows if r.method in DNAT_METHODS and r.status == "done"]
    reach = [x for x in done if x and x.get("lr_T") is not None and x.get("lr_sqrt_T") is not None]
    if not reach:
        return ""
    median = {
        key: statistics.median(values) if (values := [x[key] for x in reach if key in x]) else None
        for key in ("theta_steps", "theta_lr", "lr_T", "lr_sqrt_T", "warmup_steps")
    }
    travel, noise = median["lr_T"], median["lr_sqrt_T"]
    low, high = min(x["lr_T"] for x in reach), max(x["lr_T"] for x in reach)
    spread = f" (runs: {low:.2f} to {high:.2f})" if f"{low:.2f}" != f"{high:.2f}" else ""
    return "\n".join(
        [
            "### When will DNAT change the network?",
            "",
            "Adam moves θ by about its learning rate per step, so in T steps an edge's θ can "
            f"travel about lr·T; a change needs about {NEEDED:g} (θ_same starts at 1, "
            "θ_identity and θ_none at 0). The steps' noise adds up like a random walk, to about "
            f"lr·√T: from ~{NOISY:g}, the distance a change needs, noise alone can decide an "
            "edge and the seeds may choose apart (the seed agreement above measures it). This "
            "study's "
            f"DNAT runs (median of {len(reach)}): T = {_num(median['theta_steps'], 0)} θ steps "
            f"(after {_num(median['warmup_steps'], 0)} ω-only warm-up steps), θ lr = "
            f"{_num(median['theta_lr'], 3, 'g')}: lr·T = {travel:.2f}{spread}, lr·√T = "
            f"{noise:.3f}.",
            "",
            _regime(travel, noise),
        ]
    )


def _regime(travel: float, noise: float) -> str:
    """Which regime a study's median lr·T and lr·√T put it in, and what to change."""
    steps = "more architecture epochs (--arch-epochs) or a smaller --batch-size"
    steps_first = (
        f"aise θ's steps ({steps}) before raising θ's lr: steps grow the reach faster than the "
        "noise (lr·T ÷ lr·√T = √T), a larger lr grows both alike."
    )
    if travel < NEEDED:
        noisy = ", and what it changes may be noise" if noise >= NOISY else ""
        return (
            f"**Out of reach**: θ cannot travel the {NEEDED:g} a change needs, so DNAT "
            f"keeps almost every edge as it is{noisy}. R{steps_first}"
        )
    if noise >= NOISY:
        return (
            "**Noise**: θ can travel far enough, but noise alone can carry it as far as a "
            "change needs, so the seeds may decide apart (see seed agreement). "
            f"Give θ more steps ({steps}) at a smaller lr: lr·T stays above "
            f"{NEEDED:g} while lr·√T falls."
        )
    return (
        "**In reach**: θ can travel far enough and the noise stays small, so the seeds' "
        "decisions are mostly signal (the margins and seed agreement above say how sure). "
        f"Should DNAT change too little, r{steps_first}"
    )


def _failures(rows: Sequence[RunRow]) -> str:
    bad = [r for r in rows if r.status != "done"]
    if not bad:
        return ""
    lines = ["### Runs without a result yet (rerun the same command to retry or resume them)", ""]
    lines += [
        f"- {r.model} {run_folder(r.method, r.budget)} seed {r.seed}: {r.status}"
        + (f" — {r.error}" if r.error else "")
        for r in bad
    ]
    return "\n".join(lines)


def _plot(
    groups: dict, models: Sequence[str], methods: Sequence[str], data: str, path: Path
) -> None:
    """Per-seed accuracy, the methods side by side per model, the mean as a bar."""
    # lazy: matplotlib takes about half a second to import, and only the report draws.
    # No pyplot: no global backend, Agg draws the PNG.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 1.2 + 1.6 * len(models)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        for i, model in enumerate(models):
            accs = [r.score for r in groups[model, method] if r.score is not None]
            x = i - 0.4 + width * (k + 0.5)
            spread = [x + width * 0.3 * (j / max(len(accs) - 1, 1) - 0.5) for j in range(len(accs))]
            ax.scatter(
                spread, accs, s=18, color=f"C{k}", label=METHOD_LABELS[method] if i == 0 else None
            )
            if accs:
                ax.hlines(statistics.fmean(accs), x - width * 0.4, x + width * 0.4, color=f"C{k}")
    ax.set_xticks(range(len(models)), models)
    metric = metric_of(r for runs in groups.values() for r in runs)
    ax.set_ylabel(metric.label)
    ax.set_title(f"{data}: {metric.label.split(' (')[0]} per seed (bar: mean)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _num(value: float | None, digits: int, kind: str = "f") -> str:
    if value is None:
        return MISSING
    if kind == "f":  # no "-0.00" for a difference that rounds to nothing
        value = round(value, digits) + 0.0
    return f"{value:.{digits}{kind}}"


def _gap(mean: float | None, most: float | None) -> str:
    return MISSING if mean is None else f"{_num(mean, 2)} / {_num(most, 2)}"


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _write_csv(path: Path, table: Sequence[dict]) -> None:
    buffer = io.StringIO()
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    path.write_text(buffer.getvalue())


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours >= 1 else f"{hours:.3f}"


def _percent(fraction: float | None) -> str:
    return MISSING if fraction is None else f"{100 * fraction:.1f} %"
