"""DNAT for your own training loop: the gated module, its two parameter groups, the θ step.

dnat = fxdnat.DNAT(model, example_inputs, tie="cell")
opt_w = torch.optim.SGD(dnat.weights(), lr=0.05, momentum=0.9)
opt_theta = dnat.theta_optimizer()
for x, y in loader:
    with dnat.theta_frozen():  # ω first (θ a constant: no work for its gradient),
        dnat.weight_step(F.cross_entropy(dnat.module(x), y), opt_w)
    dnat.theta_step(F.cross_entropy(dnat.module(x), y), opt_theta)  # then θ, same batch
final = dnat.finalize()  # a clean GraphModule; keep training its weights
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from fxdnat.arch import Architecture
from fxdnat.frontend import trace
from fxdnat.passes import decide, discover, finalize, gate

# DARTS's architecture optimiser (Liu et al. 2019, `arch_learning_rate` etc.), DESIGN.md's default
THETA_LR, THETA_BETAS, THETA_WEIGHT_DECAY = 3e-4, (0.5, 0.999), 1e-3


class DNAT:
    """A model lifted to a θ-gated GraphModule, with the steps of DNAT's architecture stage.

    Args:
        model: the network to transform (left untouched: the gated module is a copy).
        example_inputs: a tensor or tuple of inputs, for tracing and shapes.
        granularity: "branch" or "op" (see :func:`fxdnat.passes.discover`).
        tie: "cell" or "full" (see :func:`fxdnat.passes.gate`).
        leaves: extra module paths or classes to keep opaque when tracing.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        granularity: str = "branch",
        tie: str = "cell",
        leaves: Iterable[str | type] = (),
    ) -> None:
        self.traced = trace(model, example_inputs, leaves=leaves)
        self.edges = discover(self.traced, granularity)
        self.module: fx.GraphModule = gate(self.traced, self.edges, tie=tie)

    @property
    def arch(self) -> Architecture:
        return self.module.arch

    def theta_frozen(self) -> contextlib.AbstractContextManager[None]:
        """θ a constant inside the block (:meth:`Architecture.frozen`): run ω's forward here."""
        return self.arch.frozen()

    def weights(self) -> list[nn.Parameter]:
        """ω: every trainable parameter but θ."""
        theta = self.arch.theta
        return [p for p in self.module.parameters() if p.requires_grad and p is not theta]

    def theta_optimizer(
        self,
        lr: float = THETA_LR,
        betas: tuple[float, float] = THETA_BETAS,
        weight_decay: float = THETA_WEIGHT_DECAY,
    ) -> torch.optim.Adam:
        return torch.optim.Adam([self.arch.theta], lr=lr, betas=betas, weight_decay=weight_decay)

    def weight_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float | None = None
    ) -> None:
        """Backward into ω only (θ gets no gradient), clip, step, clear the gradients."""
        weights = self.weights()
        loss.backward(inputs=weights)
        if clip is not None:
            nn.utils.clip_grad_norm_(weights, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def theta_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Gradient of ``loss`` with respect to θ alone (no weight gradients computed), step."""
        theta = self.arch.theta
        (theta.grad,) = torch.autograd.grad(loss, [theta])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def decisions(self) -> dict[str, str]:
        """Each edge's current choice (largest θ), never leaving a join dead."""
        return decide(self.module)

    def finalize(self, decisions: dict[str, str] | None = None) -> fx.GraphModule:
        """The clean network for ``decisions`` (default: :meth:`decisions`), weights carried."""
        return finalize(self.module, self.decisions() if decisions is None else decisions)
