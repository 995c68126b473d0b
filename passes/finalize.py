"""finalize: compile decisions into a clean GraphModule with no gate, θ or fxdnat left in it.

Each gate becomes its chosen candidate: ``same`` reads the op's output, ``identity`` reads the
edge's input, ``none`` drops the operand from its join (an add with a missing operand becomes
its other operand). Then whatever has become dead goes: nodes, submodules and parameters.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping

import torch
from torch import fx

from fxdnat.arch import dnat_gate
from fxdnat.ir import NONE, SAME
from fxdnat.passes import _graph
from fxdnat.passes.decide import _architecture, check_decisions
from fxdnat.passes.gate import ARCH, EDGE_META
from fxdnat.tracing import META_KEY


def finalize(gated: fx.GraphModule, decisions: Mapping[str, str]) -> fx.GraphModule:
    """The network that ``gated`` computes with θ one-hot on ``decisions``, without the gates.

    ``decisions`` maps edge names to choices (edges left out keep "same"); it must not remove
    every operand of a join (:func:`decide` guarantees that).
    """
    arch = _architecture(gated)
    decisions = check_decisions(arch.edges, decisions)
    final = copy.deepcopy(gated)
    graph = final.graph
    before = _graph.used_tensor_names(final)
    # What each in-place add mutated in the original network (a gate stands for its op's output).
    inplace_targets = {
        node: _resolve(node.args[0]) for node in graph.nodes if _graph.is_inplace_add(node)
    }
    # Code that was dead before stays (finalize removes only what it makes dead), but not the gates.
    gates = [n for n in graph.nodes if n.op == "call_function" and n.target is dnat_gate]
    machinery = {n for g in gates for n in (g, g.args[0])} | set(
        graph.find_nodes(op="call_module", target=ARCH)
    )
    dead_before = set(graph.nodes) - _graph.live_nodes(graph) - machinery
    zeros: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node in gates:
            _, x, y = node.args
            choice = decisions[node.meta[EDGE_META]]
            if choice == NONE:
                zeros.add(node)
            else:
                node.replace_all_uses_with(y if choice == SAME else x)
        elif _graph.is_add(node) and any(arg in zeros for arg in node.args):
            _drop_zero_operand(graph, node, zeros)
    remaining = set(graph.nodes)
    for node, target in inplace_targets.items():
        if node in remaining and node.args[0] is not target:  # x += y would now mutate x
            _make_out_of_place(node)
    _graph.eliminate_dead_code(final, keep=dead_before - zeros)
    if any(node.op == "call_module" and node.target == ARCH for node in graph.nodes):
        raise RuntimeError("the architecture is still read after finalize; please report this")
    final.delete_submodule(ARCH)
    final.delete_all_unused_submodules()
    _graph.delete_tensors(final, before - _graph.used_tensor_names(final))
    final.meta[META_KEY] = {**final.meta.get(META_KEY, {}), "decisions": dict(decisions)}
    return _graph.finish(final)


def _resolve(value: object) -> object:
    """The original value a gate stands in for (its op's output)."""
    is_gate = (
        isinstance(value, fx.Node) and value.op == "call_function" and (value.target is dnat_gate)
    )
    return value.args[2] if is_gate else value


def _drop_zero_operand(graph: fx.Graph, add: fx.Node, zeros: set[fx.Node]) -> None:
    """Rewrite ``a + 0`` to ``a``; an add of zeros is itself zero (a chain's inner add)."""
    a, b = add.args
    alpha = add.kwargs.get("alpha", 1)
    live = [arg for arg in (a, b) if arg not in zeros and not _is_literal_zero(arg)]
    if not live:
        zeros.add(add)
        return
    if len(live) == 2:
        raise RuntimeError(f"node {add.name} has a zero operand but two live ones")
    value = live[0]
    if value is b and alpha != 1:  # torch.add(a, b, alpha=k) without a is k·b
        with graph.inserting_before(add):
            value = graph.call_function(torch.mul, (b, alpha))
    add.replace_all_uses_with(value)
    graph.erase_node(add)


def _is_literal_zero(arg: object) -> bool:
    return isinstance(arg, int) and not isinstance(arg, bool) and arg == 0


def _make_out_of_place(node: fx.Node) -> None:
    if node.op == "call_method":
        node.target = "add"
    else:
        node.target = operator.add
