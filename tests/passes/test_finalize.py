"""finalize: ≡ gated with θ one-hot (invariant 3), all-same is the original (4), clean output."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import warnings

import pytest
import torch
from messy import InplaceReluBlock, InplaceStyles
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


def finals_at_every_decision(model, x):
    """(final, gated with θ one-hot on the same decisions) for every valid decision."""
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges)
    for decisions in all_valid_decisions(edges):
        gated.arch.assign(decisions)
        yield passes.finalize(gated, decisions), gated


def assert_finalize_matches_gated_for_every_decision(model) -> None:
    """On a (2, 3, 5, 5) float64 input."""
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    for final, gated in finals_at_every_decision(model, x):
        assert_same_function(final, gated, (x,), rtol=1e-12, atol=1e-12)


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


def test_inplace_add_on_a_view_is_made_functional_and_never_writes_the_input():
    class Mutating(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.f(x).view(-1, 4, 3, 3)  # a view whose base nobody reads again
            return y.add_(x)

    model = Mutating().double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    assert ".add_(" not in gm.code and ".add(" in gm.code
    edges = passes.discover(gm)
    assert [e.kind for e in edges] == ["branch", "skip"]
    gated = passes.gate(gm, edges)
    decisions = {":0": "identity"}  # the sum becomes x + x: nothing may write x
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions)
    x_before = x.clone()
    assert_same_function(final, gated, (x,))
    torch.testing.assert_close(x, x_before)


def test_adds_come_back_in_their_original_order_and_dead_adds_go_at_trace():
    """A chain's inner add written before other ops goes back there; an add nobody reads is
    dead code that trace removes (its module calls stay: a module may update state)."""

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
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["a", "b", "c", "a", "b"]
    edges = passes.discover(gm)
    assert len({e.join for e in edges}) == 1
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

    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    for final, gated in finals_at_every_decision(Mutate().double(), x):
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


# --------------------------------------------------------- models as people write them (#13)
def test_in_place_relus_at_the_start_of_branches_never_change_what_finalize_computes():
    model = torch.nn.Sequential(InplaceReluBlock(), InplaceReluBlock()).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges)
    combos = list(all_valid_decisions(edges))
    assert len(combos) == 25  # per block (none, identity, same) x (none, same) but the dead join
    for decisions in combos:
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions)
        assert_same_function(final, gated, (x.clone(),), rtol=1e-12, atol=1e-12)


def test_in_place_calls_after_a_join_never_reach_a_substituted_operand():
    model = InplaceStyles().double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    gated = passes.gate(gm, edges)
    identity = {e.name: "identity" for e in edges if "identity" in e.choices}
    for decisions in [identity] + [
        passes.random_decisions(edges, random.Random(s)) for s in range(12)
    ]:
        gated.arch.assign(decisions)
        final = passes.finalize(gated, decisions)
        assert_same_function(final, gated, (x.clone(),), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["weight_norm", "parametrized_weight_norm", "spectral_norm"])
def test_finalize_after_training_with_weight_and_spectral_norm(norm):
    wrap = {
        "weight_norm": torch.nn.utils.weight_norm,  # the hook-based form, common in audio
        "parametrized_weight_norm": torch.nn.utils.parametrizations.weight_norm,
        "spectral_norm": torch.nn.utils.spectral_norm,
    }[norm]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = wrap(torch.nn.Conv2d(4, 4, 3, padding=1))

        def forward(self, x):
            return x + self.conv(x)

    x = torch.randn(2, 4, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # hook-based weight_norm is deprecated
        dnat = fxdnat.DNAT(torch.nn.Sequential(Block(), Block()), x)
    optimizer = torch.optim.SGD(dnat.weights(), lr=0.1)
    dnat.weight_step(dnat.module(x).sum(), optimizer)
    dnat.theta_step(dnat.module(x).sum(), dnat.theta_optimizer())
    final = dnat.finalize({e.name: "same" for e in dnat.edges})
    dnat.arch.assign({})
    dnat.module.eval(), final.eval()
    torch.testing.assert_close(final(x), dnat.module(x))


def test_a_finalized_module_pickles_and_loads_without_fxdnat(tmp_path):
    model = torch.nn.Sequential(InplaceReluBlock(), InplaceReluBlock())
    x = torch.randn(2, 4, 5, 5)
    gm = fxdnat.trace(model, x)
    edges = passes.discover(gm)
    final = passes.finalize(passes.gate(gm, edges), {edges[0].name: "identity"})
    path = tmp_path / "final.pt"
    torch.save(final, path)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(final(x.clone()), tmp_path / "y.pt")
    script = (
        "import sys; sys.modules['fxdnat'] = None  # any import of fxdnat now fails\n"
        "import torch\n"
        f"m = torch.load({str(path)!r}, weights_only=False)\n"
        f"x, y = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'y.pt')!r})\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(m(x), y)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_chain_that_reads_the_join_right_before_it():
    """``z = x + f(x); return z + x + z``: the first join's add is written back where it stood,
    before the adds of the chain that reads it."""

    class Reread(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            z = x + self.f(x)
            return z + x + z

    assert_finalize_matches_gated_for_every_decision(Reread().double())


def test_a_leaf_that_writes_its_input_in_train_mode_only():
    """A mode-dependent leaf's train-mode write is seen (facts probe opaque leaves in train
    mode too), so the skip that reads the written value keeps reading it after finalize."""

    class TrainCenter(torch.nn.Module):
        def forward(self, x):
            if self.training:
                x.sub_(x.mean((0, 2, 3), keepdim=True))
            return x

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g = (
                torch.nn.Conv2d(3, 3, 3, padding=1),
                torch.nn.Conv2d(3, 3, 3, padding=1),
            )
            self.center = TrainCenter()

        def forward(self, x):
            y = self.a(x)
            return y + self.g(self.center(y))

    assert_finalize_matches_gated_for_every_decision(Net().double())
