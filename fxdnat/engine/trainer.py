"""The epoch loop: DNAT's architecture stage, the stage boundary, the network stage.

Every minibatch is one `DNAT.step` (fxdnat/dnat.py): ω's step, then θ's on the same minibatch
after ω's update while θ trains (Kim & Lee 2020 §3). At the end of the architecture stage the
network is decided and finalized (fxdnat/engine/stage.py) and the network stage trains ω on,
under the same cosine schedule. A checkpoint is written atomically after every epoch; every
epoch is seeded from (seed, epoch), so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxdnat import checkpoint as ckpt
from fxdnat import zoo
from fxdnat._files import (
    CELLS,
    CHECKPOINT,
    METRICS,
    SUMMARY,
    atomic_file,
    check_writable,
    remove_temporaries,
    write_json,
)
from fxdnat.budget import BudgetTerm
from fxdnat.config import RunConfig, check_method, parse_budget, parse_changes, resumed_config
from fxdnat.cost import CostModel
from fxdnat.dnat import DNAT
from fxdnat.drawing import draw_run
from fxdnat.engine import divergence, setup, stage
from fxdnat.engine import search as nat_search
from fxdnat.engine.runtime import StopRequests, get_rng, seed_epoch, set_rng
from fxdnat.engine.runtime import start as start_runtime
from fxdnat.engine.state import append_metrics, checkpoint_data, raise_if_finished, summary
from fxdnat.engine.state import stored as stored_checkpoint
from fxdnat.ir import SAME
from fxdnat.passes import decide, discover, finalize, gate

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run between two steps; its state was saved."""


class Reporter:
    """Progress callbacks; the CLI draws rich progress bars, the default logs."""

    def start(self, info: dict) -> None:
        log.info("training %s", info)

    def epoch_start(self, epoch: int, stage: str, steps: int) -> None:
        pass

    def step(self, epoch: int, step: int, loss: float | None) -> None:
        pass

    def epoch_end(self, record: dict) -> None:
        log.info("epoch %(epoch)d %(stage)s: test acc %(test_acc).4f", record)

    def event(self, name: str, data: dict) -> None:
        log.info("%s: %s", name, data)

    def finish(self, summary: dict) -> None:
        log.info("done: %s", summary)


class Trainer:
    """One run of ``config``: built once (fxdnat/engine/setup.py), then :meth:`run`.

    Attributes: ``dnat`` (the network being trained, ``dnat.module``, with its trace, edges and
    the DDP / compile wrapper its ω forward runs through), ``task`` (the example, loss and
    evaluation sums of what the network computes), ``opt_w`` (ω's SGD or AdamW), ``opt_theta``
    (θ's Adam; None when θ does not train), ``state`` (what the checkpoint keeps), ``runtime``
    (device, rank, world).
    """

    def __init__(
        self,
        config: RunConfig,
        reporter: Reporter,
        *,
        resume: bool = False,
        given: Collection[str] | None = None,
    ) -> None:
        self.out = Path(config.out)
        stored = stored_checkpoint(self.out, resume)
        # the spec the caller named: a stored module: spec equal to it may import its code
        named_spec = config.spec if given is None or "spec" in given else None
        if stored is not None:
            config = resumed_config(stored, config, given)
            raise_if_finished(self.out, stored)
        check_method(config)
        self.config = config
        self.runtime = start_runtime(config)
        self.reporter = reporter if self.runtime.rank == 0 else Reporter()  # one voice
        if self.runtime.rank == 0:  # fail now, not after the first epoch; `run` makes the folder
            check_writable(self.out / CHECKPOINT)
        self.stop = StopRequests()  # listens for Ctrl-C / SIGTERM while `run` is active
        self.first_nan = divergence.FirstNonFinite(self.runtime.device)  # renewed every epoch
        if config.method == "nat" and self.runtime.world > 1:
            raise ValueError(
                "--method nat runs in one process: NAT's search is not distributed here; run it "
                "without torchrun"
            )
        ready = setup.prepare(config, self.runtime, stored, named_spec)
        self.recipe, self.reach, self.task = ready.recipe, ready.reach, ready.task
        self.train_loader, self.test_loader = ready.train_loader, ready.test_loader
        self.model_cfg, self.dnat, self.state = ready.model_cfg, ready.dnat, ready.state
        self.opt_w: torch.optim.Optimizer | None = None
        self.opt_theta: torch.optim.Adam | None = None
        self.search: nat_search.Search | None = None  # NAT's policy, while it searches
        self._fade_to: torch.Tensor | None = None  # θ as finalize will read it, on θ's device
        if self.state.fade is not None and self.state.stage == "arch":  # resumed in the fade
            try:  # refused now, not at the first step; the target is made once θ is placed
                self._fade_target(self.state.fade["decisions"])
            except ValueError as exc:
                raise ckpt.CheckpointError(f"{exc}; was it written by fxdnat?") from exc
        self.policy_state = stored.get("nat") if stored else None  # NAT's, once searched
        if stored is None and self.state.stage == "arch" and self.recipe.arch_epochs == 0:
            self._finalize(before=None)
        self.drop_path = zoo.set_drop_path_prob(self.dnat.module, 0.0) > 0
        self._place()
        self._optimizers(stored)
        if self.state.stage == "search":
            self._start_search(stored)
        if stored is not None and self.runtime.rank == 0:  # the log: the checkpoint's epochs
            with atomic_file(self.out / METRICS, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.state.metrics)

    def _place(self) -> None:
        """Move the network to the device (channels-last on CUDA); wrap it for DDP / compile."""
        module, rt = self.dnat.module, self.runtime
        module.to(rt.device, memory_format=rt.memory_format)
        wrapper: nn.Module = module
        if rt.world > 1:
            ids = [rt.device.index] if rt.device.type == "cuda" else None
            wrapper = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self.dnat.wrapper = torch.compile(wrapper) if self.config.compile else wrapper

    def _optimizers(self, stored: dict | None) -> None:
        """ω's SGD (or the recipe's AdamW); θ's Adam for DNAT's architecture stage (the random
        control's θ stays at (0, 0, 1)); their states from the checkpoint when resuming."""
        r = self.recipe
        if self.state.stage == "search":  # NAT's supernet has its own SGD
            n = r.nat
            self.opt_w = torch.optim.SGD(
                self.dnat.weights(), lr=n.lr, momentum=n.momentum, weight_decay=n.weight_decay
            )
        elif r.optimizer == "adamw":
            self.opt_w = torch.optim.AdamW(
                self.dnat.weights(), lr=r.lr, betas=r.betas, weight_decay=r.weight_decay
            )
        else:
            self.opt_w = torch.optim.SGD(
                self.dnat.weights(), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
            )
        if self.dnat.theta is not None and self.config.method == "dnat":
            self.opt_theta = self.dnat.theta_optimizer(
                r.theta_lr, r.theta_betas, r.theta_weight_decay
            )
            if self.config.budget is not None:  # θ's loss gains the budget's cost term
                self.dnat.cost_term = BudgetTerm(
                    self.dnat.arch, self._costs(), parse_budget(self.config.budget)
                )
                self.dnat.cost_term.multipliers.update(self.state.multipliers or {})
        if stored is not None:
            self.opt_w.load_state_dict(stored["optimizer_w"])
            if self.opt_theta is not None and stored.get("optimizer_theta") is not None:
                self.opt_theta.load_state_dict(stored["optimizer_theta"])

    # ------------------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train to the recipe's last epoch; returns the summary written to ``summary.json``.

        Raises:
            Interrupted: Ctrl-C or SIGTERM (the state was saved; resume continues exactly).
            divergence.TrainingError: a loss or gradient that is not finite.
        """
        r, rank = self.recipe, self.runtime.rank
        self.reporter.start(self._start_info())
        if rank == 0:  # a kill -9 mid-write leaves a temporary file that nothing reads
            remove_temporaries(self.out, (CHECKPOINT, METRICS, SUMMARY, CELLS))
        with StopRequests() as self.stop:
            if self.state.stage == "search":
                self._search()
            while self.state.epoch < r.epochs:
                try:
                    record = self._epoch()
                except Interrupted:
                    self._save()
                    raise
                self.reporter.epoch_end(record)
                fade_starts = r.fade_epochs and self.state.epoch == r.arch_epochs - r.fade_epochs
                if self.state.stage == "arch" and fade_starts:
                    record["fade"] = self._start_fade(record)
                if self.state.stage == "arch" and self.state.epoch == r.arch_epochs:
                    record["finalize"] = self._finalize(before=record)
                self.state.metrics.append(record)
                if rank == 0:
                    append_metrics(self.out, record)
                self._save()
        self.state.stage = "done"
        self._save()
        summary = self._summary()
        if rank == 0:
            self._draw_cells(summary)
            write_json(self.out / SUMMARY, summary)  # `repro` skips a run once it exists
        self.reporter.finish(summary)
        if self.runtime.world > 1:
            torch.distributed.destroy_process_group()
        return summary

    def _start_info(self) -> dict[str, Any]:
        c, theta = self.config, self.dnat.theta
        return {
            "spec": self.model_cfg["spec"],
            "method": c.method,
            "data": c.data,
            "task": self.task.name,
            "recipe": dataclasses.asdict(self.recipe),
            "edges": len(self.dnat.edges),
            "tie": c.tie,
            "groups": theta.shape[0] if theta is not None else None,
            "reach": self.reach.to_dict(),
            "budget": c.budget,
            "warnings": (
                self.reach.warnings(budgeted=c.budget is not None)
                if self.state.stage == "arch"
                else []
            ),
            "device": str(self.runtime.device),
            "world": self.runtime.world,
            "resumed_at": self.state.epoch,
        }

    def _epoch(self) -> dict:
        s = self.state
        start = time.perf_counter()
        if s.step == 0:
            s.partial = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        train = self.train_epoch()
        if self.dnat.cost_term is not None:  # before finalize drops the term with θ
            s.multipliers = dict(self.dnat.cost_term.multipliers)
        total = {
            k: s.partial[k] + v for k, v in zip(("loss", "correct", "seen"), train, strict=True)
        }
        s.partial = {}
        test_loss, test_acc = self.evaluate()
        s.epoch += 1
        s.elapsed += time.perf_counter() - start
        if s.stage == "arch":
            s.theta_history.append(self.dnat.theta.detach().cpu().clone())
        return {
            "epoch": s.epoch,
            "stage": s.stage,
            "lr": self.opt_w.param_groups[0]["lr"],
            "train_loss": total["loss"] / max(total["seen"], 1),
            "train_acc": total["correct"] / max(total["seen"], 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            **self.task.scores(test_loss),  # a language model's perplexity
            "seconds": time.perf_counter() - start,
            "preferences": self._preferences(),
            "budget": self._budget_state(),
        }

    def train_epoch(self) -> list[float]:
        """One pass over the training data (the rest of it, after an interrupt): the summed
        loss, correct predictions and examples seen."""
        c, r, s, rt = self.config, self.recipe, self.state, self.runtime
        # mid-epoch (resumed), torch's RNG is restored at the step the run stopped after
        seed_epoch(self.train_loader, c.seed, s.epoch, rt.rank, torch_rng=s.step == 0)
        if self.drop_path:
            zoo.set_drop_path_prob(self.dnat.module, r.drop_path_prob * s.epoch / r.epochs)
        self.dnat.module.train()
        steps = len(self.train_loader)
        self.reporter.epoch_start(s.epoch, s.stage, steps)
        sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss, correct, seen
        self.first_nan = divergence.FirstNonFinite(rt.device)
        for step, (x, y) in self._batches():
            self._set_lr(s.epoch + step / steps)
            loss, tally = self.train_step(x, y)
            sums += torch.cat([loss.detach().double().reshape(1) * tally[1], tally])
            s.step = step + 1
            if rt.device.type == "cpu" or (step + 1) % 50 == 0 or step + 1 == steps:
                self._check_finite()
                self.reporter.step(s.epoch, step + 1, (sums[0] / sums[2]).item())
            if self.stop.requested and step + 1 < steps:
                self._interrupt(sums)
        s.step = 0
        return rt.reduce(sums).tolist()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One DNAT step on a minibatch: the mean loss, and (correct predictions, predictions)
        (per example, or per token of a language model), on the device."""
        done = self.dnat.step(
            lambda net: self._loss(net, x, y),
            self.opt_w,
            self.opt_theta if self._searching() else None,
            update=self.config.arch_update,
            clip=self.recipe.grad_clip,
        )
        self.first_nan.watch_step(done, self.state.step)
        if self.state.fade is not None and self.state.stage == "arch":
            self._fade_step()
        return done.loss, self.task.tally(done.output, y)

    def _searching(self) -> bool:
        """θ trains in this epoch: the architecture stage of DNAT, after ω's warm-up and before
        the fade."""
        s, r = self.state, self.recipe
        searched = r.warmup_epochs <= s.epoch < r.arch_epochs - r.fade_epochs
        return s.stage == "arch" and self.opt_theta is not None and searched

    def _loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(loss, logits): the task's training loss of the minibatch (fxdnat/tasks.py)."""
        with self.runtime.autocast():
            return self.task.loss(net(x), y, self.recipe)

    def _interrupt(self, sums: torch.Tensor) -> None:
        """Stop between two steps; a single process keeps the partial epoch, DDP ranks do not
        (they may stop at different steps), so those resume from the epoch's start."""
        s = self.state
        if self.runtime.world > 1:
            s.step, s.partial = 0, {}
            raise Interrupted(f"interrupted in epoch {s.epoch + 1}; resuming restarts it")
        done = sums.tolist()
        s.partial = {
            k: s.partial[k] + v for k, v in zip(("loss", "correct", "seen"), done, strict=True)
        }
        raise Interrupted(f"interrupted in epoch {s.epoch + 1} after step {s.step}")

    def _batches(self) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
        """This epoch's batches on the device, skipping those done before an interrupt."""
        skip = self.state.step
        for step, (x, y) in enumerate(self.train_loader):
            if step < skip:
                if step + 1 == skip:  # continue exactly where the interrupted run was
                    set_rng(self.state.rng)
                continue
            yield step, self.runtime.to_device(x, y)

    def _set_lr(self, progress: float) -> None:
        """Cosine from lr to 0 over all epochs, per step; stage 2 continues the same schedule."""
        lr = 0.5 * self.recipe.lr * (1 + math.cos(math.pi * progress / self.recipe.epochs))
        for group in self.opt_w.param_groups:
            group["lr"] = lr

    def _check_finite(self) -> None:
        found = self.first_nan.found()
        if found is None:
            return
        s, r = self.state, self.recipe
        update = divergence.update_before(
            found[0],
            found[1],
            epoch=s.epoch,
            stage=s.stage,
            theta_trains=self.opt_theta is not None,
            arch_epochs=r.arch_epochs - r.fade_epochs,  # θ's last update
            warmup_epochs=r.warmup_epochs,
            rule=self.config.arch_update,
        )
        raise divergence.explain(
            found,
            epochs_done=s.epoch,
            update=update,
            lr=r.lr,
            theta_lr=r.theta_lr,
            checkpoint=self.out / CHECKPOINT,
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss (mean cross-entropy per example, or per token) and accuracy (of examples,
        or of next tokens) of the current network, main logits only."""
        module, rt = self.dnat.module, self.runtime
        module.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=rt.device)
        for x, y in self.test_loader:
            x, y = rt.to_device(x, y)
            with rt.autocast():
                out = module(x)
            sums += self.task.sums(out, y)
        loss_sum, correct, seen = rt.reduce(sums).tolist()
        module.train()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def _budget_state(self) -> dict[str, Any] | None:
        """The cost term's expected cost (fractions) and multipliers after the epoch."""
        term = self.dnat.cost_term
        if term is None or not term.expected:
            return None
        return {"expected": dict(term.expected), "multipliers": dict(term.multipliers)}

    def _preferences(self) -> dict[str, int]:
        """How many edges currently prefer each choice (the decisions once finalized)."""
        if self.state.decisions is not None:
            return dict(Counter(self.state.decisions.values()))
        if self.state.fade is not None:
            return dict(Counter(self.state.fade["decisions"].values()))
        if self.dnat.theta is None:
            return {}
        return dict(Counter(decide(self.dnat.module).values()))

    # ------------------------------------------------------------------- NAT's search
    def _start_search(self, stored: dict | None) -> None:
        split = nat_search.split_loaders(
            self.train_loader.dataset, self.recipe.nat, self.config.workers
        )
        order = [node.name for node in self.dnat.traced.graph.nodes]
        self.search = nat_search.Search(
            self.dnat, self.recipe.nat, split, self.runtime, self._loss, order, self.config.seed
        )
        if stored is not None:
            self.search.load_state_dict(stored["nat"])

    def _search(self) -> None:
        """NAT's search epochs (each saved when done; an interrupted one is repeated from its
        start on resume), then derive, then the derived network from scratch."""
        s, schedule = self.state, self.recipe.nat
        if s.search_epoch == 0 and self.runtime.rank == 0:  # a kill in epoch 1 can resume
            self._save()
        while s.search_epoch < schedule.search_epochs:
            start = time.perf_counter()
            done = self.search.epoch(
                s.search_epoch,
                self.opt_w,
                s.baseline,
                self.recipe.grad_clip,
                stop=lambda: self.stop.requested,
            )
            if done is None:  # the epoch's work is dropped: resume repeats it exactly
                raise Interrupted(
                    f"interrupted in search epoch {s.search_epoch + 1}; resuming repeats it"
                )
            record, s.baseline = done
            if not math.isfinite(record["train_loss"]):  # the epoch is not kept
                raise divergence.TrainingError(
                    f"NAT's supernet loss became {record['train_loss']} in search epoch "
                    f"{s.search_epoch + 1}; the checkpoint after epoch {s.search_epoch} is kept; "
                    "lower the supernet's learning rate (the recipe's nat.lr, "
                    f"{self.recipe.nat.lr} now) and rerun"
                )
            s.search_epoch += 1
            s.elapsed += time.perf_counter() - start
            record = {"epoch": s.search_epoch, "stage": "search", **record}
            record["seconds"] = time.perf_counter() - start
            self.reporter.event("search_epoch", record | {"epochs": schedule.search_epochs})
            s.metrics.append(record)
            append_metrics(self.out, record)
            self._save()
        start = time.perf_counter()
        s.derive = self.search.derive()
        s.elapsed += time.perf_counter() - start
        self.reporter.event("derive", s.derive)
        self._retrain(s.derive["decisions"])
        self._save()

    def _retrain(self, decisions: dict[str, str]) -> None:
        """The derived network, built afresh (the initial weights of an ``original`` run of
        the same seed: random, or published with ``pretrained``), dead joins as NAT leaves
        them; ω's SGD of the recipe."""
        torch.manual_seed(self.config.seed)
        _, traced = ckpt.build_traced(self.model_cfg, pretrained=self.config.pretrained)
        edges = discover(traced, self.config.granularity)
        gated = gate(traced, edges, tie=self.config.tie)
        final = finalize(gated, decisions, scale="one", allow_dead=True)
        self.dnat = DNAT.from_module(final, traced=traced, edges=edges)
        s = self.state
        s.decisions, s.stage, s.finalize = decisions, "net", {"scale": "one"}
        self.policy_state, self.search = self.search.state_dict(), None
        self.drop_path = zoo.set_drop_path_prob(self.dnat.module, 0.0) > 0
        self._place()
        self._optimizers(None)

    # ------------------------------------------------------------------------- finalize
    def _finalize(self, before: dict[str, Any] | None) -> dict[str, Any]:
        """Decide and finalize; ``before`` is the stage's last epoch record, with the gated
        network's test loss and accuracy (None when the stage had no epoch). Returns what the
        metrics log records: the scale, the test loss and accuracy just before and just after,
        and the accuracy after re-estimating BN statistics if the recipe asks."""
        gated, r, s, c = self.dnat, self.recipe, self.state, self.config
        budget = parse_budget(c.budget) if c.budget is not None else None
        decisions = s.fade["decisions"] if s.fade is not None else self._decide(budget)
        scale = stage.scale(self.config, r)
        final = finalize(gated.module, decisions, scale=scale)
        self.dnat = DNAT.from_module(final, traced=gated.traced, edges=gated.edges)
        s.decisions, s.stage = decisions, "net"
        if self.opt_w is not None:  # ω's optimizer goes on with the weights that remain
            stage.retarget(self.opt_w, gated.module, final)
            self._place()
            self.opt_theta = None
        acc, loss = (before["test_acc"], before["test_loss"]) if before else (None, None)
        record: dict[str, Any] = {"scale": scale, "acc_before": acc, "acc_after": None}
        record |= {"loss_before": loss, "loss_after": None}
        if s.fade is not None:  # "before" is the gated network at decide, before the fade
            record |= {"fade_epochs": r.fade_epochs, "acc_faded": acc, "loss_faded": loss}
            record["acc_before"] = s.fade["acc_decided"]
            record["loss_before"] = s.fade.get("loss_decided")  # (resumed from older fxdnat)
        if budget is not None:  # the emitted network's cost in the run's cost model
            record["cost"] = self._costs().fraction(decisions)
        if before is not None:  # an empty stage has no "before" to compare with
            record["loss_after"], record["acc_after"] = self.evaluate()
        record["acc_after_bn"] = None
        if r.bn_recalibration:
            record["bn_seconds"] = stage.recalibrate_bn(
                final, self.train_loader, r.bn_recalibration, self.runtime
            )
            record["acc_after_bn"] = self.evaluate()[1] if before is not None else None
        s.finalize = record
        self.reporter.event(
            "finalize",
            {
                "epoch": s.epoch,
                "changed": {k: v for k, v in decisions.items() if v != SAME},
                "counts": dict(Counter(decisions.values())),
                "margins": s.margins,
                "flipped": s.flipped,
                **record,
            },
        )
        return record

    def _decide(self, budget: dict[str, float] | None) -> dict[str, str]:
        """The decisions of the run's method: θ's (DNAT), drawn (the random control) or by
        a measure on training data (prune, similarity); within ``budget`` when one is set."""
        c, gated = self.config, self.dnat
        costs = self._costs() if budget is not None else None
        if c.method == "random" and budget is not None:
            return stage.random_within(gated.edges, budget, costs, c.seed)
        if c.method == "random":
            return setup.random_decisions(c, gated.edges)
        if c.method in ("prune", "similarity"):
            changes = parse_changes(c.changes or "")
            return stage.measured_decisions(
                c.method,
                gated.module,
                self.train_loader,
                self.runtime,
                budget=budget,
                costs=costs,
                changes=changes,
            )
        r = self.recipe
        searched = r.arch_epochs - r.warmup_epochs - r.fade_epochs  # θ's epochs
        return stage.dnat_decisions(gated.module, searched, self.state, budget, costs)

    # -------------------------------------------------------------------------- the fade
    def _start_fade(self, now: dict[str, Any]) -> dict[str, Any]:
        """Decide now, ``fade_epochs`` before the stage's end; θ stops training and moves to
        what finalize will read (stage.fade_target) over the remaining epochs. ``now``: the
        epoch's record, with the gated network's test loss and accuracy. Returns what the
        metrics log records."""
        c, s = self.config, self.state
        decisions = self._decide(parse_budget(c.budget) if c.budget is not None else None)
        acc, loss = now["test_acc"], now["test_loss"]
        s.fade = {"decisions": decisions, "acc_decided": acc, "loss_decided": loss}
        self._fade_to = self._fade_target(decisions)
        record = {
            "epochs": self.recipe.fade_epochs,
            "changed": {k: v for k, v in decisions.items() if v != SAME},
            "acc_decided": acc,
            "loss_decided": loss,
        }
        self.reporter.event("fade", {"epoch": s.epoch, **record})
        return record

    @torch.no_grad()
    def _fade_step(self) -> None:
        """After each step of the fade: θ one step closer to what finalize will read."""
        s, r = self.state, self.recipe
        if self._fade_to is None:  # resumed inside the fade
            self._fade_to = self._fade_target(s.fade["decisions"])
        steps = len(self.train_loader)
        done = (s.epoch - (r.arch_epochs - r.fade_epochs)) * steps + s.step
        theta, target = self.dnat.arch.theta, self._fade_to
        theta.copy_(target + (theta - target) * stage.fade_factor(done, r.fade_epochs * steps))

    def _fade_target(self, decisions: dict[str, str]) -> torch.Tensor:
        return stage.fade_target(self.dnat.arch, decisions, stage.scale(self.config, self.recipe))

    def _costs(self) -> CostModel:
        """The run's cost model (a budgeted run measured it before training)."""
        return CostModel.from_dict(self.state.costs)

    # ---------------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        if self.runtime.rank != 0:
            return
        if self.dnat.cost_term is not None:
            self.state.multipliers = dict(self.dnat.cost_term.multipliers)
        self.state.rng = get_rng() if self.state.step else {}
        data = checkpoint_data(
            self.config,
            self.recipe,
            self.model_cfg,
            self.dnat,
            self.state,
            self.opt_w,
            self.opt_theta,
            default_scale=stage.scale(self.config, self.recipe),
        )
        if self.search is not None:  # NAT's policy and its optimizer (kept once searched)
            data["nat"] = self.search.state_dict()
        elif self.policy_state is not None:
            data["nat"] = self.policy_state
        ckpt.save(self.out / CHECKPOINT, data)

    def _summary(self) -> dict:
        rt, s = self.runtime, self.state
        result = summary(self.config, self.model_cfg, self.dnat, s, self.task)
        return result | {
            "reach": self.reach.to_dict(),
            "seconds": s.elapsed,
            "world": rt.world,
            "device": str(rt.device),
            "checkpoint": str(self.out / CHECKPOINT),
        }

    def _draw_cells(self, summary: dict) -> None:
        """The cell diagram beside the checkpoint; a drawing that fails must not lose the run."""
        if not self.dnat.edges or self.state.decisions is None:
            return
        try:
            path = draw_run(
                self.out / CELLS,
                self.dnat.traced,
                self.dnat.edges,
                self.state.decisions,
                summary,
                tie=self.config.tie,
            )
        except Exception as exc:  # any failure: the run itself is saved and summarised
            log.warning("could not draw the cell diagram (%s); the checkpoint is kept", exc)
            return
        summary["artifacts"] = {"cell diagram": str(path)}
