"""The compiler on the zoo: edges as the paper draws them, cell-mode groups, the invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from support import assert_same_function

import fxdnat
from fxdnat import passes, zoo

# name -> (edges, θ groups in cell mode, θ groups in full mode)
EXPECTED = {
    "resnet20": (18, 4, 18),  # 9 blocks × (branch, shortcut); plain / downsampling blocks
    "mobilenetv2": (28, 4, 28),  # 14 residual blocks; identity / projection shortcuts
    "darts": (160, 16, 160),  # 20 cells × 8 summed edges; normal / reduction cells
    "proxylessnas": (14, 14, 14),  # 7 identity-shortcut blocks × (branch, skip), all distinct
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def traced(request):
    torch.manual_seed(0)
    # DARTS at C=16 instead of 36: the same 20 cells and edges, a fifth of the FLOPs
    kwargs = {"channels": 16} if request.param == "darts" else {}
    model = zoo.create_model(request.param, num_classes=10, input_size=32, **kwargs)
    dtype = torch.float32 if request.param == "darts" else torch.float64
    model = model.to(dtype)
    inputs = (torch.randn(2, 3, 32, 32, dtype=dtype),)
    gm = fxdnat.trace(model, inputs)
    return request.param, model, gm, passes.discover(gm), inputs


def test_no_leaves_and_traced_equals_eager(traced):
    _, model, gm, _, inputs = traced
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert_same_function(gm, model, inputs, modes=(False,))


def test_edge_and_group_counts(traced):
    name, _, gm, edges, _ = traced
    count, cell, full = EXPECTED[name]
    assert len(edges) == count
    assert passes.gate(gm, edges, tie="cell").arch.num_groups == cell
    assert passes.gate(gm, edges, tie="full").arch.num_groups == full


def test_edges_come_out_as_the_paper_draws_them(traced):
    name, _, _, edges, _ = traced
    per_cell = Counter(e.cell for e in edges)
    kinds = Counter(e.kind for e in edges)
    if name == "resnet20":
        assert set(per_cell.values()) == {2}
        assert [e.kind for e in edges if e.cell == "layer2.0"] == ["branch", "branch"]  # option A
        assert kinds == {"branch": 11, "skip": 7}
    elif name == "darts":
        assert len(per_cell) == 20 and set(per_cell.values()) == {8}
        cell = [e for e in edges if e.cell == "cells.0"]  # DARTS_V2 normal cell
        assert [e.kind for e in cell] == ["branch"] * 5 + ["skip", "skip", "branch"]
        assert len({e.join for e in cell}) == 4
    elif name == "proxylessnas":
        assert set(per_cell.values()) == {2} and kinds == {"branch": 7, "skip": 7}
    else:
        assert set(per_cell.values()) == {2}


def test_gate_at_init_is_the_original(traced):
    name, model, gm, edges, inputs = traced
    gated = passes.gate(gm, edges, tie="cell")
    exact = name != "darts"
    tolerances = {} if exact else {"atol": 1e-6, "rtol": 0}
    assert_same_function(gated, model, inputs, exact=exact, **tolerances)


def test_finalize_equals_gated_one_hot(traced):
    _, _, gm, edges, inputs = traced
    gated = passes.gate(gm, edges)
    for seed in range(2):
        decisions = passes.random_decisions(edges, random.Random(seed))
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions)
        assert_same_function(final, gated, inputs, atol=1e-5, rtol=1e-5)


def test_drop_path_survives_the_compiler():
    model = zoo.create_model("darts", channels=8, layers=5, drop_path_prob=0.0)
    inputs = (torch.randn(4, 3, 32, 32),)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm)
    final = passes.finalize(passes.gate(gm, edges), passes.decide(passes.gate(gm, edges)))
    assert zoo.set_drop_path_prob(final, 0.5) > 0
    final.train()
    torch.manual_seed(0)
    a = final(*inputs)
    torch.manual_seed(1)
    assert not torch.allclose(a, final(*inputs))  # the per-epoch p reaches the compiled module
