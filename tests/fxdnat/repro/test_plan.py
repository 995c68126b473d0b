"""Planning a study: seeds and shards parsed, jobs in order, each run's config, and the random
control's place and changes, without training."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from fxdnat.repro import Job, ReproConfig, jobs, parse_seeds, parse_shard, shard


def test_seed_lists_and_shards_parse():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("0,3,7-8") == [0, 3, 7, 8]
    assert parse_shard("2/4") == (2, 4)
    with pytest.raises(ValueError, match="repeats a seed"):
        parse_seeds("1-3,2")


def test_every_study_setting_reaches_the_runs_config():
    from fxdnat.repro import run_config

    config = ReproConfig(["zoo:resnet20"], out="study", data_dir="d", download=True,
                         recipe="quick", granularity="op", arch_update="joint", epochs=3,
                         arch_epochs=1, batch_size=8, lr=0.1, theta_lr=0.2, limit=16,
                         deterministic=True, device="cpu", workers=2)  # fmt: skip
    run = run_config(config, Job("zoo:resnet20", "full", 4))
    for name in config.settings():  # what the runs compute
        assert getattr(run, name) == getattr(config, name), name
    data_dir = str(Path("d").resolve())  # a run stores its data folder absolute
    assert (run.device, run.workers, run.data_dir, run.download) == ("cpu", 2, data_dir, True)
    assert (run.out, run.method, run.tie, run.seed) == (
        "study/resnet20/full/seed4",
        "dnat",
        "full",
        4,
    )
    original = run_config(config, Job("zoo:resnet20", "original", 1))
    assert (original.method, original.seed) == ("original", 1)


# ------------------------------------------------------------------ the random control
def test_random_comes_last_for_its_seed_and_copies_the_first_dnat_method_listed(tmp_path):
    config = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[1, 2],
                         methods=["random", "full", "original", "cell"])  # fmt: skip
    assert [(j.method, j.seed, j.pairs_with) for j in jobs(config)] == [
        ("full", 1, None),
        ("original", 1, None),
        ("cell", 1, None),
        ("random", 1, "full"),
        ("full", 2, None),
        ("original", 2, None),
        ("cell", 2, None),
        ("random", 2, "full"),
    ]
    config = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[3], methods=["random", "full"])
    (full, control) = jobs(config)
    assert control.source == full == Job("zoo:resnet20", "full", 3)


def test_a_study_with_random_and_no_dnat_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^--methods random,original: random runs make as many"):
        ReproConfig(["zoo:resnet20"], str(tmp_path), methods=["random", "original"])
    with pytest.raises(ValueError, match="random and similarity runs make as many changes as"):
        ReproConfig(["zoo:resnet20"], str(tmp_path), methods=["random", "similarity"])


def test_shards_keep_each_paired_run_with_its_dnat_run_and_balance_the_load(tmp_path):
    methods = ["original", "cell", "full"]
    specs = ["zoo:resnet20", "zoo:mobilenetv2"]
    for paired in (["random"], ["similarity", "random"]):
        config = ReproConfig(specs, str(tmp_path), seeds=[1, 2, 3], methods=[*methods, *paired])
        everything = jobs(config)
        for n in (2, 3, 4, 7):
            slices = [shard(everything, i, n) for i in range(1, n + 1)]
            assert sorted(map(str, itertools.chain(*slices))) == sorted(map(str, everything))
            for part in slices:
                assert all(job.source in part for job in part if job.method in paired)
            sizes = [len(part) for part in slices]
            assert max(sizes) - min(sizes) <= 1 + len(paired)  # at most one group apart
    # a language-model study: the originals do not all land in one slice
    lm = ReproConfig(["zoo:gpt-mini"], str(tmp_path), seeds=[0, 1, 2, 3, 4],
                     methods=["original", "full", "similarity", "random"])  # fmt: skip
    slices = [shard(jobs(lm), i, 2) for i in (1, 2)]
    assert [len(part) for part in slices] == [9, 11]
    assert {j.method for j in slices[0]} == {"original", "full", "similarity", "random"}


def _write_summary(folder: Path, **summary) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_random_runs_config_copies_its_dnat_runs_changes(tmp_path):
    from fxdnat.repro import changes_text, run_config

    config = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[1], methods=["full", "random"])
    changed = {"layer1.0:0": "none", "layer2.1:1": "identity", "layer3.0:0": "identity"}
    _write_summary(tmp_path / "resnet20" / "full" / "seed1", changed=changed)
    (full, control) = jobs(config)
    run = run_config(config, control)
    assert (run.method, run.tie, run.seed) == ("random", "full", 1)
    assert sorted(run.changes.split(",")) == ["identity=2", "none=1"]
    assert run.out == str(tmp_path / "resnet20" / "random" / "seed1")
    assert changes_text(changed) == "identity=2,none=1" and changes_text({}) == ""
    with pytest.raises(ValueError, match=r"choice\(s\) \['same'\]; a random run places only"):
        changes_text({"a": "same"})


def test_a_similarity_run_removes_as_many_branches_as_its_dnat_run_changed(tmp_path):
    from fxdnat.config import check_method
    from fxdnat.repro import run_config

    methods = ["similarity", "original", "full", "random"]
    config = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[1], methods=methods)
    assert [j.method for j in jobs(config)] == ["original", "full", "similarity", "random"]
    changed = {"layer1.0:0": "none", "layer2.1:1": "identity", "layer3.0:0": "identity"}
    _write_summary(tmp_path / "resnet20" / "full" / "seed1", changed=changed)
    similar = next(j for j in jobs(config) if j.method == "similarity")
    assert similar.source == Job("zoo:resnet20", "full", 1)
    run = run_config(config, similar)
    assert (run.method, run.tie, run.changes) == ("similarity", "full", "none=3")
    check_method(run)
    _write_summary(tmp_path / "resnet20" / "full" / "seed1", changed={})
    unchanged = run_config(config, similar)
    assert unchanged.changes == "" and check_method(unchanged) is None  # nothing to remove


def test_a_random_run_without_its_dnat_result_says_why(tmp_path):
    from fxdnat.repro import run_config

    config = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[2], methods=["cell", "random"])
    (cell, control) = jobs(config)
    with pytest.raises(RuntimeError, match=r"its DNAT run \(resnet20 cell seed 2\) has no result "
                       r"yet \(not run\); a random run copies"):  # fmt: skip
        run_config(config, control)
    cell.folder(tmp_path).mkdir(parents=True)
    (cell.folder(tmp_path) / "run.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(RuntimeError, match=r"^its DNAT run \(resnet20 cell seed 2\) failed; "):
        run_config(config, control)


def test_a_nat_job_runs_the_nat_baseline_and_only_it_gets_natsoptions(tmp_path):
    from fxdnat.repro import run_config

    config = ReproConfig(["zoo:resnet20"], str(tmp_path), methods=["original", "nat", "full"],
                         search_epochs=3, nat_weights="source")  # fmt: skip
    runs = {job.method: run_config(config, job) for job in jobs(config) if job.seed == 1}
    assert (runs["nat"].method, runs["nat"].tie) == ("nat", "cell")
    assert (runs["nat"].search_epochs, runs["nat"].nat_weights) == (3, "source")
    for method in ("original", "full"):  # they would refuse NAT's options
        assert (runs[method].search_epochs, runs[method].nat_weights) == (None, None)


def test_nats_options_without_the_nat_method_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--search-epochs set NAT's search, but --methods"):
        ReproConfig(["zoo:resnet20"], str(tmp_path), methods=["original"], search_epochs=2)


# ------------------------------------------------------------------ budget sweeps
def sweep(out: Path, **overrides) -> ReproConfig:
    settings = {"seeds": [1], "methods": ["random", "original", "cell", "prune"]}
    return ReproConfig(
        ["zoo:resnet20"], str(out), **{**settings, "budgets": [0.6, 1.0, 0.8], **overrides}
    )


def test_a_sweep_runs_the_budgeted_methods_below_1_and_the_unconstrained_point_once(tmp_path):
    config = sweep(tmp_path)
    assert config.budgets == [1.0, 0.8, 0.6]  # kept in decreasing order
    assert [(j.method, j.budget) for j in jobs(config)] == [
        ("original", None),
        ("cell", None),  # 1 is listed: cell runs unconstrained too
        ("random", "flops=0.8"),  # in the order given, paired with nothing
        ("cell", "flops=0.8"),
        ("prune", "flops=0.8"),
        ("random", "flops=0.6"),
        ("cell", "flops=0.6"),
        ("prune", "flops=0.6"),
    ]
    random_job = jobs(config)[2]
    assert random_job.source is None
    assert str(random_job) == "resnet20 random@flops=0.8 seed 1"
    assert random_job.folder(tmp_path) == tmp_path / "resnet20" / "random@flops=0.8" / "seed1"
    # without 1, original (and nat) still run once, unconstrained; cell only at its budgets
    config = sweep(tmp_path, methods=["full", "nat", "original"], budgets=[0.5],
                   budget_resource="params")  # fmt: skip
    assert [(j.method, j.budget) for j in jobs(config)] == [
        ("nat", None),
        ("original", None),
        ("full", "params=0.5"),
    ]
    assert jobs(config)[2].folder("o") == Path("o/resnet20/full@params=0.5/seed1")


def test_a_sweeps_unconstrained_runs_are_the_plain_studys_own(tmp_path):
    plain = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[1, 2], methods=["original", "cell"])
    swept = sweep(tmp_path, seeds=[1, 2], methods=["original", "cell"])
    unconstrained = [j for j in jobs(swept) if j.budget is None]
    assert unconstrained == jobs(plain)  # so a sweep over a plain study skips its finished runs
    assert swept.settings() == plain.settings()  # and its manifest accepts the sweep


def test_each_sweep_job_gets_its_budget_and_no_pairing(tmp_path):
    from fxdnat.config import check_method
    from fxdnat.repro import run_config

    config = sweep(tmp_path, budgets=[1.0, 0.6])
    runs = {(j.method, j.budget): run_config(config, j) for j in jobs(config)}
    got = {key: (r.method, r.tie, r.budget, r.changes) for key, r in runs.items()}
    assert got == {
        ("original", None): ("original", "cell", None, None),
        ("cell", None): ("dnat", "cell", None, None),
        # no DNAT summary exists: a budgeted random run draws to fit its budget
        ("random", "flops=0.6"): ("random", "full", "flops=0.6", None),
        ("cell", "flops=0.6"): ("dnat", "cell", "flops=0.6", None),
        ("prune", "flops=0.6"): ("prune", "full", "flops=0.6", None),
    }
    for run in runs.values():
        check_method(run)  # the engine takes each
    assert runs["prune", "flops=0.6"].out == str(
        tmp_path / "resnet20" / "prune@flops=0.6" / "seed1"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"budgets": None},
            "--methods random,original,cell,prune: prune removes the least-contributing branches "
            "until the network fits a budget; sweep some, e.g. --budgets 1.0,0.8,0.6,0.4",
        ),
        ({"budgets": [1.2, 0.5]}, r"budgets [1.2, 0.5] must be fractions in (0, 1] of the"),
        ({"budgets": [0.0]}, "budgets [0.0] must be fractions in (0, 1]"),
        ({"budgets": [0.6, 0.6000001]}, "budgets [0.6, 0.6000001] repeat 0.6; give each once"),
        (
            {"methods": ["original", "nat"]},
            "--budgets: --methods original,nat has no method that meets a budget; add some of "
            "cell, full, prune, similarity, random, e.g. --methods original,cell,prune,random",
        ),
        (
            {"budgets": [1]},
            "--budgets 1: random and prune run at budgets below 1 only (the unconstrained "
            "network is the original); add one, e.g. --budgets 1.0,0.6",
        ),
        ({"budget_resource": "energy"}, "unknown budget resource 'energy'; expected one of flops,"),
    ],
)
def test_a_sweep_that_cannot_run_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError) as error:
        sweep(tmp_path, **overrides)
    assert str(error.value).startswith(message)


def test_budget_lists_parse_and_random_needs_no_dnat_method_in_a_sweep(tmp_path):
    from fxdnat.repro.plan import parse_budgets

    assert parse_budgets("1.0,0.8, 0.6") == [1.0, 0.8, 0.6]
    with pytest.raises(ValueError, match=r"^bad budget list '1,x': 'x' is no number; write"):
        parse_budgets("1,x")
    config = sweep(tmp_path, methods=["original", "random"], budgets=[0.5])
    assert [(j.method, j.budget) for j in jobs(config)] == [
        ("original", None),
        ("random", "flops=0.5"),
    ]


def test_shards_slice_a_sweep_round_robin(tmp_path):
    config = sweep(
        tmp_path, seeds=[1, 2, 3], methods=["original", "cell", "full", "prune", "random"]
    )
    everything = jobs(config)
    assert len(everything) == 3 * (3 + 2 * 4)  # per seed: 3 unconstrained, 4 at each budget
    for n in (2, 3, 5):
        slices = [shard(everything, i, n) for i in range(1, n + 1)]
        # no budgeted job waits on another: plain round robin, disjoint and covering
        assert slices == [everything[i::n] for i in range(n)]


def test_the_manifest_records_the_swept_budgets_and_a_plain_study_none(tmp_path):
    from fxdnat.repro.plan import claim

    plain = ReproConfig(["zoo:resnet20"], str(tmp_path), seeds=[1], methods=["original", "cell"],
                        epochs=2)  # fmt: skip
    claim(plain)
    assert "budgets" not in json.loads((tmp_path / "repro.json").read_text())
    claim(sweep(tmp_path, epochs=2, budgets=[1.0, 0.8]))
    claim(sweep(tmp_path, epochs=2, budgets=[0.6, 0.8], budget_resource="params"))
    manifest = json.loads((tmp_path / "repro.json").read_text())
    assert manifest["budgets"] == ["flops=0.8", "params=0.8", "params=0.6"]
    assert manifest["methods"] == ["original", "cell", "random", "prune"]
    assert "random_pairs_with" not in manifest  # a sweep's random runs copy no run
    _write_summary(tmp_path / "resnet20" / "prune@flops=0.8" / "seed1", test_acc=0.9)
    with pytest.raises(ValueError, match=r"holds runs made with epochs=2 \(the study's settings\)"):
        claim(sweep(tmp_path, epochs=3))
