"""A run's config: what a resumed run may change, what it must agree with, how it is stored."""

from __future__ import annotations

import dataclasses

import pytest

from fxdnat.checkpoint import CheckpointError
from fxdnat.config import RUNTIME, RunConfig, resolve_recipe, resumed_config

ASKED_ANOTHER = "--resume: runs/r holds another run than the one asked for: "
HOW_TO = "; to continue that run drop what differs, for a new run choose another --out"
NO_EXTENSION = (
    ". A run cannot be extended: its learning rate follows one cosine schedule over all of its "
    "epochs"
)


def stored(**fields) -> dict:
    """What a checkpoint of a quick ResNet20 run holds, as far as resuming reads it."""
    config = RunConfig(spec="zoo:resnet20", out="runs/r", recipe="quick", **fields)
    return {"config": dataclasses.asdict(config), "model": {"spec": "zoo:resnet20"}}


def given(**fields) -> RunConfig:
    return RunConfig(**{"spec": "zoo:resnet20", "out": "runs/r", **fields})


def test_what_the_user_did_not_type_is_the_runs():
    resumed = resumed_config(stored(tie="full", seed=4), given(), {"spec"})
    assert (resumed.tie, resumed.seed, resumed.recipe) == ("full", 4, "quick")


def test_where_and_how_fast_it_runs_may_change():
    typed = {"spec", "device", "workers", "data_dir", "compile", "channels_last", "download"}
    resumed = resumed_config(
        stored(device="cuda", workers=4),
        given(device="cpu", workers=0, data_dir="/data", compile=True, channels_last=False),
        typed,
    )
    assert (resumed.device, resumed.workers, resumed.data_dir) == ("cpu", 0, "/data")
    assert (resumed.compile, resumed.channels_last) == (True, False)
    assert set(RUNTIME) <= typed | {"out"}


def test_values_equal_to_the_runs_agree_however_they_are_written():
    # a bare name is the zoo's; --epochs 15 is what the quick recipe of the run already has
    typed = {"spec", "epochs", "recipe", "lr", "theta_lr", "batch_size", "arch_epochs"}
    resumed_config(
        stored(),
        given(spec="resnet20", epochs=15, recipe="quick", lr=0.05, theta_lr=0.01, batch_size=64),
        typed - {"arch_epochs"},
    )
    resumed_config(stored(epochs=15), given(recipe="quick"), {"spec", "recipe"})


@pytest.mark.parametrize(
    ("run", "asked", "typed", "differences"),
    [
        ({}, {"spec": "zoo:resnet32"}, {"spec"}, "SPEC zoo:resnet32 (the run's: zoo:resnet20)"),
        ({}, {"tie": "full"}, {"tie"}, "--tie full (the run's: cell)"),
        ({}, {"method": "original"}, {"method"}, "--method original (the run's: dnat)"),
        (
            {"arch_update": "joint"},
            {},
            {"arch_update"},
            "--arch-update alternate (the run's: joint)",
        ),
        ({}, {"granularity": "op"}, {"granularity"}, "--granularity op (the run's: branch)"),
        ({}, {"data": "cifar10"}, {"data"}, "--data cifar10 (the run's: digits)"),
        ({}, {"limit": 64}, {"limit"}, "--limit 64 (the run's: default)"),
        ({}, {"deterministic": True}, {"deterministic"}, "--deterministic True (the run's: False)"),
        ({}, {"pretrained": True}, {"pretrained"}, "--pretrained True (the run's: False)"),
        ({}, {"recipe": "paper"}, {"recipe"}, "--recipe paper (the run's: quick)"),
        ({}, {"batch_size": 32}, {"batch_size"}, "--batch-size 32 (the run's: 64)"),
        ({}, {"lr": 0.1}, {"lr"}, "--lr 0.1 (the run's: 0.05)"),
        ({}, {"theta_lr": 0.1}, {"theta_lr"}, "--theta-lr 0.1 (the run's: 0.01)"),
        (
            {},
            {"tie": "full", "seed": 2, "theta_lr": 0.1},
            {"spec", "tie", "seed", "theta_lr"},
            "--tie full (the run's: cell), --seed 2 (the run's: 0), --theta-lr 0.1 (the run's: "
            "0.01)",
        ),
    ],
)
def test_each_contradiction_is_named(run, asked, typed, differences):
    with pytest.raises(ValueError) as error:
        resumed_config(stored(**run), given(**asked), typed)
    assert str(error.value) == ASKED_ANOTHER + differences + HOW_TO


@pytest.mark.parametrize(
    ("asked", "differences"),
    [
        ({"epochs": 30}, "--epochs 30 (the run's: 15)"),
        ({"arch_epochs": 2}, "--arch-epochs 2 (the run's: 6)"),
    ],
)
def test_a_run_cannot_be_extended_and_says_why(asked, differences):
    with pytest.raises(ValueError) as error:
        resumed_config(stored(), given(**asked), set(asked))
    assert str(error.value) == ASKED_ANOTHER + differences + HOW_TO + NO_EXTENSION


def test_a_whole_config_is_compared_whole():
    """A library caller (or `fxdnat repro`) passes a whole config: every field is its word."""
    with pytest.raises(ValueError) as error:
        resumed_config(stored(), given(recipe="quick", seed=1))
    assert str(error.value) == ASKED_ANOTHER + "--seed 1 (the run's: 0)" + HOW_TO
    resumed_config(stored(), given(recipe="quick", device="cpu"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["config"].update(shell="rm -rf ~"),
            "the checkpoint's run config has fields this fxdnat does not know: shell; was it "
            "written by another version of fxdnat?",
        ),
        (
            lambda d: d["config"].update(epochs="15"),
            "the checkpoint's run config has epochs='15'; expected int | None",
        ),
        (
            lambda d: d["config"].update(deterministic=1),
            "the checkpoint's run config has deterministic=1; expected <class 'bool'>",
        ),
        (
            lambda d: d["model"].update(spec="module:os:system"),
            "the checkpoint's run config names zoo:resnet20 but its model is module:os:system; "
            "was it written by fxdnat?",
        ),
        (
            lambda d: d.update(config=[1]),
            "the checkpoint's run config is [1], not a mapping",
        ),
    ],
)
def test_a_stored_config_must_be_one_fxdnat_writes(change, message):
    data = stored()
    change(data)
    with pytest.raises(CheckpointError) as error:
        resumed_config(data, given(), {"spec"})
    assert str(error.value) == message


def test_an_image_folder_and_a_data_folder_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig(spec="zoo:resnet20", out="r", data="imagefolder:pets", data_dir="d")
    assert (config.data, config.data_dir) == (f"imagefolder:{tmp_path}/pets", f"{tmp_path}/d")
    home = RunConfig(spec="zoo:resnet20", out="r", data="imagefolder:~/pets")
    assert home.data == f"imagefolder:{home.data.split(':', 1)[1]}" and "~" not in home.data


def test_changes_are_read_for_the_random_control_only():
    from fxdnat.config import parse_changes

    assert parse_changes("none=2, identity=2") == {"none": 2, "identity": 2}
    config = RunConfig("zoo:resnet20", "out", method="random", changes="none=1,identity=2")
    assert config.changes == "identity=2,none=1"  # canonical: the resume comparison is exact
    assert RunConfig("zoo:resnet20", "out", method="random").changes is None
    with pytest.raises(ValueError, match="cannot read 'skip=1'; expected KIND=COUNT"):
        parse_changes("skip=1")
    with pytest.raises(ValueError, match="none is given twice"):
        parse_changes("none=1,none=2")
    from fxdnat.config import check_method

    with pytest.raises(ValueError, match="--changes is for --method random .* method is dnat"):
        check_method(RunConfig("zoo:resnet20", "out", changes="none=1"))
    assert resolve_recipe(RunConfig("zoo:resnet20", "out", method="original", warmup_epochs=3))


def test_theta_lr_and_reach_are_one_or_the_other_and_finite():
    with pytest.raises(ValueError, match="not both"):
        resolve_recipe(RunConfig("zoo:resnet20", "out", theta_lr=0.01, theta_reach=5.0))
    with pytest.raises(ValueError, match=r"theta_reach \(--theta-reach\) must be"):
        resolve_recipe(RunConfig("zoo:resnet20", "out", theta_reach=1e300))
    with pytest.raises(ValueError, match="--theta-weight-decay"):
        resolve_recipe(RunConfig("zoo:resnet20", "out", theta_weight_decay=float("inf")))


def test_a_shorter_architecture_stage_keeps_a_theta_epoch():
    recipe = resolve_recipe(RunConfig("zoo:resnet20", "out", recipe="quick", arch_epochs=1))
    assert recipe.warmup_epochs == 0
    explicit = RunConfig("zoo:resnet20", "out", recipe="quick", theta_lr=0.3)
    assert resolve_recipe(explicit).theta_reach is None  # an explicit lr is taken as given
    with pytest.raises(ValueError, match="--warmup-epochs must be below --arch-epochs"):
        resolve_recipe(RunConfig("zoo:resnet20", "out", arch_epochs=3, warmup_epochs=3))
