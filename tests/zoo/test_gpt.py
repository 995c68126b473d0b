"""The zoo's GPTs: sizes, causality, and the compiler on them (edges, gate ≡ eager, finalize)."""

from __future__ import annotations

import random

import pytest
import torch
from support import assert_same_function

import fxdnat
from fxdnat import passes, zoo
from fxdnat.branches import ATTENTION, MLP, branch_kind, removed_by_kind
from fxdnat.zoo.gpt import GPT_SIZES, gpt_params

GPTS = ["gpt-micro", "gpt-mini", "gpt-small"]
# nanoGPT's count (embeddings, 12·C² + 13·C a block, the final LayerNorm; the tied head once)
PARAMS = {"gpt-micro": 124_672, "gpt-mini": 842_496, "gpt-small": 2_743_296}


def _tokens(batch: int = 2, t: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(256, (batch, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", GPTS)
def test_parameter_count_is_nanogpts(name):
    model = zoo.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name] == zoo.model_info(name).params
    blocks, width, _ = GPT_SIZES[name]
    assert gpt_params(blocks, width) == PARAMS[name]
    assert model.tok.weight.shape == (256, width) and model.pos.weight.shape == (128, width)


def test_registered_as_causal_language_models_with_the_quick_recipe():
    for name in GPTS:
        info = zoo.model_info(name)
        assert (info.task, info.family, info.default_recipe) == ("causal-lm", "gpt", "quick")
    assert zoo.model_info("resnet20").task == "classification"


def test_logits_per_position_and_sizes_from_the_arguments():
    model = zoo.create_model("gpt-micro", vocab_size=50, context=32).eval()
    out = model(_tokens(3, 32) % 50)
    assert out.shape == (3, 32, 50) and torch.isfinite(out).all()
    assert model(_tokens(3, 7) % 50).shape == (3, 7, 50)  # shorter inputs: the first positions


def test_the_head_is_the_token_embedding():
    model = zoo.create_model("gpt-micro")
    x = _tokens()
    model(x).sum().backward()
    assert model.tok.weight.grad is not None
    with torch.no_grad():
        model.tok.weight.mul_(2)
    assert not torch.allclose(model(x), model.eval()(x) / 2)  # the head reads the same tensor


def test_output_at_t_depends_on_tokens_up_to_t_only():
    model = zoo.create_model("gpt-micro").eval()
    x = _tokens(1, 24)
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256  # change every token from position 10 on
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10], b[:, 10])


def test_bad_sizes_are_refused_naming_them():
    with pytest.raises(ValueError, match="vocab_size must be a positive integer, got 0"):
        zoo.create_model("gpt-micro", vocab_size=0)
    with pytest.raises(TypeError, match="does not accept 'num_heads'"):
        zoo.create_model("gpt-micro", num_heads=3)


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = zoo.create_model("gpt-mini").double()
    inputs = (_tokens(2, 32),)
    gm = fxdnat.trace(model, inputs)
    return model, gm, passes.discover(gm), inputs


def test_traces_without_leaves_and_equals_eager(traced):
    model, gm, _, inputs = traced
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert_same_function(gm, model, inputs, exact=True)


def test_each_block_gives_an_attention_and_an_mlp_branch_and_their_skips(traced):
    _, gm, edges, _ = traced
    blocks = GPT_SIZES["gpt-mini"][0]
    assert len(edges) == 4 * blocks
    for i in range(blocks):
        cell = [e for e in edges if e.cell == f"blocks.{i}"]
        kinds = [(e.kind, branch_kind(gm, e)) for e in cell]
        assert kinds == [("skip", "skip"), ("branch", ATTENTION), ("skip", "skip"), ("branch", MLP)]
        assert [e.choices for e in cell if e.kind == "branch"] == [("none", "identity", "same")] * 2
    assert passes.gate(gm, edges, tie="cell").arch.num_groups == 4  # blocks share their roles


def test_gate_at_init_is_the_original_bit_for_bit(traced):
    model, gm, edges, inputs = traced
    assert_same_function(passes.gate(gm, edges, tie="full"), model, inputs, exact=True)


def test_finalize_equals_the_gated_network_and_drops_removed_branches(traced):
    _, gm, edges, inputs = traced
    gated = passes.gate(gm, edges, tie="full")
    for seed in range(3):
        decisions = passes.random_decisions(edges, random.Random(seed))
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions, scale="one")
        assert_same_function(final, gated, inputs, atol=1e-10, rtol=1e-10)
    decisions = {e.name: "same" for e in edges} | {"blocks.1:1": "none", "blocks.2:3": "none"}
    final = passes.finalize(gated, decisions, scale="one")
    names = {name for name, _ in final.named_modules()}
    assert "blocks.1.attn" not in names and "blocks.2.mlp" not in names
    assert "blocks.1.mlp" in names and "blocks.2.attn" in names
    assert removed_by_kind(gm, edges, decisions) == {ATTENTION: 1, MLP: 1, "skip": 0}
