"""A Lightning run with the DDP strategy on two CPU processes, for tests/fxdnat/integrations:
``python tests/lib/lightning_ddp.py OUT`` (Lightning starts the second process by running the
same command again). The network, data, seed and recipe are those of

    torchrun --nproc_per_node 2 -m fxdnat.cli transform zoo:resnet20 --data digits-hard \\
        --recipe quick --epochs 3 --arch-epochs 2 --warmup-epochs 1 --theta-reach 10 --device cpu

with the engine's sampler (fxdnat.data.make_loaders(distributed=True)) instead of Lightning's.
"""

from __future__ import annotations

import math
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from fxdnat.data import make_loaders
from fxdnat.integrations.lightning import DNATCallback
from fxdnat.specs import build_model

EPOCHS, ARCH, WARMUP, REACH = 3, 2, 1, 10.0


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the initial weights, as the engine draws them (every rank alike)
        self.model = build_model("zoo:resnet20", num_classes=10, input_size=8).model
        self.example_input_array = torch.zeros(1, 3, 8, 8)
        self.loaders = None

    def train_dataloader(self):
        # made once the process group is up: the engine's DistributedSampler and generator
        self.loaders = make_loaders("digits-hard", batch_size=16, seed=0, distributed=True)
        return self.loaders[0]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        total = self.trainer.estimated_stepping_batches  # every epoch's steps
        cosine = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main(out: str) -> None:
    callback = DNATCallback(
        ARCH, warmup_epochs=WARMUP, theta_reach=REACH, spec="zoo:resnet20", data="digits-hard",
        seed=0, dirpath=out,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp", callbacks=[callback],
        gradient_clip_val=5.0, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Classifier())


if __name__ == "__main__":
    main(sys.argv[1])
