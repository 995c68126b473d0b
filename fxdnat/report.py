"""The tables ``fxdnat edges`` and ``fxdnat zoo`` print: each edge's ops and cost, each model's.

The numbers come from the cost model, :mod:`fxdnat.cost`; this module only gathers them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import fx

from fxdnat import tasks
from fxdnat.branches import branch_kind
from fxdnat.checkpoint import build_traced
from fxdnat.cost import count_flops, count_params, edge_costs
from fxdnat.ir import META_KEY, Edge
from fxdnat.passes import discover
from fxdnat.passes._graph import op_summary
from fxdnat.passes.gate import group_count


@dataclass(frozen=True)
class EdgeReport:
    """One row of ``fxdnat edges``: an edge, its ops and what its "same" candidate costs."""

    edge: Edge
    summary: str
    params: int
    flops: int
    computes: str  # fxdnat.branches.branch_kind: "attention", "mlp", or the edge's kind


def edge_reports(gm: fx.GraphModule, edges: Sequence[Edge], inputs: Any) -> list[EdgeReport]:
    """Summary, parameters and FLOPs of each edge's branch (:func:`fxdnat.cost.edge_costs`)."""
    costs = edge_costs(gm, edges, inputs)
    return [
        EdgeReport(
            edge=edge,
            summary=op_summary(gm, edge),
            params=costs[edge.name].params,
            flops=costs[edge.name].flops,
            computes=branch_kind(gm, edge),
        )
        for edge in edges
    ]


@dataclass(frozen=True)
class EdgeListing:
    """What ``fxdnat edges SPEC`` shows."""

    spec: str
    task: tasks.Task  # what the model was built and traced for, with its sizes
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
            **self.task.model_fields(),
            "granularity": self.granularity,
            "params": self.params,
            "flops": self.flops,
            "groups": self.groups,
            "leaves": self.leaves,
            "opaque_params": self.opaque_params,
            "edges": [
                {
                    **r.edge.to_dict(),
                    "summary": r.summary,
                    "computes": r.computes,
                    "params": r.params,
                    "flops": r.flops,
                }
                for r in self.reports
            ],
        }


def inspect_edges(
    spec: str,
    *,
    num_classes: int = 10,
    input_size: int | None = None,
    granularity: str = "branch",
    task: tasks.Task | None = None,
) -> EdgeListing:
    """Build ``spec`` for ``task`` (default: :func:`fxdnat.tasks.for_spec`, from
    ``num_classes`` and ``input_size``), trace it on one example and report its edges with their
    cost (FLOPs of that example) and θ group counts."""
    task = task or tasks.for_spec(spec, num_classes=num_classes, input_size=input_size)
    built, gm = build_traced({"spec": spec, **task.model_fields(), "kwargs": {}})
    task = task.resolved(built)
    inputs = (task.example(),)
    edges = discover(gm, granularity)
    return EdgeListing(
        spec=built.spec,
        task=task,
        granularity=granularity,
        reports=edge_reports(gm, edges, inputs),
        groups={tie: group_count(gm, edges, tie) for tie in ("full", "cell")},
        params=count_params(built.model),
        flops=count_flops(gm, inputs),
        leaves=dict(gm.meta[META_KEY]["leaves"]),
        opaque_params=gm.meta[META_KEY]["opaque_params"],
    )


def zoo_rows() -> list[dict]:
    """One row per zoo model: parameters and FLOPs at 32 px (a language model's: of one window
    of 128 byte tokens), edges and θ groups."""
    from fxdnat import zoo  # here, as in fxdnat.specs: the zoo imports timm (seconds)

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
