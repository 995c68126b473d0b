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
    with pytest.raises(ValueError, match=r"^--methods random,original: random places as many"):
        ReproConfig(["zoo:resnet20"], str(tmp_path), methods=["random", "original"])


def test_shards_keep_each_random_run_with_its_dnat_run(tmp_path):
    methods = ["original", "cell", "full"]
    specs = ["zoo:resnet20", "zoo:mobilenetv2"]
    config = ReproConfig(specs, str(tmp_path), seeds=[1, 2, 3], methods=[*methods, "random"])
    everything = jobs(config)
    for n in (2, 3, 4, 7):
        slices = [shard(everything, i, n) for i in range(1, n + 1)]
        assert sorted(map(str, itertools.chain(*slices))) == sorted(map(str, everything))
        for part in slices:
            assert all(job.source in part for job in part if job.method == "random")
        # the other jobs are sliced as in a study without random runs
        plain = jobs(ReproConfig(specs, str(tmp_path), seeds=[1, 2, 3], methods=methods))
        assert [[j for j in p if j.method != "random"] for p in slices] == [
            shard(plain, i, n) for i in range(1, n + 1)
        ]


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
