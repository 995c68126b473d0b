"""decide: each edge keeps the candidate with the largest θ, and no join is left dead; under a cost
budget, the decisions that fit with the most θ (fxdnat/passes/_knapsack.py).

NAT's released ResNet20 runs collapsed to 10 % accuracy when every edge into a node became
"none" (Kim & Lee 2020, §4): a zero tensor flowed on. Here a join whose operands all chose none
keeps its operand with the best non-none weight.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from torch import fx

from fxdnat.arch import Architecture
from fxdnat.cost import CostModel
from fxdnat.ir import CHOICES, NONE, SAME, Edge, change_kind, check_decisions, joins_of
from fxdnat.passes._knapsack import fit_budget

log = logging.getLogger(__name__)

# On exact ties prefer the original op, then the identity: change the network only when θ says so.
_PREFERENCE = (SAME, "identity", NONE)


def decide(
    gated: fx.GraphModule,
    theta: torch.Tensor | None = None,
    *,
    budget: Mapping[str, float] | None = None,
    costs: CostModel | None = None,
) -> dict[str, str]:
    """``{edge name: choice}``: the argmax of each edge's θ row over its allowed choices.

    ``theta`` (groups × 3, e.g. an epoch of a run's θ history) replaces the module's own θ.

    Under a ``budget`` (resource → fraction of the original network's cost, e.g.
    ``{"flops": 0.7}``), measured by ``costs`` (:func:`fxdnat.cost.cost_model`): the decisions
    that fit it with the largest sum of chosen θ entries — the argmax itself when it fits, else
    the smallest total of θ's margins given up (an exact knapsack over edges, never a dead join).

    Raises:
        ValueError: a budget without ``costs``; a ``theta`` not of the module's shape, or not
            finite.
        BudgetError: no decisions fit the budget; the message gives the smallest reachable cost.
    """
    arch = _architecture(gated)
    theta = _theta(arch, theta)
    if budget is not None:
        if costs is None:
            raise ValueError("a budget needs the network's costs: pass costs=cost_model(...)")
        scores = {
            e.name: {c: theta[arch.group_of[e.name], CHOICES.index(c)].item() for c in e.choices}
            for e in arch.edges
        }
        return fit_budget(arch.edges, scores, costs, budget)
    decisions = {
        edge.name: _best(theta[arch.group_of[edge.name]], edge.choices) for edge in arch.edges
    }
    for join, members in joins_of(arch.edges).items():
        if all(decisions[e.name] == NONE for e in members):
            keep = max(members, key=lambda e: _best_weight(theta[arch.group_of[e.name]], e))
            decisions[keep.name] = _best(theta[arch.group_of[keep.name]], keep.choices, live=True)
            log.warning(
                "join %s: every operand chose none; %s keeps %s",
                join,
                keep.name,
                decisions[keep.name],
            )
    return decisions


def margins(gated: fx.GraphModule, theta: torch.Tensor | None = None) -> dict[str, float]:
    """``{edge name: margin}``: how sure each decision is, the largest allowed θ entry of the
    edge's row minus the second largest (θ units; 0 is a tie, an edge that needed to travel
    about 1 to change and did has a margin near its distance past the tie)."""
    arch = _architecture(gated)
    theta = _theta(arch, theta)
    found = {}
    for edge in arch.edges:
        row = theta[arch.group_of[edge.name]]
        top = sorted((row[CHOICES.index(c)].item() for c in edge.choices), reverse=True)
        found[edge.name] = top[0] - top[1] if len(top) > 1 else math.inf
    return found


def _theta(arch: Architecture, theta: torch.Tensor | None) -> torch.Tensor:
    """θ to decide on, on the CPU: the module's, or ``theta`` when it fits the module's rows
    and is finite (a NaN has no argmax; decide would silently keep "same")."""
    if theta is None:
        return arch.theta.detach().float().cpu()
    if not isinstance(theta, torch.Tensor) or theta.shape != arch.theta.shape:
        shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(
            f"theta has shape {shape}; this module's θ is {tuple(arch.theta.shape)} "
            f"(groups × choices {CHOICES}, tie {arch.tie!r})"
        )
    theta = theta.detach().float().cpu()
    if not torch.isfinite(theta[arch.mask]).all():
        raise ValueError("theta holds NaN or infinite entries; no decision can be read from it")
    return theta


def count_changes(edges: Sequence[Edge], decisions: Mapping[str, str]) -> dict[str, int]:
    """How many edges made each kind of change."""
    counts: dict[str, int] = defaultdict(int)
    for edge in edges:
        choice = decisions.get(edge.name, SAME)
        if choice != SAME:
            counts[change_kind(edge, choice)] += 1
    return dict(counts)


def random_changes(
    edges: Sequence[Edge], counts: Mapping[str, int], rng: random.Random
) -> dict[str, str]:
    """Exactly ``counts[kind]`` edges make each kind of change (``fxdnat.ir.CHANGE_KINDS``), drawn
    with ``rng`` among the edges that can, every other edge "same", and no join left dead
    (draws that would kill one are redrawn): the control that places a DNAT run's changes at
    random, a removed skip where DNAT removed a skip and a removed branch where it removed one.

    Raises ValueError when there are not enough edges that can make a kind of change."""

    def able(edge: Edge, kind: str) -> bool:
        choice = kind.rsplit("-", 1)[-1]
        return choice in edge.choices and change_kind(edge, choice) == kind

    for kind, wanted in counts.items():
        count = sum(able(e, kind) for e in edges)
        if wanted > count:
            raise ValueError(
                f"{wanted} edges should make the change {kind!r} but only {count} of the "
                f"{len(edges)} edges can"
            )
    for _ in range(1000):
        decisions = {edge.name: SAME for edge in edges}
        for kind in rng.sample(sorted(counts), len(counts)):  # no kind gets first pick
            free = [e.name for e in edges if able(e, kind) and decisions[e.name] == SAME]
            if counts[kind] > len(free):
                break
            for name in rng.sample(free, counts[kind]):
                decisions[name] = kind.rsplit("-", 1)[-1]
        else:
            try:
                return check_decisions(edges, decisions)
            except ValueError:  # a join left dead
                pass
    raise ValueError(
        f"could not place {dict(counts)} on distinct edges without removing every operand of a join"
    )


def ranked_changes(
    edges: Sequence[Edge], counts: Mapping[str, int], score: Mapping[str, float]
) -> dict[str, str]:
    """Exactly ``counts[kind]`` edges make each kind of change, as :func:`random_changes` places
    them, but the edges with the highest ``score`` first (ties by name): one-shot removal by a
    measure (``fxdnat.contribution.similarities``) at a DNAT run's number of changes. An edge
    whose change would leave a join dead is passed over for the next.

    Raises ValueError when a kind cannot be placed that many times."""
    decisions = {edge.name: SAME for edge in edges}
    joins = joins_of(edges)
    order = sorted(edges, key=lambda e: (-score[e.name], e.name))
    for kind in sorted(counts):
        choice = kind.rsplit("-", 1)[-1]
        placed = 0
        for edge in order:
            if placed == counts[kind]:
                break
            if decisions[edge.name] != SAME or choice not in edge.choices:
                continue
            if change_kind(edge, choice) != kind:
                continue
            decisions[edge.name] = choice
            dead = edge.join is not None and all(
                decisions[e.name] == NONE for e in joins[edge.join]
            )
            if dead:
                decisions[edge.name] = SAME
                continue
            placed += 1
        if placed < counts[kind]:
            raise ValueError(
                f"{counts[kind]} edges should make the change {kind!r} but only {placed} of the "
                f"{len(edges)} edges can without removing every operand of a join"
            )
    return check_decisions(edges, decisions)


def random_decisions(edges: Sequence[Edge], rng: random.Random) -> dict[str, str]:
    """A random valid decision for every edge, drawn from ``rng``: each edge takes one of its
    allowed choices, and a join whose edges all drew "none" gets one of them redrawn among the
    live choices. For testing a compiler or a training loop on architectures DNAT could reach.
    """
    decisions = {e.name: rng.choice(e.choices) for e in edges}
    for members in joins_of(edges).values():
        if all(decisions[e.name] == NONE for e in members):
            keep = rng.choice(members)
            decisions[keep.name] = rng.choice([c for c in keep.choices if c != NONE])
    return decisions


def _architecture(gated: fx.GraphModule) -> Architecture:
    arch = getattr(gated, "arch", None)
    if not isinstance(arch, Architecture):
        raise TypeError(f"{type(gated).__name__} is not gated; call passes.gate(gm, edges) first")
    return arch


def _best(row: torch.Tensor, choices: Sequence[str], live: bool = False) -> str:
    allowed = [c for c in _PREFERENCE if c in choices and not (live and c == NONE)]
    return max(allowed, key=lambda c: (row[CHOICES.index(c)].item(), -allowed.index(c)))


def _best_weight(row: torch.Tensor, edge: Edge) -> float:
    return max(row[CHOICES.index(c)].item() for c in edge.choices if c != NONE)
