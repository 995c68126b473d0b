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


def _train(out, *, extra=(), resume=None, saving=None, **options) -> dict:
    """A Trainer run of gpt-micro with the callback on the engine's data order; returns the
    fxdnat checkpoint it ends with."""
    torch.manual_seed(0)  # the initial weights, as `fxdnat transform --seed 0` draws them
    model = build_model("zoo:gpt-micro", vocab_size=text.VOCAB_SIZE, context=text.CONTEXT).model
    train, test, _ = make_loaders("text:pydoc", batch_size=16, seed=0, limit=LIMIT)
    train.collate_fn = test.collate_fn = _as_dict
    callback = DNATTrainerCallback(
        model, torch.zeros(1, text.CONTEXT, dtype=torch.long), arch_epochs=ARCH,
        warmup_epochs=WARMUP, theta_reach=REACH, spec="zoo:gpt-micro", data="text:pydoc", seed=0,
        **options,
    )  # fmt: skip
    if resume is not None:
        callback.resume(resume)
    # the recipe's optimizer and schedule: decay on every weight, cosine to 0 per step
    weights = [p for p in callback.model.parameters() if p.requires_grad]  # θ has its own
    opt = torch.optim.AdamW(weights, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
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
        str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=16, max_grad_norm=1.0,
        use_cpu=True, report_to=[], eval_strategy="epoch", logging_steps=5, disable_tqdm=True,
        **(saving or {"save_strategy": "epoch"}),
    )  # fmt: skip
    trainer = InOrder(
        model=callback.model, args=args, train_dataset=train.dataset, eval_dataset=test.dataset,
        optimizers=(opt, cosine), callbacks=[callback, *extra],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return ckpt.load(out / "fxdnat.pt")


def test_trainer_run_finalizes_the_network_fxdnat_transform_gives(tmp_path):
    written = _train(tmp_path / "hf")
    engine = transformed(
        tmp_path, "zoo:gpt-micro", "text:pydoc", epochs=EPOCHS, arch_epochs=ARCH,
        warmup_epochs=WARMUP, theta_reach=REACH, limit=LIMIT,
    )  # fmt: skip
    assert written["state"]["stage"] == "done"
    assert_same_network(engine, written)
    folders = sorted(p.parent.name for p in (tmp_path / "hf").glob("checkpoint-*/fxdnat.pt"))
    assert folders == ["checkpoint-20", "checkpoint-40", "checkpoint-60"]
    state = json.loads((tmp_path / "hf" / "checkpoint-60" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "dnat/prefer_same" in e]
    assert len(logged) == EPOCHS and "dnat/margin_min" in logged[0]
    assert_cli_reads(tmp_path / "hf" / "fxdnat.pt", tmp_path)


def test_the_joint_update_is_the_engines_too(tmp_path):
    """θ's gradient of ω's backward steps θ, kept out of the Trainer's clipping of ω's."""
    written = _train(tmp_path / "hf", update="joint")
    engine = transformed(
        tmp_path, "zoo:gpt-micro", "text:pydoc", epochs=EPOCHS, arch_epochs=ARCH,
        warmup_epochs=WARMUP, theta_reach=REACH, limit=LIMIT, arch_update="joint",
    )  # fmt: skip
    assert_same_network(engine, written)


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


@pytest.mark.parametrize(
    "saving",
    [{"save_strategy": "epoch"}, {"save_strategy": "steps", "save_steps": 20}],
    ids=["epoch-end", "last-step"],
)
def test_train_resumes_from_a_trainer_checkpoint_after_finalize(tmp_path, saving):
    """Stopped after the architecture stage and resumed from the Trainer's checkpoint folder —
    saved at the epoch's end, or at its last step (20 an epoch), before the epoch's end event:
    the same network as the run that never stopped."""

    class StopAfterStage(transformers.TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.epoch >= ARCH

    whole = _train(tmp_path / "whole")
    _train(tmp_path / "cut", extra=[StopAfterStage()], saving=saving)
    folder = tmp_path / "cut" / "checkpoint-40"
    _train(tmp_path / "cut", resume=folder, saving=saving)
    resumed = ckpt.load(tmp_path / "cut" / "fxdnat.pt")
    assert resumed["state"]["epoch"] == EPOCHS and resumed["decisions"] == whole["decisions"]
    for name, value in whole["model_state"].items():
        torch.testing.assert_close(resumed["model_state"][name], value, msg=name)


def test_resume_refuses_a_folder_without_dnat_state_or_of_another_network(tmp_path):
    def callback(spec: str):
        model = build_model(spec, vocab_size=text.VOCAB_SIZE, context=text.CONTEXT).model
        example = torch.zeros(1, text.CONTEXT, dtype=torch.long)
        return DNATTrainerCallback(model, example, arch_epochs=1)

    gpt = callback("zoo:gpt-micro")
    with pytest.raises(ckpt.CheckpointError, match="has no dnat_state.pt"):
        gpt.resume(tmp_path)
    llama = callback("hf:tiny-llama")
    llama.driver.finalize()
    ckpt.save(tmp_path / "dnat_state.pt", llama.driver.state_dict())
    theta = gpt.driver.dnat.theta.detach().clone()
    with pytest.raises(ckpt.CheckpointError, match="another network"):
        gpt.resume(tmp_path)
    assert torch.equal(gpt.driver.dnat.theta, theta) and gpt.driver.state.stage == "arch"


def test_a_transformers_causal_lm_trains_as_its_hf_spec(tmp_path):
    """An AutoModelForCausalLM as people make one goes behind fxdnat.hf's wrapper; its spec
    rebuilds it for the CLI."""
    llama = build_model("hf:tiny-llama", vocab_size=text.VOCAB_SIZE, context=text.CONTEXT)
    causal_lm = llama.model.hf  # the transformers model itself: LlamaForCausalLM
    assert isinstance(causal_lm, transformers.PreTrainedModel)
    callback = DNATTrainerCallback(
        causal_lm, torch.zeros(1, text.CONTEXT, dtype=torch.long), arch_epochs=1,
        theta_lr=0.3, spec="hf:tiny-llama", data="text:pydoc",
    )  # fmt: skip
    train, _, _ = make_loaders("text:pydoc", batch_size=8, seed=0, limit=32)
    args = transformers.TrainingArguments(
        str(tmp_path / "llama"), num_train_epochs=2, per_device_train_batch_size=8,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    examples = [{"input_ids": x, "labels": y} for x, y in train.dataset]
    transformers.Trainer(
        model=callback.model, args=args, train_dataset=examples, callbacks=[callback]
    ).train()
    written = ckpt.load(tmp_path / "llama" / "fxdnat.pt")
    assert written["model"]["spec"] == "hf:tiny-llama" and written["state"]["stage"] == "done"
    theta = written["theta_history"][0]
    assert not theta.equal(torch.tensor([0.0, 0.0, 1.0]).expand_as(theta))  # θ trained
    assert_cli_reads(tmp_path / "llama" / "fxdnat.pt", tmp_path)


def test_refuses_a_masked_language_model():
    bert = build_model("hf:tiny-bert", vocab_size=text.VOCAB_SIZE, context=text.CONTEXT)
    with pytest.raises(ValueError, match="masked language model"):
        DNATTrainerCallback(
            bert.model.hf, torch.zeros(1, text.CONTEXT, dtype=torch.long), arch_epochs=1
        )
