"""The Lightning callback, with Lightning itself: the network it finalizes is the one
``fxdnat transform`` gives for the same model, data order, seed and recipe."""

from __future__ import annotations

import math

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

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.model(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        total = EPOCHS * self.steps
        cosine = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def _fit(tmp_path, **options) -> DNATCallback:
    torch.manual_seed(0)  # the initial weights, as `fxdnat transform --seed 0` draws them
    model = build_model("zoo:resnet20", num_classes=10, input_size=8).model
    train, test, _ = make_loaders("digits-hard", batch_size=16, seed=0)
    callback = DNATCallback(
        ARCH,
        warmup_epochs=WARMUP,
        theta_reach=REACH,
        spec="zoo:resnet20",
        data="digits-hard",
        seed=0,
        dirpath=tmp_path / "lightning",
        **options,
    )
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        callbacks=[callback],
        gradient_clip_val=5.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = Classifier(model, len(train))
    trainer.fit(module, train, test)
    assert module.model is callback.driver.module  # the LightningModule trains the final network
    return callback


def test_lightning_run_finalizes_the_network_fxdnat_transform_gives(tmp_path):
    _fit(tmp_path)
    engine = transformed(
        tmp_path,
        "zoo:resnet20",
        "digits-hard",
        epochs=EPOCHS,
        arch_epochs=ARCH,
        warmup_epochs=WARMUP,
        theta_reach=REACH,
    )
    path = tmp_path / "lightning" / "fxdnat.pt"
    written = ckpt.load(path)
    assert written["state"]["stage"] == "done" and written["state"]["epoch"] == EPOCHS
    assert_same_network(engine, written)
    assert [r["stage"] for r in written["state"]["metrics"]] == ["arch", "arch", "net"]
    assert all("test_acc" in r and "train_loss" in r for r in written["state"]["metrics"])
    assert_cli_reads(path, tmp_path)


def test_the_joint_update_is_the_engines_too(tmp_path):
    _fit(tmp_path, update="joint")
    engine = transformed(
        tmp_path,
        "zoo:resnet20",
        "digits-hard",
        epochs=EPOCHS,
        arch_epochs=ARCH,
        warmup_epochs=WARMUP,
        theta_reach=REACH,
        arch_update="joint",
    )
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
