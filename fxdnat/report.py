"""What an edge or a network costs and does: parameters, FLOPs (torch's counter), op summaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxdnat.ir import META_KEY, Edge
from fxdnat.passes import _graph

# Nodes that do not change what an edge computes, left out of its summary.
_QUIET = {"identity", "droppath", "dropout", "getitem", "getattr", "size", "contiguous"}


@dataclass(frozen=True)
class EdgeReport:
    edge: Edge
    summary: str
    params: int
    flops: int


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, inputs: Any) -> int:
    """FLOPs of one forward in eval mode (torch.utils.flop_counter: a multiply-add is 2)."""
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
    """FLOPs of every node of ``gm`` for ``inputs`` (eval mode, no grad)."""
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


def op_summary(gm: fx.GraphModule, edge: Edge, max_ops: int = 8) -> str:
    """``conv3x3-bn-relu-conv3x3-bn`` for a branch, ``skip`` for a skip edge."""
    if edge.kind == "skip":
        return "skip"
    nodes = {n.name: n for n in gm.graph.nodes}
    labels = [_graph.op_label(gm, nodes[name]) for name in edge.nodes]
    labels = [label for label in labels if label not in _QUIET] or ["identity"]
    if len(labels) > max_ops:
        labels = [*labels[: max_ops - 3], "…", *labels[-2:], f"({len(labels)} ops)"]
    return "-".join(labels)


def edge_reports(gm: fx.GraphModule, edges: Sequence[Edge], inputs: Any) -> list[EdgeReport]:
    """Summary, parameters and FLOPs of each edge's branch."""
    flops = node_flops(gm, inputs)
    nodes = {n.name: n for n in gm.graph.nodes}
    reports = []
    for edge in edges:
        branch = [nodes[name] for name in edge.nodes]
        reports.append(
            EdgeReport(
                edge=edge,
                summary=op_summary(gm, edge),
                params=_branch_params(gm, branch),
                flops=sum(flops.get(n.name, 0) for n in branch),
            )
        )
    return reports


def _branch_params(gm: fx.GraphModule, branch: list[fx.Node]) -> int:
    """Parameters read by the branch: its module calls and the attributes only it reads."""
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


@dataclass(frozen=True)
class EdgeListing:
    """What ``fxdnat edges SPEC`` shows."""

    spec: str
    input_size: int
    granularity: str
    reports: list[EdgeReport]
    groups: dict[str, int]  # tie mode -> θ rows
    params: int
    flops: int
    leaves: dict[str, str]  # submodules the tracer kept opaque -> why; their edges are hidden
    opaque_params: int  # parameters inside opaque submodules (leaves, timm's no-trace modules)

    @property
    def joins(self) -> int:
        return len({r.edge.join for r in self.reports if r.edge.join is not None})

    def to_dict(self) -> dict:
        return {
            "spec": self.spec,
            "input_size": self.input_size,
            "granularity": self.granularity,
            "params": self.params,
            "flops": self.flops,
            "groups": self.groups,
            "leaves": self.leaves,
            "opaque_params": self.opaque_params,
            "edges": [
                {**r.edge.to_dict(), "summary": r.summary, "params": r.params, "flops": r.flops}
                for r in self.reports
            ],
        }


def inspect_edges(
    spec: str, *, num_classes: int = 10, input_size: int | None = None, granularity: str = "branch"
) -> EdgeListing:
    """Build ``spec``, trace it and report its edges with their cost and θ group counts."""
    from fxdnat.frontend import trace
    from fxdnat.passes import discover
    from fxdnat.passes.gate import group_count
    from fxdnat.specs import build_model

    built = build_model(spec, num_classes=num_classes, input_size=input_size)
    inputs = (torch.randn(1, 3, built.input_size, built.input_size),)
    gm = trace(built.model, inputs)
    edges = discover(gm, granularity)
    return EdgeListing(
        spec=built.spec,
        input_size=built.input_size,
        granularity=granularity,
        reports=edge_reports(gm, edges, inputs),
        groups={tie: group_count(gm, edges, tie) for tie in ("full", "cell")},
        params=count_params(built.model),
        flops=count_flops(gm, inputs),
        leaves=dict(gm.meta[META_KEY]["leaves"]),
        opaque_params=gm.meta[META_KEY]["opaque_params"],
    )


def zoo_rows() -> list[dict]:
    """One row per zoo model: parameters and FLOPs at 32 px, edges and θ groups."""
    from fxdnat import zoo

    rows = []
    for name in zoo.list_models():
        info = zoo.model_info(name)
        listing = inspect_edges(f"zoo:{name}")
        rows.append(
            {
                "name": name,
                "family": info.family,
                "params": listing.params,
                "flops": listing.flops,
                "edges": len(listing.reports),
                "groups_cell": listing.groups["cell"],
                "groups_full": listing.groups["full"],
                "recipe": info.default_recipe,
                "reference": info.reference,
            }
        )
    return rows
