"""The compiler passes of fxdnat, one per file, each named by its verb.

gm = fxdnat.trace(model, example_inputs)
edges = discover(gm)                 # where the candidates apply
gated = gate(gm, edges, tie="full")  # θ-gated module, starts as the original
decisions = decide(gated)            # argmax θ, never a dead join; margins(gated): how sure
# decide(gated, budget={"flops": 0.7}, costs=cost_model(gm, edges, x)): the best that fits
final = finalize(gated, decisions)   # clean GraphModule; scale="keep" keeps θ's coefficients
"""

from __future__ import annotations

from fxdnat.ir import GRANULARITIES, SCALES, TIES
from fxdnat.passes._knapsack import BudgetError, cheapest, fit_budget
from fxdnat.passes.decide import (
    check_decisions,
    decide,
    margins,
    random_changes,
    random_decisions,
    ranked_changes,
)
from fxdnat.passes.discover import discover
from fxdnat.passes.finalize import finalize
from fxdnat.passes.gate import cell_structures, gate

__all__ = [
    "GRANULARITIES",
    "SCALES",
    "TIES",
    "BudgetError",
    "cell_structures",
    "cheapest",
    "check_decisions",
    "decide",
    "discover",
    "finalize",
    "fit_budget",
    "gate",
    "margins",
    "random_changes",
    "random_decisions",
    "ranked_changes",
]
