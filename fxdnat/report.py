"""The tables ``fxdnat edges`` and ``fxdnat zoo`` print: each edge's ops and cost, each model's.

The numbers come from the cost model, :mod:`fxdnat.cost`; this module only gathers them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxdnat.cost import count_flops, count_params, edge_costs
from fxdnat.frontend import trace
from fxdnat.ir import META_KEY, Edge
from fxdnat.passes import discover
from fxdnat.passes._graph import op_summary
from fxdnat.passes.gate import group_count
from fxdnat.specs import build_model


@dataclass(frozen=True)
class EdgeReport:
    """One row of ``fxdnat edges``: an edge, its ops and what its "same" candidate costs."""

    edge: Edge
    summary: str
    params: int
    flops: int


def edge_reports(gm: fx.GraphModule, edges: Sequence[Edge], inputs: Any) -> list[EdgeReport]:
    """Summary, parameters and FLOPs of each edge's branch (:func:`fxdnat.cost.edge_costs`)."""
    costs = edge_costs(gm, edges, inputs)
    return [
        EdgeReport(
            edge=edge,
            summary=op_summary(gm, edge),
            params=costs[edge.name].params,
            flops=costs[edge.name].flops,
        )
        for edge in edges
    ]


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
