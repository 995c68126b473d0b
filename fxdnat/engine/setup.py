"""Building a run once: its data, recipe and θ schedule, and its network — new, or restored from
the run's checkpoint — as the `DNAT` object that trains it."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from fxdnat import checkpoint as ckpt
from fxdnat import tasks, zoo
from fxdnat.config import RunConfig, parse_budget, parse_changes, resolve_recipe
from fxdnat.cost import CostModel, cost_model
from fxdnat.data import dataset_info, make_loaders
from fxdnat.dnat import DNAT
from fxdnat.engine.runtime import Runtime
from fxdnat.engine.state import RunState, stored_state
from fxdnat.ir import Edge
from fxdnat.passes import BudgetError, discover, fit_budget, gate, random_changes
from fxdnat.reach import Reach
from fxdnat.reach import plan as plan_reach
from fxdnat.specs import parse_spec
from fxdnat.zoo.recipes import Recipe


@dataclass
class Prepared:
    """Everything a run trains with, before any step."""

    recipe: Recipe  # θ's lr already the one the reach asks for
    reach: Reach
    train_loader: DataLoader
    test_loader: DataLoader
    task: tasks.Task  # the network's: its example input, loss and evaluation sums
    model_cfg: dict[str, Any]  # how to rebuild the network: the checkpoint's "model"
    dnat: DNAT  # the network being trained (gated, original or final), its trace and edges
    state: RunState


def prepare(
    config: RunConfig, runtime: Runtime, stored: dict | None, named_spec: str | None
) -> Prepared:
    """The run ``config`` describes; ``stored``: its checkpoint when resuming, whose model is
    rebuilt (its code imported only if ``named_spec``, the spec the caller typed, names it).

    Raises:
        ValueError: unknown data or model, or a random control whose changes the network
            cannot take (before any training).
        fxdnat.checkpoint.CheckpointError: a checkpoint that does not fit its model.
    """
    recipe = resolve_recipe(config)
    train_loader, test_loader, info = make_loaders(
        config.data,
        config.data_dir,
        batch_size=recipe.batch_size,
        cutout=recipe.cutout,
        download=config.download,
        workers=config.workers,
        seed=config.seed,
        distributed=runtime.world > 1,
        pin_memory=runtime.device.type == "cuda",
        limit=config.limit,
    )
    reach = _reach(config, recipe, len(train_loader))
    recipe = dataclasses.replace(recipe, theta_lr=reach.theta_lr)
    if stored is not None:
        restored = ckpt.restore(stored, spec=named_spec)
        dnat = DNAT.from_module(restored.module, traced=restored.traced, edges=restored.edges)
        state = stored_state(stored)
        state.theta_history = list(stored["theta_history"])
        if state.costs is not None and state.costs["names"] != [e.name for e in dnat.edges]:
            raise ckpt.CheckpointError(
                "the checkpoint's cost model is for other edges than its network's; was it "
                "written by fxdnat?"
            )
        counted = set(state.costs["total"]) if state.costs is not None else None
        if (counted is None) != (config.budget is None) or (
            counted is not None and not set(parse_budget(config.budget)) <= counted
        ):
            raise ckpt.CheckpointError(
                "the checkpoint's cost model does not count what its run's budget bounds; was "
                "it written by fxdnat?"
            )
        model_cfg = stored["model"]
        task = tasks.from_model(model_cfg)
    else:
        task, model_cfg, dnat = _new_network(config, recipe, tasks.for_data(info))
        first = {"original": "net", "nat": "search"}  # DNAT and the control: "arch"
        state = RunState(stage=first.get(config.method, "arch"))
        if config.budget is not None:
            state.costs = _costs(config, recipe, task, runtime, dnat).to_dict()
    return Prepared(recipe, reach, train_loader, test_loader, task, model_cfg, dnat, state)


def _reach(config: RunConfig, recipe: Recipe, steps_per_epoch: int) -> Reach:
    """θ's schedule: only DNAT trains θ."""
    if config.method != "dnat":
        return Reach(0, 0, recipe.theta_lr)
    return plan_reach(
        steps_per_epoch,
        recipe.arch_epochs - recipe.fade_epochs,  # θ does not train in the fade
        recipe.warmup_epochs,
        recipe.theta_lr,
        recipe.theta_reach,
    )


def _new_network(
    config: RunConfig, recipe: Recipe, task: tasks.Task
) -> tuple[tasks.Task, dict, DNAT]:
    """The task as the built model resolved it, the checkpoint's model section, the network."""
    kwargs = _model_kwargs(config.spec, recipe)
    torch.manual_seed(config.seed)  # the initial weights
    wanted = {"spec": config.spec, **task.model_fields(), "kwargs": kwargs}
    built, traced = ckpt.build_traced(wanted, pretrained=config.pretrained)
    task = task.resolved(built)
    model_cfg = {
        "spec": built.spec,
        **task.model_fields(),
        "kwargs": kwargs,
        "leaves": sorted(traced.meta["fxdnat"]["leaves"]),
    }
    if config.method == "original":
        return task, model_cfg, DNAT.from_module(traced, traced=traced)
    edges = discover(traced, config.granularity)
    if config.method in ("random", "similarity") and config.budget is None:  # placeable?
        random_decisions(config, edges)
    gated = gate(traced, edges, tie=config.tie)
    return task, model_cfg, DNAT.from_module(gated, traced=traced, edges=edges)


def _costs(
    config: RunConfig, recipe: Recipe, task: tasks.Task, runtime: Runtime, dnat: DNAT
) -> CostModel:
    """The network's cost model for its budget: FLOPs of one example (as the summary counts
    them), parameters, and, when the budget bounds it, latency timed on a batch of the recipe's
    size on the run's device (fxdnat.cost.node_latency). Refuses a budget no network reaches.

    Raises:
        ValueError: no decisions fit the budget; names the smallest reachable cost.
    """
    budget = parse_budget(config.budget or "")
    resources = ("flops", "params", *(["latency"] if "latency" in budget else []))
    traced = dnat.traced.to(runtime.device)
    batch = task.example(recipe.batch_size, runtime.device)
    try:
        costs = cost_model(
            traced,
            dnat.edges,
            task.example(1, runtime.device),
            resources,
            # images timed on noise, as a network sees them; token ids as they are
            latency_inputs=torch.randn_like(batch) if batch.is_floating_point() else batch,
        )
    finally:
        traced.to("cpu")
    _refuse_unreachable(config, dnat.edges, costs, budget)
    return costs


def check_reachable(config: RunConfig) -> None:
    """Refuse ``config``'s budget when no network reaches it, as a run's start does, without
    its data or device: a study checks each model's smallest budget before any run. FLOPs and
    parameters only (latency is timed on the run's device, by the run).

    Raises:
        BudgetError: names the smallest reachable cost.
        ValueError: unknown data or model.
    """
    budget = {r: f for r, f in parse_budget(config.budget or "").items() if r != "latency"}
    if not budget:
        return
    config = dataclasses.replace(config, method="dnat", pretrained=False)  # costs need no weights
    info = dataset_info(config.data, config.data_dir)
    task, _, dnat = _new_network(config, resolve_recipe(config), tasks.for_data(info))
    costs = cost_model(dnat.traced, dnat.edges, task.example(), tuple(budget))
    _refuse_unreachable(config, dnat.edges, costs, budget)


def _refuse_unreachable(
    config: RunConfig, edges: list[Edge], costs: CostModel, budget: dict[str, float]
) -> None:
    try:  # any decisions at all that fit: scores do not matter
        fit_budget(edges, {e.name: dict.fromkeys(e.choices, 0.0) for e in edges}, costs, budget)
    except BudgetError as exc:
        raise BudgetError(f"--budget {config.budget}: {exc}; give a larger budget") from None


def random_decisions(config: RunConfig, edges: list[Edge]) -> dict[str, str]:
    """The random control's changes, placed at random edges by the run's seed.

    Raises:
        ValueError: more changes of a kind than the network has edges for.
    """
    changes = parse_changes(config.changes or "")
    return random_changes(edges, changes, random.Random(config.seed))


def _model_kwargs(spec: str, recipe: Recipe) -> dict:
    """Zoo models with an auxiliary head build it when the recipe weighs it."""
    source, name = parse_spec(spec)
    if (
        source == "zoo"
        and recipe.auxiliary_weight > 0
        and zoo.model_info(name).family in ("darts", "proxylessnas")
    ):
        return {"auxiliary": True}
    return {}
