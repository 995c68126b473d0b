"""A run's files and what they hold: the state a checkpoint keeps, the metrics log, the summary.

``OUT/checkpoint.pt`` (written atomically after every epoch, and at an interrupt), the log
``OUT/metrics.jsonl`` (one line per finished epoch), ``OUT/summary.json`` (written once the run
is done: `fxdnat repro` skips a run that has one) and the cell diagram ``OUT/cells.svg``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import fxdnat
from fxdnat import checkpoint as ckpt
from fxdnat._files import CHECKPOINT, METRICS, SUMMARY
from fxdnat.branches import removed_by_kind
from fxdnat.config import RunConfig, format_changes, parse_budget
from fxdnat.cost import CostModel, count_flops, count_params
from fxdnat.dnat import DNAT
from fxdnat.ir import CHOICES, IDENTITY, SAME, Scale
from fxdnat.nat import dead_joins
from fxdnat.passes.decide import count_changes
from fxdnat.tasks import Task
from fxdnat.zoo.recipes import Recipe


@dataclass
class RunState:
    """What changes during a run (and what a checkpoint holds besides the config)."""

    stage: str = "arch"  # "arch" (ω and θ), "net" (ω of the final module), "done"; NAT: "search"
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch (after an interrupt)
    decisions: dict[str, str] | None = None
    theta_history: list[torch.Tensor] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)  # running sums of a cut epoch
    rng: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    margins: dict[str, float] | None = None  # θ's top-two gap per edge at decide
    flipped: list[str] | None = None  # edges whose decision changed in the stage's last epochs
    finalize: dict[str, Any] | None = None  # scale, test accuracy just before and after
    fade: dict[str, Any] | None = None  # the fade before finalize: decisions, test acc / loss
    search_epoch: int = 0  # NAT: search epochs completed
    baseline: float = 0.0  # NAT: REINFORCE's moving-average baseline
    derive: dict[str, Any] | None = None  # NAT: the derived decisions, every sample's score
    costs: dict[str, Any] | None = None  # a budgeted run: its CostModel (latency measured once)
    multipliers: dict[str, float] | None = None  # a budgeted DNAT run: the cost term's λ

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's "state" entry (θ's history is stored beside it)."""
        state = dataclasses.asdict(self)
        state.pop("theta_history")
        return state


class RunFinished(Exception):
    """``--resume`` of a run that has finished: there is nothing to continue."""

    def __init__(self, out: Path, summary: dict) -> None:
        super().__init__(f"the run in {out} has finished")
        self.out, self.summary = out, summary


def stored(out: Path, resume: bool) -> dict | None:
    """The checkpoint to resume, None for a new run.

    Raises:
        ValueError: ``resume`` without a checkpoint, or a checkpoint without ``resume``.
        fxdnat.checkpoint.CheckpointError: a file that is not an fxdnat checkpoint.
    """
    path = out / CHECKPOINT
    if resume:
        if not path.exists():
            raise ValueError(f"--resume: no checkpoint at {path}; start the run without it")
        return ckpt.load(path)
    if path.exists():
        raise ValueError(
            f"{path} exists; pass --resume to continue that run or choose another --out"
        )
    return None


def stored_state(stored: dict) -> RunState:
    state = stored.get("state")
    names = {f.name for f in dataclasses.fields(RunState)}
    if type(state) is not dict or not set(state) <= names or state.get("stage") not in ckpt.STAGES:
        raise ckpt.CheckpointError(
            "the checkpoint's run state is not one this fxdnat writes; was it written by fxdnat?"
        )
    if not _fade(state.get("fade")):
        raise ckpt.CheckpointError(
            "the checkpoint's fade is not the decisions and accuracy fxdnat writes; was it "
            "written by fxdnat?"
        )
    if not (_numbers(state.get("multipliers")) and _cost_model(state.get("costs"))):
        raise ckpt.CheckpointError(
            "the checkpoint's cost model or budget multipliers are not plain numbers by name; "
            "was it written by fxdnat?"
        )
    return RunState(**state)


def _numbers(value: Any) -> bool:
    """None, or a dict of str → int/float."""
    return value is None or (
        type(value) is dict
        and all(type(k) is str and type(v) in (int, float) for k, v in value.items())
    )


def _fade(value: Any) -> bool:
    """None, or the trainer's fade record: edge → choice, and the test accuracy and loss at
    decide (a checkpoint written before the loss was kept has the accuracy only)."""
    if value is None:
        return True
    keys = {"decisions", "acc_decided"}
    if type(value) is not dict or not keys <= set(value) <= keys | {"loss_decided"}:
        return False
    decisions, numbers = value["decisions"], (value["acc_decided"], value.get("loss_decided"))
    return (
        type(decisions) is dict
        and all(type(k) is str and v in CHOICES for k, v in decisions.items())
        and all(n is None or type(n) is float for n in numbers)
    )


def _cost_model(value: Any) -> bool:
    """None, or a CostModel's plain form (``CostModel.to_dict``)."""
    if value is None:
        return True
    if type(value) is not dict or set(value) != {"total", "parts", "names"}:
        return False
    if value["total"] is None:
        return False
    names = value["names"]
    if type(names) is not list or not all(type(n) is str for n in names):
        return False
    parts, resources = value["parts"], set(value["total"])
    return (
        _numbers(value["total"])
        and type(parts) is list
        and all(
            type(p) is dict
            and set(p) == {"edges", "cost"}
            and type(p["edges"]) is list
            and all(type(e) is str for e in p["edges"])
            and p["cost"] is not None
            and _numbers(p["cost"])
            and set(p["cost"]) == resources
            for p in parts
        )
    )


def raise_if_finished(out: Path, stored: dict) -> None:
    """A run is finished once its summary is written after the last checkpoint; one killed in
    between is resumed, which writes the summary."""
    if stored_state(stored).stage != "done":
        return
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError):
        return
    raise RunFinished(out, summary)


def append_metrics(out: Path, record: dict) -> None:
    """One finished epoch's line of the metrics log; the folder appears with the first."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / METRICS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def checkpoint_data(
    config: RunConfig,
    recipe: Recipe,
    model_cfg: dict[str, Any],
    dnat: DNAT,
    state: RunState,
    opt_w: torch.optim.Optimizer,
    opt_theta: torch.optim.Optimizer | None,
    *,
    default_scale: Scale,
) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds (fxdnat/checkpoint.py reads it back): how to rebuild the
    network, its weights, both optimizers, the run's state, config and recipe. Tensors and
    plain values only. ``default_scale``: finalize's scale while no finalize has run yet."""
    network = network_data(
        model_cfg,
        dnat,
        granularity=config.granularity,
        tie=config.tie,
        decisions=state.decisions,
        scale=(state.finalize or {}).get("scale", default_scale),
        theta=dnat.theta,
        theta_history=state.theta_history,
    )
    return {
        "method": config.method,
        **network,
        "optimizer_w": opt_w.state_dict(),
        "optimizer_theta": opt_theta.state_dict() if opt_theta else None,
        "state": state.to_checkpoint(),
        "config": dataclasses.asdict(config),
        "recipe": dataclasses.asdict(recipe),
        "seed": config.seed,
        "versions": _versions(),
    }


def network_data(
    model_cfg: dict[str, Any],
    dnat: DNAT,
    *,
    granularity: str,
    tie: str,
    decisions: dict[str, str] | None,
    scale: Scale,
    theta: torch.Tensor | None,
    theta_history: list[torch.Tensor],
) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the network (fxdnat/checkpoint.py replays it):
    the model section, the edges and how they were gated, the decisions, finalize's scale, θ
    (None: the last of its history, as finalize read it) and its history, and the weights."""
    return {
        "model": model_cfg,
        "granularity": granularity,
        "tie": tie,
        "edges": [e.to_dict() for e in dnat.edges],
        "decisions": decisions,
        "finalize_scale": scale,
        "theta": theta.detach().cpu() if theta is not None else None,
        "theta_history": theta_history,
        "choices": list(CHOICES),
        "model_state": {k: v.detach().cpu() for k, v in dnat.module.state_dict().items()},
    }


def summary(
    config: RunConfig, model_cfg: dict[str, Any], dnat: DNAT, state: RunState, task: Task
) -> dict[str, Any]:
    """The run's result as ``summary.json`` has it: the task's scores (accuracy; a language
    model's next-token accuracy, validation loss per token and perplexity), size before and
    after (parameters; FLOPs of one example of the task, fxdnat.cost), decisions, branches
    removed by what they compute, and how sure the decisions were. Moves the network to the
    CPU to count its FLOPs."""
    example = task.example()
    traced, final = dnat.traced, dnat.module.to("cpu")
    last = state.metrics[-1] if state.metrics else {}
    decisions = state.decisions or {}
    flops = {"before": count_flops(traced, example), "after": count_flops(final, example)}
    params = {"before": count_params(traced), "after": count_params(final)}
    return {
        "spec": model_cfg["spec"],
        "method": config.method,
        "data": config.data,
        "task": task.name,
        "epochs": state.epoch,
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        **task.scores(last.get("test_loss")),
        **_finalize_losses(state.finalize),
        "train_acc": last.get("train_acc"),
        "params_before": params["before"],
        "params_after": params["after"],
        "flops_before": flops["before"],
        "flops_after": flops["after"],
        "budget": _budget(config, state, decisions, flops, params),
        "edges": len(dnat.edges),
        "decisions": dict(Counter(decisions.values())),
        "changed": {k: v for k, v in decisions.items() if v != SAME},
        "removed_by_kind": removed_by_kind(traced, dnat.edges, decisions),
        "identity_by_kind": removed_by_kind(traced, dnat.edges, decisions, IDENTITY),
        "tie": config.tie,
        # as `--changes` reads them: what a random control of this run places
        "changes": format_changes(count_changes(dnat.edges, decisions)),
        "margins": state.margins or {},
        "flipped": state.flipped or [],
        "finalize": state.finalize,
        # NAT emits joins left without an operand; DNAT's decide never does
        "dead_joins": dead_joins(dnat.edges, decisions),
        "nat": None if state.derive is None else _derived(state.derive),
    }


def _finalize_losses(record: dict[str, Any] | None) -> dict[str, float | None]:
    """The test loss just before and just after finalize, where the finalize record has the
    accuracies there; nothing otherwise (a run without an architecture stage)."""
    if not record or "acc_before" not in record:
        return {}
    return {"loss_before": record.get("loss_before"), "loss_after": record.get("loss_after")}


def _budget(
    config: RunConfig,
    state: RunState,
    decisions: dict[str, str],
    flops: dict[str, int],
    params: dict[str, int],
) -> dict[str, Any] | None:
    """A budgeted run's target and what the emitted network costs, as fractions of the
    original: FLOPs and parameters counted on the final module, latency in the run's cost model
    (fxdnat.cost.node_latency; the budget bounds that model)."""
    if config.budget is None:
        return None
    emitted = {r: n["after"] / n["before"] for r, n in (("flops", flops), ("params", params))}
    if state.costs is not None and "latency" in state.costs["total"]:
        emitted["latency"] = CostModel.from_dict(state.costs).fraction(decisions)["latency"]
    return {"target": parse_budget(config.budget), "emitted": emitted}


def _derived(derive: dict[str, Any]) -> dict[str, Any]:
    """NAT's derive as the summary has it: every sample's score on the policy split and dead
    joins, the one kept, the policy's log-probability of it and its final distribution."""
    return {k: v for k, v in derive.items() if k != "decisions"}


def _versions() -> dict[str, str]:
    versions = {"fxdnat": fxdnat.__version__, "torch": str(torch.__version__)}
    try:
        import timm  # lazy: only to record its version, and a model may not need it
    except ImportError:
        return versions
    versions["timm"] = str(timm.__version__)
    return versions
