"""DNAT's architecture stage inside a training loop a framework owns: what the Lightning and
Hugging Face callbacks share, with no framework imported.

The framework runs ω's steps (its forward, backward, clipping, optimizer and schedule); the
driver adds what the engine (fxdnat/engine/trainer.py) adds around them, in the same order:

1. ``setup``: trace → discover → gate the model (``fxdnat.DNAT``); θ gets its own Adam and
   leaves every optimizer of the framework's (:func:`fxdnat.engine.stage.retarget`);
2. each epoch: seeded from (seed, epoch) like an fxdnat run, when a seed is given; θ trains
   from the ω warm-up's end to the architecture stage's end;
3. each step: ω's forward runs with θ frozen (:meth:`weights_context`), then θ's step on the
   same minibatch after ω's update (:meth:`theta_step`: "alternate", the paper's), or on the
   gradient of ω's backward ("joint");
4. at the stage's end: decide, finalize, point the framework's optimizers at the weights kept
   with their momentum (:meth:`finalize`); ω trains on.

A checkpoint (:meth:`checkpoint`) is fxdnat's format — tensors and plain values, no code — so
``fxdnat eval/render/export`` read it; it needs the model's spec (``spec=``) to rebuild the
network, as every fxdnat checkpoint does.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from fxdnat import checkpoint as ckpt
from fxdnat import tasks
from fxdnat.dnat import DNAT
from fxdnat.engine import stage
from fxdnat.engine.runtime import seed_epoch
from fxdnat.engine.state import RunState, network_data, stored_state
from fxdnat.ir import CHOICES, SAME, Granularity, Scale, Tie, Update, check_decisions
from fxdnat.passes import decide, discover, finalize, margins
from fxdnat.reach import THETA_BETAS, THETA_LR, THETA_WEIGHT_DECAY, UNSURE, Reach, plan
from fxdnat.specs import parse_spec

log = logging.getLogger(__name__)


class Driver:
    """DNAT's two stages around someone else's ω steps (the module docstring has the order).

    Args:
        model: the network to transform (left untouched: the gated module is a copy).
        example_inputs: a tensor or tuple of inputs for tracing, e.g. one batch's.
        arch_epochs: epochs of the architecture stage; finalize runs at its end.
        warmup_epochs: its first epochs train ω alone (θ waits).
        theta_lr, theta_betas, theta_weight_decay: θ's Adam (DARTS's defaults, fxdnat/reach.py).
        theta_reach: lr·T, θ's reach; when set θ's lr is reach / T, T the θ steps of the
            stage (known once :meth:`plan` hears the steps per epoch), as a recipe's.
        update: "alternate" (θ's step after ω's, on a second forward) or "joint".
        scale: finalize's scale ("keep" θ's coefficients, or "one").
        tie, granularity, leaves: as :class:`fxdnat.DNAT`.
        spec: the model's spec (``zoo:resnet20``, ``module:pkg.mod:factory``, ...), for
            checkpoints the CLI reads; it must build a network with the same edges.
        data, data_dir: the data set a checkpoint names (``fxdnat eval``'s default).
        seed: seed each epoch as ``fxdnat transform --seed`` does (:func:`seed_epoch`); None
            leaves the framework's seeding alone.

    Raises:
        fxdnat.TraceError: the model cannot be traced; ValueError: it has no eligible edge,
            or ``spec`` builds another network.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        arch_epochs: int,
        warmup_epochs: int = 0,
        theta_lr: float = THETA_LR,
        theta_betas: tuple[float, float] = THETA_BETAS,
        theta_weight_decay: float = THETA_WEIGHT_DECAY,
        theta_reach: float | None = None,
        update: Update = "alternate",
        scale: Scale = "keep",
        tie: Tie = "cell",
        granularity: Granularity = "branch",
        leaves: Iterable[str | type] = (),
        spec: str | None = None,
        data: str | None = None,
        data_dir: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0 <= warmup_epochs < max(arch_epochs, 1) or arch_epochs < 0:
            raise ValueError(
                f"arch_epochs={arch_epochs}, warmup_epochs={warmup_epochs}: θ needs at least one "
                "architecture epoch after the warm-up"
            )
        if update not in ("alternate", "joint"):
            raise ValueError(f"update is 'alternate' or 'joint', not {update!r}")
        self.dnat = DNAT(model, example_inputs, granularity=granularity, tie=tie, leaves=leaves)
        traced, edges = self.dnat.traced, self.dnat.edges
        self.arch_epochs, self.warmup_epochs = arch_epochs, warmup_epochs
        self.theta_lr, self.theta_betas = theta_lr, theta_betas
        self.theta_weight_decay, self.theta_reach = theta_weight_decay, theta_reach
        self.update, self.scale, self.tie, self.granularity = update, scale, tie, granularity
        self.data, self.data_dir, self.seed = data, data_dir, seed
        self.state = RunState()
        self.opt_theta: torch.optim.Adam | None = None
        self.reach: Reach | None = None
        self.finalized_theta: torch.Tensor | None = None  # θ as finalize read it
        self._theta_optimizer_state: dict | None = None  # restored, for θ's Adam once built
        self.task = _task(traced, example_inputs)
        """What the network computes (fxdnat.tasks), read from the example and the traced
        output; None for a network that is neither an image classifier nor a causal LM."""
        self.model_section = _model_section(spec, self.task, traced, edges, granularity)

    # ------------------------------------------------------------------------- the network
    @property
    def module(self) -> fx.GraphModule:
        """The network to train now: the gated module, then the finalized one."""
        return self.dnat.module

    @property
    def searching(self) -> bool:
        """θ trains in the current epoch: after ω's warm-up, before the stage's end."""
        s = self.state
        return s.stage == "arch" and self.warmup_epochs <= s.epoch < self.arch_epochs

    def plan(self, steps_per_epoch: int) -> Reach:
        """θ's schedule for this many ω steps an epoch, and θ's Adam (built once). Logs what
        the engine warns about (a reach too short to change an edge, or noise deciding)."""
        self.reach = plan(
            steps_per_epoch, self.arch_epochs, self.warmup_epochs, self.theta_lr, self.theta_reach
        )
        if self.opt_theta is None and self.dnat.theta is not None:
            self.opt_theta = self.dnat.theta_optimizer(
                self.reach.theta_lr, self.theta_betas, self.theta_weight_decay
            )
            if self._theta_optimizer_state is not None:  # resumed inside the stage
                self.opt_theta.load_state_dict(self._theta_optimizer_state)
        for warning in self.reach.warnings():
            for flag, argument in _ARGUMENTS.items():  # the engine's words are its flags
                warning = warning.replace(flag, argument)
            log.warning("%s", warning)
        return self.reach

    def release(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Take θ out of the framework's optimizers (``configure_optimizers`` saw it among the
        model's parameters): θ has its own Adam, and ω's weight decay and clipping leave it."""
        theta = self.dnat.theta
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not theta]
            optimizer.state.pop(theta, None)

    # ---------------------------------------------------------------------------- an epoch
    def catch_up(self, epochs_done: int) -> bool:
        """Count the epochs the framework finished that the driver has not: a checkpoint
        written after an epoch's last step but before its end hook, resumed. True when the
        architecture stage ended among them and :meth:`finalize` is due."""
        due = False
        while self.state.epoch < epochs_done:
            due = self.end_epoch() or due
        return due and self.state.stage == "arch"

    def start_epoch(self, loader: Any = None, rank: int = 0) -> None:
        """Seed the epoch as an fxdnat run does (with ``seed``): torch's RNG and ``loader``'s
        generator and sampler; call it before the epoch's first batch is drawn."""
        if self.seed is not None:
            seed_epoch(loader, self.seed, self.state.epoch, rank)

    def weights_context(self) -> contextlib.AbstractContextManager[None]:
        """Run ω's forward inside (:meth:`fxdnat.DNAT.weights_forward`): θ a constant unless
        its step needs this forward's gradient (joint)."""
        return self.dnat.weights_forward(self.searching, self.update)

    def theta_step(self, loss_of: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
        """After ω's step on a minibatch: θ's step on it while θ trains — alternating, on
        ``loss_of()``, the minibatch's loss computed again through :attr:`module` (after ω's
        update; not through DDP's wrapper; None: no step); joint, on the gradient ω's backward
        left in θ. Returns θ's loss (alternate) or None. Outside θ's epochs θ keeps no
        gradient."""
        theta = self.dnat.theta
        if theta is None:
            return None
        if not self.searching or self.opt_theta is None:
            theta.grad = None  # under DDP ω's backward reached θ
            return None
        if self.update == "joint":
            if theta.grad is not None:
                self.opt_theta.step()
            self.opt_theta.zero_grad(set_to_none=True)
            return None
        with torch.enable_grad():
            loss = loss_of()
        if loss is None:  # the framework skipped the batch (no loss): θ waits too
            return None
        self.dnat.theta_step(loss, self.opt_theta)
        return loss.detach()

    def end_epoch(self) -> bool:
        """Count a finished epoch (θ's history grows); True when the architecture stage has
        just ended and :meth:`finalize` is due."""
        s = self.state
        if s.stage == "arch" and self.dnat.theta is not None:
            s.theta_history.append(self.dnat.theta.detach().cpu().clone())
        s.epoch += 1
        return s.stage == "arch" and s.epoch >= self.arch_epochs

    def finalize(
        self, optimizers: Iterable[torch.optim.Optimizer] = (), *, accuracy: float | None = None
    ) -> fx.GraphModule:
        """Decide each edge (θ's argmax, never a dead join), finalize, and point ``optimizers``
        at the weights kept, with their state and learning rates (:func:`stage.retarget`).
        Returns the finalized module, which the framework trains from now on; ``accuracy``,
        the gated network's last test accuracy if known, goes into the record."""
        gated, s = self.dnat.module, self.state
        searched = self.arch_epochs - self.warmup_epochs
        decisions = stage.dnat_decisions(gated, searched, s)
        final = self._finalize(decisions)
        for optimizer in optimizers:
            stage.retarget(optimizer, gated, final)
        self.opt_theta = None
        s.decisions, s.stage = decisions, "net"
        s.finalize = {"scale": self.scale, "acc_before": accuracy, "epoch": s.epoch}
        changed = {k: v for k, v in decisions.items() if v != SAME}
        log.info(
            "finalized after epoch %d: %d of %d edges changed %s",
            s.epoch,
            len(changed),
            len(decisions),
            changed,
        )
        return final

    # ------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """What a framework's checkpoint keeps of the stage (tensors and plain values): the
        run's state, θ (or θ as finalize read it) and its history, θ's Adam."""
        theta = self.dnat.theta
        return {
            "edges": [e.name for e in self.dnat.edges],
            "state": self.state.to_checkpoint(),
            "theta_history": list(self.state.theta_history),
            "theta": (theta if theta is not None else self.finalized_theta),
            "optimizer_theta": self.opt_theta.state_dict() if self.opt_theta else None,
        }

    def load_state_dict(self, stored: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`, before the framework loads the weights: a
        finalized run's network is finalized again on its decisions and θ, so that its
        weights and optimizer state fit.

        Raises:
            fxdnat.checkpoint.CheckpointError: a state that does not fit this network."""
        state = stored_state(stored)
        theta, arch = stored.get("theta"), self.dnat.arch
        history = stored.get("theta_history")
        shape = tuple(arch.theta.shape) if arch is not None else None
        if (
            stored.get("edges") != [e.name for e in self.dnat.edges]
            or not isinstance(theta, torch.Tensor)
            or tuple(theta.shape) != shape
            or type(history) is not list
            or any(not isinstance(t, torch.Tensor) or tuple(t.shape) != shape for t in history)
        ):
            raise ckpt.CheckpointError(
                "the checkpoint's DNAT state is for another network than this one (other "
                "edges, or θ of another shape); resume with the model it was saved from"
            )
        if state.decisions is not None:
            try:
                check_decisions(self.dnat.edges, state.decisions)
            except ValueError as exc:
                raise ckpt.CheckpointError(f"the checkpoint's decisions: {exc}") from exc
        with torch.no_grad():  # every check passed: nothing changed before this
            arch.theta.copy_(theta)
        state.theta_history = list(history)
        self.state, self._theta_optimizer_state = state, stored.get("optimizer_theta")
        if state.decisions is not None:
            self._finalize(state.decisions)

    def _finalize(self, decisions: dict[str, str]) -> fx.GraphModule:
        """The network finalized on ``decisions`` and θ as it is now, which becomes the one
        trained (θ kept as finalize read it: the checkpoint's replay needs it)."""
        gated = self.dnat
        self.finalized_theta = gated.theta.detach().cpu().clone()
        final = finalize(gated.module, decisions, scale=self.scale)
        self.dnat = DNAT.from_module(final, traced=gated.traced, edges=gated.edges)
        return final

    # -------------------------------------------------------------------------- reporting
    def metrics(self) -> dict[str, float]:
        """θ's state in numbers a logger takes: how many edges prefer each choice now (the
        decisions once finalized) and θ's margins (its top-two gap per edge: the least, the
        mean, how many under fxdnat.reach.UNSURE)."""
        s = self.state
        if s.decisions is not None:
            counts, gaps = Counter(s.decisions.values()), s.margins or {}
        elif self.dnat.theta is not None:
            counts, gaps = Counter(decide(self.module).values()), margins(self.module)
        else:
            return {}
        found = {f"dnat/prefer_{c}": float(counts.get(c, 0)) for c in CHOICES}
        if gaps:
            found |= {
                "dnat/margin_min": min(gaps.values()),
                "dnat/margin_mean": statistics.fmean(gaps.values()),
                "dnat/unsure": float(sum(v < UNSURE for v in gaps.values())),
            }
        return found

    def checkpoint(self, metrics: Sequence[dict] = ()) -> dict[str, Any]:
        """The network in fxdnat's checkpoint format (fxdnat/checkpoint.py): how to rebuild it,
        its weights, θ and its history, the decisions; ``metrics``: epoch records for
        ``fxdnat render`` and ``plot`` (each with ``test_acc`` where known). No optimizer
        state: the framework's own checkpoints keep that.

        Raises:
            ValueError: no ``spec`` was given, so nothing could rebuild the network.
        """
        if self.model_section is None:
            raise ValueError(
                "a checkpoint fxdnat can read names the model's spec: pass spec= (zoo:NAME, "
                "timm:NAME, module:package.module:factory, ...) to the callback"
            )
        s, theta = self.state, self.dnat.theta
        network = network_data(
            self.model_section,
            self.dnat,
            granularity=self.granularity,
            tie=self.tie,
            decisions=s.decisions,
            scale=self.scale,
            # finalized: θ as finalize read it (its coefficients are in the graph)
            theta=theta if theta is not None else self.finalized_theta,
            theta_history=list(s.theta_history),
        )
        return {
            "method": "dnat",
            **network,
            "state": s.to_checkpoint() | {"metrics": list(metrics), "rng": {}},
            "config": {"data": self.data, "data_dir": self.data_dir, "seed": self.seed},
            "recipe": {"arch_epochs": self.arch_epochs, "warmup_epochs": self.warmup_epochs},
        }

    def save(self, path: str | Path, metrics: Sequence[dict] = ()) -> Path:
        """Write :meth:`checkpoint` atomically to ``path``."""
        return ckpt.save(path, self.checkpoint(metrics))


_ARGUMENTS = {
    "--arch-epochs": "arch_epochs=",
    "a smaller --batch-size": "smaller batches",
    "--theta-reach": "theta_reach=",
}


def _model_section(
    spec: str | None, task: tasks.Task | None, traced: fx.GraphModule, edges: list, granularity: str
) -> dict[str, Any] | None:
    """The checkpoint's model section for ``spec``, checked: the task's sizes, and the spec's
    network built (torch's RNG untouched) to confirm it has the edges of the model trained."""
    if spec is None:
        return None
    parse_spec(spec)
    if task is None:
        raise ValueError(
            f"spec={spec!r}: fxdnat's checkpoints hold image classifiers ((B, 3, S, S) → (B, "
            "classes)) and causal language models ((B, T) token ids → (B, T, vocabulary)); "
            "this model is neither, so leave spec out (the callback trains it, it writes no "
            "checkpoint)"
        )
    section = {
        "spec": spec,
        **task.model_fields(),
        "kwargs": {},
        "leaves": sorted(traced.meta["fxdnat"]["leaves"]),
    }
    with torch.random.fork_rng(devices=[]):
        built, rebuilt = ckpt.build_traced(section)
    if discover(rebuilt, granularity) != edges:
        raise ValueError(
            f"{spec} builds a network with other edges than the model being trained; pass the "
            "spec that builds this model (fxdnat edges SPEC lists a spec's edges)"
        )
    return section | task.resolved(built).model_fields()


def _task(traced: fx.GraphModule, example: Any) -> tasks.Task | None:
    """The task the model computes, by its example input and output: (B, 3, S, S) images to
    (B, classes) logits, or (B, T) token ids to (B, T, vocabulary) logits; else None."""
    x = example[0] if isinstance(example, (tuple, list)) else example
    output = next(n for n in traced.graph.nodes if n.op == "output").args[0]
    output = output[0] if isinstance(output, (tuple, list)) else output
    meta = getattr(output, "meta", {}).get("tensor_meta")
    shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()
    if not isinstance(x, torch.Tensor):
        return None
    if not x.is_floating_point() and x.dim() == 2 and len(shape) == 3:
        return tasks.CausalLM(vocab_size=shape[-1], context=x.shape[1])
    if x.dim() == 4 and x.shape[-1] == x.shape[-2] and len(shape) == 2:
        return tasks.Classification(num_classes=shape[-1], input_size=x.shape[-1])
    return None
