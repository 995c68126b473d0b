"""The exact choice of decisions under a cost budget: a multiple-choice knapsack over edges.

Each edge takes exactly one of its allowed choices; only "same" costs (its branch, in each
resource of a :class:`fxdnat.cost.CostModel`); a join keeps at least one operand that is not
"none". Among the decisions that fit, the one with the largest total score wins (DNAT: the sum
of the chosen θ entries, so what is given up is the smallest total of θ's margins). Solved as a
0/1 integer program by HiGHS through ``scipy.optimize.milp``, proven optimal (to HiGHS's
absolute gap of 1e-6 in score), and its cost checked again against the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from fxdnat.cost import CostModel
from fxdnat.ir import IDENTITY, NONE, SAME, Edge, joins_of

# On ties prefer the original op, then the identity (as decide does): a bonus below any score
# difference that matters (θ moves by ~1e-3 a step), above HiGHS's absolute gap (1e-6), within
# which the optimum is proven.
_PREFER = {SAME: 2e-5, IDENTITY: 1e-5, NONE: 0.0}
_SLACK = 1e-9  # of each limit, as a fraction of the original cost: the solver's feasibility
# tolerance must not let a solution past the budget (the exact check below would refuse it)


class BudgetError(ValueError):
    """No decisions fit the budget without removing every operand of a join."""


def fit_budget(
    edges: Sequence[Edge],
    scores: Mapping[str, Mapping[str, float]],
    model: CostModel,
    budget: Mapping[str, float],
) -> dict[str, str]:
    """``{edge name: choice}`` maximising the summed ``scores[edge][choice]`` such that, for each
    resource r of ``budget``, ``model.cost(decisions)[r] <= budget[r] * model.total[r]``.

    Raises:
        BudgetError: no decisions fit; the message gives each resource's smallest reachable
            fraction (:func:`cheapest`).
        ValueError: ``model`` was measured for other edges, or does not count a resource of
            ``budget``.
    """
    model.check(edges, budget)
    choices = [(e, c) for e in edges for c in e.choices]
    value = np.array([scores[e.name][c] + _PREFER[c] for e, c in choices])
    solution = _solve(edges, choices, -value, model, budget)
    if solution is None:
        reachable = ", ".join(f"{r}={f:.4g}" for r, f in cheapest(edges, model, budget).items())
        raise BudgetError(
            f"no network fits the budget {_text(budget)} without removing every operand of a "
            f"join; the smallest reachable cost is {reachable} of the original"
        )
    decisions = {e.name: c for (e, c), x in zip(choices, solution, strict=True) if x > 0.5}
    for r, cost in model.cost(decisions).items():
        if r in budget and cost > budget[r] * model.total[r]:  # never: the slack covers tolerance
            raise AssertionError(f"the solver's decisions cost {cost} {r}, over the budget")
    return decisions


def cheapest(
    edges: Sequence[Edge], model: CostModel, resources: Sequence[str] | None = None
) -> dict[str, float]:
    """Resource → the smallest fraction of the original cost that any decisions without a dead
    join reach, each resource minimised on its own (default: every resource of ``model``)."""
    resources = list(model.total if resources is None else resources)
    model.check(edges, resources)
    choices = [(e, c) for e in edges for c in e.choices]
    nested = [p for p in model.parts if len(p.edges) > 1]
    found = {}
    for r in resources:
        kept = {p.edges[0]: p.cost[r] for p in model.parts if len(p.edges) == 1}
        cost = [kept.get(e.name, 0.0) if c == SAME else 0.0 for e, c in choices]
        solution = _solve(edges, choices, np.array(cost + [p.cost[r] for p in nested]), model, {})
        chosen = {e.name: c for (e, c), x in zip(choices, solution, strict=True) if x > 0.5}
        total = model.total[r]
        found[r] = model.cost(chosen)[r] / total if total else 0.0
    return found


def _solve(
    edges: Sequence[Edge],
    choices: list[tuple[Edge, str]],
    objective: np.ndarray,
    model: CostModel,
    budget: Mapping[str, float],
) -> np.ndarray | None:
    """Minimise ``objective · (x, y)`` over one-hot rows x per edge, live joins and the budget's
    rows. A part of one edge is kept with that edge's "same"; a part of nested branches (several
    edges) gets a variable y in [0, 1] with y ≥ Σ x_same − (k − 1): kept when all k keep "same"
    (the budget's rows push y down to that bound, so it is exact)."""
    n = len(choices)
    nested = [p for p in model.parts if len(p.edges) > 1]
    width = n + len(nested)
    rows, lower, upper = [], [], []
    index = {(e.name, c): i for i, (e, c) in enumerate(choices)}
    for edge in edges:  # exactly one choice per edge
        rows.append(_row(width, [index[edge.name, c] for c in edge.choices]))
        lower.append(1)
        upper.append(1)
    for members in joins_of(edges).values():  # a join keeps a live operand
        live = [index[e.name, c] for e in members for c in e.choices if c != NONE]
        rows.append(_row(width, live))
        lower.append(1)
        upper.append(np.inf)
    for j, part in enumerate(nested):  # y_j − Σ x_same ≥ 1 − k
        row = -_row(width, [index[name, SAME] for name in part.edges])
        row[n + j] = 1.0
        rows.append(row)
        lower.append(1.0 - len(part.edges))
        upper.append(np.inf)
    for r, fraction in budget.items():  # what stays, as a fraction of the original
        total = model.total[r]
        if not total:
            continue
        row = np.zeros(width)
        for part in model.parts:
            if len(part.edges) == 1:
                row[index[part.edges[0], SAME]] += part.cost[r] / total
        for j, part in enumerate(nested):
            row[n + j] = part.cost[r] / total
        fixed = 1.0 - sum(p.cost[r] for p in model.parts) / total
        rows.append(row)
        lower.append(-np.inf)
        upper.append(fraction - fixed - _SLACK)
    result = milp(
        objective
        if len(objective) == width
        else np.concatenate([objective, np.zeros(len(nested))]),
        constraints=LinearConstraint(np.array(rows), lower, upper),
        integrality=np.concatenate([np.ones(n), np.zeros(len(nested))]),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    return result.x[:n] if result.success else None


def _row(n: int, ones: list[int]) -> np.ndarray:
    row = np.zeros(n)
    row[ones] = 1.0
    return row


def _text(budget: Mapping[str, float]) -> str:
    return ",".join(f"{r}={f:g}" for r, f in budget.items())
