"""Property tests: random networks written the way people write them keep the compiler's
invariants (DESIGN.md 1, 2, 3, 4, 5) — see tests/lib/random_nets.py for what they contain.
Invariant 3 for both scales, at a random θ (entries in [-1.5, 1.5], some exactly 1 or 0)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_nets import SIZE, C, RandomNet, networks
from support import (
    assert_same_buffers_after_training,
    assert_same_function,
    op_signature,
    random_theta,
    untied_masked,
)
from timm.layers import DropPath

import fxdnat
from fxdnat import passes
from fxdnat.passes import SCALES


def settings_for(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no state left in the working directory between runs
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def check_invariants(net, inputs, granularity: str, tie: str, seed: int) -> None:
    """Invariants 1-5 on one network."""
    gm = fxdnat.trace(net, inputs)
    assert_same_function(gm, net, inputs, exact=True)  # 1, train and eval
    edges = passes.discover(gm, granularity)
    if not edges:
        return
    gated = passes.gate(gm, edges, tie=tie if granularity == "branch" else "full")
    assert_same_function(gated, net, inputs, exact=granularity == "branch")  # 2
    for scale in SCALES:  # 4, at θ = (0, 0, 1)
        final = passes.finalize(gated, {}, scale=scale)
        assert op_signature(final) == op_signature(gm)
        assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
        assert_same_function(final, net, inputs, exact=True)
    full = passes.gate(gm, edges)  # 3: the reference, with its own θ rows for every edge
    decisions = passes.random_decisions(edges, random.Random(seed))
    with torch.no_grad():
        gated.arch.theta.copy_(random_theta(gated.arch.theta.shape, seed))
    full.arch.assign(decisions)
    _check_finalized(passes.finalize(gated, decisions, scale="one"), full, net, inputs)
    weights = {n: p.detach().clone() for n, p in gated.named_parameters()}
    final = passes.finalize(gated, decisions, scale="keep")
    assert all(torch.equal(p, weights[n]) for n, p in gated.named_parameters())  # a copy
    _check_finalized(final, untied_masked(gated, full, decisions), net, inputs)
    generator = torch.Generator().manual_seed(seed)  # 5
    with torch.no_grad():
        full.arch.theta.copy_(torch.rand(full.arch.theta.shape, generator=generator) - 0.3)
    passes.check_decisions(edges, passes.decide(full))  # raises on a dead join


def _check_finalized(final, gated, net, inputs) -> None:
    """``final`` ≡ ``gated`` (θ set to what ``final`` compiled): outputs in eval mode, and in
    train mode with BatchNorm's running statistics where both draw the same random numbers;
    the gradients of the weights kept as they were."""
    final.graph.lint()
    # a removed branch's drop-path no longer draws: train mode then differs by the RNG only
    same_draws = _drop_paths(final) == _drop_paths(gated)
    modes = (False, True) if same_draws else (False,)
    assert_same_function(final, gated, inputs, modes=modes, rtol=1e-10, atol=1e-10)
    if same_draws:  # a folded BatchNorm's statistics are those of its unscaled input
        assert_same_buffers_after_training(final, gated, inputs, rtol=1e-10, atol=1e-10)
    folded = tuple(path + "." for path in final.meta["fxdnat"]["folded"].values())
    _assert_same_gradients(final, gated, net, inputs, skip=folded)  # in-place calls train


def _assert_same_gradients(final, gated, net, inputs, skip: tuple[str, ...] = ()) -> None:
    """The weights the final module keeps get the gradients they get in the gated module (for
    a network that trains as written: one that writes, in place, a tensor autograd saved cannot
    be trained in eager mode either); but not those under ``skip``, which finalize scaled."""
    try:
        _gradients(net, inputs)
    except RuntimeError as exc:
        assert "modified by an inplace operation" in str(exc)
        return
    grads, want = _gradients(final, inputs), _gradients(gated, inputs)
    for name, grad in grads.items():
        if name.startswith(skip):
            continue
        other = want[name]
        if grad is None or other is None:
            assert grad is None or not grad.any(), name
            continue
        torch.testing.assert_close(grad, other, rtol=1e-9, atol=1e-9, msg=name)


def _gradients(module, inputs) -> dict:
    module = copy.deepcopy(module).eval()
    out = [t for t in _tensors(module(*copy.deepcopy(inputs))) if t.requires_grad]
    if out:  # decisions may leave no weight between input and output
        sum(t.sum() for t in out).backward()
    named = module.named_parameters(remove_duplicate=False)  # a tied weight under each name
    return {n: p.grad for n, p in named if n != "arch.theta"}


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _tensors(v)]


def _drop_paths(gm) -> int:
    return sum(
        isinstance(gm.get_submodule(n.target), DropPath)
        for n in gm.graph.nodes
        if n.op == "call_module"
    )


# a network with its inputs, granularity, tie and the seed of its decisions
CASES = (
    networks(),
    st.sampled_from(["branch", "op"]),
    st.sampled_from(["full", "cell"]),
    st.integers(0, 2**16),
)


@settings_for(40)
@given(*CASES)
def test_invariants_hold_on_random_networks(case, granularity, tie, seed):
    net, inputs = case
    check_invariants(net, inputs, granularity, tie, seed)


@pytest.mark.slow
@settings_for(400)
@given(*CASES)
def test_invariants_hold_on_many_random_networks(case, granularity, tie, seed):
    net, inputs = case
    check_invariants(net, inputs, granularity, tie, seed)


# Networks the slow run once found failing, kept so that the default run tries them every time.
FOUND = [
    # a gate copy of op(x) (a later write reaches it) must come before its mix
    ([("op", 0, "conv"), ("write", 0, "relu_")], [], "op"),
    ([("op", 0, "conv"), ("write", 1, "view_mul_")], [], "op"),
    # a dead join's copies are gate machinery, not dead code finalize must keep
    (
        [("join", "add", [(0, "conv"), (0, "conv")]), ("op", 1, "conv"), ("write", 0, "relu_")],
        [],
        "branch",
    ),
    # a write through a view of the join: the kept relu output is copied (autograd saved it)
    (
        [("join", "add", [(0, "conv_bn_relu"), (0, "conv")]), ("write", 1, "view_mul_")],
        [],
        "branch",
    ),
    # an op kept as it was needs no copy, even where a later write reaches it
    (
        [
            ("op", 0, "conv"),
            ("join", "iadd_operator", [(1, "raw"), (0, "conv")]),
            ("op", 0, "conv"),
        ],
        [1],
        "op",
    ),
    # a weight tied between a kept branch and a removed one: named once in the gated module
    ([("join", "add", [(0, "shared_conv"), (0, "tied_conv")])], [], "branch"),
]


@pytest.mark.parametrize(("steps", "returns", "granularity"), FOUND)
def test_invariants_hold_on_networks_found_before(steps, returns, granularity):
    torch.manual_seed(0)
    net = RandomNet(steps, returns).double()
    inputs = (torch.randn(4, C, SIZE, SIZE, dtype=torch.float64),)
    for seed in range(8):  # decisions differ by seed
        check_invariants(net, inputs, granularity, "full", seed)
