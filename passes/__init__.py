"""The compiler passes of fxdnat, one per file, each named by its verb.

gm = fxdnat.trace(model, example_inputs)
edges = discover(gm)                 # where the candidates apply
gated = gate(gm, edges, tie="full")  # θ-gated module, starts as the original
decisions = decide(gated)            # argmax θ, never a dead join
final = finalize(gated, decisions)   # clean GraphModule
"""

from __future__ import annotations

from fxdnat.passes.decide import check_decisions, decide, random_decisions
from fxdnat.passes.discover import GRANULARITIES, discover
from fxdnat.passes.finalize import finalize
from fxdnat.passes.gate import TIES, cell_structures, gate

__all__ = [
    "GRANULARITIES",
    "TIES",
    "cell_structures",
    "check_decisions",
    "decide",
    "discover",
    "finalize",
    "gate",
    "random_decisions",
]
