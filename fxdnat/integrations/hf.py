"""DNAT in a Hugging Face ``transformers.Trainer`` run.

Needs the ``hf`` extra (``pip install 'fxdnat[hf]'``). A Trainer callback cannot swap the
Trainer's model, so the callback brings one: ``callback.model``, a small module around the
network being trained (gated, then finalized) that takes the Trainer's batches —
``input_ids`` (a causal language model's token ids, (B, T)) or ``pixel_values`` (images,
(B, 3, S, S)) and ``labels`` — and returns ``{"loss", "logits"}``::

    callback = DNATTrainerCallback(model, example_inputs, arch_epochs=2, spec="hf:tiny-llama")
    trainer = Trainer(model=callback.model, args=args, train_dataset=..., callbacks=[callback])

Then, in the Trainer's events: ``on_train_begin`` takes θ out of the Trainer's optimizer and
gives it its own Adam; ``on_epoch_begin`` seeds the epoch as ``fxdnat transform --seed`` does
(with ``seed``); ω's forwards run with θ frozen and keep their batches; ``on_optimizer_step``
(after ω's step) steps θ on the same batches; ``on_epoch_end`` at the architecture stage's
end decides, finalizes and points the Trainer's optimizer at the kept weights with their
moments and learning rates. θ rests without a gradient, so the Trainer's optimizer (made of
the parameters that need one) never holds it; its joint-update gradient is set aside as it
arrives, out of the Trainer's clipping; its forward runs under the Trainer's bf16/fp16
autocast. θ's preferences and margins go into ``state.log_history`` (and so
``trainer_state.json``) every epoch, and every Trainer checkpoint folder gets ``fxdnat.pt``, the
network in fxdnat's format, which ``fxdnat eval/render/export`` read (with ``spec``), and
``dnat_state.pt``, which :meth:`DNATTrainerCallback.resume` reads before
``trainer.train(resume_from_checkpoint=folder)`` (a folder written after an epoch's last step,
before its end event, is caught up at the next epoch's start).

Language-model labels: fxdnat's text data gives ``labels`` aligned with ``input_ids`` (the token
after each position), the default here; ``shift_labels=True`` reads Hugging Face's convention
instead (``labels`` = ``input_ids``, -100 ignored, shifted inside the loss).

One process: the Trainer's DDP wrapper holds the gated network's weights, and a callback
cannot rebuild it at finalize; distributed runs use the Lightning callback or
``torchrun fxdnat transform``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from fxdnat import checkpoint as ckpt
from fxdnat import tasks
from fxdnat.dnat import world_size
from fxdnat.integrations.driver import Driver

CHECKPOINT_NAME = "fxdnat.pt"
"""The network in fxdnat's checkpoint format, in every Trainer checkpoint folder (with spec)."""
STATE_NAME = "dnat_state.pt"
"""The stage's state beside it (:meth:`DNATTrainerCallback.resume` reads it)."""


class DNATModel(nn.Module):
    """What the Trainer trains: the driver's current network (gated, then finalized) with the
    task's loss. ``forward(input_ids | pixel_values, labels=None)`` → ``{"logits", "loss"}``
    (loss only with labels): mean cross-entropy per example, or per predicted token."""

    accepts_loss_kwargs = False  # the loss is a mean over the batch; Trainer must not rescale

    def __init__(self, driver: Driver, shift_labels: bool) -> None:
        super().__init__()
        self.driver, self.shift_labels = driver, shift_labels
        self.net = driver.module
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # ω's, since θ's last step
        # θ at rest needs no gradient, so the Trainer's optimizer (made of the parameters that
        # require one) leaves it out, as it does when it resumes: θ takes a gradient only in
        # the forwards that θ steps on
        if driver.dnat.theta is not None:
            # the joint update's θ gradient is kept aside as it arrives: the Trainer clips the
            # gradients of all model.parameters(), and θ's must not count (nor be clipped)
            driver.dnat.theta.register_post_accumulate_grad_hook(self._keep_theta_grad)
            driver.dnat.theta.requires_grad_(False)
        self.theta_grad_kept: torch.Tensor | None = None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        x = input_ids if input_ids is not None else pixel_values
        if x is None:
            raise ValueError("DNATModel takes input_ids (token ids) or pixel_values (images)")
        if not self.training or labels is None:
            logits = tasks.main_logits(self.net(x))
            return {
                "logits": logits,
                **({"loss": self.loss(logits, labels)} if labels is not None else {}),
            }
        if torch.is_grad_enabled():  # ω's forward of a step: θ steps on the same batch after
            self.batches.append((x, labels))
        theta = self.driver.dnat.theta
        if theta is not None and self.driver.searching and self.driver.update == "joint":
            theta.requires_grad_(True)  # through the backward, until θ's step (it rests after)
        logits = tasks.main_logits(self.net(x))
        return {"loss": self.loss(logits, labels), "logits": logits}

    def _keep_theta_grad(self, theta: torch.Tensor) -> None:
        kept = self.theta_grad_kept
        self.theta_grad_kept = theta.grad if kept is None else kept + theta.grad
        theta.grad = None

    @contextlib.contextmanager
    def theta_grad(self) -> Iterator[None]:
        """θ takes a gradient inside (θ's step), and rests without one after."""
        theta = self.driver.dnat.theta
        if theta is None:
            yield
            return
        theta.requires_grad_(True)
        try:
            yield
        finally:
            theta.requires_grad_(False)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``logits`` (B, classes) or (B, T, vocabulary) on ``labels``."""
        if logits.dim() == 3 and self.shift_labels:  # Hugging Face's: labels are the inputs
            logits, labels = logits[:, :-1], labels[:, 1:]
        return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100)

    def theta_loss(self) -> torch.Tensor:
        """The mean loss of ω's batches since θ's last step, through the network as ω's step
        left it; run it inside :meth:`theta_grad`."""
        losses = [self.loss(tasks.main_logits(self.net(x)), y) for x, y in self.batches]
        return torch.stack(losses).mean()


class DNATTrainerCallback(TrainerCallback):
    """DNAT's architecture stage and finalize around ``transformers.Trainer``'s training of ω.

    Args:
        model: the network to transform: a module taking token ids (B, T) to logits
            (B, T, vocabulary) or images to class logits (an ``hf:`` spec's, a zoo model,
            your own), or a transformers causal LM (``AutoModelForCausalLM``), which goes
            behind fxdnat.hf's ``input_ids → logits`` wrapper as an ``hf:`` spec's does.
        example_inputs: one input to trace it with, e.g. ``torch.zeros(1, T, dtype=torch.long)``.
        arch_epochs: epochs of the architecture stage; finalize at its end.
        shift_labels: Hugging Face's label convention (see the module docstring).
        **options: :class:`fxdnat.integrations.driver.Driver`'s (``warmup_epochs``,
            ``theta_lr``, ``theta_reach``, ``update``, ``spec``, ``data``, ``seed``, ...).

    Attributes:
        model: the module to give ``Trainer(model=...)``.
        driver: the stage's state (``driver.module``: the network; ``driver.state``).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        arch_epochs: int,
        shift_labels: bool = False,
        **options: Any,
    ) -> None:
        self.driver = Driver(
            _logits_model(model), example_inputs, arch_epochs=arch_epochs, **options
        )
        if self.driver.task is None:
            raise ValueError(
                "DNATTrainerCallback trains image classifiers ((B, 3, S, S) → (B, classes)) and "
                "causal language models ((B, T) token ids → (B, T, vocabulary)); this model's "
                "example and output are neither"
            )
        self.model = DNATModel(self.driver, shift_labels)

    def resume(self, folder: str | Path) -> None:
        """Continue the stage saved in a Trainer checkpoint ``folder``; call it before
        ``trainer.train(resume_from_checkpoint=folder)``, which then loads weights that fit:
        a run finalized by then is finalized again on its decisions.

        Raises:
            fxdnat.checkpoint.CheckpointError: ``folder`` has no readable DNAT state, or one
                of another network."""
        path = Path(folder) / STATE_NAME
        if not path.is_file():
            raise ckpt.CheckpointError(
                f"{folder} has no {STATE_NAME}: DNATTrainerCallback writes one into every "
                "checkpoint folder it saves; resume from such a folder"
            )
        stored = ckpt.load(path)
        self.driver.load_state_dict(stored)
        self.model.net = self.driver.module

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if world_size() > 1:
            raise RuntimeError(
                "DNATTrainerCallback runs in one process: the Trainer's DDP wrapper would keep "
                "the gated network's weights after finalize; use fxdnat.integrations.lightning "
                "or torchrun fxdnat transform for distributed runs"
            )
        self.driver.release([kw["optimizer"]])
        steps = len(kw["train_dataloader"]) // args.gradient_accumulation_steps
        self.driver.plan(max(steps, 1))

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # resumed from a checkpoint written after an epoch's last step, before its end event
        if self.driver.catch_up(math.floor(round(state.epoch or 0, 6))):
            self.model.net = self.driver.finalize([kw["optimizer"]])
        self.driver.start_epoch(kw.get("train_dataloader"))

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # after ω's optimizer step, before the Trainer clears the gradients (joint reads θ's)
        theta = self.driver.dnat.theta
        if theta is not None:  # joint: θ's gradient of ω's backward, kept from the clipping
            theta.grad, self.model.theta_grad_kept = self.model.theta_grad_kept, None
        with self.model.theta_grad(), _autocast(args, theta):  # until θ's gradient is taken
            if self.model.batches:
                self.driver.theta_step(self.model.theta_loss)
        self.model.batches.clear()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        driver = self.driver
        if driver.end_epoch():
            self.model.net = driver.finalize([kw["optimizer"]])
        state.log_history.append(
            {"epoch": state.epoch, "step": state.global_step, **driver.metrics()}
        )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._save(folder if folder.is_dir() else Path(args.output_dir), state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.driver.state.stage == "net":
            self.driver.state.stage = "done"
        self._save(Path(args.output_dir), state)

    def _save(self, folder: Path, state: TrainerState) -> None:
        if not state.is_world_process_zero:
            return
        ckpt.save(folder / STATE_NAME, self.driver.state_dict())
        if self.driver.model_section is not None:
            records = _records(state.log_history, self.driver.arch_epochs)
            self.driver.save(folder / CHECKPOINT_NAME, records)


def _autocast(
    args: TrainingArguments, theta: torch.Tensor | None
) -> contextlib.AbstractContextManager[None]:
    """The Trainer's mixed precision (``bf16`` / ``fp16``) for θ's forward, as ω's ran."""
    if theta is None or not (args.bf16 or args.fp16):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.bf16 else torch.float16
    return torch.autocast(theta.device.type, dtype=dtype)


def _logits_model(model: nn.Module) -> nn.Module:
    """A transformers causal LM (its forward returns a ModelOutput) behind fxdnat.hf's
    ``input_ids → logits`` wrapper, as an ``hf:`` spec builds it; any other model as it is.

    Raises:
        ValueError: a masked or seq2seq language model (next-token training teaches it to copy)."""
    if not isinstance(model, PreTrainedModel):
        return model
    from fxdnat.hf import LanguageModel, objective_of  # lazy: transformers' model registry

    objective = objective_of(model.config)
    tasks.check_causal(objective, type(model).__name__)
    return LanguageModel(model, objective)


# Trainer's log keys → the names an fxdnat checkpoint's epoch records use
_CURVES = {"loss": "train_loss", "eval_loss": "test_loss", "eval_accuracy": "test_acc"}


def _records(history: list[dict[str, Any]], arch_epochs: int) -> list[dict[str, Any]]:
    """One record per epoch for ``fxdnat plot``/``render``: the Trainer's last logged values
    of its losses in that epoch (``state.log_history``; an entry at epoch 1.4 is epoch 2's)."""
    records: dict[int, dict[str, Any]] = {}
    for entry in history:
        epoch = max(math.ceil(float(entry.get("epoch", 0))), 1)
        stage = "arch" if epoch <= arch_epochs else "net"
        record = records.setdefault(epoch, {"epoch": epoch, "stage": stage})
        record |= {name: float(entry[key]) for key, name in _CURVES.items() if key in entry}
    return [records[e] for e in sorted(records)]
