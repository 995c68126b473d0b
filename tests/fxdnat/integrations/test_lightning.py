"""The Lightning callback, with Lightning itself: the network it finalizes is the one
``fxdnat transform`` gives for the same model, data order, seed and recipe."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from fxdnat import checkpoint as ckpt  # noqa: E402
from fxdnat.data import make_loaders  # noqa: E402
from fxdnat.integrations.lightning import DNATCallback  # noqa: E402
from fxdnat.specs import build_model  # noqa: E402
from tests.lib.frameworks import assert_cli_reads, assert_same_network, transformed  # noqa: E402

# the quick recipe on digits-hard (batch 16, SGD lr 0.05, momentum 0.9, decay 5e-4, clipping
# at 5), three epochs: one of ω alone, one of ω and θ (reach 5), one after finalize
EPOCHS, ARCH, WARMUP, REACH = 3, 2, 1, 5.0


class Classifier(pl.LightningModule):
    """A LightningModule as people write one: the network in ``self.model``, SGD over all
    ``self.parameters()`` with a per-step cosine schedule (the recipe's)."""

    def __init__(self, model: torch.nn.Module, steps: int) -> None:
        super().__init__()
        self.model, self.steps = model, steps
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.model(x).argmax(-1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        total = EPOCHS * self.steps
        cosine = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def _fit(
    tmp_path,
    *,
    max_epochs=EPOCHS,
    checkpoints=None,
    save_every=None,
    ckpt_path=None,
    logger=False,
    **options,
):
    torch.manual_seed(0)  # the initial weights, as `fxdnat transform --seed 0` draws them
    model = build_model("zoo:resnet20", num_classes=10, input_size=8).model
    train, test, _ = make_loaders("digits-hard", batch_size=16, seed=0)
    callback = DNATCallback(
        ARCH, warmup_epochs=WARMUP, theta_reach=REACH, spec="zoo:resnet20", data="digits-hard",
        seed=0, dirpath=tmp_path / "lightning", **options,
    )  # fmt: skip
    every = {"every_n_train_steps": save_every} if save_every else {}
    saving = (
        [pl.callbacks.ModelCheckpoint(checkpoints, save_last=True, **every)] if checkpoints else []
    )
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", callbacks=[callback, *saving],
        gradient_clip_val=5.0, logger=logger, enable_checkpointing=bool(saving),
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = Classifier(model, len(train))
    trainer.fit(module, train, test, ckpt_path=ckpt_path)
    assert module.model is callback.driver.module  # the LightningModule trains the final network
    return callback


def _transformed(tmp_path, **fields) -> dict:
    """`fxdnat transform`'s checkpoint for the runs of this module."""
    return transformed(
        tmp_path, "zoo:resnet20", "digits-hard", epochs=EPOCHS, arch_epochs=ARCH,
        warmup_epochs=WARMUP, theta_reach=REACH, **fields,
    )  # fmt: skip


def test_lightning_run_finalizes_the_network_fxdnat_transform_gives(tmp_path):
    _fit(tmp_path, logger=pl.loggers.CSVLogger(tmp_path / "logs"))
    engine = _transformed(tmp_path)
    path = tmp_path / "lightning" / "fxdnat.pt"
    written = ckpt.load(path)
    assert written["state"]["stage"] == "done" and written["state"]["epoch"] == EPOCHS
    assert_same_network(engine, written)
    assert [r["stage"] for r in written["state"]["metrics"]] == ["arch", "arch", "net"]
    assert all("test_acc" in r and "train_loss" in r for r in written["state"]["metrics"])
    assert_cli_reads(path, tmp_path)
    # θ's preferences and margins, every epoch, through Lightning's logger
    (logged,) = (tmp_path / "logs").glob("**/metrics.csv")
    header = logged.read_text().splitlines()[0].split(",")
    assert {"dnat/prefer_same", "dnat/prefer_none", "dnat/margin_min"} <= set(header)


def test_a_theta_loss_of_ones_own_gives_the_same_network(tmp_path):
    """θ's loss from a function instead of training_step (e.g. a step that does more than the
    loss): the same loss, the same network."""
    default = _fit(tmp_path / "default").driver
    own = _fit(
        tmp_path / "own",
        theta_loss=lambda module, batch: F.cross_entropy(module.model(batch[0]), batch[1]),
    ).driver
    assert own.state.decisions == default.state.decisions
    for (name, a), b in zip(
        default.module.state_dict().items(), own.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, msg=name)


def test_the_joint_update_is_the_engines_too(tmp_path):
    _fit(tmp_path, update="joint")
    engine = _transformed(tmp_path, arch_update="joint")
    assert_same_network(engine, ckpt.load(tmp_path / "lightning" / "fxdnat.pt"))


def test_refuses_a_module_without_example_inputs(tmp_path):
    class Bare(Classifier):
        def __init__(self):
            super().__init__(build_model("zoo:resnet20", num_classes=10, input_size=8).model, 1)
            self.example_input_array = None

    train, _, _ = make_loaders("digits-hard", batch_size=16, seed=0, limit=32)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[DNATCallback(1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    with pytest.raises(ValueError, match="example_input_array"):
        trainer.fit(Bare(), train)


@pytest.mark.slow
def test_two_processes_with_the_ddp_strategy_match_torchrun_transform(tmp_path):
    """Lightning's DDP on two CPU processes (gloo) against ``torchrun fxdnat transform``: θ's
    gradient averaged over the ranks, the DDP wrapper rebuilt around the finalized network."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    script = root / "tests" / "lib" / "lightning_ddp.py"
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "lightning")],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "fxdnat.cli", "transform"]
    command += ["zoo:resnet20", "--data", "digits-hard", "--recipe", "quick", "--epochs", "3"]
    command += ["--arch-epochs", "2", "--warmup-epochs", "1", "--theta-reach", "10"]
    command += ["--device", "cpu", "--out", str(tmp_path / "engine")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    engine = ckpt.load(tmp_path / "engine" / "checkpoint.pt")
    assert_same_network(engine, ckpt.load(tmp_path / "lightning" / "fxdnat.pt"))


@pytest.mark.parametrize("save_every", [None, 15], ids=["epoch-end", "last-step"])
def test_fit_resumes_from_lightnings_checkpoint_after_finalize(tmp_path, save_every):
    """Stopped after the architecture stage, resumed from Lightning's last.ckpt — written at the
    epoch's end, or after its last step (15 steps an epoch), before the epoch's end hooks: the
    same epochs, θ, decisions and (from an epoch-end checkpoint) weights as the run that never
    stopped. From a last-step checkpoint Lightning's restart moves torch's RNG between the
    epoch's seeding and its first batch, so digits-hard's augmentation draws differ after it."""
    _fit(tmp_path / "whole")
    cut = {"checkpoints": tmp_path / "ckpt", "save_every": save_every}
    _fit(tmp_path / "cut", max_epochs=ARCH, **cut)
    _fit(tmp_path / "cut", ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    whole = ckpt.load(tmp_path / "whole" / "lightning" / "fxdnat.pt")
    resumed = ckpt.load(tmp_path / "cut" / "lightning" / "fxdnat.pt")
    assert resumed["state"]["epoch"] == EPOCHS and resumed["decisions"] == whole["decisions"]
    torch.testing.assert_close(resumed["theta_history"], whole["theta_history"])
    assert resumed["model_state"].keys() == whole["model_state"].keys()
    for name, value in whole["model_state"].items():
        if save_every is None:
            torch.testing.assert_close(resumed["model_state"][name], value, msg=name)
    # testing on the checkpoint with the callback attached rebuilds its network: finalized
    # (written at the epoch's end), or gated (after the last step, before finalize)
    module = Classifier(build_model("zoo:resnet20", num_classes=10, input_size=8).model, 1)
    tester = pl.Trainer(
        accelerator="cpu", callbacks=[DNATCallback(ARCH, spec="zoo:resnet20")], logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    _, test, _ = make_loaders("digits-hard", batch_size=16, seed=0)
    tester.test(module, test, ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)
    assert ("arch" in dict(module.model.named_children())) == (save_every is not None)


def test_refuses_manual_optimization_and_skips_theta_where_lightning_skips_the_batch(tmp_path):
    class Manual(Classifier):
        def __init__(self, model, steps):
            super().__init__(model, steps)
            self.automatic_optimization = False

    class Skipping(Classifier):
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    train, _, _ = make_loaders("digits-hard", batch_size=16, seed=0, limit=64)  # 4 batches
    for kind, ok in ((Manual, False), (Skipping, True)):
        callback = DNATCallback(2, theta_lr=0.1)
        trainer = pl.Trainer(
            max_epochs=1, accelerator="cpu", callbacks=[callback], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        module = kind(build_model("zoo:resnet20", num_classes=10, input_size=8).model, 4)
        if not ok:
            with pytest.raises(ValueError, match="manual optimization"):
                trainer.fit(module, train)
            continue
        trainer.fit(module, train)
        (state,) = callback.driver.opt_theta.state.values()
        assert int(state["step"]) == 2  # θ waits where the batch gave no loss


def test_with_gradient_accumulation_theta_steps_once_per_omega_step(tmp_path):
    train, _, _ = make_loaders("digits-hard", batch_size=16, seed=0, limit=96)  # 6 batches
    callback = DNATCallback(2, spec="zoo:resnet20", theta_lr=0.1, dirpath=tmp_path)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", callbacks=[callback], accumulate_grad_batches=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(
        Classifier(build_model("zoo:resnet20", num_classes=10, input_size=8).model, 6), train
    )
    (state,) = callback.driver.opt_theta.state.values()  # θ's Adam, still in the stage
    assert trainer.global_step == 3 and int(state["step"]) == 3
