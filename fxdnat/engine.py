"""Training engine: DNAT's two stages end to end, on a CPU, on CUDA and under torchrun.

Architecture stage: every minibatch first steps ω (SGD), then θ (Adam) on the same minibatch after
ω's update (Kim & Lee 2020 §3). Then decide + finalize, the ω optimiser rebuilt for the clean
module (momentum carried for the weights that remain), and the network stage trains ω on, under
the same cosine schedule. A checkpoint is written atomically after every epoch; every epoch is
seeded from (seed, epoch), so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxdnat import checkpoint as ckpt
from fxdnat._files import atomic_file, check_writable, remove_temporaries, write_json
from fxdnat.config import (
    RunConfig,
    check_method,
    format_changes,
    parse_changes,
    resolve_recipe,
    resumed_config,
)
from fxdnat.cost import count_flops, count_params
from fxdnat.drawing import draw_run
from fxdnat.ir import CHOICES, SAME
from fxdnat.reach import Reach
from fxdnat.reach import plan as plan_reach

log = logging.getLogger(__name__)

CHECKPOINT, METRICS, SUMMARY = "checkpoint.pt", "metrics.jsonl", "summary.json"
CELLS = "cells.svg"  # the cell diagram of the result (fxdnat/drawing.py)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run between two steps; its state was saved."""


@dataclass
class _State:
    """What changes during a run (and what a checkpoint holds besides the config)."""

    stage: str = "arch"  # "arch" (ω and θ), "net" (ω of the final module), "done"
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch (after an interrupt)
    decisions: dict[str, str] | None = None
    theta_history: list[torch.Tensor] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)  # running sums of a cut epoch
    rng: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    margins: dict[str, float] | None = None  # θ's top-two gap per edge at decide
    flipped: list[str] | None = None  # edges whose decision changed in the stage's last epochs
    finalize: dict[str, Any] | None = None  # scale, test accuracy just before and after


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


def transform(
    config: RunConfig,
    reporter: Reporter | None = None,
    *,
    resume: bool = False,
    given: Collection[str] | None = None,
) -> dict:
    """Run (or resume) ``config``; returns the summary also written to ``out/summary.json``.

    ``resume`` continues the run stored in ``config.out``; ``given`` names the fields of
    ``config`` the user set, which must agree with that run (``fxdnat.config.resumed_config``).
    A finished run is left as it is: the reporter hears "finished" and its summary is returned.
    """
    reporter = reporter or Reporter()
    try:
        trainer = Trainer(config, reporter, resume=resume, given=given)
    except RunFinished as done:
        reporter.event("finished", {"out": str(done.out), "summary": done.summary})
        return done.summary
    return trainer.run()


class RunFinished(Exception):
    """``--resume`` of a run that has finished: there is nothing to continue."""

    def __init__(self, out: Path, summary: dict) -> None:
        super().__init__(f"the run in {out} has finished")
        self.out, self.summary = out, summary


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        reporter: Reporter,
        *,
        resume: bool = False,
        given: Collection[str] | None = None,
    ) -> None:
        self.out = Path(config.out)
        stored = self._stored(resume)
        # the spec the caller named: a stored module: spec equal to it may import its code
        self.named_spec = config.spec if given is None or "spec" in given else None
        if stored is not None:
            config = resumed_config(stored, config, given)
            _raise_if_finished(self.out, stored)
        check_method(config)
        self.config = config
        self.rank, self.world = _distributed_init(config.device)
        self.reporter = reporter if self.rank == 0 else Reporter()  # one voice under torchrun
        self.device = _device(config.device, self.rank)
        self.amp = config.amp if config.amp is not None else self.device.type == "cuda"
        self.channels_last = (
            config.channels_last if config.channels_last is not None else self.device.type == "cuda"
        )
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.rank == 0:  # fail now, not after the first epoch; the folder is made by `run`
            check_writable(self.out / CHECKPOINT)
        self.stop = _StopRequests()  # listens for Ctrl-C / SIGTERM while `run` is active
        self.first_nan = _FirstNonFinite(self.device)  # renewed every epoch
        self._setup(stored)

    # ----------------------------------------------------------------------------- setup
    def _stored(self, resume: bool) -> dict | None:
        path = self.out / CHECKPOINT
        if resume:
            if not path.exists():
                raise ValueError(f"--resume: no checkpoint at {path}; start the run without it")
            return ckpt.load(path)
        if path.exists():
            raise ValueError(
                f"{path} exists; pass --resume to continue that run or choose another --out"
            )
        return None

    def _setup(self, stored: dict | None) -> None:
        from fxdnat import zoo
        from fxdnat.data import make_loaders
        from fxdnat.frontend import trace
        from fxdnat.passes import discover, gate
        from fxdnat.specs import build_model

        c = self.config
        recipe = resolve_recipe(c)
        self.train_loader, self.test_loader, self.info = make_loaders(
            c.data,
            c.data_dir,
            batch_size=recipe.batch_size,
            cutout=recipe.cutout,
            download=c.download,
            workers=c.workers,
            seed=c.seed,
            distributed=self.world > 1,
            pin_memory=self.device.type == "cuda",
            limit=c.limit,
        )
        self.reach = (  # only DNAT trains θ
            plan_reach(
                len(self.train_loader),
                recipe.arch_epochs,
                recipe.warmup_epochs,
                recipe.theta_lr,
                recipe.theta_reach,
            )
            if c.method == "dnat"
            else Reach(0, 0, recipe.theta_lr)
        )
        self.recipe = dataclasses.replace(recipe, theta_lr=self.reach.theta_lr)
        if stored is not None:
            self._restore(stored)
            return
        kwargs = _model_kwargs(c.spec, self.recipe)
        torch.manual_seed(c.seed)  # the initial weights
        built = build_model(
            c.spec,
            num_classes=self.info.num_classes,
            input_size=self.info.input_size,
            pretrained=c.pretrained,
            **kwargs,
        )
        self.model_cfg = {
            "spec": built.spec,
            "num_classes": built.num_classes,
            "input_size": built.input_size,
            "kwargs": kwargs,
        }
        example = torch.zeros(1, 3, built.input_size, built.input_size)
        self.traced = trace(built.model, example)
        self.model_cfg["leaves"] = sorted(self.traced.meta["fxdnat"]["leaves"])
        self.state = _State()
        if c.method == "original":
            self.edges, self.module, self.state.stage = [], self.traced, "net"
        else:
            self.edges = discover(self.traced, c.granularity)
            if c.method == "random":  # can the changes be placed? before any training
                self._random_decisions()
            self.module = gate(self.traced, self.edges, tie=c.tie)
            if self.recipe.arch_epochs == 0:
                self._finalize(before=None)
        self.drop_path = zoo.set_drop_path_prob(self.module, 0.0) > 0
        self._place()
        self.opt_w = self._weight_optimizer()
        self.opt_theta = self._theta_optimizer()

    def _restore(self, stored: dict) -> None:
        from fxdnat import zoo

        restored = ckpt.restore(stored, spec=self.named_spec)
        self.model_cfg, self.traced, self.edges = stored["model"], restored.traced, restored.edges
        self.module = restored.module
        self.state = _stored_state(stored)
        self.state.theta_history = list(stored["theta_history"])
        self.drop_path = zoo.set_drop_path_prob(self.module, 0.0) > 0
        self._place()
        self.opt_w = self._weight_optimizer()
        self.opt_w.load_state_dict(stored["optimizer_w"])
        self.opt_theta = self._theta_optimizer()
        if self.opt_theta is not None and stored.get("optimizer_theta") is not None:
            self.opt_theta.load_state_dict(stored["optimizer_theta"])
        if self.rank == 0:  # the log holds exactly the epochs of the checkpoint
            with atomic_file(self.out / METRICS, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.state.metrics)

    def _place(self) -> None:
        """Move the module to the device (channels-last on CUDA), wrap it for DDP / compile."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        self.module.to(self.device, memory_format=fmt)
        model: nn.Module = self.module
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = torch.compile(model) if self.config.compile else model
        theta = self._theta()  # ω: every trainable parameter but θ (listed once, used per step)
        self.weights = [p for p in self.module.parameters() if p.requires_grad and p is not theta]

    def _theta(self) -> torch.Tensor | None:
        arch = getattr(self.module, "arch", None)
        return arch.theta if arch is not None else None

    def _weight_optimizer(self) -> torch.optim.SGD:
        r = self.recipe
        return torch.optim.SGD(
            self.weights, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay
        )

    def _theta_optimizer(self) -> torch.optim.Adam | None:
        theta, r = self._theta(), self.recipe
        if theta is None or self.config.method != "dnat":  # random: θ stays (0, 0, 1)
            return None
        return torch.optim.Adam(
            [theta], lr=r.theta_lr, betas=r.theta_betas, weight_decay=r.theta_weight_decay
        )

    # ------------------------------------------------------------------------------ loop
    def run(self) -> dict:
        c, r = self.config, self.recipe
        self.reporter.start(
            {
                "spec": self.model_cfg["spec"],
                "method": c.method,
                "data": c.data,
                "recipe": dataclasses.asdict(r),
                "edges": len(self.edges),
                "tie": c.tie,
                "groups": self._theta().shape[0] if self._theta() is not None else None,
                "reach": self.reach.to_dict(),
                "warnings": self.reach.warnings() if self.state.stage == "arch" else [],
                "device": str(self.device),
                "world": self.world,
                "resumed_at": self.state.epoch,
            }
        )
        if self.rank == 0:  # a kill -9 mid-write leaves a temporary file that nothing reads
            remove_temporaries(self.out, (CHECKPOINT, METRICS, SUMMARY, CELLS))
        with _StopRequests() as self.stop:
            while self.state.epoch < r.epochs:
                try:
                    record = self._epoch()
                except Interrupted:
                    self._save()
                    raise
                self.reporter.epoch_end(record)
                if self.state.stage == "arch" and self.state.epoch == r.arch_epochs:
                    record["finalize"] = self._finalize(before=record["test_acc"])
                self.state.metrics.append(record)
                if self.rank == 0:  # the folder appears with the first finished epoch
                    self.out.mkdir(parents=True, exist_ok=True)
                    with (self.out / METRICS).open("a") as f:
                        f.write(json.dumps(record) + "\n")
                self._save()
        self.state.stage = "done"
        self._save()
        summary = self._summary()
        if self.rank == 0:
            self._draw_cells(summary)
            write_json(self.out / SUMMARY, summary)  # `repro` skips a run once it exists
        self.reporter.finish(summary)
        if self.world > 1:
            torch.distributed.destroy_process_group()
        return summary

    def _epoch(self) -> dict:
        s = self.state
        start = time.perf_counter()
        if s.step == 0:
            s.partial = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        train = self.train_epoch()
        total = {
            k: s.partial[k] + v for k, v in zip(("loss", "correct", "seen"), train, strict=True)
        }
        s.partial = {}
        test_loss, test_acc = self.evaluate()
        s.epoch += 1
        s.elapsed += time.perf_counter() - start
        if s.stage == "arch":
            s.theta_history.append(self._theta().detach().cpu().clone())
        return {
            "epoch": s.epoch,
            "stage": s.stage,
            "lr": self.opt_w.param_groups[0]["lr"],
            "train_loss": total["loss"] / max(total["seen"], 1),
            "train_acc": total["correct"] / max(total["seen"], 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": time.perf_counter() - start,
            "preferences": self._preferences(),
        }

    def train_epoch(self) -> list[float]:
        """One pass over the training data (the rest of it, after an interrupt): the summed
        loss, correct predictions and examples seen."""
        c, r, s = self.config, self.recipe, self.state
        epoch_seed = c.seed * 1_000_003 + s.epoch
        if s.step == 0:
            torch.manual_seed(epoch_seed + 7919 * self.rank)  # augmentation, dropout, drop-path
        self.train_loader.generator.manual_seed(epoch_seed)  # shuffling and worker seeds
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(s.epoch)
        if self.drop_path:
            from fxdnat import zoo

            zoo.set_drop_path_prob(self.module, r.drop_path_prob * s.epoch / r.epochs)
        self.module.train()
        steps = len(self.train_loader)
        self.reporter.epoch_start(s.epoch, s.stage, steps)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, seen
        self.first_nan = _FirstNonFinite(self.device)
        for step, (x, y) in self._batches():
            self._set_lr(s.epoch + step / steps)
            loss, correct = self.train_step(x, y)
            sums += torch.stack([loss.detach().double() * len(y), correct, sums.new_tensor(len(y))])
            s.step = step + 1
            if self.device.type == "cpu" or (step + 1) % 50 == 0 or step + 1 == steps:
                self._check_finite()
                self.reporter.step(s.epoch, step + 1, (sums[0] / sums[2]).item())
            if self.stop.requested and step + 1 < steps:
                self._interrupt(sums)
        s.step = 0
        return _reduce(sums, self.world).tolist()

    def _interrupt(self, sums: torch.Tensor) -> None:
        """Stop between two steps; a single process keeps the partial epoch, DDP ranks do not
        (they may stop at different steps), so those resume from the epoch's start."""
        s = self.state
        if self.world > 1:
            s.step, s.partial = 0, {}
            raise Interrupted(f"interrupted in epoch {s.epoch + 1}; resuming restarts it")
        done = _reduce(sums, 1).tolist()
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
                    _set_rng(self.state.rng)
                continue
            yield step, self._to_device(x, y)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        x = x.to(self.device, non_blocking=True, memory_format=fmt)
        return x, y.to(self.device, non_blocking=True)

    def _searching(self) -> bool:
        """θ trains in this epoch: the architecture stage of DNAT, after ω's warm-up."""
        s, r = self.state, self.recipe
        return s.stage == "arch" and self.opt_theta is not None and s.epoch >= r.warmup_epochs

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.recipe.grad_clip
        gated = self.state.stage == "arch"
        searching = self._searching()
        alternate = searching and self.config.arch_update != "joint"
        # ω's step of the alternating update (and any step while θ waits) needs no gradient of
        # θ: with θ a constant the joins keep nothing for it. Not under DDP, whose reducer
        # expects every parameter it was given.
        frozen = gated and (alternate or not searching) and self.world == 1
        with self.module.arch.frozen() if frozen else contextlib.nullcontext():
            loss, logits = self._loss(self.model, x, y)
        self.first_nan.watch(loss, self.state.step, _OMEGA_LOSS)
        if searching and not alternate:  # joint: one backward for ω and θ
            loss.backward()
            self._clip_and_step(clip)
            self.opt_theta.step()
            self.opt_theta.zero_grad(set_to_none=True)
        elif searching:  # under DDP θ's gradient is computed here too, unused: recomputed below
            loss.backward()
            self._clip_and_step(clip)
            self._theta_step(x, y)
        else:
            loss.backward()
            self._clip_and_step(clip)
            if gated:  # under DDP θ got a gradient it must not keep for its first step
                self._theta().grad = None
        correct = (logits.argmax(1) == y).sum().double()
        return loss, correct

    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        r = self.recipe
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = model(x)
            logits, aux = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=r.label_smoothing)
            if aux is not None and r.auxiliary_weight > 0:
                loss = loss + r.auxiliary_weight * F.cross_entropy(aux.float(), y)
        return loss, logits

    def _clip_and_step(self, clip: float | None) -> None:
        # without clipping an infinite bound only measures the norm, watched for divergence
        norm = nn.utils.clip_grad_norm_(self.weights, math.inf if clip is None else clip)
        self.first_nan.watch(norm, self.state.step, _OMEGA_GRAD)
        self.opt_w.step()
        self.opt_w.zero_grad(set_to_none=True)

    def _theta_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """θ's step on the same minibatch, after ω's update: θ's gradient alone is computed."""
        theta = self._theta()
        loss, _ = self._loss(self.module, x, y)  # not through DDP: its hooks expect ω's grads
        self.first_nan.watch(loss, self.state.step, _THETA_LOSS)
        (grad,) = torch.autograd.grad(loss, [theta])
        if self.world > 1:
            torch.distributed.all_reduce(grad)
            grad /= self.world
        self.first_nan.watch(torch.linalg.vector_norm(grad), self.state.step, _THETA_GRAD)
        theta.grad = grad
        self.opt_theta.step()
        self.opt_theta.zero_grad(set_to_none=True)

    def _set_lr(self, progress: float) -> None:
        """Cosine from lr to 0 over all epochs, per step; stage 2 continues the same schedule."""
        lr = 0.5 * self.recipe.lr * (1 + math.cos(math.pi * progress / self.recipe.epochs))
        for group in self.opt_w.param_groups:
            group["lr"] = lr

    def _check_finite(self) -> None:
        found = self.first_nan.found()
        if found is None:
            return
        step, what, value = found
        r, done = self.recipe, self.state.epoch
        cause, fix = {
            "ω": (
                "after ω's update: the weights diverged",
                f"lower ω's learning rate (--lr, {r.lr:g} now)",
            ),
            "θ": (
                "after θ's update: the architecture weights θ diverged",
                f"lower θ's learning rate (--theta-lr, {r.theta_lr:g} now)",
            ),
            "joint": (
                "after the joint update of ω and θ",
                f"lower ω's or θ's learning rate (--lr {r.lr:g}, --theta-lr {r.theta_lr:g} now)",
            ),
            None: (
                "before any update: the network's outputs on this data are not finite",
                "check the data and the model's initial weights",
            ),
        }[self._update_before(step, what)]
        kept = (
            f"{self.out / CHECKPOINT} still holds epoch {done}"
            if done
            else "no epoch had finished, so nothing was saved"
        )
        again = "and start a new run with another --out" if done else "and rerun"
        raise TrainingError(
            f"{_WATCHED[what]} became {value} in epoch {done + 1} (step {step + 1}) {cause}; "
            f"{kept}; {fix} {again}"
        )

    def _update_before(self, step: int, what: int) -> str | None:
        """The update that came just before a value: "ω", "θ", "joint", or None (none yet).

        Each value follows exactly one update: θ's loss and gradient of a step the ω update of
        that step; ω's the last update of the step before (θ's, or the joint one, while
        searching)."""
        if what in (_THETA_LOSS, _THETA_GRAD):
            return "ω"
        s, r = self.state, self.recipe
        if step == 0 and s.epoch == 0:
            return None
        first = step == 0 and s.epoch == r.arch_epochs  # follows the stage's last update
        searching = self.opt_theta is not None and (
            (s.stage == "arch" and s.epoch >= r.warmup_epochs + (step == 0)) or first
        )
        if not searching:
            return "ω"
        return "joint" if self.config.arch_update == "joint" else "θ"

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the current network (main logits only)."""
        self.module.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in self.test_loader:
            x, y = self._to_device(x, y)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.module(x)
            logits = (out[0] if isinstance(out, (tuple, list)) else out).float()
            loss = F.cross_entropy(logits, y, reduction="sum")
            sums += torch.stack(
                [loss.double(), (logits.argmax(1) == y).sum().double(), sums.new_tensor(len(y))]
            )
        loss_sum, correct, seen = _reduce(sums, self.world).tolist()
        self.module.train()
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def _preferences(self) -> dict[str, int]:
        """How many edges currently prefer each choice (the decisions once finalized)."""
        if self.state.decisions is not None:
            return dict(Counter(self.state.decisions.values()))
        if self._theta() is None:
            return {}
        from fxdnat.passes import decide

        return dict(Counter(decide(self.module).values()))

    # ------------------------------------------------------------------------- finalize
    def _finalize(self, before: float | None) -> dict[str, Any]:
        """Decide and finalize; ``before`` is the gated network's test accuracy (None when the
        stage had no epoch). Returns what the metrics log records: the scale, the accuracy
        just before and just after, and after re-estimating BN statistics if the recipe asks."""
        from fxdnat.passes import finalize

        gated, r = self.module, self.recipe
        decisions, scale = self._decisions(gated)
        final = finalize(gated, decisions, scale=scale)
        old_opt = getattr(self, "opt_w", None)
        self.module, self.state.decisions, self.state.stage = final, decisions, "net"
        if old_opt is not None:  # carry ω's momentum for the weights that remain
            self._place()
            by_param = dict(gated.named_parameters())
            self.opt_w = self._weight_optimizer()
            for name, param in final.named_parameters():
                old = old_opt.state.get(by_param[name])
                if old:
                    self.opt_w.state[param] = {k: v.clone() for k, v in old.items()}
            self.opt_theta = None
        record: dict[str, Any] = {"scale": scale, "acc_before": before, "acc_after": None}
        if before is not None:  # an empty stage has no "before" to compare with
            record["acc_after"] = self.evaluate()[1]
        record["acc_after_bn"] = None
        if r.bn_recalibration:
            record["bn_seconds"] = self._recalibrate_bn(r.bn_recalibration)
            record["acc_after_bn"] = self.evaluate()[1] if before is not None else None
        self.state.finalize = record
        changed = {k: v for k, v in decisions.items() if v != SAME}
        self.reporter.event(
            "finalize",
            {
                "epoch": self.state.epoch,
                "changed": changed,
                "counts": dict(Counter(decisions.values())),
                "margins": self.state.margins,
                "flipped": self.state.flipped,
                **record,
            },
        )
        return record

    def _decisions(self, gated: fx.GraphModule) -> tuple[dict[str, str], str]:
        """The choices and how finalize scales them: DNAT's argmax θ (its margins and late
        flips kept in the state), or the random control's draw at coefficient 1."""
        from fxdnat.passes import decide, margins

        if self.config.method == "random":
            return self._random_decisions(), self._scale()
        decisions = decide(gated)
        self.state.margins = margins(gated)
        searched = self.recipe.arch_epochs - self.recipe.warmup_epochs
        late = self.state.theta_history[-max(2, searched // 4) :]
        self.state.flipped = sorted(
            {
                name
                for theta in late
                for name, choice in decide(gated, theta).items()
                if choice != decisions[name]
            }
        )
        return decisions, self._scale()

    def _random_decisions(self) -> dict[str, str]:
        """The control's changes, placed at random edges by the run's seed."""
        from fxdnat.passes import random_changes

        c = self.config
        return random_changes(self.edges, parse_changes(c.changes or ""), random.Random(c.seed))

    @torch.no_grad()
    def _recalibrate_bn(self, batches: int) -> float:
        """Re-estimate every BatchNorm's running statistics as the plain average over
        ``batches`` training batches (the rest of the network in eval mode); returns seconds.
        The statistics were learned under the gated network's mix of candidates."""
        start = time.perf_counter()
        norms = [
            m
            for m in self.module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
        self.module.eval()
        for m in norms:
            m.train()
        for step, batch in enumerate(self.train_loader):
            if step == batches:
                break
            x, _ = self._to_device(*batch)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                self.module(x)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self.module.train()
        return time.perf_counter() - start

    # ---------------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        if self.rank != 0:
            return
        s = self.state
        s.rng = _get_rng() if s.step else {}
        state = dataclasses.asdict(s)
        state.pop("theta_history")
        ckpt.save(
            self.out / CHECKPOINT,
            {
                "method": self.config.method,
                "model": self.model_cfg,
                "granularity": self.config.granularity,
                "tie": self.config.tie,
                "edges": [e.to_dict() for e in self.edges],
                "decisions": s.decisions,
                "finalize_scale": (s.finalize or {}).get("scale", self._scale()),
                "theta": self._theta().detach().cpu() if self._theta() is not None else None,
                "theta_history": s.theta_history,
                "choices": list(CHOICES),
                "model_state": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "optimizer_w": self.opt_w.state_dict(),
                "optimizer_theta": self.opt_theta.state_dict() if self.opt_theta else None,
                "state": state,
                "config": dataclasses.asdict(self.config),
                "recipe": dataclasses.asdict(self.recipe),
                "seed": self.config.seed,
                "versions": _versions(),
            },
        )

    def _changes(self, decisions: dict[str, str]) -> str:
        """The changes as ``--changes`` reads them ("identity=2,skip-none=1"): what a random
        control of this run places."""
        from fxdnat.passes.decide import count_changes

        return format_changes(count_changes(self.edges, decisions))

    def _scale(self) -> str:
        """finalize's scale: the recipe's, but 1 for the random control, whose θ never
        trained (its identity entries are 0)."""
        return "one" if self.config.method == "random" else self.recipe.finalize_scale

    def _draw_cells(self, summary: dict) -> None:
        """The cell diagram beside the checkpoint; a drawing that fails must not lose the run."""
        if not self.edges or self.state.decisions is None:
            return
        try:
            path = draw_run(
                self.out / CELLS,
                self.traced,
                self.edges,
                self.state.decisions,
                summary,
                tie=self.config.tie,
            )
        except Exception as exc:  # any failure: the run itself is saved and summarised
            log.warning("could not draw the cell diagram (%s); the checkpoint is kept", exc)
            return
        summary["artifacts"] = {"cell diagram": str(path)}

    def _summary(self) -> dict:
        example = torch.zeros(1, 3, self.info.input_size, self.info.input_size)
        final = self.module.to("cpu")
        last = self.state.metrics[-1] if self.state.metrics else {}
        decisions = self.state.decisions or {}
        return {
            "spec": self.model_cfg["spec"],
            "method": self.config.method,
            "data": self.config.data,
            "epochs": self.state.epoch,
            "test_acc": last.get("test_acc"),
            "train_acc": last.get("train_acc"),
            "params_before": count_params(self.traced),
            "params_after": count_params(final),
            "flops_before": count_flops(self.traced, example),
            "flops_after": count_flops(final, example),
            "edges": len(self.edges),
            "decisions": dict(Counter(decisions.values())),
            "changed": {k: v for k, v in decisions.items() if v != SAME},
            "tie": self.config.tie,
            "changes": self._changes(decisions),
            "margins": self.state.margins or {},
            "flipped": self.state.flipped or [],
            "finalize": self.state.finalize,
            "reach": self.reach.to_dict(),
            "seconds": self.state.elapsed,
            "world": self.world,
            "device": str(self.device),
            "checkpoint": str(self.out / CHECKPOINT),
        }


# --------------------------------------------------------------------------------- helpers
def _model_kwargs(spec: str, recipe) -> dict:
    """Zoo models with an auxiliary head build it when the recipe weighs it."""
    from fxdnat import zoo
    from fxdnat.specs import parse_spec

    source, name = parse_spec(spec)
    if (
        source == "zoo"
        and recipe.auxiliary_weight > 0
        and zoo.model_info(name).family in ("darts", "proxylessnas")
    ):
        return {"auxiliary": True}
    return {}


def _stored_state(stored: dict) -> _State:
    state = stored.get("state")
    names = {f.name for f in dataclasses.fields(_State)}
    if type(state) is not dict or not set(state) <= names or state.get("stage") not in ckpt.STAGES:
        raise ckpt.CheckpointError(
            "the checkpoint's run state is not one this fxdnat writes; was it written by fxdnat?"
        )
    return _State(**state)


def _raise_if_finished(out: Path, stored: dict) -> None:
    """A run is finished once its summary is written after the last checkpoint; one killed in
    between is resumed, which writes the summary."""
    if _stored_state(stored).stage != "done":
        return
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError):
        return
    raise RunFinished(out, summary)


def check_device(name: str, instead: str = "--device cpu (or auto)") -> None:
    """Refuse ``--device cuda`` where CUDA is not available, naming what to use ``instead``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda was asked for but CUDA is not available here; use {instead}"
        )


def _device(name: str, rank: int) -> torch.device:
    check_device(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _distributed_init(device: str) -> tuple[int, int]:
    """Rank and world size; joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world


def _reduce(sums: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(sums)
    return sums


def _get_rng() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What a step computes, in order: ω's loss and gradient at (ω, θ), then ω's update, then θ's
# loss and gradient at (new ω, θ), then θ's update.
_OMEGA_LOSS, _OMEGA_GRAD, _THETA_LOSS, _THETA_GRAD = range(4)
_WATCHED = ("the loss", "ω's gradient", "the loss of θ's step", "θ's gradient")


class _FirstNonFinite:
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

    def found(self) -> tuple[int, int, float] | None:
        """(step, which value, the value) of the first one that was not finite."""
        at = int(self.at)
        return None if at == self._NEVER else (*divmod(at, 4), float(self.value))


class _StopRequests:
    """Ctrl-C or SIGTERM ask the run to stop at the next step boundary (a second Ctrl-C stops
    at once), so a saved state is never half a step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequests:
        with contextlib.suppress(ValueError):  # signals can only be set in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _versions() -> dict[str, str]:
    import fxdnat

    versions = {"fxdnat": fxdnat.__version__, "torch": str(torch.__version__)}
    with contextlib.suppress(ImportError):
        import timm

        versions["timm"] = str(timm.__version__)
    return versions


def load_network(path: str | Path, *, trust_code: bool = False) -> tuple[fx.GraphModule, dict]:
    """The network stored in a checkpoint (final, or gated if not yet finalized), and its data.

    A checkpoint whose model is built by code (a ``module:`` spec, arguments that are not plain
    values) is refused unless ``trust_code``: loading a file never runs code you did not name."""
    data = ckpt.load(path)
    return ckpt.restore(data, trust_code=trust_code).module.eval(), data
