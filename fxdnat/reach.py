"""θ's reach: how far the architecture stage can move θ, and whether noise will decide instead.

θ starts at (none, identity, same) = (0, 0, 1), so an edge changes only when an entry of its row
overtakes θ_same by travelling about 1. Adam moves each entry by at most about its learning rate
per step, so over T θ steps an entry travels at most about **lr·T** (the reach); where the
gradient's sign is noise, the steps add up like a random walk, about **lr·√T**. The paper's
protocol on CIFAR-10 (Kim & Lee 2020 §4: 300 epochs of 50,000 / 96 steps at lr 3e-4) has
lr·T ≈ 47 and lr·√T ≈ 0.12: far reach, little noise. A recipe states its reach
(``Recipe.theta_reach``) and the engine sets θ's lr to reach / T for the data set at hand, so
more θ steps (more epochs, smaller batches) lower the noise at the same reach.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

THETA_LR, THETA_BETAS, THETA_WEIGHT_DECAY = 3e-4, (0.5, 0.999), 1e-3
"""θ's optimiser, Adam, as DARTS's architecture optimiser (Liu et al. 2019: ``arch_learning_rate``,
``betas``, ``arch_weight_decay``), which DNAT adopts (DESIGN.md): the defaults of
:meth:`fxdnat.DNAT.theta_optimizer` and of every recipe. The weight decay pulls each θ entry
towards 0, the "none" threshold (docs/training.md)."""

NEEDED = 1.0
"""How far an entry must travel for an edge to change: θ_same − θ_identity at the start."""
NOISY = 1.0
"""lr·√T from which a random walk alone can carry an entry the distance a change needs
(:data:`NEEDED`), so noise can decide edges whose gradient says little. Measured with ResNet20:
at lr·√T 0.93 (digits-hard, quick recipe) five seeds of DNAT full chose alike on every edge; at
1.7 (digits, θ lr 0.15 over 132 steps) three seeds agreed on 72 % of edges
(docs/reproducibility.md)."""

UNSURE = 0.1
"""A decision whose θ margin (its top two entries' gap) is under this is reported as unsure."""


@dataclass(frozen=True)
class Reach:
    """The θ schedule of a run's architecture stage."""

    theta_steps: int  # T: θ updates in the stage (after the ω warm-up)
    warmup_steps: int  # ω-only steps before them
    theta_lr: float

    @property
    def lr_T(self) -> float:
        return self.theta_lr * self.theta_steps

    @property
    def lr_sqrt_T(self) -> float:
        return self.theta_lr * math.sqrt(self.theta_steps)

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "lr_T": self.lr_T, "lr_sqrt_T": self.lr_sqrt_T}

    def warnings(self, budgeted: bool = False) -> list[str]:
        """Plain sentences for a run that cannot change an edge, or whose choices noise makes
        (``budgeted``: a cost budget will change edges whatever θ does)."""
        if self.theta_steps == 0:
            return []
        found = []
        if self.lr_T < NEEDED:
            outcome = (
                "the budget's decisions will rest on θ's start more than on what it learns"
                if budgeted
                else "you will get the original network"
            )
            found.append(
                f"θ can move at most lr·T = {self.lr_T:.2g} in {self.theta_steps} θ steps and an "
                f"edge changes only after about {NEEDED:g}: {outcome}. "
                "Give θ more steps (--arch-epochs, a smaller --batch-size) or more reach "
                "(--theta-reach)"
            )
        if self.lr_sqrt_T >= NOISY:
            found.append(
                f"θ's noise scale lr·√T = {self.lr_sqrt_T:.2g} is {NOISY:g} or more, the "
                "distance a change needs: noise can decide edges and seeds will differ. Give θ "
                "more steps (--arch-epochs, a smaller --batch-size) at the same reach, rather "
                "than a larger θ learning rate"
            )
        return found


def plan(
    steps_per_epoch: int, arch_epochs: int, warmup_epochs: int, theta_lr: float, reach: float | None
) -> Reach:
    """The stage's θ schedule; with ``reach`` set, θ's lr is reach / T."""
    theta_steps = max(arch_epochs - warmup_epochs, 0) * steps_per_epoch
    if reach is not None and theta_steps:
        theta_lr = reach / theta_steps
    return Reach(theta_steps, warmup_epochs * steps_per_epoch, theta_lr)
