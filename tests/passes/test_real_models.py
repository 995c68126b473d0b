"""The invariants on real torchvision and timm models (DESIGN.md invariants 1-4)."""

from __future__ import annotations

import random

import pytest
import timm
import torch
import torchvision
from support import assert_same_function, op_signature

import fxdnat
from fxdnat import passes

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
