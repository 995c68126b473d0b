"""Running a study: a tiny real study, skip / redo / resume, shards, failures, the random control
after its DNAT run, several GPUs, and the report's numbers against the runs' summaries."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fxdnat import engine
from fxdnat.cli import main
from fxdnat.repro import (
    Job,
    ReproConfig,
    ReproReporter,
    aggregate,
    jobs,
    run_study,
    shard,
)

# 64 digits, batch 32: 2 steps an epoch; one architecture epoch, one network epoch
TINY = dict(recipe="quick", limit=64, batch_size=32, epochs=2, arch_epochs=1, device="cpu")


def study(out: Path, **overrides) -> ReproConfig:
    settings = {"specs": ["zoo:resnet20"], "seeds": [1, 2], "methods": ["original", "cell"]}
    return ReproConfig(**{**settings, "out": str(out), **TINY, **overrides})


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def summaries(out: Path) -> dict[tuple[str, int], dict]:
    return {
        (p.parent.parent.name, int(p.parent.name[4:])): read(p)
        for p in out.glob("resnet20/*/seed*/summary.json")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list]:
    """A real study: resnet20 × (original, cell) × seeds 1, 2 on 64 digits."""
    out = tmp_path_factory.mktemp("repro") / "study"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/conftest.py: one thread is faster on busy cores
    try:
        results = run_study(study(out))
    finally:
        torch.set_num_threads(threads)
    return out, results


@pytest.fixture
def copy(tiny, tmp_path) -> Path:
    """A private copy of the tiny study, for tests that change it."""
    return Path(shutil.copytree(tiny[0], tmp_path / "study"))


def test_a_tiny_study_trains_every_run_into_its_folder(tiny):
    out, results = tiny
    assert [(r.job.method, r.job.seed, r.status) for r in results] == [
        ("original", 1, "done"),
        ("cell", 1, "done"),
        ("original", 2, "done"),
        ("cell", 2, "done"),
    ]
    for r in results:
        folder = out / "resnet20" / r.job.method / f"seed{r.job.seed}"
        summary, record = read(folder / "summary.json"), read(folder / "run.json")
        assert (folder / "checkpoint.pt").exists() and (folder / "log.txt").exists()
        assert summary["method"] == ("original" if r.job.method == "original" else "dnat")
        assert summary["epochs"] == 2 and summary["device"] == "cpu"
        assert record["status"] == "done" and len(record["attempts"]) == 1
        assert record["attempts"][0]["device"] == "cpu"
        # the harness's wall time covers the engine's training time and more
        assert record["wall_seconds"] >= summary["seconds"] > 0
    manifest = read(out / "repro.json")
    assert manifest["specs"] == ["zoo:resnet20"] and manifest["seeds"] == [1, 2]
    assert manifest["recipes"]["resnet20"]["epochs"] == 2


def test_both_tables_hold_the_summaries_numbers(tiny):
    out, _ = tiny
    report = aggregate(out)
    runs = summaries(out)
    records = {k: read(out / "resnet20" / k[0] / f"seed{k[1]}" / "run.json") for k in runs}
    table1 = {row["method"]: row for row in read_csv(out / "table1-digits.csv")}
    for method in ("original", "cell"):
        accs = [100 * runs[method, seed]["test_acc"] for seed in (1, 2)]
        hours = sum(records[method, seed]["wall_seconds"] for seed in (1, 2)) / 3600
        row = table1[method]
        assert float(row["mean_acc"]) == pytest.approx(statistics.fmean(accs))
        assert float(row["std_acc"]) == pytest.approx(statistics.stdev(accs))
        assert float(row["device_hours"]) == pytest.approx(hours)
        assert (row["seeds"], row["devices"], row["failed"]) == ("2", "cpu", "0")
        cell = f"{statistics.fmean(accs):.2f} / {statistics.stdev(accs):.2f} / {hours:.3f} cpu"
        assert cell in report.markdown
        label = "original" if method == "original" else "DNAT cell"
        assert f"| resnet20 | {label} | {accs[0]:.2f} | {accs[1]:.2f} |" in report.markdown
    assert "| model | original | DNAT cell |" in report.markdown
    table2 = read_csv(out / "table2-digits.csv")
    assert [(r["method"], r["seed"]) for r in table2] == [
        ("original", "1"),
        ("original", "2"),
        ("cell", "1"),
        ("cell", "2"),
    ]
    for r in table2:
        summary = runs[r["method"], int(r["seed"])]
        assert float(r["test_acc"]) == pytest.approx(100 * summary["test_acc"])
        assert int(r["same"]) == summary["decisions"].get("same", 0)
    (choices,) = read_csv(out / "choices-digits.csv")  # the original has no edges to choose
    assert choices["method"] == "cell" and choices["edges"] == "18"
    assert (out / "accuracy-digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.files[0] == out / "report.md" and all(p.exists() for p in report.files)


def test_a_rerun_skips_done_runs_and_redoes_a_deleted_one(copy):
    kept = {p: p.stat().st_mtime_ns for p in copy.glob("resnet20/*/seed*/summary.json")}
    shutil.rmtree(copy / "resnet20" / "cell" / "seed2")
    results = run_study(study(copy))
    assert [(r.job.method, r.job.seed) for r in results if r.status == "done"] == [("cell", 2)]
    assert [r.status for r in results].count("skipped") == 3
    for path, mtime in kept.items():
        if path.parts[-3:-1] != ("cell", "seed2"):
            assert path.stat().st_mtime_ns == mtime, path
    assert (copy / "resnet20" / "cell" / "seed2" / "summary.json").exists()


class _KillAfter(ReproReporter):
    """Stops the study as Ctrl-C would, after `epoch` ended (and before it was saved)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, job: Job, record: dict) -> None:
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_a_killed_run_is_resumed_and_every_attempt_is_costed(tmp_path):
    config = study(tmp_path / "study", seeds=[1], methods=["cell"])
    folder = tmp_path / "study" / "resnet20" / "cell" / "seed1"
    with pytest.raises(KeyboardInterrupt):
        run_study(config, _KillAfter(epoch=2))
    assert (folder / "checkpoint.pt").exists() and not (folder / "summary.json").exists()
    assert read(folder / "run.json")["status"] == "interrupted"
    # as if it had then been killed outright while resuming: an attempt left "running"
    record = read(folder / "run.json")
    record["attempts"].append({**record["attempts"][0], "status": "running", "start_time": 0.0})
    (folder / "run.json").write_text(json.dumps(record))

    (result,) = run_study(config)
    assert (result.status, result.resumed) == ("done", True)
    record = read(folder / "run.json")
    assert [(a["action"], a["status"]) for a in record["attempts"]] == [
        ("fresh", "interrupted"),
        ("fresh", "killed"),  # costed up to its folder's last save
        ("resumed", "done"),
    ]
    assert record["wall_seconds"] == pytest.approx(
        sum(a["wall_seconds"] for a in record["attempts"])
    )
    assert engine.CHECKPOINT == "checkpoint.pt"
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


# ----------------------------------------------------------------- without training
def _fake_transform(fail: set[tuple[str, int]], calls: list | None = None):
    """Stands in for the engine: writes a summary (accuracy from the seed) or raises. A random
    run changes as many edges as its config's `changes` asks for; ``calls`` collects configs."""

    def transform(config: engine.RunConfig, reporter=None, *, resume: bool = False) -> dict:
        method = {"dnat": config.tie, "original": "original", "random": "random"}[config.method]
        if calls is not None:
            calls.append(config)
        if (method, config.seed) in fail:
            raise engine.TrainingError(f"the loss became nan ({method} seed {config.seed})")
        dnat = config.method == "dnat"
        changed = {"layer1.0:0": "none"} if dnat and config.seed % 2 else {}
        if config.method == "random":
            kinds = [p.split("=") for p in (config.changes or "").split(",") if p]
            picks = [kind for kind, count in kinds for _ in range(int(count))]
            changed = {f"layer{k + 2}.0:0": kind for k, kind in enumerate(picks)}
        counts = {c: list(changed.values()).count(c) for c in ("none", "identity")}
        summary = {
            "spec": config.spec,
            "method": config.method,
            "tie": config.tie,
            "data": config.data,
            "test_acc": 0.9 + 0.01 * config.seed + 0.02 * dnat,
            "seconds": 1.0,
            "device": "cpu",
            "edges": 0 if config.method == "original" else 18,
            "decisions": {}
            if config.method == "original"
            else {"same": 18 - len(changed), **counts},
            "changed": changed,
        }
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return summary

    return transform


def test_a_failed_run_is_recorded_reported_and_retried(tmp_path, monkeypatch):
    out = tmp_path / "study"
    monkeypatch.setattr(engine, "transform", _fake_transform({("cell", 2)}))
    args = [
        "repro",
        "zoo:resnet20",
        "--seeds",
        "1-3",
        "--methods",
        "original,cell",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "1 of 6 runs failed" in result.output
    record = read(out / "resnet20" / "cell" / "seed2" / "run.json")
    assert record["status"] == "failed" and record["error"] == "the loss became nan (cell seed 2)"
    assert "TrainingError" in record["attempts"][0]["traceback"]
    report = (out / "report.md").read_text()
    assert "| resnet20 | 92.00 / 1.00 / " in report  # the original's three seeds
    assert "(n=2, 1 failed)" in report
    assert "| resnet20 | DNAT cell | 93.00 | failed | 95.00 |" in report
    assert "- resnet20 cell seed 2: failed — the loss became nan (cell seed 2)" in report

    monkeypatch.setattr(engine, "transform", _fake_transform(set()))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "6 runs: 5 done, 1 to train" in result.output
    record = read(out / "resnet20" / "cell" / "seed2" / "run.json")
    assert [a["status"] for a in record["attempts"]] == ["failed", "done"]
    # seeds 1 and 3 remove layer1.0:0, seed 2 keeps it: 1 of 3 pairs agree there, 17 edges agree
    (choices,) = read_csv(out / "choices-digits.csv")
    assert float(choices["agreement"]) == pytest.approx((17 + 1 / 3) / 18)
    assert float(choices["unanimous"]) == pytest.approx(17 / 18)
    assert float(choices["none"]) == pytest.approx(2 / 3)


def test_shards_split_the_study_deterministically_and_cover_it(tmp_path, monkeypatch):
    config = ReproConfig(
        specs=["zoo:resnet20", "zoo:mobilenetv2"], out=str(tmp_path), seeds=[1, 2, 3]
    )
    everything = jobs(config)
    assert len(everything) == 18 and everything[0] == Job("zoo:resnet20", "original", 1)
    slices = [shard(everything, i, 4) for i in range(1, 5)]
    assert slices == [shard(jobs(config), i, 4) for i in range(1, 5)]  # every launcher agrees
    assert sorted(map(str, itertools.chain(*slices))) == sorted(map(str, everything))
    assert [len(s) for s in slices] == [5, 5, 4, 4]

    monkeypatch.setattr(engine, "transform", _fake_transform(set()))
    out = tmp_path / "sharded"
    for i in (2, 1):  # in any order
        args = ["repro", "zoo:resnet20", "--seeds", "1-3", "--methods", "cell", "--out", str(out)]
        result = CliRunner().invoke(main, [*args, "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
        assert f"{3 - i} run{'s' if i == 1 else ''}: 0 done" in result.output
    assert sorted(p.name for p in (out / "resnet20" / "cell").iterdir()) == [
        "seed1",
        "seed2",
        "seed3",
    ]


def test_report_reaggregates_a_study(copy):
    for name in ("report.md", "table1-digits.csv", "accuracy-digits.png"):
        (copy / name).unlink(missing_ok=True)
    result = CliRunner().invoke(main, ["repro", "--report", str(copy)])
    assert result.exit_code == 0, result.output
    assert "| model | original | DNAT cell |" in result.output
    assert (copy / "report.md").exists() and (copy / "table1-digits.csv").exists()
    assert (copy / "accuracy-digits.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--report", "x", "zoo:resnet20"], "--report DIR only re-aggregates; give it no SPEC"),
        ([], "give SPECs and --out DIR (or --report DIR to re-aggregate a study)"),
        (["--report", "nowhere"], "no study folder at nowhere; run `fxdnat repro SPEC --out"),
        (["zoo:resnet20", "--out", "o", "--seeds", "5-1"], "bad seed list '5-1'"),
        (["zoo:resnet20", "--out", "o", "--methods", "cell,enas"], "unknown method(s) ['enas']"),
        (["zoo:resnet20", "--out", "o", "--shard", "3/2"], "shard '3/2' does not exist"),
        (
            ["zoo:resnet20", "--out", "o", "--methods", "original,random"],
            "--methods original,random: random runs make as many changes as the DNAT run of "
            "the same seed; add cell or full, e.g. --methods original,cell,random",
        ),
        (
            ["zoo:resnet20", "--out", "o", "--methods", "original,prune"],
            "--methods original,prune: prune removes the least-contributing branches until the "
            "network fits a budget; sweep some, e.g. --budgets 1.0,0.8,0.6,0.4",
        ),
        (
            ["zoo:resnet20", "--out", "o", "--budget-resource", "params"],
            "--budget-resource says what --budgets bound; give --budgets too",
        ),
        (["zoo:resnet20", "--out", "o", "--budgets", "1,x"], "bad budget list '1,x': 'x' is no"),
        (
            ["zoo:resnet20", "--out", "o", "--budgets", "1,0.6,0.001"],
            "--budget flops=0.001: no network fits the budget flops=0.001 without removing every "
            "operand of a join; the smallest reachable cost is flops=",
        ),
        (["zoo:resnet2", "--out", "o"], "unknown zoo model 'resnet2'"),
        (["zoo:resnet20", "--out", "o", "--recipe", "quik"], "unknown recipe 'quik'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["repro", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_an_unreachable_budget_is_refused_before_the_study_writes_anything(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(engine, "transform", _fake_budgeted_transform(calls))
    out = tmp_path / "study"
    args = ["repro", "zoo:resnet20", "--out", str(out), "--budgets", "0.6,0.001"]
    result = CliRunner().invoke(main, [*args, "--methods", "original,full,prune"])
    assert result.exit_code == 2 and "smallest reachable cost is flops=" in result.output
    assert calls == [] and not out.exists()


def test_a_rerun_with_other_settings_is_refused(tiny):
    with pytest.raises(ValueError, match=r"holds runs made with epochs=2 \(the study's settings\)"):
        run_study(study(tiny[0], epochs=3))


@pytest.mark.slow
def test_several_gpus_get_one_run_subprocess_each(tmp_path, monkeypatch):
    """The parallel path end to end, with two pretend GPUs (the runs fall back to the CPU)."""
    from fxdnat.repro import run as harness

    monkeypatch.setattr(harness, "_gpus", lambda device: ["0", "1"])
    config = study(tmp_path / "study", methods=["original"], epochs=1, arch_epochs=0)
    results = run_study(config)
    assert [(r.job.seed, r.status) for r in results] == [(1, "done"), (2, "done")]
    attempts = [
        read(tmp_path / "study" / "resnet20" / "original" / f"seed{seed}" / "run.json")["attempts"]
        for seed in (1, 2)
    ]
    assert sorted(a[0]["cuda_visible_devices"] for a in attempts) == ["0", "1"]
    assert all(a[0]["pid"] != os.getpid() for a in attempts)
    assert (tmp_path / "study" / "resnet20" / "original" / "seed1" / "output.log").exists()


def test_a_random_study_trains_each_random_run_after_its_dnat_run(tmp_path, monkeypatch):
    out, calls = tmp_path / "study", []
    monkeypatch.setattr(engine, "transform", _fake_transform({("cell", 2)}, calls))
    args = [
        "repro",
        "zoo:resnet20",
        "--seeds",
        "1-2",
        "--methods",
        "random,cell",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "2 of 4 runs failed" in result.output
    # random seed 2 never reached the engine: its DNAT run had failed
    assert [(c.method, c.tie, c.seed, c.changes) for c in calls] == [
        ("dnat", "cell", 1, None),
        ("random", "cell", 1, "none=1"),
        ("dnat", "cell", 2, None),
    ]
    record = read(out / "resnet20" / "random" / "seed2" / "run.json")
    assert record["status"] == "failed"
    assert record["error"].startswith("its DNAT run (resnet20 cell seed 2) failed; ")
    assert read(out / "repro.json")["random_pairs_with"] == "cell"
    report = (out / "report.md").read_text()
    assert "| model | DNAT cell | random (control) |" in report
    assert "- resnet20 random seed 2: failed — its DNAT run (resnet20 cell seed 2) failed" in report

    calls.clear()
    monkeypatch.setattr(engine, "transform", _fake_transform(set(), calls))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [(c.method, c.seed, c.changes) for c in calls] == [("dnat", 2, None), ("random", 2, "")]
    # seed 1: cell 93 %, random 91 %; seed 2: DNAT changed nothing, so the pair shows nothing
    report = (out / "report.md").read_text()
    assert "- resnet20, DNAT cell − random: +2.00 points on average over 1 seed; " in report
    assert "; DNAT better on 1 of 1 (1 seeds without a change left out)\n" in report


def test_random_runs_keep_the_dnat_runs_they_copy(tmp_path, monkeypatch):
    out = tmp_path / "study"
    monkeypatch.setattr(engine, "transform", _fake_transform(set()))
    args = ["repro", "zoo:resnet20", "--seeds", "1", "--out", str(out), "--methods"]
    assert CliRunner().invoke(main, [*args, "full,random"]).exit_code == 0
    result = CliRunner().invoke(main, [*args, "cell,full,random"])
    assert result.exit_code == 2, result.output
    assert (
        f"{out}'s random runs copy the changes of its full runs, but with --methods "
        "cell,full,random they would copy its cell runs" in " ".join(result.output.split())
    )


def test_with_several_gpus_a_random_run_waits_for_its_dnat_run_only(tmp_path, monkeypatch):
    """Two pretend GPUs; cell seed 1 is slow and cell seed 2 fails: the second GPU trains cell
    seed 2 meanwhile, and random seed 2 fails at once, without a subprocess."""
    from fxdnat.repro import RunResult, run_config
    from fxdnat.repro import run as harness

    events, lock = [], threading.Lock()

    def child(config, job, gpu, children):
        name = f"{job.method}{job.seed}"
        with lock:
            events.append(f"start {name}")
        if job.method == "random":
            run_config(config, job)  # its DNAT run's summary is there
        time.sleep(0.5 if name == "cell1" else 0.0)
        status = "failed" if name == "cell2" else "done"
        folder = job.folder(config.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps({"status": status}))
        if status == "done":
            (folder / "summary.json").write_text(json.dumps({"changed": {}, "test_acc": 0.5}))
        with lock:
            events.append(f"end {name}")
        return RunResult(job, status)

    monkeypatch.setattr(harness, "_gpus", lambda device: ["0", "1"])
    monkeypatch.setattr(harness, "_run_child", child)
    results = run_study(study(tmp_path / "study", methods=["cell", "random"]))
    assert [(r.job.method, r.job.seed, r.status) for r in results] == [
        ("cell", 1, "done"),
        ("random", 1, "done"),
        ("cell", 2, "failed"),
        ("random", 2, "failed"),
    ]
    assert events.index("start cell2") < events.index("end cell1") < events.index("start random1")
    assert "start random2" not in events
    record = read(tmp_path / "study" / "resnet20" / "random" / "seed2" / "run.json")
    assert record["error"].startswith("its DNAT run (resnet20 cell seed 2) failed; ")


def test_a_study_runs_the_nat_baseline_and_reports_it(tmp_path):
    """NAT through the harness: its run logs every event (run.json / log.txt), and the report
    tables it as NAT (adapted) with its dead joins."""
    out = tmp_path / "study"
    config = study(
        out, data="digits-hard", limit=128, batch_size=16, seeds=[1], methods=["original", "nat"],
        search_epochs=1,
    )  # fmt: skip
    results = run_study(config)
    assert [(r.job.method, r.status) for r in results] == [("original", "done"), ("nat", "done")]
    summary = read(out / "resnet20" / "nat" / "seed1" / "summary.json")
    assert summary["method"] == "nat" and isinstance(summary["dead_joins"], list)
    log = (out / "resnet20" / "nat" / "seed1" / "log.txt").read_text()
    assert "search_epoch" in log and "derive" in log
    assert "NAT (adapted)" in aggregate(out).markdown


def _fake_budgeted_transform(calls: list):
    """Stands in for the engine in a budget sweep: the network lands just under its FLOPs budget
    (or at 0.9 of the original's unconstrained), accuracy falls with it."""

    def transform(config: engine.RunConfig, reporter=None, *, resume: bool = False) -> dict:
        calls.append(config)
        flops = 1.0 if config.method == "original" else 0.9
        budget = None
        if config.budget is not None:
            flops = float(config.budget.split("=")[1]) - 0.02
            budget = {"target": {"flops": flops + 0.02}, "emitted": {"flops": flops, "params": 0.8}}
        summary = {
            "spec": config.spec,
            "method": config.method,
            "tie": config.tie,
            "data": config.data,
            "test_acc": 0.8 + 0.1 * flops + 0.01 * config.seed,
            "seconds": 1.0,
            "device": "cpu",
            "flops_before": 1000,
            "flops_after": round(1000 * flops),
            "budget": budget,
        }
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return summary

    return transform


def test_a_budget_sweep_trains_each_budget_and_reports_accuracy_against_cost(tmp_path, monkeypatch):
    out, calls = tmp_path / "study", []
    monkeypatch.setattr(engine, "transform", _fake_budgeted_transform(calls))
    args = ["repro", "zoo:resnet20", "--seeds", "1-2", "--out", str(out), "--budgets", "0.5,1"]
    result = CliRunner().invoke(main, [*args, "--methods", "original,cell,prune,random"])
    assert result.exit_code == 0, result.output
    assert [(c.method, c.tie, c.budget, c.seed) for c in calls if c.seed == 1] == [
        ("original", "cell", None, 1),
        ("dnat", "cell", None, 1),
        ("dnat", "cell", "flops=0.5", 1),
        ("prune", "full", "flops=0.5", 1),
        ("random", "full", "flops=0.5", 1),
    ]
    assert sorted(p.name for p in (out / "resnet20").iterdir()) == [
        "cell",
        "cell@flops=0.5",
        "original",
        "prune@flops=0.5",
        "random@flops=0.5",
    ]
    record = read(out / "resnet20" / "prune@flops=0.5" / "seed2" / "run.json")
    assert (record["method"], record["budget"], record["status"]) == ("prune", "flops=0.5", "done")
    # printed with Table 1, and in the report beside its figure
    assert "| resnet20 | prune (contribution) | flops=0.5 | 86.30 ± 0.71 | 0.480 | 0.800 | 2 |" in (
        result.output
    )
    assert (out / "pareto-digits.png").exists() and (out / "cost-digits.csv").exists()
    assert read(out / "repro.json")["budgets"] == ["flops=0.5"]
    # the same sweep again trains nothing
    calls.clear()
    assert (
        CliRunner().invoke(main, [*args, "--methods", "original,cell,prune,random"]).exit_code == 0
    )
    assert calls == []
