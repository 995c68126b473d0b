"""cost: what a network and each of its edges cost — parameters, and FLOPs as torch counts them.

FLOPs are torch.utils.flop_counter's: one multiply-add is 2 FLOPs, and only the ops torch has a
formula for are counted — matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions
and attention. Elementwise ops, normalisation, pooling and the bias add of a linear layer count 0
(a ``Linear(4, 3)`` on a batch of 2 is 2·2·4·3 = 48 FLOPs). Counts are for one forward, in eval
mode and without autograd, of the whole batch of the inputs given: divide by the batch size for
FLOPs per sample.

This module sits beside the IR: it knows graphs and modules, not files, so the passes may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxdnat.ir import Edge


@dataclass(frozen=True)
class EdgeCost:
    """What an edge's "same" candidate — its branch, op(x) — costs; "identity" and "none" cost
    nothing, so this is also what either saves. A skip edge's op is already the identity: 0, 0."""

    params: int
    """Parameters the branch reads: of the modules it calls and the tensors only it reads."""
    flops: int
    """FLOPs of the branch's nodes on the inputs given to :func:`edge_costs` (whole batch)."""


def count_params(module: nn.Module) -> int:
    """Number of parameter elements of ``module`` (each shared parameter once)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, inputs: Any) -> int:
    """FLOPs of one forward of ``module`` on ``inputs`` (see the module docstring for what counts).

    ``inputs``: a tensor, or a tuple of the positional arguments of ``forward``; the count is for
    their whole batch. Runs in eval mode under ``torch.no_grad()``; the module's train/eval mode
    is restored afterwards. Raises whatever ``module`` raises on ``inputs``."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops()


class _FlopsPerNode(fx.Interpreter):
    """Runs the graph once, counting the FLOPs of each node on its own."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.flops: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        with FlopCounterMode(display=False) as counter:
            result = super().run_node(n)
        self.flops[n.name] = counter.get_total_flops()
        return result


def node_flops(gm: fx.GraphModule, inputs: Any) -> dict[str, int]:
    """FLOPs of every node of ``gm`` on ``inputs``, by FX node name, in graph order.

    Every node has an entry: 0 for placeholders, attributes, the output and ops without a FLOP
    formula; a ``call_module`` node counts all of its module. The entries add up to
    :func:`count_flops` of ``gm``. ``inputs``, mode and errors as :func:`count_flops`."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    interpreter = _FlopsPerNode(gm)
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            interpreter.run(*inputs)
    finally:
        gm.train(was_training)
    return interpreter.flops


def branch_params(gm: fx.GraphModule, edge: Edge) -> int:
    """Parameter elements read by ``edge``'s branch: all of each module it calls, and each
    parameter it fetches with ``get_attr`` where only branch nodes read that fetch. 0 for a skip.

    Raises ``KeyError`` if ``edge`` names a node that ``gm`` does not have."""
    nodes = {n.name: n for n in gm.graph.nodes}
    return _branch_params(gm, [nodes[name] for name in edge.nodes])


def _branch_params(gm: fx.GraphModule, branch: list[fx.Node]) -> int:
    tensors: dict[str, torch.Tensor] = dict(gm.named_parameters())
    inside = set(branch)
    names: set[str] = set()
    for node in branch:
        if node.op == "call_module":
            prefix = node.target + "."
            names.update(n for n in tensors if n.startswith(prefix))
        for arg in node.all_input_nodes:
            if arg.op == "get_attr" and arg.target in tensors and set(arg.users) <= inside:
                names.add(arg.target)
    return sum(tensors[n].numel() for n in names)


def edge_costs(gm: fx.GraphModule, edges: Sequence[Edge], inputs: Any) -> dict[str, EdgeCost]:
    """The cost of each edge's "same" candidate, by edge name in the order of ``edges``.

    ``gm`` is the traced (ungated) module the edges were discovered on; it runs once on
    ``inputs`` (see :func:`count_flops`). Raises ``KeyError`` if an edge names a node that
    ``gm`` does not have, and whatever ``gm`` raises on ``inputs``."""
    flops = node_flops(gm, inputs)
    nodes = {n.name: n for n in gm.graph.nodes}
    costs = {}
    for edge in edges:
        branch = [nodes[name] for name in edge.nodes]
        costs[edge.name] = EdgeCost(
            params=_branch_params(gm, branch), flops=sum(flops.get(n.name, 0) for n in branch)
        )
    return costs
