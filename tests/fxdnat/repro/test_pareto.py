"""Accuracy against cost: a summary's measured cost, target and method; runs grouped into points
over seeds, in the study's order; reading summaries from files and folders, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxdnat.repro.pareto import (
    CostRun,
    measured,
    points,
    read_runs,
    study_method,
    target,
)

SIZES = {"params_before": 1000, "params_after": 800, "flops_before": 2000, "flops_after": 1000}


def test_a_summarys_cost_is_its_sizes_and_what_the_engine_measured():
    assert measured(SIZES) == {"params": 0.8, "flops": 0.5}
    # a budgeted run: the engine's measurement, latency included where it was timed
    emitted = {"flops": 0.49, "params": 0.8, "latency": 0.7}
    assert measured({**SIZES, "budget": {"target": {"flops": 0.5}, "emitted": emitted}}) == emitted
    assert measured({"test_acc": 0.9, "budget": None}) == {}  # written before sizes were
    assert target({"budget": {"target": {"params": 0.5, "flops": 0.7}}}) == "flops=0.7,params=0.5"
    assert target({"budget": None}) is None and target({}) is None


def test_a_summarys_study_method_is_dnat_by_its_tie():
    assert study_method({"method": "dnat", "tie": "full"}) == "full"
    assert study_method({"method": "dnat"}) == "cell"  # RunConfig's default tie
    assert [study_method({"method": m, "tie": "full"}) for m in ("prune", "random")] == [
        "prune",
        "random",
    ]


def cost_run(method: str, budget: str | None, acc: float, flops: float, model="resnet20"):
    return CostRun("digits", model, method, budget, acc, {"flops": flops})


def test_points_group_seeds_in_the_studys_order_budgets_going_down():
    runs = [
        cost_run("prune", "flops=0.6", 88.0, 0.6),
        cost_run("cell", "flops=0.6", 90.0, 0.58),
        cost_run("cell", "flops=0.8", 91.0, 0.8),
        cost_run("cell", "flops=0.6", 92.0, 0.62),
        cost_run("cell", None, 93.0, 0.9),
        cost_run("original", None, 91.0, 1.0, model="mobilenetv2"),
    ]
    found = points(runs)
    assert [(p.model, p.method, p.budget, p.seeds) for p in found] == [
        ("resnet20", "cell", None, 1),
        ("resnet20", "cell", "flops=0.8", 1),
        ("resnet20", "cell", "flops=0.6", 2),
        ("resnet20", "prune", "flops=0.6", 1),
        ("mobilenetv2", "original", None, 1),  # models as they come
    ]
    cell = found[2]
    assert (cell.acc_mean, cell.cost["flops"]) == pytest.approx((91.0, 0.6))
    assert cell.acc_std == pytest.approx(2**0.5) and cell.cost_std["flops"] == pytest.approx(
        0.0283, abs=1e-4
    )
    assert found[0].acc_std is None and found[0].cost_std == {"flops": None}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_runs_are_read_from_summaries_run_folders_and_study_folders(tmp_path):
    summary = {"spec": "zoo:resnet20", "data": "digits", "method": "dnat", "tie": "full",
               "test_acc": 0.9, **SIZES}  # fmt: skip
    one = write(tmp_path / "a" / "summary.json", json.dumps(summary))
    study = tmp_path / "study" / "resnet20"
    pruned = {**summary, "method": "prune", "budget": {"target": {"flops": 0.6}}}
    write(study / "prune@flops=0.6" / "seed1" / "summary.json", json.dumps(pruned))
    unfinished = {**summary, "test_acc": None}  # no epoch ran: left out
    write(study / "cell" / "seed1" / "summary.json", json.dumps(unfinished))
    runs = read_runs([one, tmp_path / "study"])
    assert [(r.model, r.method, r.budget, r.test_acc) for r in runs] == [
        ("resnet20", "full", None, 90.0),
        ("resnet20", "prune", "flops=0.6", 90.0),
    ]
    assert read_runs([one.parent]) == runs[:1]


def test_reading_runs_refuses_what_holds_none(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^no summary.json in .*empty; give run folders, their"):
        read_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match=r"^no such file or folder: .*nowhere$"):
        read_runs([tmp_path / "nowhere"])
    bad = write(tmp_path / "bad.json", "{not json")
    with pytest.raises(ValueError, match=r"bad.json is not JSON \(Expecting property name"):
        read_runs([bad])
    image = tmp_path / "image.json"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"image.json is not JSON \(not text\); give run"):
        read_runs([image])
    other = write(tmp_path / "other.json", json.dumps({"epochs": 3}))
    with pytest.raises(
        ValueError, match=r"other.json is not a run's summary \(it has no test_acc\)"
    ):
        read_runs([other])
    for field, value, why in (
        ("test_acc", "high", "its test_acc is not a number"),
        ("budget", {"target": {"flops": "x"}, "emitted": {}}, "its budget's target is not"),
        ("budget", {"target": {"flops": 0.6}, "emitted": {"flops": None}}, "its budget's emitted"),
        ("budget", [1], "its budget is not a mapping"),
        ("spec", 3, "its spec is not text"),
    ):
        hostile = write(tmp_path / "h.json", json.dumps({"test_acc": 0.5, field: value}))
        with pytest.raises(ValueError, match=rf"h.json is not a run's summary \({why}"):
            read_runs([hostile])
    unfinished = write(tmp_path / "u" / "summary.json", json.dumps({"test_acc": None}))
    with pytest.raises(ValueError, match=r"^no run in .*u has a test accuracy: none trained"):
        read_runs([unfinished.parent])
