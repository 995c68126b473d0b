"""gate: put a θ-weighted mix of (none, identity, same) on every edge, starting as the original.

The gate replaces the edge's *use* in its join (or, for op edges, every use of the op's output)
with ``dnat_gate(θ_row, x, op(x))``. All rows live in one ``Architecture`` module, ``gated.arch``,
called once per forward; with θ = (0, 0, 1) the gated module computes the original function.
"""

from __future__ import annotations

import copy
import operator
from collections import defaultdict
from collections.abc import Hashable, Sequence

from torch import fx

from fxdnat.arch import Architecture, dnat_gate
from fxdnat.ir import IDENTITY, Edge
from fxdnat.passes import _graph
from fxdnat.tracing import META_KEY

TIES = ("full", "cell")
ARCH = "arch"
"""Name of the Architecture submodule on a gated GraphModule."""
EDGE_META = "fxdnat_edge"
"""``node.meta`` key naming the edge that a gate node belongs to."""


def gate(gm: fx.GraphModule, edges: Sequence[Edge], tie: str = "full") -> fx.GraphModule:
    """A copy of ``gm`` with a θ gate on every edge; ``gated.arch`` holds θ.

    Args:
        gm: the traced module the edges were discovered on (left unchanged).
        edges: from :func:`discover`.
        tie: "full" gives every edge its own θ row; "cell" shares a row between edges with the
            same role in cells of the same structure (DNAT's cell mode).
    """
    if tie not in TIES:
        raise ValueError(f"unknown tie mode {tie!r}; expected one of {TIES}")
    if not edges:
        raise ValueError(
            f"{type(gm).__name__} has no eligible edge (no add of two activations of equal shape"
            "); DNAT has nothing to transform — try granularity='op'"
        )
    if hasattr(gm, ARCH):
        raise ValueError(f"the module already has an attribute {ARCH!r}; is it gated already?")
    gated = copy.deepcopy(gm)
    gated.add_submodule(ARCH, Architecture(edges, _groups(gm, edges, tie), tie))
    graph = gated.graph
    nodes = {node.name: node for node in graph.nodes}
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        weights = graph.call_module(ARCH)  # masked θ, (groups, 3): one call per forward
    # Join gates first: an op gate then also gates the op's value where a join gate reads it.
    for edge in sorted(edges, key=lambda e: e.kind == "op"):
        _insert_gate(graph, nodes, weights, edge, gated.arch.group_of[edge.name])
    return _graph.finish(gated)


def _insert_gate(graph: fx.Graph, nodes: dict, weights: fx.Node, edge: Edge, group: int) -> None:
    operand = nodes[edge.operand]
    source = nodes[edge.source] if IDENTITY in edge.choices else None
    if edge.kind == "op":
        anchor = operand.next
    else:
        anchor = nodes[edge.user]
        if anchor.args[edge.index] is not operand:
            raise RuntimeError(
                f"edge {edge.name}: node {anchor.name} does not read {operand.name} at argument "
                f"{edge.index}; were the edges discovered on this graph?"
            )
    with graph.inserting_before(anchor):
        row = graph.call_function(operator.getitem, (weights, group))
        gate_node = graph.call_function(dnat_gate, (row, source, operand))
    gate_node.meta[EDGE_META] = edge.name
    gate_node.meta["is_wrapped"] = True  # FX then emits wrap(...) so that re-tracing keeps it
    if edge.kind == "op":
        operand.replace_all_uses_with(gate_node, delete_user_cb=lambda user: user is not gate_node)
    else:
        anchor.update_arg(edge.index, gate_node)


def group_count(gm: fx.GraphModule, edges: Sequence[Edge], tie: str) -> int:
    """How many θ rows ``gate(gm, edges, tie)`` would make."""
    return len(set(_groups(gm, edges, tie))) if edges else 0


def _groups(gm: fx.GraphModule, edges: Sequence[Edge], tie: str) -> list[int]:
    """θ row of every edge: its own, or shared by role among cells of one structure."""
    if tie == "full":
        return list(range(len(edges)))
    structure = cell_structures(gm, edges)
    rows: dict[Hashable, int] = {}
    return [rows.setdefault((structure[e.cell], e.role), len(rows)) for e in edges]


def cell_structures(gm: fx.GraphModule, edges: Sequence[Edge]) -> dict[str, Hashable]:
    """A key per cell; cells with equal keys have the same structure and share θ in cell mode.

    The structure is the cell's edges: their kinds, choices, wiring and the op types on each
    branch, ignoring channel counts and strides (so all plain ResNet blocks match). A module can
    name its structure itself with a string attribute ``fxdnat_cell``.
    """
    declared = gm.meta.get(META_KEY, {}).get("cells", {})
    by_cell: dict[str, list[Edge]] = defaultdict(list)
    for edge in edges:
        by_cell[edge.cell].append(edge)
    nodes = {node.name: node for node in gm.graph.nodes}
    return {
        cell: ("declared", declared[cell]) if cell in declared else _signature(gm, nodes, members)
        for cell, members in by_cell.items()
    }


def _signature(gm: fx.GraphModule, nodes: dict[str, fx.Node], edges: list[Edge]) -> Hashable:
    states: dict[str, int] = {}  # sources and joins numbered by first appearance in the cell
    signature = []
    for edge in edges:
        source = states.setdefault(edge.source, len(states))
        join = states.setdefault(edge.join, len(states)) if edge.join else None
        position = {name: i for i, name in enumerate(edge.nodes)}
        branch = tuple(
            (
                _graph.op_label(gm, nodes[name]),
                tuple(
                    position.get(a.name, "x")
                    for a in nodes[name].all_input_nodes
                    if a.name in position or a.name == edge.source
                ),
            )
            for name in edge.nodes
        )
        signature.append((edge.kind, edge.choices, edge.role, source, join, branch))
    return tuple(signature)
