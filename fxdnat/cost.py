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

import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxdnat.ir import RESOURCES, SAME, Edge


@dataclass(frozen=True)
class EdgeCost:
    """What an edge's "same" candidate — its branch, op(x) — costs; "identity" and "none" cost
    nothing, so this is also what either saves. A skip edge's op is already the identity: 0, 0."""

    params: int
    """Parameter elements only the branch reads (a shared or tied parameter is not counted)."""
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
    """Elements of the parameters that only ``branch``'s nodes read (by module call or
    ``get_attr``): what removing the branch removes. A parameter that another node reads too —
    a module called in two places, a weight tied to another module's — is not counted."""
    inside = set(branch)
    return sum(t.numel() for t, readers in _readers(gm).values() if readers and readers <= inside)


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


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


# ------------------------------------------------------------------------------ latency
class _TimePerNode(fx.Interpreter):
    """Runs the graph once, timing each node on its own (the device synchronised around it)."""

    def __init__(self, gm: fx.GraphModule, sync: Any) -> None:
        super().__init__(gm)
        self.sync = sync
        self.seconds: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.sync()
        start = time.perf_counter()
        result = super().run_node(n)
        self.sync()
        self.seconds[n.name] = time.perf_counter() - start
        return result


def node_latency(
    gm: fx.GraphModule, inputs: Any, *, repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Seconds of every node of ``gm`` on ``inputs`` (whole batch), by FX node name: the median
    over ``repeats`` timed runs after ``warmup`` untimed ones, in eval mode without autograd, on
    the device ``inputs`` are on (CUDA synchronised before and after each node).

    The protocol behind a latency budget (docs/budgets.md): each node is timed on its own, so the
    entries add up to more than one plain forward (the interpreter's dispatch is inside each
    time), and the sum over an edge's branch is what removing that branch saves in this model.
    ``inputs``, mode and errors as :func:`count_flops`."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), None)
    cuda = device is not None and device.type == "cuda"
    runs: list[dict[str, float]] = []
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                timer = _TimePerNode(gm, torch.cuda.synchronize if cuda else _no_sync)
                timer.run(*inputs)
                if i >= warmup:
                    runs.append(timer.seconds)
    finally:
        gm.train(was_training)
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def _no_sync() -> None:
    return None


# ---------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class Part:
    """Nodes (and the parameters only they read) that finalize removes when any one of
    ``edges`` does not keep "same": the nodes of one branch, or, where branches nest (an edge
    whose branch holds a join with edges of its own), the nodes the outer and inner branches
    share."""

    edges: tuple[str, ...]
    cost: dict[str, float]
    """Resource → what these nodes cost, in the units of :attr:`CostModel.total`."""


@dataclass(frozen=True)
class CostModel:
    """What the original network costs in each resource, and which parts of it each edge's
    "same" candidate keeps ("identity" and "none" keep none of its branch). Plain data: a run's
    checkpoint stores it (:meth:`to_dict`).

    The cost of the network finalized from decisions (:meth:`cost`) is ``total`` minus every
    part with an edge that does not keep "same". For FLOPs and parameters it is what
    :func:`count_flops` and :func:`count_params` count on the finalized module, or more, never
    less: nodes outside every branch that finalize drops because only removed branches read
    them (a DARTS cell's preprocessing when all its edges go) are not credited, nor is a
    parameter read by nodes of two parts (a module called in two branches, a weight tied to
    another module's) unless every reader goes with one part. For latency it is the sum of
    per-node times (:func:`node_latency`).
    """

    total: dict[str, float]
    """Resource → the original network's cost: "flops" (of one forward of the inputs the model
    was built with, FLOPs), "params" (elements), "latency" (seconds, :func:`node_latency`)."""
    parts: tuple[Part, ...]
    names: tuple[str, ...] | None = None
    """Every edge the model was measured for, in order: a model of another graph is refused."""

    @property
    def edges(self) -> dict[str, dict[str, float]]:
        """Edge name → resource → what changing that edge alone saves."""
        saved: dict[str, dict[str, float]] = {}
        for part in self.parts:
            for name in part.edges:
                mine = saved.setdefault(name, dict.fromkeys(self.total, 0.0))
                for r, c in part.cost.items():
                    mine[r] += c
        return saved

    def cost(self, decisions: Mapping[str, str]) -> dict[str, float]:
        """Resource → the cost of the network ``decisions`` finalize to (missing edges: "same")."""
        removed = [p for p in self.parts if any(decisions.get(e, SAME) != SAME for e in p.edges)]
        return {r: total - sum(p.cost[r] for p in removed) for r, total in self.total.items()}

    def fraction(self, decisions: Mapping[str, str]) -> dict[str, float]:
        """Resource → :meth:`cost` as a fraction of the original's (0 where that costs 0)."""
        cost = self.cost(decisions)
        return {r: c / self.total[r] if self.total[r] else 0.0 for r, c in cost.items()}

    def to_dict(self) -> dict[str, Any]:
        parts = [{"edges": list(p.edges), "cost": dict(p.cost)} for p in self.parts]
        return {
            "total": dict(self.total),
            "parts": parts,
            "names": None if self.names is None else list(self.names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        parts = tuple(Part(tuple(p["edges"]), dict(p["cost"])) for p in data["parts"])
        names = data.get("names")
        return cls(dict(data["total"]), parts, None if names is None else tuple(names))

    def check(self, edges: Sequence[Edge], resources: Iterable[str]) -> None:
        """Raise ValueError unless this model was measured for ``edges`` and counts
        ``resources``."""
        names = tuple(e.name for e in edges)
        if self.names is not None and self.names != names:
            raise ValueError(
                f"the cost model was measured for {len(self.names)} other edges than these "
                f"{len(names)}; build it with cost_model() on the same traced graph"
            )
        missing = [r for r in resources if r not in self.total]
        if missing:
            raise ValueError(
                f"the budget bounds {', '.join(missing)} but the cost model counts "
                f"{', '.join(self.total)}; build it with cost_model(..., resources=(..., "
                f"{', '.join(map(repr, missing))}))"
            )


def cost_model(
    gm: fx.GraphModule,
    edges: Sequence[Edge],
    inputs: Any,
    resources: Sequence[str] = ("flops", "params"),
    *,
    latency_inputs: Any = None,
) -> CostModel:
    """The :class:`CostModel` of ``gm`` (the traced, ungated module ``edges`` were found on).

    FLOPs are counted on ``inputs`` (e.g. one image, as a run's summary counts them); latency,
    when ``resources`` has it, is timed on ``latency_inputs`` (default ``inputs``), on their
    device — ``gm`` must be there too. Raises KeyError for an edge naming a node ``gm`` lacks,
    ValueError for a resource outside :data:`fxdnat.ir.RESOURCES`."""
    unknown = [r for r in resources if r not in RESOURCES]
    if unknown:
        raise ValueError(f"unknown resource(s) {unknown}; expected some of {RESOURCES}")
    nodes = {n.name: n for n in gm.graph.nodes}
    per_node: dict[str, dict[str, float]] = {}
    if "flops" in resources:
        per_node["flops"] = {k: float(v) for k, v in node_flops(gm, inputs).items()}
    if "latency" in resources:
        timed = inputs if latency_inputs is None else latency_inputs
        per_node["latency"] = node_latency(gm, timed)
    total = {r: sum(per_node[r].values()) for r in per_node}
    if "params" in resources:
        total["params"] = float(count_params(gm))
    # each live node goes with the edges whose branch holds it (a node that never reaches the
    # output was dead in the original already: finalize keeps the original's ops it does not
    # remove, so no decision saves it)
    live = _live(gm)
    owners: dict[fx.Node, tuple[str, ...]] = defaultdict(tuple)
    for edge in edges:
        for name in edge.nodes:
            if nodes[name] in live:
                owners[nodes[name]] += (edge.name,)
    parts: dict[tuple[str, ...], dict[str, float]] = {}
    for node, names in owners.items():
        part = parts.setdefault(names, dict.fromkeys(resources, 0.0))
        for r in per_node:
            part[r] += per_node[r].get(node.name, 0.0)
    if "params" in resources:
        for names, count in _params_by_owners(gm, owners).items():
            parts.setdefault(names, dict.fromkeys(resources, 0.0))["params"] += count
    ordered = tuple(Part(names, parts[names]) for names in sorted(parts, key=_edge_order(edges)))
    names = tuple(e.name for e in edges)
    return CostModel({r: total[r] for r in resources if r in total}, ordered, names)


def _edge_order(edges: Sequence[Edge]):
    position = {e.name: i for i, e in enumerate(edges)}
    return lambda names: [position[n] for n in names]


def _params_by_owners(
    gm: fx.GraphModule, owners: Mapping[fx.Node, tuple[str, ...]]
) -> dict[tuple[str, ...], float]:
    """Parameter elements by the edges any one of which removes every node that reads them (the
    edges common to all readers); a parameter some reader of which no edge removes is not
    counted (it stays whatever is decided)."""
    found: dict[tuple[str, ...], float] = defaultdict(float)
    for tensor, readers in _readers(gm).values():
        common = None
        for node in readers:
            mine = set(owners.get(node, ()))
            common = mine if common is None else common & mine
        if common:
            found[tuple(n for n in owners[next(iter(readers))] if n in common)] += tensor.numel()
    return found


def _readers(gm: fx.GraphModule) -> dict[int, tuple[torch.Tensor, set[fx.Node]]]:
    """Every parameter (by identity, so tied and shared ones once) and the nodes that read it:
    the calls of a module holding it, and the users of a ``get_attr`` of it."""
    found: dict[int, tuple[torch.Tensor, set[fx.Node]]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            for p in gm.get_submodule(node.target).parameters():
                found.setdefault(id(p), (p, set()))[1].add(node)
        elif node.op == "get_attr":
            value = _attribute(gm, node.target)
            if isinstance(value, nn.Parameter):
                found.setdefault(id(value), (value, set()))[1].update(node.users)
    return found


def _live(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value reaches the graph's output."""
    live: set[fx.Node] = set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live
