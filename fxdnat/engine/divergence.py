"""A loss or gradient that is not finite: found without synchronising, explained in one line.

A step computes, in order: ω's loss and gradient at (ω, θ), then ω's update, then θ's loss and
gradient at (new ω, θ), then θ's update. The first value of an epoch that is not finite says
which update came just before it, and so which learning rate to lower.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fxdnat.dnat import Step
from fxdnat.ir import Update

OMEGA_LOSS, OMEGA_GRAD, THETA_LOSS, THETA_GRAD = range(4)
_WATCHED = ("the loss", "ω's gradient", "the loss of θ's step", "θ's gradient")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class FirstNonFinite:
    """The first loss or gradient norm of an epoch that is not finite, and its place (step,
    and which of a step's four values), kept on the device: watching costs no synchronisation."""

    _NEVER = 2**62

    def __init__(self, device: torch.device) -> None:
        self.at = torch.tensor(self._NEVER, device=device)
        self.value = torch.tensor(0.0, device=device)

    def watch(self, value: torch.Tensor, step: int, what: int) -> None:
        value = value.detach().float()
        first = ~torch.isfinite(value) & (self.at == self._NEVER)
        self.at = torch.where(first, 4 * step + what, self.at)
        self.value = torch.where(first, value, self.value)

    def watch_step(self, done: Step, step: int) -> None:
        """The values of one DNAT step, in the order the step computed them."""
        self.watch(done.loss, step, OMEGA_LOSS)
        self.watch(done.weight_grad_norm, step, OMEGA_GRAD)
        if done.theta_loss is not None:
            self.watch(done.theta_loss, step, THETA_LOSS)
            self.watch(done.theta_grad_norm, step, THETA_GRAD)

    def found(self) -> tuple[int, int, float] | None:
        """(step, which value, the value) of the first one that was not finite."""
        at = int(self.at)
        return None if at == self._NEVER else (*divmod(at, 4), float(self.value))


def explain(
    found: tuple[int, int, float],
    *,
    epochs_done: int,
    update: str | None,
    lr: float,
    theta_lr: float,
    checkpoint: Path,
) -> TrainingError:
    """The error for a value found not finite in epoch ``epochs_done + 1``; ``update`` is the
    update just before it (:func:`update_before`)."""
    step, what, value = found
    cause, fix = {
        "ω": (
            "after ω's update: the weights diverged",
            f"lower ω's learning rate (--lr, {lr:g} now)",
        ),
        "θ": (
            "after θ's update: the architecture weights θ diverged",
            f"lower θ's learning rate (--theta-lr, {theta_lr:g} now)",
        ),
        "joint": (
            "after the joint update of ω and θ",
            f"lower ω's or θ's learning rate (--lr {lr:g}, --theta-lr {theta_lr:g} now)",
        ),
        None: (
            "before any update: the network's outputs on this data are not finite",
            "check the data and the model's initial weights",
        ),
    }[update]
    kept = (
        f"{checkpoint} still holds epoch {epochs_done}"
        if epochs_done
        else "no epoch had finished, so nothing was saved"
    )
    again = "and start a new run with another --out" if epochs_done else "and rerun"
    return TrainingError(
        f"{_WATCHED[what]} became {value} in epoch {epochs_done + 1} (step {step + 1}) {cause}; "
        f"{kept}; {fix} {again}"
    )


def update_before(
    step: int,
    what: int,
    *,
    epoch: int,
    stage: str,
    theta_trains: bool,
    arch_epochs: int,
    warmup_epochs: int,
    rule: Update,
) -> str | None:
    """The update that came just before a value: "ω", "θ", "joint", or None (none yet).

    Each value follows exactly one update: θ's loss and gradient of a step the ω update of
    that step; ω's the last update of the step before (θ's, or the joint one, while
    searching). ``theta_trains``: the run has θ's optimizer (DNAT's architecture stage)."""
    if what in (THETA_LOSS, THETA_GRAD):
        return "ω"
    if step == 0 and epoch == 0:
        return None
    first = step == 0 and epoch == arch_epochs  # follows the stage's last update
    searching = theta_trains and (
        (stage == "arch" and epoch >= warmup_epochs + (step == 0)) or first
    )
    if not searching:
        return "ω"
    return "joint" if rule == "joint" else "θ"
