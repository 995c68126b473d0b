"""The cost term of a budgeted architecture stage: θ's expected cost, held to the target by a
Lagrange multiplier.

DNAT's mix weighs each edge's operation by its raw θ_same, so the share of a branch's cost the
gated network still pays is θ_same clipped to [0, 1] (1 at the initial (0, 0, 1); 0 once the
branch no longer counts). The expected cost of resource r is

    C_r(θ) = fixed_r + Σ_parts cost_part,r · Π_(e of the part) clip(θ_e,same, 0, 1)

(a fraction of the original's cost; a part is a branch's nodes, fxdnat.cost.Part)
and θ's loss gains ``Σ_r λ_r · C_r(θ) / target_r``. After each θ step the multiplier follows
dual ascent, ``λ_r ← max(0, λ_r + η · (C_r − target_r) / target_r)``: it grows while the
expected cost is over the target and shrinks back once under. Why a multiplier rather than a
fixed penalty weight: θ's gradient from the loss differs by orders of magnitude between models
and data sets (and Adam rescales it anyway), so no one weight both reaches a target and stops
there; the multiplier needs no tuning per model, only a rate. Why θ_same itself rather than
a softmax of θ's row (the chance that decide keeps "same"): the term then lowers the weight the
network computes with, so the network trains without the branches it gives up; a softmax moves
the argmax and leaves θ_same, and the network, where they were (measured in docs/budgets.md).
The budget is met exactly at the end whatever θ learned (``decide(..., budget=)``, an exact
knapsack); the term's job is that the network trains towards an architecture that fits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fxdnat.arch import Architecture
from fxdnat.cost import CostModel
from fxdnat.ir import CHOICES, SAME

MULTIPLIER_LR = 0.05
"""η, the multiplier's step per θ step per unit of relative excess: 20 steps 100 % over the
target raise λ by 1 (the θ loss's own gradient is ~10⁻³–10⁻² per entry on ResNet20; digits)."""


class BudgetTerm:
    """θ's expected cost under ``budget`` (resource → fraction of the original's cost), with
    the multipliers that push it there.

    Args:
        arch: the gated module's θ holder (rows, groups, masks).
        costs: the network's :class:`fxdnat.cost.CostModel` (every resource of ``budget``).
        budget: e.g. ``{"flops": 0.7}``.
    """

    def __init__(
        self,
        arch: Architecture,
        costs: CostModel,
        budget: Mapping[str, float],
        *,
        multiplier_lr: float = MULTIPLIER_LR,
    ) -> None:
        self.arch, self.budget = arch, dict(budget)
        self.multiplier_lr = multiplier_lr
        self.multipliers = dict.fromkeys(self.budget, 0.0)
        """λ per resource (plain floats: a checkpoint keeps them)."""
        self.expected: dict[str, float] = {}
        """C_r(θ) at the last :meth:`penalty`, a fraction of the original cost."""
        edges = arch.edges
        self._rows = torch.tensor([arch.group_of[e.name] for e in edges], dtype=torch.long)
        # each part is kept when all its edges keep "same": its members' indices, padded with
        # len(edges), whose chance is 1
        position = {e.name: i for i, e in enumerate(edges)}
        width = max((len(p.edges) for p in costs.parts), default=1)
        self._members = torch.tensor(
            [
                [position[n] for n in p.edges] + [len(edges)] * (width - len(p.edges))
                for p in costs.parts
            ],
            dtype=torch.long,
        ).reshape(len(costs.parts), width)
        self._weights = {  # cost_part,r / total_r (parts, ), and what no decision removes
            r: torch.tensor([p.cost[r] / costs.total[r] for p in costs.parts]) for r in self.budget
        }
        self._fixed = {r: 1.0 - float(w.sum()) for r, w in self._weights.items()}

    def expected_cost(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Resource → C_r(θ), a 0-dim tensor differentiable in ``theta`` (groups × 3): each
        part's cost times the product of its edges' θ_same, each clipped to [0, 1] (its
        gradient that of max(θ_same, 0))."""
        raw = theta[self._rows.to(theta.device), CHOICES.index(SAME)].relu()
        # the value clipped at 1, the gradient of the unclipped one: a θ_same above 1 still pays
        # for its branch (clamp's gradient is 0 there, and at exactly 1, where θ starts)
        same = raw - (raw - raw.clamp(max=1.0)).detach()
        kept = torch.cat([same, same.new_ones(1)])[self._members.to(theta.device)].prod(dim=1)
        return {
            r: self._fixed[r] + (w.to(theta.device) * kept).sum() for r, w in self._weights.items()
        }

    def penalty(self) -> torch.Tensor:
        """``Σ_r λ_r · C_r(θ) / target_r``, to add to θ's loss (0-dim, on θ's device)."""
        expected = self.expected_cost(self.arch.theta)
        self.expected = {r: float(c.detach()) for r, c in expected.items()}
        return sum(self.multipliers[r] * c / self.budget[r] for r, c in expected.items())

    def update(self) -> None:
        """Dual ascent on each λ from the expected cost of the last :meth:`penalty`."""
        for r, target in self.budget.items():
            excess = (self.expected[r] - target) / target
            self.multipliers[r] = max(0.0, self.multipliers[r] + self.multiplier_lr * excess)
