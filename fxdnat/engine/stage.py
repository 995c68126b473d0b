"""The boundary between DNAT's two stages: decide each edge, finalize, and carry what was trained.

DNAT's decisions are θ's argmax (with θ's margins and the edges that flipped late kept for the
report), under a cost budget the best that fit; the random control's are drawn
(fxdnat.engine.setup.random_decisions; at a budget :func:`random_within`); contribution pruning
and similarity removal remove the branches a measure on training data ranks last, within the
budget or at a DNAT run's number of changes (:func:`measured_decisions`). The ω
optimiser goes on with the weights that remain and their momentum (:func:`retarget`); BN
statistics can be re-estimated (``Recipe.bn_recalibration``).

With ``Recipe.fade_epochs`` the decisions are taken that many epochs before the stage's end;
θ stops training and moves linearly, over those epochs while ω trains, to what finalize will
read: the entries it drops at 0, those it keeps at their value or 1 (:func:`fade_target`,
:func:`fade_factor`); the network ω trains is then already the one finalize emits, and
finalize changes nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from fxdnat.arch import Architecture
from fxdnat.config import RunConfig
from fxdnat.contribution import contributions, similarities
from fxdnat.cost import CostModel
from fxdnat.engine.runtime import Runtime
from fxdnat.engine.state import RunState
from fxdnat.ir import CHOICES, IDENTITY, NONE, SAME, Edge, Scale
from fxdnat.passes import decide, fit_budget, margins, ranked_changes
from fxdnat.zoo.recipes import Recipe


def scale(config: RunConfig, recipe: Recipe) -> Scale:
    """finalize's scale: the recipe's, but 1 for the random control, contribution pruning and
    NAT, whose θ never trained (θ is one-hot on an architecture)."""
    return (
        "one"
        if config.method in ("random", "nat", "prune", "similarity")
        else recipe.finalize_scale
    )


CONTRIBUTION_BATCHES = 10
"""Training batches contribution pruning measures its ratios on (fxdnat/contribution.py)."""


def dnat_decisions(
    gated: fx.GraphModule,
    searched_epochs: int,
    state: RunState,
    budget: Mapping[str, float] | None = None,
    costs: CostModel | None = None,
) -> dict[str, str]:
    """θ's argmax, never a dead join (under a budget: the decisions that fit with the most θ);
    θ's margins and the edges whose decision differed at the end of any of the last quarter
    of θ's ``searched_epochs`` (at least the last two; ``state.theta_history`` has one θ per
    epoch) go into ``state``: decisions still moving when the stage ended."""
    decisions = decide(gated, budget=budget, costs=costs)
    state.margins = margins(gated)
    late = state.theta_history[-max(2, searched_epochs // 4) :]
    state.flipped = sorted(
        {
            name
            for theta in late
            for name, choice in decide(gated, theta, budget=budget, costs=costs).items()
            if choice != decisions[name]
        }
    )
    return decisions


def measured_decisions(
    method: str,
    gated: fx.GraphModule,
    loader: DataLoader,
    runtime: Runtime,
    *,
    budget: Mapping[str, float] | None = None,
    costs: CostModel | None = None,
    changes: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """One-shot removal by a measure of each edge on :data:`CONTRIBUTION_BATCHES` training
    batches (fxdnat/contribution.py). ``prune``: an edge's worth is its contribution
    ‖op(x)‖ / ‖join‖; ``similarity``: its Block Influence, 1 − cos(x, join) (ShortGPT). Within
    ``budget`` the edges that keep the most summed worth and fit it stay (a removed branch
    becomes "none", its join keeps the rest; an op edge the identity); at ``changes`` (a DNAT
    run's, "none=3") the edges of least worth make them (`fxdnat.passes.ranked_changes`)."""
    batches = (batch for _, batch in zip(range(CONTRIBUTION_BATCHES), loader, strict=False))
    if method == "prune":
        worth = contributions(gated, batches, runtime.device)
    else:
        worth = {k: 1.0 - v for k, v in similarities(gated, batches, runtime.device).items()}
    edges = gated.arch.edges
    if budget is None:
        return ranked_changes(edges, changes or {}, {k: -v for k, v in worth.items()})
    cheap = {e.name: {NONE: 0.0, IDENTITY: -0.5 if e.kind != "op" else 0.0} for e in edges}
    scores = {e.name: {c: cheap[e.name].get(c, worth[e.name]) for c in e.choices} for e in edges}
    return fit_budget(edges, scores, costs, budget)


def random_within(
    edges: Sequence[Edge], budget: Mapping[str, float], costs: CostModel, seed: int
) -> dict[str, str]:
    """The random control at a budget: edges keep "same" in a random order of preference while
    the network fits, and each other edge takes one of its other choices at random (the knapsack
    with random scores, "same" always preferred where it fits, so the network ends as close
    under the budget as a DNAT run's)."""
    rng = random.Random(seed)
    scores = {
        e.name: {c: (1.0 if c == SAME else 0.0) + rng.random() for c in e.choices} for e in edges
    }
    return fit_budget(edges, scores, costs, budget)


def fade_target(arch: Architecture, decisions: Mapping[str, str], scale: Scale) -> torch.Tensor:
    """θ as finalize will read it (θ's shape, groups × choices): each entry no edge of its row
    keeps at 0, each kept entry where it is (scale "keep") or at 1 (scale "one"). The fade
    moves θ there; a row of tied edges keeps every entry one of them keeps (a budget may decide
    tied edges apart: finalize then drops those entries at once).

    Raises:
        ValueError: ``decisions`` name other edges than ``arch``'s.
    """
    unknown = set(decisions) ^ set(arch.group_of)
    if unknown:
        raise ValueError(
            f"the fade's decisions name other edges than the network's: {sorted(unknown)[:3]}"
        )
    kept = torch.zeros_like(arch.theta, dtype=torch.bool)
    for name, choice in decisions.items():
        kept[arch.group_of[name], CHOICES.index(choice)] = True
    theta = arch.theta.detach()
    return torch.where(kept, theta if scale == "keep" else torch.ones_like(theta), 0.0)


def fade_factor(done: int, total: int) -> float:
    """What the fade's step ``done + 1`` of ``total`` multiplies θ's distance to its target by,
    so that after step k θ is (1 − k / total) of the way from where the fade found it: a linear
    ramp that needs only θ itself to continue after a resume."""
    if not 0 <= done < total:
        raise ValueError(f"fade step {done + 1} of {total}")
    return (total - done - 1) / (total - done)


def retarget(optimizer: torch.optim.Optimizer, gated: nn.Module, final: nn.Module) -> None:
    """Point ω's optimizer (the engine's, or a framework's with its scheduler attached) from
    ``gated``'s weights to the same weights in ``final``, in place: each group keeps its
    hyper-parameters (the learning rate a schedule set) and the weights ``final`` kept, in
    their order (finalize keeps the order, so a resumed run's new optimizer lines up), with
    their state (momentum, Adam's moments); the weights finalize dropped and θ leave it.
    Weights are matched by name, as finalize keeps the names of what it keeps; a weight of
    neither module (the caller's own) stays as it is."""
    names = {id(p): name for name, p in gated.named_parameters()}
    kept = dict(final.named_parameters())
    for group in optimizer.param_groups:
        params = []
        for old in group["params"]:
            name = names.get(id(old))
            if name is None:  # not the network's: left alone
                params.append(old)
                continue
            state = optimizer.state.pop(old, None)
            new = kept.get(name)
            if new is None:  # dropped by finalize (or θ)
                continue
            params.append(new)
            if state:
                optimizer.state[new] = state
        group["params"] = params


@torch.no_grad()
def recalibrate_bn(module: nn.Module, loader: DataLoader, batches: int, runtime: Runtime) -> float:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``batches``
    training batches (the rest of the network in eval mode); returns seconds. The statistics
    were learned under the gated network's mix of candidates."""
    start = time.perf_counter()
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    module.eval()
    for m in norms:
        m.train()
    for step, batch in enumerate(loader):
        if step == batches:
            break
        x, _ = runtime.to_device(*batch)
        with runtime.autocast():
            module(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.train()
    return time.perf_counter() - start
