"""θ: the architecture parameters, and the op that mixes the candidates of a join's edges.

What the mix computes is written once, plainly, in :func:`fxdnat.mix.reference_mix`; the CPU
computes the same with fewer passes over the activations (``fxdnat._cpu_mix``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import fx, nn

from fxdnat._cpu_mix import cpu_mix
from fxdnat.ir import CHOICES, SAME, Edge, check_decisions
from fxdnat.mix import Spec, Term, Tree, reference_mix

__all__ = ["Architecture", "Spec", "Term", "Tree", "dnat_mix"]


@fx.wrap
def dnat_mix(weights: torch.Tensor, spec: Spec, *tensors: torch.Tensor) -> torch.Tensor:
    """A join (or an op edge) with every edge's candidates mixed by θ, DNAT eq. 1.

    Each edge contributes ``θ_none·0 + θ_identity·x + θ_same·op(x)``; the join sums them. With
    θ = (0, 0, 1) on every row this is the original sum, bit for bit (see :data:`Tree`).

    ``weights`` is the masked θ, (groups, 3); ``spec`` (:data:`Spec`) says which entries scale
    which of ``tensors``. Wrapped for FX so that a gated module re-traces (and
    ``torch.compile``s) with one call per join.

    On the CPU, outside ``torch.compile``, it reads θ's entries as Python numbers and skips the
    work a coefficient of exactly 0 or 1 makes needless (``fxdnat._cpu_mix``; a branch whose
    every coefficient is exactly 0 then gets no gradient: None rather than zeros); elsewhere it
    is :func:`fxdnat.mix.reference_mix`.
    """
    if _reads_theta_as_numbers(weights):
        return cpu_mix(weights, spec, tensors)
    return reference_mix(weights, spec, tensors)


def _reads_theta_as_numbers(weights: torch.Tensor) -> bool:
    """The CPU form applies: reading θ costs no sync and no compiler is tracing."""
    return weights.is_cpu and not torch.compiler.is_compiling()


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

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """θ is a constant for forwards run inside: ω's step of the alternating update needs no
        gradient of θ, and the mixes then keep no activations for one and compute none."""
        was = self.theta.requires_grad
        self.theta.requires_grad_(False)
        try:
            yield
        finally:
            self.theta.requires_grad_(was)

    @property
    def num_groups(self) -> int:
        return self.theta.shape[0]

    def edges_of(self, group: int) -> list[Edge]:
        return [e for e, g in zip(self.edges, self.groups, strict=True) if g == group]

    @torch.no_grad()
    def assign(self, decisions: Mapping[str, str]) -> None:
        """Set θ one-hot on ``decisions`` ({edge name: choice}; missing edges keep "same")."""
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
