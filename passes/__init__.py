"""The compiler passes of fxdnat, one per file, each named by its verb.

gm = fxdnat.trace(model, example_inputs)
edges = discover(gm)                 # where the candidates apply
gated = gate(gm, edges, tie="full")  # θ-gated module, starts as the original
decisions = decide(gated)            # argmax θ, never a dead join; margins(gated): how sure
final = finalize(gated, decisions)   # clean GraphModule; scale="keep" keeps θ's coefficients
"""

from __future__ import annotations

from fxdnat.ir import GRANULARITIES, SCALES, TIES
from fxdnat.passes.decide import (
    check_decisions,
    decide,
    margins,
    random_changes,
    random_decisions,
)
from fxdnat.passes.discover import discover
from fxdnat.passes.finalize import finalize
from fxdnat.passes.gate import cell_structures, gate

__all__ = [
    "GRANULARITIES",
    "SCALES",
    "TIES",
    "cell_structures",
    "check_decisions",
    "decide",
    "discover",
    "finalize",
    "gate",
    "margins",
    "random_changes",
    "random_decisions",
]
