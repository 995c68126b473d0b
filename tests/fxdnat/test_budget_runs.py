"""Runs under a cost budget: DNAT with its cost term, contribution pruning and the random control
emit a network within the budget; an unreachable budget is refused before anything is written;
a budgeted run resumes exactly; a checkpoint's cost model is checked like every other field."""

from __future__ import annotations

import json

import pytest
import torch

from fxdnat import checkpoint as ckpt
from fxdnat import passes
from fxdnat.config import RunConfig, check_method, parse_budget, resolve_recipe
from fxdnat.engine import Interrupted, Reporter, Trainer, stage, trainer
from fxdnat.ir import CHOICES
from fxdnat.passes import BudgetError

# 128 digits, batch 32: 4 steps an epoch; one θ epoch after one ω epoch, then one network epoch
SMALL = dict(
    recipe="quick", limit=128, batch_size=32, epochs=3, arch_epochs=2, warmup_epochs=1, seed=3
)


def config(tmp_path, name="run", **overrides) -> RunConfig:
    fields = {"spec": "zoo:resnet20", "out": str(tmp_path / name), **SMALL, **overrides}
    return RunConfig(**fields)


def run(cfg: RunConfig, reporter: Reporter | None = None, resume: bool = False) -> dict:
    return Trainer(cfg, reporter or Reporter(), resume=resume).run()


@pytest.mark.parametrize("method", ["dnat", "prune", "similarity", "random"])
def test_each_method_emits_a_network_within_the_budget(tmp_path, method):
    summary = run(config(tmp_path, method=method, budget="flops=0.6,params=0.7"))
    budget = summary["budget"]
    assert budget["target"] == {"flops": 0.6, "params": 0.7}
    assert budget["emitted"]["flops"] <= 0.6
    assert budget["emitted"]["params"] <= 0.7
    assert budget["emitted"]["flops"] == summary["flops_after"] / summary["flops_before"]
    assert summary["changed"]  # the budget forced changes
    assert summary["dead_joins"] == []
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["finalize"]["cost"]["flops"] <= 0.6
    if method == "dnat":  # the cost term trained θ in the θ epoch and the log says how
        term = lines[1]["budget"]
        assert set(term) == {"expected", "multipliers"}
        assert term["expected"]["flops"] < 1.0
    else:
        assert lines[1]["budget"] is None and lines[1]["finalize"]["scale"] == "one"


def test_similarity_at_a_dnat_runs_changes_removes_the_most_similar_branches(tmp_path, monkeypatch):
    measured, branches = {}, []

    def similarities(gated, batches, device=None):  # the real measure, kept to compare with
        measured.update(real(gated, batches, device))
        branches.extend(e.name for e in gated.arch.edges if e.kind == "branch")
        return measured

    real = stage.similarities
    monkeypatch.setattr(stage, "similarities", similarities)
    summary = run(config(tmp_path, method="similarity", changes="none=2"))
    assert summary["changes"] == "none=2" and summary["dead_joins"] == []
    removed = set(summary["changed"])
    assert set(summary["changed"].values()) == {"none"}
    kept = [measured[n] for n in branches if n not in removed]
    assert min(measured[n] for n in removed) >= max(kept)


def test_an_unreachable_budget_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(BudgetError, match=r"--budget flops=0.01: .* smallest reachable cost is"):
        Trainer(config(tmp_path, budget="flops=0.01"), Reporter())
    assert not (tmp_path / "run").exists()


def test_a_budget_belongs_to_the_methods_that_decide():
    with pytest.raises(
        ValueError, match="--budget is for --method dnat, random, prune or similarity"
    ):
        check_method(RunConfig(spec="zoo:resnet20", out="x", method="original", budget="flops=1"))
    with pytest.raises(ValueError, match="give one, e.g. --budget flops=0.6"):
        check_method(RunConfig(spec="zoo:resnet20", out="x", method="prune"))
    with pytest.raises(ValueError, match="give --budget flops=0.6 or --changes none=4"):
        check_method(RunConfig(spec="zoo:resnet20", out="x", method="similarity"))
    with pytest.raises(ValueError, match="--changes is for --method random or similarity"):
        check_method(RunConfig(spec="zoo:resnet20", out="x", method="dnat", changes="none=1"))
    with pytest.raises(ValueError, match="not both"):
        check_method(
            RunConfig(
                spec="zoo:resnet20", out="x", method="random", changes="none=1", budget="flops=0.5"
            )
        )
    for text in ("", ",", " , "):
        with pytest.raises(ValueError, match="--budget is empty"):
            parse_budget(text)
    for text in ("flops", "flops=0", "flops=1.5", "energy=0.5", "flops=abc", "flops=nan"):
        with pytest.raises(ValueError, match="--budget: cannot read"):
            parse_budget(text)
    with pytest.raises(ValueError, match="given twice"):
        parse_budget("flops=0.5,flops=0.6")
    assert RunConfig(spec="zoo:resnet20", out="x", budget=" params=0.50 , flops=.7").budget == (
        "flops=0.7,params=0.5"
    )


class _CtrlC(Reporter):
    """Presses Ctrl-C after a step (by default, the second of the θ epoch)."""

    def __init__(self, at: tuple[int, int] = (1, 2)) -> None:
        self.trainer, self.at = None, at

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        if (epoch, step) == self.at:
            self.trainer.stop.requested = True


def test_a_budgeted_run_resumes_exactly(tmp_path):
    run(config(tmp_path, "whole", budget="flops=0.6"))
    reporter = _CtrlC()
    reporter.trainer = Trainer(config(tmp_path, "cut", budget="flops=0.6"), reporter)
    with pytest.raises(Interrupted):
        reporter.trainer.run()
    cut = ckpt.load(tmp_path / "cut" / "checkpoint.pt")
    assert cut["state"]["multipliers"] is not None and cut["state"]["costs"] is not None
    run(config(tmp_path, "cut", budget="flops=0.6"), resume=True)
    whole, resumed = (ckpt.load(tmp_path / n / "checkpoint.pt") for n in ("whole", "cut"))
    assert whole["decisions"] == resumed["decisions"]
    assert whole["state"]["multipliers"] == resumed["state"]["multipliers"]
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


# one ω epoch, one θ epoch, one epoch of fade, finalize, one network epoch
FADED = dict(
    epochs=4, arch_epochs=3, warmup_epochs=1, fade_epochs=1, budget="flops=0.6", tie="full"
)


def _lines(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dnat", "prune", "random"])
def test_the_fade_takes_what_finalize_drops_to_zero_so_finalize_changes_nothing(
    tmp_path, monkeypatch, method
):
    outputs = []

    def finalize(gated, decisions, **kwargs):  # what the gated and the final network compute
        final = passes.finalize(gated, decisions, **kwargs)
        x = torch.randn(4, 3, 8, 8)
        with torch.no_grad():
            outputs.append((gated.eval()(x), final.eval()(x)))
        gated.train(), final.train()
        return final

    monkeypatch.setattr(trainer, "finalize", finalize)
    summary = run(config(tmp_path, method=method, **FADED))
    lines = _lines(tmp_path / "run")
    fade, done = lines[1]["fade"], lines[2]["finalize"]
    assert fade["epochs"] == 1 and fade["changed"] == summary["changed"]
    assert done["acc_before"] == fade["acc_decided"] == lines[1]["test_acc"]
    assert done["acc_faded"] == lines[2]["test_acc"]
    data = ckpt.load(tmp_path / "run" / "checkpoint.pt")
    decided, faded = data["theta_history"][1:3]  # θ at the fade's start and at its end
    arch = ckpt.restore(data).arch
    kept = torch.zeros_like(faded, dtype=torch.bool)
    for name, choice in data["decisions"].items():
        kept[arch.group_of[name], CHOICES.index(choice)] = True
    assert torch.all(faded[~kept] == 0)  # what finalize drops weighs nothing
    if method == "dnat":  # θ did not train in the fade; finalize keeps θ's coefficients
        assert torch.equal(faded[kept], decided[kept])
    else:  # θ never trained; finalize's coefficients are 1
        assert torch.all(faded[kept] == 1)
    ((gated, final),) = outputs
    torch.testing.assert_close(final, gated)  # finalize changed nothing


def test_a_budget_fades_for_an_eighth_of_the_stage_unless_told():
    quick = dict(spec="zoo:resnet20", out="x", recipe="quick", data="digits-hard")  # 80 of 120
    assert resolve_recipe(RunConfig(**quick)).fade_epochs == 0
    assert resolve_recipe(RunConfig(**quick, budget="flops=0.6")).fade_epochs == 10
    assert resolve_recipe(RunConfig(**quick, budget="flops=0.6", fade_epochs=0)).fade_epochs == 0
    assert resolve_recipe(RunConfig(**quick, fade_epochs=3)).fade_epochs == 3
    short = RunConfig(**quick, budget="flops=0.6", arch_epochs=2, epochs=3)
    assert resolve_recipe(short).fade_epochs == 0  # θ keeps its one epoch
    with pytest.raises(ValueError, match="θ needs at least one epoch before the fade"):
        resolve_recipe(RunConfig(**quick, fade_epochs=70))
    with pytest.raises(ValueError, match="--method original has no such stage"):
        check_method(RunConfig(**quick, method="original", fade_epochs=2))


def test_a_run_cut_inside_the_fade_resumes_exactly(tmp_path):
    run(config(tmp_path, "whole", **FADED))
    reporter = _CtrlC(at=(2, 2))
    reporter.trainer = Trainer(config(tmp_path, "cut", **FADED), reporter)
    with pytest.raises(Interrupted):
        reporter.trainer.run()
    cut = ckpt.load(tmp_path / "cut" / "checkpoint.pt")
    assert cut["state"]["fade"] is not None
    _, fading, _ = ckpt.restore(cut).final()  # render / export in the fade: its decisions
    run(config(tmp_path, "cut", **FADED), resume=True)
    whole, resumed = (ckpt.load(tmp_path / n / "checkpoint.pt") for n in ("whole", "cut"))
    assert whole["decisions"] == resumed["decisions"] == fading
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


@pytest.mark.parametrize(
    "fade",
    [
        {"decisions": {"no such edge": "same"}, "acc_decided": 0.5},
        {"decisions": {"layer1.0:0": "everything"}, "acc_decided": 0.5},
        {"decisions": {}, "acc_decided": "high"},
        ["same"],
    ],
)
def test_a_checkpoint_with_a_bad_fade_is_refused(tmp_path, fade):
    reporter = _CtrlC(at=(2, 2))
    reporter.trainer = Trainer(config(tmp_path, **FADED), reporter)
    with pytest.raises(Interrupted):
        reporter.trainer.run()
    path = tmp_path / "run" / "checkpoint.pt"
    data = ckpt.load(path)
    data["state"]["fade"] = fade
    ckpt.save(path, data)
    with pytest.raises(ckpt.CheckpointError, match="fade"):
        Trainer(config(tmp_path, **FADED), Reporter(), resume=True)


@pytest.mark.parametrize(
    "costs",
    [
        {"total": {"flops": "many"}, "parts": []},
        {"total": {"flops": 1.0}, "parts": [{"edges": ["layer1.0:0"], "cost": {"params": 1.0}}]},
        {"total": {"flops": 1.0}, "parts": [{"edges": ["no such edge"], "cost": {"flops": 1.0}}]},
        {"total": {"flops": 1.0}},
    ],
)
def test_a_checkpoint_with_a_bad_cost_model_is_refused(tmp_path, costs):
    trainer = Trainer(
        config(tmp_path, budget="flops=0.6", epochs=1, arch_epochs=1, warmup_epochs=0), Reporter()
    )
    trainer.run()
    path = tmp_path / "run" / "checkpoint.pt"
    data = ckpt.load(path)
    data["state"]["costs"] = costs
    data["state"]["stage"] = "arch"
    ckpt.save(path, data)
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="cost model"):
        Trainer(
            config(tmp_path, budget="flops=0.6", epochs=1, arch_epochs=1, warmup_epochs=0),
            Reporter(),
            resume=True,
        )


def test_a_latency_budget_is_met_in_the_measured_model(tmp_path):
    summary = run(config(tmp_path, epochs=2, arch_epochs=1, warmup_epochs=0, budget="latency=0.7"))
    emitted = summary["budget"]["emitted"]
    assert set(emitted) == {"flops", "params", "latency"}
    assert emitted["latency"] <= 0.7
    costs = ckpt.load(tmp_path / "run" / "checkpoint.pt")["state"]["costs"]
    assert costs["total"]["latency"] > 0  # seconds, timed once on the run's device
