"""The invariants on real torchvision and timm models (DESIGN.md invariants 1-4), and
finalize's scale="keep" on DNAT's ResNet20 and a timm model with drop-path."""

from __future__ import annotations

import copy
import random

import pytest
import timm
import torch
import torchvision
from support import (
    assert_same_buffers_after_training,
    assert_same_function,
    op_signature,
    random_theta,
    untied_masked,
)
from timm.layers import DropPath

import fxdnat
from fxdnat import passes, zoo

SIZE = 64

# name -> (builder, joins, edges, skips) at branch granularity
MODELS = {
    "torchvision:resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 8, 16, 5),
    "torchvision:mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10),
        10,
        20,
        10,
    ),
    "timm:resnet50": (lambda: timm.create_model("resnet50", num_classes=10), 16, 32, 12),
    "timm:mobilenetv2_100": (
        lambda: timm.create_model("mobilenetv2_100", num_classes=10),
        10,
        20,
        10,
    ),
    "timm:efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0", num_classes=10),
        9,
        18,
        9,
    ),
    "timm:convnext_tiny": (lambda: timm.create_model("convnext_tiny", num_classes=10), 18, 36, 18),
    "timm:vit_tiny_patch16_224": (
        lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=SIZE),
        24,
        48,
        24,
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def compiled(request):
    build, *_ = MODELS[request.param]
    torch.manual_seed(0)
    model = build()
    inputs = (torch.randn(2, 3, SIZE, SIZE),)
    gm = fxdnat.trace(model, inputs)
    return request.param, model, gm, passes.discover(gm), inputs


def test_traced_equals_eager_in_train_and_eval(compiled):
    _, model, gm, _, inputs = compiled
    assert gm.meta["fxdnat"]["leaves"] == {}
    # timm keeps its BatchNormAct2d opaque (it counts batches in place): parameters of norms only
    assert gm.meta["fxdnat"]["opaque_params"] < 0.02 * gm.meta["fxdnat"]["params"]
    assert_same_function(gm, model, inputs)


def test_expected_joins_edges_and_skips(compiled):
    name, _, _, edges, _ = compiled
    _, joins, count, skips = MODELS[name]
    assert len({e.join for e in edges}) == joins
    assert len(edges) == count
    assert sum(e.kind == "skip" for e in edges) == skips


def test_gate_at_init_is_the_original(compiled):
    _, model, gm, edges, inputs = compiled
    gated = passes.gate(gm, edges)
    assert_same_function(gated, model, inputs, atol=1e-6, rtol=0)


def test_finalize_equals_gated_one_hot_for_random_decisions(compiled):
    _, _, gm, edges, inputs = compiled
    gated = passes.gate(gm, edges)
    decisions = passes.random_decisions(edges, random.Random(0))
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions)
    final.graph.lint()
    assert_same_function(final, gated, inputs, modes=(False,), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in final.parameters()) < sum(p.numel() for p in gm.parameters())


def test_finalize_all_same_is_the_original(compiled):
    _, model, gm, edges, inputs = compiled
    final = passes.finalize(passes.gate(gm, edges), {})
    assert op_signature(final) == op_signature(gm)
    assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
    assert_same_function(final, model, inputs, modes=(False,), atol=1e-6, rtol=0)


def test_finalize_keep_equals_gated_with_theta_masked(compiled):
    _, _, gm, edges, inputs = compiled
    gated = passes.gate(gm, edges)
    with torch.no_grad():
        gated.arch.theta.copy_(random_theta(gated.arch.theta.shape, 0))
    decisions = passes.random_decisions(edges, random.Random(0))
    final = passes.finalize(gated, decisions, scale="keep")
    reference = untied_masked(gated, gated, decisions)
    assert_same_function(final, reference, inputs, modes=(False,), atol=1e-5, rtol=1e-5)


def _drop_paths(gm) -> int:
    return sum(isinstance(m, DropPath) for m in gm.modules())


# DNAT's own model, and a timm model whose blocks end in drop-path (train mode draws it)
KEEP_MODELS = {
    "zoo:resnet20": (lambda: zoo.create_model("resnet20"), 32),
    "timm:mobilenetv3_small_050": (
        lambda: timm.create_model("mobilenetv3_small_050", num_classes=10, drop_path_rate=0.2),
        64,
    ),
}


@pytest.fixture(scope="module", params=sorted(KEEP_MODELS))
def trained(request):
    """A model gated, with θ as training leaves it (θ_same 0.8-1.4, the rest small)."""
    build, size = KEEP_MODELS[request.param]
    torch.manual_seed(0)
    model = build()
    inputs = (torch.randn(4, 3, size, size),)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        theta = torch.rand(gated.arch.theta.shape, generator=generator) * 0.6 - 0.3
        theta[:, 2] = torch.rand(len(theta), generator=generator) * 0.6 + 0.8
        gated.arch.theta.copy_(theta)
    return request.param, gm, edges, gated, inputs


@pytest.mark.parametrize("branches", ["random", "kept"])
def test_keep_equals_masked_gated_in_train_and_eval_with_running_statistics(trained, branches):
    """Random decisions; "kept": every residual branch (edge ":0" of a block) keeps its op, so
    that each drop-path still draws and train mode compares too."""
    _, _, edges, gated, inputs = trained
    decisions = passes.random_decisions(edges, random.Random(0))
    if branches == "kept":
        decisions.update({e.name: "same" for e in edges if e.name.endswith(":0")})
    before = {n: p.detach().clone() for n, p in gated.named_parameters()}
    final = passes.finalize(gated, decisions)
    assert all(torch.equal(p, before[n]) for n, p in gated.named_parameters())
    reference = untied_masked(gated, gated, decisions)
    # a removed branch's drop-path no longer draws: train mode then differs by the RNG only
    modes = (False, True) if _drop_paths(final) == _drop_paths(gated) else (False,)
    assert_same_function(final, reference, inputs, modes=modes, atol=1e-5, rtol=1e-5)
    if modes == (False, True):
        assert_same_buffers_after_training(final, reference, inputs, atol=1e-6, rtol=1e-5)


def test_keep_with_every_branch_kept_folds_into_the_last_norm_and_adds_nothing(trained):
    """All "same", and θ_same exactly 1 on every shortcut (edge ":1" of a block: the skip,
    whose x feeds the next branch too, or ResNet20's option-A padding, neither of which a
    factor can go into, so theirs would stay a multiply), θ_identity 0 on every branch (a
    dropped identity's coefficient joins the skip's): the network has the original's ops
    and parameter names, and each residual branch's last norm carries its factor, in new
    tensors."""
    _, gm, edges, gated, inputs = trained
    gated = copy.deepcopy(gated)
    shortcuts = [gated.arch.group_of[e.name] for e in edges if e.name.endswith(":1")]
    branches = [gated.arch.group_of[e.name] for e in edges if e.name.endswith(":0")]
    with torch.no_grad():
        gated.arch.theta[shortcuts, 2] = 1.0
        gated.arch.theta[branches, 1] = 0.0  # else the identity's share joins the skip's
    final = passes.finalize(gated, {})
    assert op_signature(final) == op_signature(gm)  # no multiply added
    assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
    folded = final.meta["fxdnat"]["folded"]
    assert sorted(folded) == sorted(e.name for e in edges if e.name.endswith(":0"))
    assert all(path.endswith(("bn2", "bn3")) for path in folded.values()), folded
    for edge_name, path in folded.items():
        c = final.meta["fxdnat"]["coefficients"][edge_name]
        ours, theirs = final.get_submodule(path).weight, gated.get_submodule(path).weight
        assert ours is not theirs
        torch.testing.assert_close(ours, c * theirs, rtol=0, atol=0)
        torch.testing.assert_close(theirs, gm.get_submodule(path).weight, rtol=0, atol=0)
    reference = untied_masked(gated, gated, {})
    assert_same_function(final, reference, inputs, atol=1e-5, rtol=1e-5)
    assert_same_buffers_after_training(final, reference, inputs, atol=1e-6, rtol=1e-5)
