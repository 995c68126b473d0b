"""The Hugging Face Trainer callback, with transformers.Trainer itself: the language model it
finalizes is the one ``fxdnat transform`` gives for the same model, data order, seed and
recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from fxdnat import checkpoint as ckpt  # noqa: E402
from fxdnat import text  # noqa: E402
from fxdnat.data import make_loaders  # noqa: E402
from fxdnat.integrations.hf import DNATTrainerCallback  # noqa: E402
from fxdnat.specs import build_model  # noqa: E402
from tests.lib.frameworks import assert_cli_reads, assert_same_network, transformed  # noqa: E402

# the quick GPT recipe (batch 16, AdamW lr 3e-3, betas (0.9, 0.95), decay 0.01 on every weight,
# clipping at 1) on the first 320 windows of text:pydoc: an epoch of ω alone, one of ω and θ
# (reach 10), one after finalize
EPOCHS, ARCH, WARMUP, REACH, LIMIT = 3, 2, 1, 10.0, 320


def _as_dict(batch):
    x, y = torch.utils.data.default_collate(batch)
    return {"input_ids": x, "labels": y}


def test_trainer_run_finalizes_the_network_fxdnat_transform_gives(tmp_path):
    torch.manual_seed(0)  # the initial weights, as `fxdnat transform --seed 0` draws them
    model = build_model("zoo:gpt-micro", vocab_size=text.VOCAB_SIZE, context=text.CONTEXT).model
    train, test, _ = make_loaders("text:pydoc", batch_size=16, seed=0, limit=LIMIT)
    train.collate_fn = test.collate_fn = _as_dict
    callback = DNATTrainerCallback(
        model,
        torch.zeros(1, text.CONTEXT, dtype=torch.long),
        arch_epochs=ARCH,
        warmup_epochs=WARMUP,
        theta_reach=REACH,
        spec="zoo:gpt-micro",
        data="text:pydoc",
        seed=0,
    )
    # the recipe's optimizer and schedule: decay on every weight, cosine to 0 per step
    opt = torch.optim.AdamW(
        callback.model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01
    )
    total = EPOCHS * len(train)
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total))
    )

    class InOrder(transformers.Trainer):  # fxdnat's loaders: the engine's data order
        def get_train_dataloader(self):
            return train

        def get_eval_dataloader(self, eval_dataset=None):
            return test

    args = transformers.TrainingArguments(
        str(tmp_path / "hf"),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=16,
        max_grad_norm=1.0,
        use_cpu=True,
        report_to=[],
        save_strategy="epoch",
        eval_strategy="epoch",
        logging_steps=5,
        disable_tqdm=True,
    )
    trainer = InOrder(
        model=callback.model,
        args=args,
        train_dataset=train.dataset,
        eval_dataset=test.dataset,
        optimizers=(opt, cosine),
        callbacks=[callback],
    )
    trainer.train()

    engine = transformed(
        tmp_path,
        "zoo:gpt-micro",
        "text:pydoc",
        epochs=EPOCHS,
        arch_epochs=ARCH,
        warmup_epochs=WARMUP,
        theta_reach=REACH,
        limit=LIMIT,
    )
    path = tmp_path / "hf" / "fxdnat.pt"
    written = ckpt.load(path)
    assert written["state"]["stage"] == "done"
    assert_same_network(engine, written)
    assert (
        sorted(p.name for p in (tmp_path / "hf").glob("checkpoint-*/fxdnat.pt"))
        == ["fxdnat.pt"] * 3
    )
    history = json.loads(
        next((tmp_path / "hf").glob("checkpoint-60/trainer_state.json")).read_text()
    )
    logged = [e for e in history["log_history"] if "dnat/prefer_same" in e]
    assert len(logged) == EPOCHS and "dnat/margin_min" in logged[0]
    assert_cli_reads(path, tmp_path)


def test_shifted_labels_read_hugging_faces_convention():
    torch.manual_seed(0)
    model = build_model("zoo:gpt-micro", vocab_size=text.VOCAB_SIZE, context=text.CONTEXT).model
    callback = DNATTrainerCallback(
        model, torch.zeros(1, text.CONTEXT, dtype=torch.long), arch_epochs=1, shift_labels=True
    )
    tokens = torch.randint(text.VOCAB_SIZE, (2, text.CONTEXT + 1))
    net = callback.model.eval()
    shifted = net(input_ids=tokens[:, :-1], labels=tokens[:, :-1])["loss"]
    aligned = torch.nn.functional.cross_entropy(
        net(input_ids=tokens[:, :-1])["logits"][:, :-1].flatten(0, 1), tokens[:, 1:-1].flatten()
    )
    torch.testing.assert_close(shifted, aligned)


class Residual(torch.nn.Module):
    """An edge DNAT can transform, on vectors: neither images nor token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return x + self.linear(x)


def test_refuses_a_model_that_is_no_classifier_or_language_model():
    with pytest.raises(ValueError, match="neither"):
        DNATTrainerCallback(Residual(), torch.zeros(2, 4), arch_epochs=1)
