"""Property tests: random residual networks keep the compiler's invariants (DESIGN.md 2, 3, 4, 5)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import assert_same_function, op_signature
from torch import nn

import fxdnat
from fxdnat import passes

C, SIZE = 3, 5
OPS = ("conv", "conv_bn_relu", "bn", "relu", "identity", "avgpool", "se", "widen", "scale")
STYLES = ("add", "iadd_method", "torch_add", "sum", "chain")


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def make_op(kind: str) -> nn.Module:
    return {
        "conv": lambda: nn.Conv2d(C, C, 3, padding=1),
        "conv_bn_relu": lambda: nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C), nn.ReLU()),
        "bn": lambda: nn.BatchNorm2d(C),
        "relu": nn.ReLU,
        "identity": nn.Identity,
        "avgpool": lambda: nn.AvgPool2d(3, 1, 1),
        "se": lambda: SE(C),
        # changes the shape on the way and back: identity is allowed, shapes inside differ
        "widen": lambda: nn.Sequential(nn.Conv2d(C, 2 * C, 1), nn.Conv2d(2 * C, C, 1)),
        "scale": lambda: nn.Conv2d(C, C, 1, bias=False),
    }[kind]()


class RandomNet(nn.Module):
    """A chain of steps over a growing list of states; a step is an op or a join of ops.

    steps: ("op", src, kind) appends op(states[src]); ("join", style, [(src, kind), ...])
    appends the sum of op(states[src]) over the operands, written in the given add style.
    """

    def __init__(self, steps: list) -> None:
        super().__init__()
        self.steps = steps
        self.ops = nn.ModuleList()
        for step in steps:
            kinds = [step[2]] if step[0] == "op" else [k for _, k in step[2]]
            self.ops.append(nn.ModuleList(make_op(k) for k in kinds))

    def forward(self, x):
        states = [x]
        for step, ops in zip(self.steps, self.ops, strict=True):
            if step[0] == "op":
                states.append(ops[0](states[step[1]]))
                continue
            terms = [op(states[src]) for op, (src, _) in zip(ops, step[2], strict=True)]
            states.append(_sum(step[1], terms))
        return F.relu(states[-1]) + 0.0, states[len(states) // 2]


def _sum(style: str, terms: list):
    if style == "sum":
        return sum(terms)
    total = terms[0]
    for term in terms[1:]:
        if style == "iadd_method":
            total = total.clone() if total is terms[0] else total
            total.add_(term)
        elif style == "torch_add":
            total = torch.add(total, term)
        else:
            total = total + term
    return total


@st.composite
def networks(draw) -> RandomNet:
    steps = []
    for i in range(draw(st.integers(1, 6))):
        n_states = i + 1
        source = st.integers(0, n_states - 1)
        if draw(st.booleans()):
            operands = draw(
                st.lists(st.tuples(source, st.sampled_from(OPS)), min_size=2, max_size=3)
            )
            steps.append(("join", draw(st.sampled_from(STYLES)), operands))
        else:
            steps.append(("op", draw(source), draw(st.sampled_from(OPS))))
    return RandomNet(steps)


def build(net: RandomNet, granularity: str = "branch"):
    torch.manual_seed(0)
    net = net.double()
    inputs = (torch.randn(2, C, SIZE, SIZE, dtype=torch.float64),)
    gm = fxdnat.trace(net, inputs)
    return net, gm, passes.discover(gm, granularity), inputs


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(networks(), st.sampled_from(["full", "cell"]))
def test_gate_at_init_is_the_original_bit_for_bit(net, tie):
    net, gm, edges, inputs = build(net)
    if edges:
        assert_same_function(passes.gate(gm, edges, tie=tie), net, inputs, exact=True)


@PROPERTY
@given(networks(), st.sampled_from(["branch", "op"]), st.integers(0, 2**16))
def test_finalize_equals_gated_with_one_hot_theta(net, granularity, seed):
    net, gm, edges, inputs = build(net, granularity)
    if not edges:
        return
    gated = passes.gate(gm, edges)
    decisions = passes.random_decisions(edges, random.Random(seed))
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions)
    final.graph.lint()
    assert_same_function(final, gated, inputs, rtol=1e-10, atol=1e-10)


@PROPERTY
@given(networks())
def test_finalize_all_same_is_the_original(net):
    net, gm, edges, inputs = build(net)
    if not edges:
        return
    final = passes.finalize(passes.gate(gm, edges), {})
    assert op_signature(final) == op_signature(gm)
    assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
    assert_same_function(final, net, inputs, exact=True)


@PROPERTY
@given(networks(), st.integers(0, 2**16))
def test_decide_never_leaves_a_dead_join(net, seed):
    _, gm, edges, _ = build(net)
    if not edges:
        return
    gated = passes.gate(gm, edges)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gated.arch.theta.copy_(torch.rand(gated.arch.theta.shape, generator=generator) - 0.3)
    decisions = passes.decide(gated)
    passes.check_decisions(edges, decisions)  # raises on a dead join
