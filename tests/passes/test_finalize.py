"""finalize: ≡ gated with θ one-hot (invariant 3), all-same is the original (4), clean output."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from support import CASES, assert_same_function, inputs_for, op_signature

import fxdnat
from fxdnat import passes
from fxdnat.arch import Architecture

GATEABLE = [n for n in CASES if n != "parameter_adds"]


def pipeline(name: str, dtype=torch.float64, granularity: str = "branch"):
    model = CASES[name]().to(dtype)
    inputs = inputs_for(model, dtype=dtype)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm, granularity)
    return model, gm, edges, passes.gate(gm, edges), inputs


def all_valid_decisions(edges):
    for combo in itertools.product(*(e.choices for e in edges)):
        decisions = dict(zip((e.name for e in edges), combo, strict=True))
        try:
            passes.check_decisions(edges, decisions)
        except ValueError:
            continue
        yield decisions


@pytest.mark.parametrize("name", GATEABLE)
def test_finalize_equals_gated_with_one_hot_theta_for_every_decision(name):
    _, _, edges, gated, inputs = pipeline(name)
    combos = list(all_valid_decisions(edges))
    rng = random.Random(0)
    for decisions in rng.sample(combos, min(len(combos), 12)):
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions)
        assert_same_function(final, gated, inputs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["nested", "se_block", "method_adds"])
def test_finalize_equals_gated_at_op_granularity(name):
    _, _, edges, gated, inputs = pipeline(name, granularity="op")
    rng = random.Random(1)
    for _ in range(6):
        decisions = passes.random_decisions(edges, rng)
        gated.arch.assign(decisions)
        assert_same_function(
            passes.finalize(gated, decisions), gated, inputs, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("name", GATEABLE)
def test_finalize_all_same_has_exactly_the_original_parameters_and_ops(name):
    model, gm, edges, gated, inputs = pipeline(name)
    final = passes.finalize(gated, {})
    assert_same_function(final, model, inputs, exact=True)
    want = dict(gm.named_parameters())
    got = dict(final.named_parameters())
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [n for n, _ in final.named_buffers()] == [n for n, _ in gm.named_buffers()]
    assert op_signature(final) == op_signature(gm)


def test_finalize_leaves_no_gate_theta_or_fxdnat_reference():
    _, _, edges, gated, inputs = pipeline("nested", torch.float32)
    decisions = {":1": "identity", "inner.0:1": "none", "inner.1:0": "identity"}
    final = passes.finalize(gated, decisions)
    assert "fxdnat" not in final.code and "arch" not in final.code
    assert not any(isinstance(m, Architecture) for m in final.modules())
    assert not hasattr(final, "arch")
    final.graph.lint()
    assert final(*inputs).shape == inputs[0].shape


def test_removed_branches_and_their_submodules_and_parameters_are_deleted():
    _, gm, _, gated, _ = pipeline("se_block", torch.float32)
    final = passes.finalize(gated, {":1": "none"})  # x + se(conv(x))·γ  →  x
    assert [n for n, _ in final.named_parameters()] == []
    assert [n for n, _ in final.named_children()] == []
    assert [n.op for n in final.graph.nodes] == ["placeholder", "output"]


def test_identity_on_an_escaping_branch_keeps_what_is_still_read():
    model, gm, edges, gated, inputs = pipeline("escape")
    final = passes.finalize(gated, {":1": "none"})  # (x + y, y) → (x, y): f is still needed
    out = final(*inputs)
    torch.testing.assert_close(out[0], inputs[0])
    assert hasattr(final, "f")


def test_inplace_add_becomes_out_of_place_when_its_target_changes():
    class Mutating(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.f(x).view(-1, 4, 3, 3)  # a view: trace cannot make its add_ out-of-place
            return y.add_(x)

    model = Mutating().double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    assert [e.kind for e in edges] == ["branch", "skip"] and ".add_(" in gm.code
    gated = passes.gate(gm, edges)
    assert ".add_(" in passes.finalize(gated, {}).code  # unchanged target: stays in place
    decisions = {":0": "identity"}  # the target becomes x itself: x.add_(x) would mutate the input
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions)
    assert ".add_(" not in final.code and ".add(" in final.code
    x_before = x.clone()
    assert_same_function(final, gated, (x,))
    torch.testing.assert_close(x, x_before)


def test_adds_come_back_in_their_original_order_and_dead_joins_stay():
    """A chain's inner add written before other ops goes back there; a join nobody reads was
    dead code in the original and stays, like all code that was dead before."""

    class Interleaved(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))

        def forward(self, x):
            s = self.a(x) + self.b(x)
            t = self.c(x)
            _unused = self.a(t) + self.b(t)  # a dead join
            return s + t

    model = Interleaved().double()
    inputs = inputs_for(model, dtype=torch.float64)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm)
    assert len({e.join for e in edges}) == 2
    final = passes.finalize(passes.gate(gm, edges), {})
    assert op_signature(final) == op_signature(gm)
    assert_same_function(final, model, inputs, exact=True)


def test_an_inner_add_goes_back_before_a_join_that_became_a_mix_too():
    """The add `a + b` stood right before the join `c + d`: its place is no mix's."""

    class Adjacent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(4))

        def forward(self, x):
            c, d, a, b = self.c(x), self.d(x), self.a(x), self.b(x)
            s = a + b
            t = c + d
            return s + t, t  # t is read twice: a join of its own, and an operand of the last

    model = Adjacent().double()
    inputs = inputs_for(model, dtype=torch.float64)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm)
    assert len({e.join for e in edges}) == 2
    gated = passes.gate(gm, edges)
    final = passes.finalize(gated, {})
    assert op_signature(final) == op_signature(gm)
    assert_same_function(final, model, inputs, exact=True)
    for decisions in all_valid_decisions(edges):
        gated.arch.assign(decisions)
        assert_same_function(
            passes.finalize(gated, decisions), gated, inputs, rtol=1e-12, atol=1e-12
        )


def test_impure_inplace_calls_survive_dead_code_elimination():
    class Mutate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Conv2d(4, 4, 1)
            self.g = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.f(x)
            y.relu_()  # result unused; the mutation is what matters
            return y + self.g(y)

    model = Mutate().double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges)
    for decisions in all_valid_decisions(edges):
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions)
        assert "relu_" in final.code
        assert_same_function(final, gated, (x,))


@pytest.mark.parametrize("name", ["nested", "multi_input_dict", "builtin_sum"])
def test_final_module_exports_with_torch_export(name):
    model, _, edges, gated, inputs = pipeline(name, torch.float32)
    final = passes.finalize(gated, passes.random_decisions(edges, random.Random(2))).eval()
    program = torch.export.export(final, inputs)
    torch.testing.assert_close(program.module()(*inputs), final(*inputs))


def test_decisions_are_validated():
    _, _, _, gated, _ = pipeline("chain")
    with pytest.raises(ValueError, match="decisions remove every operand of join"):
        passes.finalize(gated, {":0": "none", ":1": "none", ":2": "none"})
    with pytest.raises(ValueError, match="unknown edge 'nope'"):
        passes.finalize(gated, {"nope": "none"})


def test_assign_rejects_different_choices_on_one_shared_row():
    model = torch.nn.Sequential(CASES["se_block"](), CASES["se_block"]())
    gm = fxdnat.trace(model, inputs_for(model))
    gated = passes.gate(gm, passes.discover(gm), tie="cell")
    with pytest.raises(ValueError, match=r"edges 0:1, 1:1 share one θ row \(tie='cell'\)"):
        gated.arch.assign({"0:1": "none", "1:1": "same"})
