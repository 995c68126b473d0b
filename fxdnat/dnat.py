"""DNAT's training step, in one place: the gated module, its ω and θ, and how they update.

Your own loop and fxdnat's engine (fxdnat/engine/) drive training through this same object:

dnat = fxdnat.DNAT(model, example_inputs, tie="cell")
opt_w = torch.optim.SGD(dnat.weights(), lr=0.05, momentum=0.9)
opt_theta = dnat.theta_optimizer()
for x, y in loader:  # ω's step, then θ's on the same minibatch (Kim & Lee 2020 §3)
    dnat.step(lambda net: F.cross_entropy(net(x), y), opt_w, opt_theta)
final = dnat.finalize()  # a clean GraphModule; keep training its weights

A step is one backward and one clip-and-step of ω, then θ's step where the update rule says:
"alternate" (the paper's) computes θ's gradient alone on a second forward, after ω's update;
"joint" steps θ on the gradient of the same backward. Without θ's optimizer (ω's warm-up, the
random control, the network stage) a step trains ω alone. Under a cost budget
(:attr:`DNAT.cost_term`, fxdnat/budget.py) θ's loss gains the budget's term.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import fx, nn

from fxdnat.arch import Architecture
from fxdnat.budget import BudgetTerm
from fxdnat.frontend import trace
from fxdnat.ir import Edge, Granularity, Scale, Tie, Update
from fxdnat.passes import decide, discover, finalize, gate
from fxdnat.reach import THETA_BETAS, THETA_LR, THETA_WEIGHT_DECAY

LossOf = Callable[[nn.Module], "torch.Tensor | tuple[torch.Tensor, Any]"]
"""A minibatch's loss as a function of the network to run it through; it may return
``(loss, anything)``, e.g. the logits, handed back in :attr:`Step.output`."""


@dataclass
class Step:
    """What one step computed, as tensors on the device (reading them costs no synchronisation
    until you do): the loss and ``output`` of ω's forward, ω's gradient norm before clipping,
    and, after an alternating θ step, θ's loss and gradient norm."""

    loss: torch.Tensor
    output: Any
    weight_grad_norm: torch.Tensor
    theta_loss: torch.Tensor | None = None
    theta_grad_norm: torch.Tensor | None = None


class DNAT:
    """A model lifted to a θ-gated GraphModule, with the steps of DNAT's architecture stage.

    Args:
        model: the network to transform (left untouched: the gated module is a copy).
        example_inputs: a tensor or tuple of inputs, for tracing and shapes.
        granularity: "branch" or "op" (see :func:`fxdnat.passes.discover`).
        tie: "cell" or "full" (see :func:`fxdnat.passes.gate`).
        leaves: extra module paths or classes to keep opaque when tracing.

    Raises:
        fxdnat.TraceError: the model cannot be traced (the message names the module to make a
            leaf); ValueError: it has no eligible edge.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        granularity: Granularity = "branch",
        tie: Tie = "cell",
        leaves: Iterable[str | type] = (),
    ) -> None:
        traced = trace(model, example_inputs, leaves=leaves)
        edges = discover(traced, granularity)
        self._adopt(gate(traced, edges, tie=tie), traced, edges)

    @classmethod
    def from_module(
        cls,
        module: fx.GraphModule,
        *,
        traced: fx.GraphModule | None = None,
        edges: Iterable[Edge] = (),
    ) -> DNAT:
        """Steps for a module already lifted: a gated one (restored from a checkpoint, say), or
        one without θ (the original, or a finalized network), whose steps train ω alone."""
        self = cls.__new__(cls)
        self._adopt(module, traced, list(edges))
        return self

    def _adopt(
        self, module: fx.GraphModule, traced: fx.GraphModule | None, edges: list[Edge]
    ) -> None:
        self.module = module
        """The network being trained: the gated GraphModule (or one without θ)."""
        self.traced, self.edges = traced, edges
        self.wrapper: nn.Module = module
        """What ω's forward runs through: ``module`` itself, or a DDP / ``torch.compile``
        wrapper of it that the caller sets. θ's forward always runs through ``module``."""
        self.cost_term: BudgetTerm | None = None
        """A cost budget's term (fxdnat/budget.py), added to θ's loss when set; its multipliers
        step after each θ step."""
        theta = self.theta
        self._weights = [p for p in module.parameters() if p.requires_grad and p is not theta]

    @property
    def arch(self) -> Architecture | None:
        """θ's holder (rows, groups, tie), or None for a module without θ."""
        return getattr(self.module, "arch", None)

    @property
    def theta(self) -> nn.Parameter | None:
        """θ, shape (rows, 3): one row of (none, identity, same) per tied group of edges."""
        arch = self.arch
        return arch.theta if arch is not None else None

    def weights(self) -> list[nn.Parameter]:
        """ω: every trainable parameter but θ."""
        return self._weights

    def theta_frozen(self) -> contextlib.AbstractContextManager[None]:
        """θ a constant inside the block (:meth:`Architecture.frozen`): run ω's forward here, so
        the joins keep nothing for θ's gradient."""
        arch = self.arch
        return arch.frozen() if arch is not None else contextlib.nullcontext()

    def weights_forward(
        self, theta_steps: bool, update: Update = "alternate"
    ) -> contextlib.AbstractContextManager[None]:
        """The context ω's forward runs in: θ a constant (:meth:`theta_frozen`) unless θ steps
        on this forward's gradient (``theta_steps`` with the joint update). ω's step of the
        alternating update, and any step while θ waits, need no gradient of θ: the joins then
        keep nothing for it. Not under DDP, whose reducer expects every parameter it was given.
        """
        if (theta_steps and update == "joint") or world_size() > 1:
            return contextlib.nullcontext()
        return self.theta_frozen()

    def theta_optimizer(
        self,
        lr: float = THETA_LR,
        betas: tuple[float, float] = THETA_BETAS,
        weight_decay: float = THETA_WEIGHT_DECAY,
    ) -> torch.optim.Adam:
        """θ's optimiser: Adam, with DARTS's architecture-optimiser defaults (fxdnat/reach.py).

        Raises:
            ValueError: the module has no θ.
        """
        if self.theta is None:
            raise ValueError("this module has no θ (it was never gated, or it was finalized)")
        return torch.optim.Adam([self.theta], lr=lr, betas=betas, weight_decay=weight_decay)

    def step(
        self,
        loss_of: LossOf,
        opt_w: torch.optim.Optimizer,
        opt_theta: torch.optim.Optimizer | None = None,
        *,
        update: Update = "alternate",
        clip: float | None = None,
    ) -> Step:
        """One training step on one minibatch: ω's, then θ's if ``opt_theta`` is given.

        ``loss_of(net)`` computes the minibatch's loss through ``net``; it is called once for ω
        (through :attr:`wrapper`) and, when alternating, once more for θ after ω's update
        (through :attr:`module`, not DDP's wrapper: its hooks expect ω's gradients). ``clip``
        bounds ω's global gradient norm (None: no clipping).
        """
        searching = opt_theta is not None and self.theta is not None
        alternate = searching and update == "alternate"
        with self.weights_forward(searching, update):
            loss, output = _split(loss_of(self.wrapper))
        budgeted = searching and self.cost_term is not None
        if budgeted and not alternate:  # the term's gradient reaches θ alone
            norm = self.weight_step(loss + self.cost_term.penalty(), opt_w, clip)
        else:
            norm = self.weight_step(loss, opt_w, clip)
        done = Step(loss, output, norm)
        if searching and not alternate:  # joint: θ's gradient came with the same backward
            opt_theta.step()
            opt_theta.zero_grad(set_to_none=True)
        elif searching:
            done.theta_loss, _ = _split(loss_of(self.module))
            total = done.theta_loss + self.cost_term.penalty() if budgeted else done.theta_loss
            done.theta_grad_norm = self.theta_step(total, opt_theta)
        elif self.theta is not None:  # under DDP θ got a gradient it must not keep
            self.theta.grad = None
        if budgeted:
            self.cost_term.update()
        return done

    def weight_step(
        self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float | None = None
    ) -> torch.Tensor:
        """Backward, clip ω's gradient to the global norm ``clip`` (None: measure it only), step,
        clear ω's gradients. Returns ω's gradient norm before clipping (a 0-dim tensor).
        Compute ``loss`` inside :meth:`theta_frozen` unless θ steps on this gradient too."""
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self._weights, math.inf if clip is None else clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def theta_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """θ's step: the gradient of ``loss`` with respect to θ alone (no weight gradient is
        computed), averaged over the processes of a DDP run, then the optimizer's step.
        Returns θ's gradient norm (a 0-dim tensor)."""
        theta = self.theta
        (grad,) = torch.autograd.grad(loss, [theta])
        if (world := world_size()) > 1:  # θ is not DDP's to average: its forward bypassed DDP
            dist.all_reduce(grad)
            grad /= world
        theta.grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return torch.linalg.vector_norm(grad)

    def decisions(self) -> dict[str, str]:
        """Each edge's current choice (largest θ), never leaving a join dead."""
        return decide(self.module)

    def finalize(
        self, decisions: dict[str, str] | None = None, *, scale: Scale = "keep"
    ) -> fx.GraphModule:
        """The clean network for ``decisions`` (default: :meth:`decisions`), weights carried;
        ``scale`` as :func:`fxdnat.passes.finalize`."""
        chosen = self.decisions() if decisions is None else decisions
        return finalize(self.module, chosen, scale=scale)


def _split(value: torch.Tensor | tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
    """(loss, output) from what a loss function returned."""
    if isinstance(value, torch.Tensor):
        return value, None
    loss, output = value
    return loss, output


def world_size() -> int:
    """Processes of the running DDP job (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
