"""discover: find the edges of an architecture (residual branches, skips, ops) in a traced graph.

A join is an add of two or more activations of equal shape; each of its operands is one edge. The
branch of an edge is what exists only to compute its operand: the nodes the operand
post-dominates in the data-flow graph (every path from them to the output passes through it).
Its source x is the activation the branch reads from outside; a branch that also reads side
inputs (a mask, a position table, conditioning) keeps the trunk value as its source (see
docs/architecture.md). The pass reads the graph and its metadata only; it never runs the model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from torch import fx, nn

from fxdnat.frontend import memory
from fxdnat.ir import GRANULARITIES, IDENTITY, NONE, SAME, Edge
from fxdnat.passes import _graph


@dataclass(frozen=True)
class _Use:
    """One operand of a join: ``user.args[index] is operand``."""

    user: fx.Node
    index: int
    operand: fx.Node


def discover(gm: fx.GraphModule, granularity: str = "branch") -> list[Edge]:
    """The edges of ``gm`` in graph order; ``gm`` must come from :func:`fxdnat.trace`.

    Args:
        gm: a traced GraphModule with shapes in ``node.meta`` (``fxdnat.trace`` records them).
        granularity: "branch" (edges of residual branches and skips at joins) or "op" (also every
            shape-preserving module call with parameters, offered the identity, as NAT's per-op
            edges).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")
    if not any(_graph.shape(n) for n in gm.graph.nodes if n.op == "placeholder"):
        raise ValueError(
            "no input of the graph carries a shape (node.meta['tensor_meta']); trace the model "
            "with `fxdnat.trace(model, example_inputs)`"
        )
    flow = _Flow(gm.graph)
    active = flow.active
    found: list[tuple[str, Edge]] = []  # (cell, edge without name/role)
    for join, uses in _joins(gm.graph, active):
        for use in uses:
            found.append(_join_edge(join, use, [u.operand for u in uses if u is not use], flow))
    if granularity == "op":
        found += _op_edges(gm, active, {e.operand for _, e in found if e.nodes == (e.operand,)})
    return _name(found)


def _joins(graph: fx.Graph, active: set[fx.Node]) -> list[tuple[fx.Node, list[_Use]]]:
    """Each join node with its operand uses; a chain ``a + b + c`` is one join of three."""
    absorbed: set[fx.Node] = set()
    joins = []
    for node in reversed(graph.nodes):
        if node in absorbed or not _is_join_add(node, active):
            continue
        uses = _flatten(node, active, absorbed)
        if len(uses) >= 2:
            joins.append((node, uses))
    return joins[::-1]


def _is_join_add(node: fx.Node, active: set[fx.Node]) -> bool:
    """An add whose tensor operands are activations of the output's shape (no broadcasting)."""
    if not _graph.is_add(node) or "out" in node.kwargs or len(node.args) != 2:
        return False
    out = _graph.shape(node)
    operands = [a for a in node.args if not _is_zero(a)]
    if not operands or out is None:
        return False
    if not all(isinstance(a, fx.Node) and a in active and _graph.shape(a) == out for a in operands):
        return False
    # x += y writes x: if x, or memory x shares, is read elsewhere (the front end leaves such
    # writes in place), a gate on the use would change what those readers see.
    target = node.args[0]
    return not _graph.is_inplace_add(node) or (
        _graph.use_count(target) == 1
        and not memory.aliased_inputs(target)
        and not memory.is_state(target)
    )


def _is_zero(arg: object) -> bool:
    """The integer 0 that builtin ``sum`` starts its chain of adds with."""
    return isinstance(arg, int) and not isinstance(arg, bool) and arg == 0


def _flatten(node: fx.Node, active: set[fx.Node], absorbed: set[fx.Node]) -> list[_Use]:
    uses = []
    for index, arg in enumerate(node.args):
        if _is_zero(arg):
            continue
        inner = (
            _is_join_add(arg, active)
            and "alpha" not in arg.kwargs
            and "alpha" not in node.kwargs
            and _graph.use_count(arg) == 1
        )
        if inner:
            absorbed.add(arg)
            uses += _flatten(arg, active, absorbed)
        else:
            uses.append(_Use(node, index, arg))
    return uses


class _Flow:
    """The graph's data flow, computed once: activations, what each node reads, and the
    post-dominator tree that gives every node the region that exists only for it."""

    def __init__(self, graph: fx.Graph) -> None:
        self.deps = _graph.dependencies(graph)
        self.active = _graph.activations(graph, self.deps)
        self.regions = _graph.exclusive_regions(graph, self.deps)
        self.position = {node: i for i, node in enumerate(graph.nodes)}


def _join_edge(join: fx.Node, use: _Use, others: list[fx.Node], flow: _Flow) -> tuple[str, Edge]:
    source, region = _branch(use.operand, others, flow)
    nodes = tuple(n.name for n in use.operand.graph.nodes if n in region)
    is_skip = all(_is_identity_call(n) for n in region)
    same_shape = _graph.shape(source) == _graph.shape(use.operand)
    choices = (NONE, SAME) if is_skip or not same_shape else (NONE, IDENTITY, SAME)
    cell = _graph.common_module([_graph.owner(join), *(_graph.owner(n) for n in region)])
    edge = Edge(
        name="",
        kind="skip" if is_skip else "branch",
        source=source.name,
        operand=use.operand.name,
        nodes=nodes,
        join=join.name,
        user=use.user.name,
        index=use.index,
        choices=choices,
        cell=cell,
        role="",
    )
    return cell, edge


def _branch(operand: fx.Node, others: list[fx.Node], flow: _Flow) -> tuple[fx.Node, set]:
    """The source x of the branch ending at ``operand``, and the branch's activation nodes.

    An operand read elsewhere too is itself a state of the architecture (a fork), as DARTS'
    ``skip_connect`` from a preprocessed cell input: its edge is a skip.
    """
    if operand.op == "placeholder" or _graph.use_count(operand) > 1:
        return operand, set()
    region = {
        n
        for n in _graph.subtree(flow.regions, operand)
        if n in flow.active and n.op != "placeholder"
    }
    inputs = {d for n in region for d in flow.deps[n] if d in flow.active and d not in region}
    return _source(inputs, operand, others, flow), region


def _source(inputs: set[fx.Node], operand: fx.Node, others: list[fx.Node], flow: _Flow):
    """Which activation read by a branch is its source, the rest being side inputs.

    Not one that another input is computed from (a mask every block reads is an ancestor of
    the block input), unless it is itself another operand of the join (x + f(x, mask(x)): the
    first block of a transformer reads a mask made from its input); then one the join's other
    operands come from (the residual trunk); then one of the operand's shape; then the latest.
    """
    if len(inputs) == 1:
        return next(iter(inputs))
    upstream = {i: _graph.ancestors(i, flow.deps, flow.active) for i in inputs}
    latest = [
        i for i in inputs if i in others or not any(i in upstream[j] for j in inputs if j is not i)
    ]
    trunk = set(others).union(*(_graph.ancestors(o, flow.deps, flow.active) for o in others))
    shape = _graph.shape(operand)
    return max(
        latest or inputs,
        key=lambda i: (i in trunk, _graph.shape(i) == shape, flow.position[i]),
    )


def _is_identity_call(node: fx.Node) -> bool:
    module = (
        node.graph.owning_module.get_submodule(node.target) if node.op == "call_module" else None
    )
    return isinstance(module, nn.Identity)


def _op_edges(gm: fx.GraphModule, active: set, taken: set[str]) -> list[tuple[str, Edge]]:
    """NAT-style per-op edges: shape-preserving module calls with parameters, offered identity."""
    found = []
    calls: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op != "call_module" or node not in active:
            continue
        calls[node.target] += 1
        inputs = [a for a in node.all_input_nodes if a in active]
        module = gm.get_submodule(node.target)
        eligible = (
            len(inputs) == 1
            and node.name not in taken
            and next(module.parameters(), None) is not None
            and _graph.shape(node) is not None
            and _graph.shape(node) == _graph.shape(inputs[0])
        )
        if not eligible:
            continue
        cell = _graph.owner(node)
        role = node.target[len(cell) + 1 :] if cell else node.target
        if calls[node.target] > 1:  # a module called again gets the call's number
            role += f"@{calls[node.target] - 1}"
        found.append(
            (
                cell,
                Edge(
                    name=f"{cell}:{role}",
                    kind="op",
                    source=inputs[0].name,
                    operand=node.name,
                    nodes=(node.name,),
                    join=None,
                    user=None,
                    index=None,
                    choices=(IDENTITY, SAME),
                    cell=cell,
                    role=role,
                ),
            )
        )
    return found


def _name(found: list[tuple[str, Edge]]) -> list[Edge]:
    """Give join edges their role (position in the cell) and everyone a ``cell:role`` name."""
    counters: dict[str, int] = defaultdict(int)
    edges = []
    for cell, edge in found:
        if edge.kind != "op":
            role = str(counters[cell])
            counters[cell] += 1
            edge = replace(edge, name=f"{cell}:{role}", role=role)
        edges.append(edge)
    names = [e.name for e in edges]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise RuntimeError(f"edge name {duplicate!r} is not unique; please report this model")
    return edges
