"""gate: put a θ-weighted mix of (none, identity, same) on every edge, starting as the original.

Each join (an add, or a chain of adds, of its edges' operands) becomes one call
``dnat_mix(θ, spec, ...)`` that sums ``θ_identity·x + θ_same·op(x)`` over its edges in the
original adds' order; an op edge's output becomes ``dnat_mix`` of its ``x`` and ``op(x)``. All
rows live in one ``Architecture`` module, ``gated.arch``, called once per forward; with
θ = (0, 0, 1) the gated module computes the original function.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

from torch import fx

from fxdnat.arch import Architecture, dnat_mix
from fxdnat.frontend import memory
from fxdnat.frontend.functionalize import INPLACE
from fxdnat.ir import CHOICES, IDENTITY, META_KEY, SAME, TIES, Edge
from fxdnat.mix import Spec, Term, Tree
from fxdnat.passes import _graph

ARCH = "arch"
"""Name of the Architecture submodule on a gated GraphModule."""
EDGES_META = "fxdnat_edges"
"""``node.meta`` key of a ``dnat_mix`` node: its :class:`MixRecord`, what finalize needs to write
the join back."""


class MixLeaf(NamedTuple):
    """A leaf of a mix's tree: one edge, and where its candidates are among the mix's tensors."""

    edge: str  # the edge's name
    same: int  # index of op(x)
    identity: int | None  # index of x; None where the edge has no identity candidate


class MixAdd(NamedTuple):
    """An original add of a join, an inner node of the mix's tree."""

    op: str  # the FX node's op ("call_function", "call_method")
    target: Any
    mutated: str | None  # the value it added to in place, or None
    inplace: tuple | None  # how the front end found it written in place (x += y made x + y)
    anchor: str | None  # the node it stood before; None: the mix's place


class MixRecord(NamedTuple):
    """What gate records on a mix: its leaves in tree order, its adds in pre-order. An op
    edge's mix has one leaf and no adds."""

    leaves: tuple[MixLeaf, ...]
    adds: tuple[MixAdd, ...]


COPY_META = "fxdnat_saved_copy"
"""``node.meta`` key of a ``clone`` that gate put before a mix (of an input that a later
in-place write reaches; see ``gate``): finalize reads the original instead, as the add it writes
back saves nothing."""


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
    gated = _graph.copy_module(gm)
    gated.add_submodule(ARCH, Architecture(edges, _groups(gm, edges, tie), tie))
    graph = gated.graph
    nodes = {node.name: node for node in graph.nodes}
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        weights = graph.call_module(ARCH)  # masked θ, (groups, 3): one call per forward
    row = gated.arch.group_of
    by_join: dict[str, list[Edge]] = defaultdict(list)
    for edge in edges:
        if edge.kind != "op":
            by_join[edge.join].append(edge)
    plans = [_plan_join(nodes, nodes[join], members, row) for join, members in by_join.items()]
    removed = {add for _, _, chain in plans for add in chain}
    # the mix saves its inputs for θ's gradient, as the add it replaces does not: an input that
    # a later in-place write reaches goes to the mix as a copy, or autograd would find it changed
    later = memory.LaterWrites(graph)
    for mix, _, chain in plans:  # before any mix is inserted: anchors are original nodes
        mix.anchors = [_anchor(add, chain[0], removed) for add in chain]
        mix.copies = [later.reach(t, chain[0]) for t in mix.tensors]
    mixes = []
    for mix, tree, chain in plans:
        with graph.inserting_before(chain[0]):
            mixes.append(mix.emit(graph, weights, tree))
    # Only now replace the joins: a mix made earlier reads a later-replaced join until then.
    for (_, _, chain), node in zip(plans, mixes, strict=True):
        chain[0].replace_all_uses_with(node)
        nodes[chain[0].name] = node  # op edges that start at or read the join read the mix
    for _, _, chain in plans:
        for add in chain:  # the join first: each inner add is read by the add before it only
            graph.erase_node(add)
    for edge in edges:  # op edges last: their mix then also feeds the joins' mixes
        if edge.kind == "op":
            _gate_op(graph, nodes, weights, edge, row[edge.name], later)
    return _graph.finish(gated)


_SAME, _IDENTITY = CHOICES.index(SAME), CHOICES.index(IDENTITY)


def _anchor(add: fx.Node, join: fx.Node, removed: set[fx.Node]) -> str | None:
    """Where an add of a join stood: the name of the first node after it that stays, or None
    where that is the join itself (finalize then writes the add where the mix is). The join's
    own add stands where the mix is, whatever follows it (adds of a later join that read it)."""
    if add is join:
        return None
    node = add.next
    while node in removed and node is not join:
        node = node.next
    return None if node is join else node.name


class _MixBuilder:
    """Collects a mix's input tensors and terms; equal inputs are passed once."""

    def __init__(self) -> None:
        self.tensors: list[fx.Node] = []
        self.terms: list[list] = []  # [tensor index, [flat θ indices], scale]
        self.leaves: list[MixLeaf] = []
        self.adds: list[tuple] = []  # (op, target, mutated, origin) of each add, in pre-order
        self.anchors: list[str | None] = []  # and where it stood
        self.copies: list[bool] = []  # per tensor: passed as a copy (see gate)

    def tensor(self, node: fx.Node) -> int:
        if node not in self.tensors:
            self.tensors.append(node)
        return self.tensors.index(node)

    def leaf(self, edge: Edge, operand: fx.Node, group: int, scale: float) -> int:
        self.terms.append([self.tensor(operand), [len(CHOICES) * group + _SAME], scale])
        self.leaves.append(MixLeaf(edge.name, self.terms[-1][0], None))
        return len(self.terms) - 1

    def identities(self, edges: dict[int, Edge], nodes: dict, group_of: dict[str, int]) -> None:
        """Add ``θ_identity·x`` for each leaf's edge that allows it, merged into a term on x."""
        for leaf, edge in edges.items():
            if IDENTITY not in edge.choices:
                continue
            x, scale = self.tensor(nodes[edge.source]), self.terms[leaf][2]
            entry = len(CHOICES) * group_of[edge.name] + _IDENTITY
            term = next((t for t in self.terms if t[0] == x and t[2] == scale), None)
            if term is None:
                self.terms.append([x, [entry], scale])
            else:
                term[1].append(entry)
            self.leaves[leaf] = self.leaves[leaf]._replace(identity=x)

    def emit(self, graph: fx.Graph, weights: fx.Node, tree: Tree) -> fx.Node:
        terms: tuple[Term, ...] = tuple((t, tuple(e), s) for t, e, s in self.terms)
        spec: Spec = (tree, terms)
        copies = self.copies or [False] * len(self.tensors)
        tensors = [
            _saved_copy(graph, t) if copy else t
            for t, copy in zip(self.tensors, copies, strict=True)
        ]
        node = graph.call_function(dnat_mix, (weights, spec, *tensors))
        adds = (MixAdd(*add, a) for add, a in zip(self.adds, self.anchors, strict=True))
        node.meta[EDGES_META] = MixRecord(tuple(self.leaves), tuple(adds))
        node.meta["is_wrapped"] = True  # FX then emits wrap(...) so that re-tracing keeps it
        return node


def _saved_copy(graph: fx.Graph, tensor: fx.Node) -> fx.Node:
    node = graph.call_method("clone", (tensor,))
    node.meta[COPY_META] = True
    return node


def _plan_join(nodes, join: fx.Node, edges: list[Edge], group_of) -> tuple:
    """The mix that replaces a join's adds: its builder, its tree, and the adds (join first)."""
    by_use = {(e.user, e.index): e for e in edges}
    mix = _MixBuilder()
    leaf_edges: dict[int, Edge] = {}
    chain: list[fx.Node] = []

    def tree_of(add: fx.Node, scale: float) -> Tree:
        chain.append(add)
        alpha = add.kwargs.get("alpha", 1)
        mutated = add.args[0].name if _graph.is_inplace_add(add) else None
        # x += y that the front end made x + y: finalize may write it back in place
        origin = add.meta.get(INPLACE)
        mix.adds.append((add.op, add.target, mutated, origin))
        parts: list[Tree] = []
        for index, arg in enumerate(add.args):
            inner_scale = scale * (alpha if index == 1 else 1)
            edge = by_use.get((add.name, index))
            if edge is not None:
                if arg is not nodes[edge.operand]:
                    raise RuntimeError(
                        f"edge {edge.name}: node {add.name} does not read {edge.operand} at "
                        f"argument {index}; were the edges discovered on this graph?"
                    )
                leaf = mix.leaf(edge, arg, group_of[edge.name], inner_scale)
                leaf_edges[leaf] = edge
                parts.append(leaf)
            elif isinstance(arg, fx.Node) and _graph.is_add(arg):
                parts.append(tree_of(arg, inner_scale))
            else:  # the literal 0 that builtin sum starts with
                parts.append(None)
        left, right = parts
        return (left, right, alpha)

    tree = tree_of(join, 1)
    if len(leaf_edges) != len(edges):
        raise RuntimeError(f"join {join.name}: its adds do not read its {len(edges)} edges")
    mix.identities(leaf_edges, nodes, group_of)
    return mix, tree, chain


def _gate_op(graph, nodes, weights, edge: Edge, group: int, later: memory.LaterWrites) -> None:
    """Every use of the op's output reads ``dnat_mix`` of ``x`` and ``op(x)`` instead."""
    operand = nodes[edge.operand]
    mix = _MixBuilder()
    leaf = mix.leaf(edge, operand, group, 1)
    mix.identities({leaf: edge}, nodes, {edge.name: group})
    mix.copies = [t in later.order and later.reach(t, operand) for t in mix.tensors]
    with graph.inserting_before(operand.next):  # inserting_after would reverse clone and mix
        node = mix.emit(graph, weights, leaf)
    mixed = {node, *node.args}  # the mix and the copy of op(x) it may read keep reading op(x)
    operand.replace_all_uses_with(node, delete_user_cb=lambda user: user not in mixed)
    # an op edge gated later whose x is this op's output reads the mix, so that its identity
    # skips what this edge decided (conv → identity, then bn → identity removes both)
    nodes[edge.operand] = node


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
