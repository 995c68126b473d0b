"""θ: the architecture parameters, and the gate op that mixes an edge's three candidates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn

from fxdnat.ir import CHOICES, SAME, Edge


@fx.wrap
def dnat_gate(weights: torch.Tensor, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    """One edge's output, DNAT eq. 1: ``θ_none·0 + θ_identity·x + θ_same·op(x)``.

    ``weights`` is the edge's row of masked θ, columns in :data:`CHOICES` order; ``x`` is None
    where the edge does not allow the identity. Wrapped for FX so that a gated module re-traces
    (and ``torch.compile``s) with the gate as a single call.
    """
    if x is None:
        return weights[2] * y
    return torch.addcmul(weights[2] * y, weights[1], x)


class Architecture(nn.Module):
    """Holds θ, one row per group of tied edges, and the mask of choices each row allows.

    Calling it returns the masked θ, so a disallowed choice has weight 0 and gets no gradient.
    """

    def __init__(self, edges: Sequence[Edge], groups: Sequence[int], tie: str) -> None:
        super().__init__()
        if len(edges) != len(groups):
            raise ValueError(f"{len(edges)} edges but {len(groups)} group indices")
        self.edges: tuple[Edge, ...] = tuple(edges)
        self.groups: tuple[int, ...] = tuple(groups)
        self.tie = tie
        self.group_of: dict[str, int] = {e.name: g for e, g in zip(edges, groups, strict=True)}
        rows = max(groups, default=-1) + 1
        mask = torch.zeros(rows, len(CHOICES), dtype=torch.bool)
        for edge, group in zip(edges, groups, strict=True):
            mask[group, [CHOICES.index(c) for c in edge.choices]] = True
        theta = torch.zeros(rows, len(CHOICES))
        theta[:, CHOICES.index(SAME)] = 1.0  # start as the original network
        self.theta = nn.Parameter(theta)
        self.register_buffer("mask", mask)

    def forward(self) -> torch.Tensor:
        return self.theta * self.mask

    @property
    def num_groups(self) -> int:
        return self.theta.shape[0]

    def edges_of(self, group: int) -> list[Edge]:
        return [e for e, g in zip(self.edges, self.groups, strict=True) if g == group]

    @torch.no_grad()
    def assign(self, decisions: Mapping[str, str]) -> None:
        """Set θ one-hot on ``decisions`` ({edge name: choice}; missing edges keep "same")."""
        from fxdnat.passes.decide import check_decisions

        full = check_decisions(self.edges, decisions, allow_dead=True)
        rows: dict[int, str] = {}
        for edge in self.edges:
            group, choice = self.group_of[edge.name], full[edge.name]
            if rows.setdefault(group, choice) != choice:
                shared = ", ".join(e.name for e in self.edges_of(group))
                raise ValueError(
                    f"edges {shared} share one θ row (tie={self.tie!r}) but the decisions give "
                    f"them different choices; use tie='full' to set them independently"
                )
        self.theta.zero_()
        for group, choice in rows.items():
            self.theta[group, CHOICES.index(choice)] = 1.0

    def extra_repr(self) -> str:
        return f"edges={len(self.edges)}, groups={self.num_groups}, tie={self.tie!r}"
