"""The training engine: both stages, determinism, exact resume, checkpoints, failures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fxdnat import checkpoint as ckpt
from fxdnat.engine import (
    Interrupted,
    Reporter,
    RunConfig,
    Trainer,
    TrainingError,
    load_network,
    transform,
)

# 128 digits, batch 32: 4 steps an epoch; θ moves fast enough to change edges
SMALL = dict(
    recipe="quick",
    limit=128,
    batch_size=32,
    epochs=3,
    arch_epochs=2,
    warmup_epochs=0,
    theta_lr=0.2,
)


def config(tmp_path, name="run", **overrides) -> RunConfig:
    return RunConfig(**{"spec": "zoo:resnet20", "out": str(tmp_path / name), **SMALL, **overrides})


def run(cfg: RunConfig, reporter: Reporter | None = None, resume: bool = False) -> Trainer:
    trainer = Trainer(cfg, reporter or Reporter(), resume=resume)
    trainer.summary = trainer.run()
    return trainer


def tensors(path) -> dict[str, torch.Tensor]:
    data = ckpt.load(path)
    return {"theta_history": torch.stack(data["theta_history"]), **data["model_state"]}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_both_stages_on_digits(tmp_path):
    trainer = run(config(tmp_path))
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["arch", "arch", "net"]
    assert all(0 <= r["test_acc"] <= 1 and math.isfinite(r["train_loss"]) for r in records)
    data = ckpt.load(out / "checkpoint.pt")
    assert data["state"]["stage"] == "done" and data["state"]["epoch"] == 3
    assert len(data["theta_history"]) == 2 and data["theta_history"][0].shape == (4, 3)
    assert set(data["decisions"]) == {e["name"] for e in data["edges"]}
    assert not hasattr(trainer.dnat.module, "arch")  # the network stage trains the clean module
    summary = json.loads((out / "summary.json").read_text())
    assert summary["edges"] == 18 and sum(summary["decisions"].values()) == 18
    assert summary["params_after"] <= summary["params_before"] == 269_722


def test_theta_moves_and_the_network_changes(tmp_path):
    trainer = run(config(tmp_path, epochs=4, arch_epochs=3, theta_lr=0.5))
    assert trainer.summary["changed"], "θ at a high lr should change some edge within 12 steps"
    history = torch.stack(ckpt.load(tmp_path / "run" / "checkpoint.pt")["theta_history"])
    assert not torch.equal(history[0], history[-1])


def test_a_timm_model_trains_through_both_stages(tmp_path):
    trainer = run(config(tmp_path, spec="timm:resnet10t", epochs=2, arch_epochs=1))
    assert trainer.summary["edges"] == 8 and trainer.state.stage == "done"


def test_original_method_trains_the_untouched_model(tmp_path):
    trainer = run(config(tmp_path, method="original", epochs=2))
    data = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert data["edges"] == [] and data["theta"] is None and data["decisions"] is None
    assert trainer.summary["params_after"] == trainer.summary["params_before"]


def test_joint_update(tmp_path):
    trainer = run(config(tmp_path, arch_update="joint", epochs=2, arch_epochs=1))
    assert trainer.state.stage == "done"


def test_same_seed_gives_the_same_theta_decisions_and_accuracy(tmp_path):
    first = run(config(tmp_path, "a", seed=3))
    second = run(config(tmp_path, "b", seed=3))
    assert_same_tensors(
        tensors(tmp_path / "a" / "checkpoint.pt"), tensors(tmp_path / "b" / "checkpoint.pt")
    )
    assert first.state.decisions == second.state.decisions
    assert first.summary["test_acc"] == second.summary["test_acc"]
    other = run(config(tmp_path, "c", seed=4))
    assert not torch.equal(
        tensors(tmp_path / "a" / "checkpoint.pt")["theta_history"],
        tensors(tmp_path / "c" / "checkpoint.pt")["theta_history"],
    )
    del other


class _Killer(Reporter):
    """Simulates a kill -9 at the start of an epoch: nothing is saved from that epoch."""

    def __init__(self, epoch: int) -> None:
        self.at = epoch

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        if epoch == self.at:
            raise SystemExit("killed")


def test_resume_after_a_kill_repeats_the_uninterrupted_run(tmp_path):
    run(config(tmp_path, "whole"))
    with pytest.raises(SystemExit):
        run(config(tmp_path, "killed"), _Killer(epoch=2))  # after the finalize at epoch 2
    assert ckpt.load(tmp_path / "killed" / "checkpoint.pt")["state"]["epoch"] == 2
    run(config(tmp_path, "killed"), resume=True)
    assert_same_tensors(
        tensors(tmp_path / "whole" / "checkpoint.pt"),
        tensors(tmp_path / "killed" / "checkpoint.pt"),
    )
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


class _CtrlC(Reporter):
    """Presses Ctrl-C (sets the stop request) after a step of an epoch."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.trainer = (epoch, step), None

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        if (epoch, step) == self.at:
            self.trainer.stop.requested = True


def test_ctrl_c_saves_mid_epoch_and_resume_continues_exactly(tmp_path):
    run(config(tmp_path, "whole"))
    reporter = _CtrlC(epoch=1, step=2)
    trainer = Trainer(config(tmp_path, "cut"), reporter)
    reporter.trainer = trainer
    with pytest.raises(Interrupted, match="interrupted in epoch 2 after step 2"):
        trainer.run()
    state = ckpt.load(tmp_path / "cut" / "checkpoint.pt")["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    resumed = run(config(tmp_path, "cut"), resume=True)
    assert_same_tensors(
        tensors(tmp_path / "whole" / "checkpoint.pt"), tensors(tmp_path / "cut" / "checkpoint.pt")
    )
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert resumed.state.metrics[1]["train_loss"] == pytest.approx(
        whole[1]["train_loss"], rel=1e-12
    )


class _Poison(Reporter):
    """Sets θ far out of range as an epoch starts: what a huge θ learning rate does."""

    def __init__(self, epoch: int) -> None:
        self.at, self.trainer = epoch, None

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        if epoch == self.at:
            with torch.no_grad():
                self.trainer.dnat.module.arch.theta.fill_(1e30)


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    reporter = _Poison(epoch=1)
    trainer = Trainer(config(tmp_path), reporter)
    reporter.trainer = trainer
    with pytest.raises(TrainingError) as error:
        trainer.run()
    assert str(error.value) == (
        "the loss became nan in epoch 2 (step 1) after θ's update: the architecture weights θ "
        f"diverged; {tmp_path}/run/checkpoint.pt still holds epoch 1; lower θ's learning rate "
        "(--theta-lr, 0.2 now) and start a new run with another --out"
    )
    data = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert data["state"]["epoch"] == 1
    assert all(
        torch.isfinite(t).all() for t in data["model_state"].values() if t.is_floating_point()
    )


def test_a_diverging_joint_update_names_both_learning_rates(tmp_path):
    with pytest.raises(TrainingError) as error:
        run(config(tmp_path, arch_update="joint", lr=1e30))
    assert str(error.value) == (
        "the loss became nan in epoch 1 (step 2) after the joint update of ω and θ; no epoch had "
        "finished, so nothing was saved; lower ω's or θ's learning rate (--lr 1e+30, --theta-lr "
        "0.2 now) and rerun"
    )
    assert not (tmp_path / "run").exists()


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    trainer = run(config(tmp_path))
    path = tmp_path / "run" / "checkpoint.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fxdnat-checkpoint" and raw["versions"]["torch"] == torch.__version__
    network, _ = load_network(path)
    x = torch.randn(4, 3, 32, 32)
    trainer.dnat.module.eval()
    torch.testing.assert_close(network(x), trainer.dnat.module(x), rtol=0, atol=0)
    assert "fxdnat" not in network.code


def test_an_existing_run_needs_resume_and_resume_needs_a_run(tmp_path):
    run(config(tmp_path, epochs=1, arch_epochs=1))
    with pytest.raises(ValueError, match="checkpoint.pt exists; pass --resume to continue"):
        Trainer(config(tmp_path, epochs=1, arch_epochs=1), Reporter())
    with pytest.raises(ValueError, match="--resume: no checkpoint at .*nothing/checkpoint.pt"):
        Trainer(config(tmp_path, "nothing"), Reporter(), resume=True)


def test_resume_removes_what_a_kill_mid_write_left(tmp_path):
    with pytest.raises(SystemExit):
        run(config(tmp_path, "killed"), _Killer(epoch=2))
    out = tmp_path / "killed"
    stale = [out / ".checkpoint.pt.k2j4x9.tmp", out / ".metrics.jsonl.a8c1.tmp"]
    for path in stale:
        path.write_bytes(b"")  # what a kill -9 between mkstemp and the rename leaves
    (out / ".notes.txt.tmp").write_text("not ours")
    run(config(tmp_path, "killed"), resume=True)
    assert not any(path.exists() for path in stale)
    assert (out / ".notes.txt.tmp").exists()


def test_resume_takes_what_the_user_typed_and_refuses_a_contradiction(tmp_path):
    run(config(tmp_path, "whole"))
    with pytest.raises(SystemExit):
        run(config(tmp_path, "killed"), _Killer(epoch=2))
    with pytest.raises(
        ValueError, match=r"holds another run than the one asked for: --seed 1 \(the run's: 0\);"
    ):
        Trainer(config(tmp_path, "killed", seed=1), Reporter(), resume=True)
    # untyped fields keep the run's values: `given` names what the user set
    untyped = config(tmp_path, "killed", seed=1, tie="full", epochs=9, device="cpu")
    resumed = Trainer(untyped, Reporter(), resume=True, given={"spec", "device"})
    assert (resumed.config.seed, resumed.config.tie, resumed.config.device) == (0, "cell", "cpu")
    resumed.run()
    assert_same_tensors(
        tensors(tmp_path / "whole" / "checkpoint.pt"),
        tensors(tmp_path / "killed" / "checkpoint.pt"),
    )


class _Events(Reporter):
    def __init__(self) -> None:
        self.events = []

    def event(self, name: str, data: dict) -> None:
        self.events.append((name, data))


def test_resuming_a_finished_run_returns_its_summary_and_writes_nothing(tmp_path):
    first = run(config(tmp_path, epochs=1, arch_epochs=1)).summary
    out = tmp_path / "run"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    reporter = _Events()
    again = transform(config(tmp_path, epochs=1, arch_epochs=1), reporter, resume=True)
    assert json.loads(json.dumps(first)) == again
    assert reporter.events == [("finished", {"out": str(out), "summary": again})]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_run_killed_after_its_last_checkpoint_is_summarised_on_resume(tmp_path):
    run(config(tmp_path, epochs=1, arch_epochs=1))
    (tmp_path / "run" / "summary.json").unlink()  # killed between the last save and the summary
    summary = transform(config(tmp_path, epochs=1, arch_epochs=1), resume=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary


def test_cuda_asked_but_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda was asked for but CUDA is not available"):
        Trainer(config(tmp_path, device="cuda"), Reporter())


def test_bad_checkpoints_are_refused_without_running_code(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ckpt.CheckpointError, match="garbage.pt is not a readable fxdnat checkpoint"
    ):
        ckpt.load(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="foreign.pt is not an fxdnat checkpoint"):
        ckpt.load(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "fxdnat-checkpoint", "x": Evil()}, evil)
    with pytest.raises(
        ckpt.CheckpointError, match="evil.pt refers to the Python object print; a checkpoint"
    ):
        ckpt.load(evil)


def test_saves_are_atomic(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c.pt", {"a": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save(path, {"a": 2})
    assert ckpt.load(path)["a"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_text_files_are_replaced_atomically_too(tmp_path):
    from fxdnat._files import atomic_file

    path = tmp_path / "summary.json"
    with atomic_file(path, "w") as f:
        f.write("old")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


class Heard(Reporter):
    """Keeps what the engine reports."""

    def __init__(self) -> None:
        self.info: dict = {}
        self.events: list[tuple[str, dict]] = []

    def start(self, info: dict) -> None:
        self.info = info

    def event(self, name: str, data: dict) -> None:
        self.events.append((name, data))


def test_finalize_keeps_the_trained_network_and_the_log_says_so(tmp_path):
    # θ moves (lr 0.05 over 8 steps) but no edge changes: finalize must not change accuracy
    trainer = run(config(tmp_path, theta_lr=0.05))
    assert not trainer.summary["changed"]
    theta = ckpt.load(tmp_path / "run" / "checkpoint.pt")["theta_history"][-1]
    assert not torch.equal(theta[:, 2], torch.ones(4))  # θ_same is no longer 1
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    done = records[1]["finalize"]
    assert done["scale"] == "keep" and done["acc_before"] == records[1]["test_acc"]
    assert abs(done["acc_after"] - done["acc_before"]) <= 1 / 128  # one image at most
    assert trainer.summary["finalize"] == done
    margins = trainer.summary["margins"]
    assert set(margins) == {e.name for e in trainer.dnat.edges} and min(margins.values()) > 0
    assert trainer.summary["reach"]["theta_steps"] == 8
    assert trainer.summary["reach"]["lr_T"] == pytest.approx(0.4)


def test_warm_up_trains_omega_before_theta(tmp_path):
    trainer = run(config(tmp_path, epochs=3, arch_epochs=3, warmup_epochs=2))
    history = ckpt.load(tmp_path / "run" / "checkpoint.pt")["theta_history"]
    assert torch.equal(history[0], history[1]) and not torch.equal(history[1], history[2])
    assert torch.equal(history[0][:, 1:], torch.tensor([[0.0, 1.0]] * 4))  # θ as it started
    assert trainer.summary["reach"]["warmup_steps"] == 8
    assert trainer.summary["reach"]["theta_steps"] == 4


def test_theta_reach_sets_thetas_lr_and_warns_when_no_edge_can_change(tmp_path):
    heard = Heard()
    cfg = config(tmp_path, theta_lr=None, theta_reach=0.5, arch_epochs=2)
    trainer = Trainer(cfg, heard)
    trainer.run()
    assert trainer.recipe.theta_lr == pytest.approx(0.5 / 8)  # 2 epochs of 4 steps
    assert heard.info["reach"]["lr_T"] == pytest.approx(0.5)
    assert any("you will get the original network" in w for w in heard.info["warnings"])
    noisy = Trainer(config(tmp_path, "noisy", theta_lr=0.4), Heard())  # lr·√T = 1.13
    assert [w for w in noisy.reach.warnings() if "seeds will differ" in w]
    assert not [w for w in noisy.reach.warnings() if "original network" in w]  # lr·T = 3.2
    fine = Trainer(config(tmp_path, "fine", theta_lr=0.2), Heard())  # lr·T 1.6, lr·√T 0.57
    assert fine.reach.warnings() == []


def test_random_control_changes_the_given_number_of_edges(tmp_path):
    trainer = run(config(tmp_path, method="random", changes="identity=2,none=1"))
    changed = trainer.summary["changed"]
    assert sorted(changed.values()) == ["identity", "identity", "none"]
    data = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.equal(t, data["theta_history"][0]) for t in data["theta_history"])
    assert data["finalize_scale"] == "one" and trainer.summary["margins"] == {}
    again = run(config(tmp_path, "again", method="random", changes="identity=2,none=1"))
    assert again.summary["changed"] == changed  # placed by the seed
    network, _ = load_network(tmp_path / "run" / "checkpoint.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(network(x), trainer.dnat.module.eval()(x), atol=1e-5)


def test_bn_recalibration_after_finalize(tmp_path, monkeypatch):
    import dataclasses

    from fxdnat.engine import setup

    resolve = setup.resolve_recipe
    monkeypatch.setattr(
        setup, "resolve_recipe", lambda c: dataclasses.replace(resolve(c), bn_recalibration=2)
    )
    trainer = run(config(tmp_path))
    done = trainer.summary["finalize"]
    assert done["acc_after_bn"] is not None and done["bn_seconds"] > 0


def test_changes_the_network_cannot_take_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="1000 edges should make the change 'identity' but only 7"):
        Trainer(config(tmp_path, method="random", changes="identity=1000"), Reporter())
    assert not (tmp_path / "run").exists()
