"""A causal language model end to end: gpt-micro on text:pydoc through transform, eval, export,
render, the baselines and a checkpoint's round trip (each run a few seconds: 64 windows)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from fxdnat import checkpoint as ckpt
from fxdnat.cli import main
from fxdnat.engine import Reporter, RunConfig, Trainer

SMALL = ["--recipe", "quick", "--epochs", "2", "--arch-epochs", "1", "--limit", "64"]
SMALL += ["--batch-size", "16", "--device", "cpu"]


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    result = run("transform", "zoo:gpt-micro", "--data", "text:pydoc", *SMALL, "--out", str(out))
    return out, result


def test_transform_reports_validation_loss_branches_removed_params_and_flops(finished):
    out, result = finished
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "causal-lm" and summary["data"] == "text:pydoc"
    assert summary["perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert 0 <= summary["test_acc"] <= 1 and summary["test_loss"] < math.log(256)
    assert set(summary["removed_by_kind"]) == {"attention", "mlp", "skip"}
    assert set(summary["identity_by_kind"]) == {"attention", "mlp", "skip"}
    finalize = summary["finalize"]
    assert summary["loss_before"] == finalize["loss_before"] is not None
    assert summary["loss_after"] == finalize["loss_after"] is not None
    assert summary["params_before"] == 124_672 and summary["flops_before"] > 0
    for text in ("validation loss", "nats/token (perplexity", "removed", "attention", "MFLOPs"):
        assert text in result.output, text
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["test_loss"])) for r in records)


def test_eval_scores_the_checkpoint_per_token(finished):
    out, _ = finished
    result = run("eval", str(out / "checkpoint.pt"), "--json", "--limit", "8")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["task"], data["examples"], data["predictions"]) == ("causal-lm", 8, 8 * 128)
    assert data["perplexity"] == pytest.approx(math.exp(data["test_loss"]))
    result = run("eval", str(out / "checkpoint.pt"), "--limit", "8")
    assert "validation loss" in result.output and "perplexity" in result.output
    result = run("eval", str(out / "checkpoint.pt"), "--data", "digits")
    assert result.exit_code == 2
    assert result.output.startswith("Error: digits gives classification examples")


def test_export_takes_token_ids_of_any_batch(finished, tmp_path):
    out, _ = finished
    result = run("export", str(out / "checkpoint.pt"), "--out", str(tmp_path / "lm.pt2"))
    assert result.exit_code == 0, result.output
    assert "any batch size" in result.output and "matches the checkpoint" in result.output
    program = torch.export.load(tmp_path / "lm.pt2").module()
    assert program(torch.zeros(3, 128, dtype=torch.long)).shape == (3, 128, 256)


def test_render_draws_the_blocks_attention_and_mlp(finished, tmp_path):
    out, _ = finished
    for view in ("cell", "net"):
        dot = tmp_path / f"{view}.dot"
        result = run("render", str(out / "checkpoint.pt"), "--out", str(dot), "--view", view)
        assert result.exit_code == 0, result.output
        source = dot.read_text()
        assert "attention" in source and "validation loss" in source
    assert "layernorm-linear-gelu-" in (tmp_path / "cell.dot").read_text()


def test_edges_of_a_language_model_use_its_task():
    result = run("edges", "zoo:gpt-mini", "--data", "text:pydoc", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["task"], data["vocab_size"], data["context"]) == ("causal-lm", 256, 128)
    computes = [e["computes"] for e in data["edges"]]
    assert computes == ["skip", "attention", "skip", "mlp"] * 4
    result = run("edges", "zoo:gpt-micro")  # without --data: the model's own task
    assert result.exit_code == 0 and "256 tokens, context 128" in result.output


@pytest.mark.parametrize(
    "method",
    [["--method", "random", "--changes", "none=1"], ["--method", "prune", "--budget", "flops=0.8"]],
)
def test_the_baselines_run_on_a_language_model(tmp_path, method):
    out = tmp_path / "run"
    result = run(
        "transform", "zoo:gpt-micro", "--data", "text:pydoc", *SMALL, *method, "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["removed_by_kind"].values()) >= 1
    assert (
        summary["flops_after"] < summary["flops_before"]
        or summary["params_after"] < (summary["params_before"])
    )


def test_a_language_model_needs_text_and_text_needs_one(tmp_path):
    result = run("transform", "zoo:gpt-micro", *SMALL, "--out", str(tmp_path / "a"))
    assert result.exit_code == 2
    assert "zoo:gpt-micro is a causal language model" in result.output.splitlines()[-1]
    result = run(
        "transform", "zoo:resnet20", "--data", "text:pydoc", *SMALL, "--out", str(tmp_path / "b")
    )
    assert result.exit_code == 2
    assert "zoo:resnet20 is an image classifier" in result.output.splitlines()[-1]


def test_the_checkpoint_rebuilds_the_trained_network(tmp_path):
    config = RunConfig(
        spec="zoo:gpt-micro",
        out=str(tmp_path / "run"),
        data="text:pydoc",
        recipe="quick",
        epochs=2,
        arch_epochs=1,
        limit=32,
        batch_size=16,
        theta_lr=0.3,
        device="cpu",
    )
    trainer = Trainer(config, Reporter())
    trainer.run()
    network, data = ckpt.load_network(tmp_path / "run" / "checkpoint.pt")
    assert data["model"] == {
        "spec": "zoo:gpt-micro",
        "task": "causal-lm",
        "vocab_size": 256,
        "context": 128,
        "kwargs": {},
        "leaves": [],
    }
    x = torch.randint(256, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(network(x), trainer.dnat.module.eval()(x))
