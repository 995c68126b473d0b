"""Property tests: random networks written the way people write them keep the compiler's
invariants (DESIGN.md 1, 2, 3, 4, 5) — see tests/lib/random_nets.py for what they contain."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_nets import networks
from support import assert_same_function, op_signature
from timm.layers import DropPath

import fxdnat
from fxdnat import passes


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
    final = passes.finalize(gated, {})  # 4
    assert op_signature(final) == op_signature(gm)
    assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
    assert_same_function(final, net, inputs, exact=True)
    full = passes.gate(gm, edges)  # 3, with its own θ rows for every edge
    decisions = passes.random_decisions(edges, random.Random(seed))
    full.arch.assign(decisions)
    final = passes.finalize(full, decisions)
    final.graph.lint()
    # a removed branch's drop-path no longer draws: train mode then differs by the RNG only
    same_draws = _drop_paths(final) == _drop_paths(full)
    modes = (False, True) if same_draws else (False,)
    assert_same_function(final, full, inputs, modes=modes, rtol=1e-10, atol=1e-10)
    generator = torch.Generator().manual_seed(seed)  # 5
    with torch.no_grad():
        full.arch.theta.copy_(torch.rand(full.arch.theta.shape, generator=generator) - 0.3)
    passes.check_decisions(edges, passes.decide(full))  # raises on a dead join


def _drop_paths(gm) -> int:
    return sum(
        isinstance(gm.get_submodule(n.target), DropPath)
        for n in gm.graph.nodes
        if n.op == "call_module"
    )


@settings_for(40)
@given(
    networks(),
    st.sampled_from(["branch", "op"]),
    st.sampled_from(["full", "cell"]),
    st.integers(0, 2**16),
)
def test_invariants_hold_on_random_networks(case, granularity, tie, seed):
    net, inputs = case
    check_invariants(net, inputs, granularity, tie, seed)


@pytest.mark.slow
@settings_for(400)
@given(
    networks(),
    st.sampled_from(["branch", "op"]),
    st.sampled_from(["full", "cell"]),
    st.integers(0, 2**16),
)
def test_invariants_hold_on_many_random_networks(case, granularity, tie, seed):
    net, inputs = case
    check_invariants(net, inputs, granularity, tie, seed)
