"""DNAT in a Lightning run: ``Trainer(callbacks=[DNATCallback(...)])``.

Needs the ``lightning`` extra (``pip install 'fxdnat[lightning]'``). The callback transforms
the LightningModule's network in place of it (``pl_module.model`` unless told another
attribute) and leaves ω's training to Lightning: your ``training_step``, ``configure_optimizers``,
gradient clipping, precision and strategy, DDP included. The steps, in Lightning's hooks:

- ``setup``: trace → discover → gate the network from ``example_inputs`` (default: the module's
  ``example_input_array``); ``on_fit_start``: θ leaves your optimizers; ``on_train_start``:
  θ gets its own Adam;
- ``on_train_epoch_start``: the epoch seeded as ``fxdnat transform --seed`` seeds it (with
  ``seed``); ``on_train_batch_start``: θ frozen for ω's forward;
- ``on_train_batch_end`` (after ω's step): θ's step on the same batch, its loss computed again
  by ``training_step`` with logging muted (or by ``theta_loss(pl_module, batch)``); with
  gradient accumulation, once ω's optimizer has stepped, on the mean loss of its batches;
- ``on_train_epoch_end`` at the architecture stage's end: decide, finalize, point your
  optimizers at the kept weights with their momentum and learning rates, rewrap DDP;
- θ's preferences and margins logged every epoch (``dnat/...``), and an fxdnat checkpoint
  (``fxdnat.pt``, weights only) beside Lightning's logs, which ``fxdnat eval/render/export``
  read; with ``spec`` only, since rebuilding the network needs it;
- Lightning's own checkpoints keep the stage (``state_dict``); ``fit``, ``validate``, ``test``
  or ``predict`` with ``ckpt_path=`` restore it in the module's ``on_load_checkpoint`` (wrapped
  at ``setup``: the one hook before Lightning loads the weights), so a finalized network is
  finalized again before its weights and optimizer state arrive. A checkpoint written after an
  epoch's last step, before its end hooks, is caught up at the next epoch's start.

Manual optimization is refused (θ's step follows Lightning's optimizer step); a batch whose
``training_step`` returns None gets no θ step.

Under DDP each process steps θ on its own batch and the θ gradients are averaged
(fxdnat.DNAT.theta_step), so θ stays the same on every rank, as ω does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from fxdnat.integrations.driver import Driver

CHECKPOINT_NAME = "fxdnat.pt"


class DNATCallback(pl.Callback):
    """DNAT's architecture stage and finalize around Lightning's training of ω.

    Args:
        arch_epochs: epochs of the architecture stage (ω and θ); finalize at its end.
        attribute: the LightningModule's attribute holding the network to transform.
        example_inputs: inputs to trace it with (default: ``example_input_array``).
        theta_loss: ``(pl_module, batch) -> loss`` for θ's step (default: ``training_step``'s
            loss, its logging muted).
        dirpath: where ``fxdnat.pt`` is written every epoch (default: the trainer's log
            folder); None with no ``spec``: no checkpoint.
        **options: :class:`fxdnat.integrations.driver.Driver`'s (``warmup_epochs``,
            ``theta_lr``, ``theta_reach``, ``update``, ``scale``, ``tie``, ``spec``, ``data``,
            ``seed``, ...).
    """

    def __init__(
        self,
        arch_epochs: int,
        *,
        attribute: str = "model",
        example_inputs: Any = None,
        theta_loss: Callable[[pl.LightningModule, Any], torch.Tensor] | None = None,
        dirpath: str | Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.arch_epochs, self.attribute = arch_epochs, attribute
        self.example_inputs, self.theta_loss = example_inputs, theta_loss
        self.dirpath, self.options = dirpath, options
        self.driver: Driver | None = None
        self._drawn = False  # this fit's first epoch has drawn its batches seeded
        self._batches: list[tuple[Any, int]] = []  # since ω's last step (gradient accumulation)
        self._steps_before = 0
        self.records: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # validate / test / predict too: with ckpt_path they load a checkpoint of this run,
        # whose network must be rebuilt (finalized, maybe) before its weights arrive
        self._drawn = False
        if stage == "fit" and not pl_module.automatic_optimization:
            raise ValueError(
                "DNATCallback steps θ after Lightning's optimizer step, which manual "
                "optimization leaves to training_step; there, use fxdnat.DNAT's step "
                "(docs/library.md, 'Your own loop')"
            )
        if self.driver is not None:
            return
        network = getattr(pl_module, self.attribute, None)
        if not isinstance(network, torch.nn.Module):
            raise ValueError(
                f"DNATCallback transforms {type(pl_module).__name__}.{self.attribute}, which is "
                "not a torch module; pass attribute= naming the network"
            )
        example = self.example_inputs
        if example is None:
            example = pl_module.example_input_array
        if example is None:
            raise ValueError(
                "DNATCallback needs inputs to trace the network: set example_input_array on "
                "the LightningModule or pass example_inputs="
            )
        self.driver = Driver(network, example, arch_epochs=self.arch_epochs, **self.options)
        setattr(pl_module, self.attribute, self.driver.module)
        # Resuming, Lightning loads the weights before it hands callbacks their state, and the
        # module's on_load_checkpoint is the one hook before: the stage is restored there, so
        # that a finalized network is finalized again before its weights arrive.
        own_hook = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            mine = (checkpoint.get("callbacks") or {}).get(self.state_key)
            if mine:
                self.driver.load_state_dict(mine["driver"])
                self.records = list(mine["records"])
                setattr(pl_module, self.attribute, self.driver.module)
            own_hook(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Lightning's checkpoints keep the stage with the weights (``fit(ckpt_path=...)``
        resumes it); a driver not yet set up has nothing to keep."""
        if self.driver is None:
            return {}
        return {"driver": self.driver.state_dict(), "records": list(self.records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # read in `setup`, before Lightning loads the weights into the network

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.driver.release(trainer.optimizers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _weights_loaded(pl_module)
        # the training batches are counted once the loop has set its data up; θ steps once an
        # ω step, which gradient accumulation makes of several batches
        batches = int(trainer.num_training_batches)
        self.driver.plan(max(math.ceil(batches / trainer.accumulate_grad_batches), 1))
        loop = trainer.fit_loop
        if loop.restarted_mid_epoch or loop.restarted_on_epoch_end:
            self._begin_epoch(trainer, pl_module)  # Lightning calls no epoch start hook then

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _weights_loaded(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _weights_loaded(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _weights_loaded(pl_module)

    # ----------------------------------------------------------------------------- epochs
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin_epoch(trainer, pl_module)

    def _begin_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from a checkpoint written after an epoch's last step, before its end hooks
        if self.driver.catch_up(trainer.current_epoch):
            self._finalize(trainer, pl_module, None)
        self.driver.start_epoch(trainer.train_dataloader, trainer.global_rank)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if self.driver.seed is not None and not self._drawn and fetcher is not None:
            # Lightning drew the first epoch's iterator of a fit (epoch 0, or where it resumes)
            # before this hook, from the loader unseeded, and prefetched a batch; it draws
            # every later epoch's after it. Draw it again.
            iter(fetcher)
        self._drawn = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._steps_before = trainer.global_step  # it grows when ω's optimizer steps
        self._frozen = self.driver.weights_context()
        self._frozen.__enter__()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._frozen.__exit__(None, None, None)
        self._batches.append((batch, batch_idx))
        if trainer.global_step == self._steps_before:  # accumulating: ω has not stepped yet
            return
        batches, self._batches = self._batches, []

        def loss_of() -> torch.Tensor | None:  # the mean loss of ω's step's batches
            with trainer.precision_plugin.forward_context():
                losses = [self._loss(pl_module, *done) for done in batches]
            losses = [loss for loss in losses if loss is not None]  # skipped batches
            return torch.stack(losses).mean() if losses else None

        self.driver.theta_step(loss_of)

    def _loss(
        self, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> torch.Tensor | None:
        if self.theta_loss is not None:
            return self.theta_loss(pl_module, batch)
        with _muted(pl_module):
            out = pl_module.training_step(batch, batch_idx)
        return out["loss"] if isinstance(out, dict) else out  # None: a batch Lightning skips

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        driver = self.driver
        record = {"epoch": driver.state.epoch + 1, "stage": driver.state.stage}
        record |= _curves(trainer.callback_metrics)
        if driver.end_epoch():
            self._finalize(trainer, pl_module, record.get("test_acc"))
        metrics = driver.metrics()  # decide and margins: once an epoch
        self.records.append(record | {"preferences": _counts(metrics)})
        pl_module.log_dict(metrics, on_epoch=True, rank_zero_only=True)
        self._save(trainer)

    def _finalize(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, accuracy: float | None
    ) -> None:
        final = self.driver.finalize(trainer.optimizers, accuracy=accuracy)
        setattr(pl_module, self.attribute, final)
        _rewrap_ddp(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.driver.state.stage == "net":
            self.driver.state.stage = "done"
        self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and self.driver.model_section is not None:
            self.driver.save(self.checkpoint_path(trainer), self.records)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where ``fxdnat.pt`` goes: ``dirpath``, else the trainer's log folder."""
        folder = self.dirpath or trainer.log_dir or trainer.default_root_dir
        return Path(folder) / CHECKPOINT_NAME


@contextlib.contextmanager
def _muted(pl_module: pl.LightningModule) -> Iterator[None]:
    """``self.log`` / ``self.log_dict`` do nothing inside: θ's second forward of the batch must
    not log its loss as another training step."""

    def quiet(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.log, pl_module.log_dict = quiet, quiet  # instance attributes shadow the methods
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict


def _weights_loaded(pl_module: pl.LightningModule) -> None:
    """Lightning has loaded any checkpoint's weights: the module's own on_load_checkpoint
    again (setup wrapped it)."""
    if "on_load_checkpoint" in vars(pl_module):
        del pl_module.on_load_checkpoint


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    """A new DDP wrapper around the finalized network: the old one's reducer hooks the gated
    network's weights, so the kept weights' gradients would no longer be averaged."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


# what the epoch's record calls a curve ← the names a LightningModule commonly logs it under
_CURVES = {
    "train_loss": ("train_loss_epoch", "train_loss", "train/loss"),
    "train_acc": ("train_acc_epoch", "train_acc", "train/acc"),
    "test_loss": ("val_loss", "val/loss", "test_loss"),
    "test_acc": ("val_acc", "val/acc", "val_accuracy", "test_acc"),
}


def _curves(metrics: dict[str, Any]) -> dict[str, float]:
    """The epoch's losses and accuracies from what the module logged (``fxdnat plot`` draws
    them; a validation accuracy is the gated network's before finalize)."""
    found = {}
    for name, keys in _CURVES.items():
        key = next((k for k in keys if k in metrics), None)
        if key is not None:
            found[name] = float(metrics[key])
    return found


def _counts(metrics: dict[str, float]) -> dict[str, int]:
    return {k.removeprefix("dnat/prefer_"): int(v) for k, v in metrics.items() if "prefer_" in k}
