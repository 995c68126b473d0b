"""finalize: ≡ gated with θ one-hot (invariant 3), all-same is the original (4), clean output."""

from __future__ import annotations

import itertools
import operator
import random
import subprocess
import sys
import warnings

import pytest
import torch
from messy import InplaceReluBlock, InplaceStyles
from support import CASES, assert_same_function, inputs_for, op_signature, untied_masked
from timm.layers import BatchNormAct2d, DropPath
from torchvision.ops import StochasticDepth

import fxdnat
from fxdnat import passes
from fxdnat.arch import Architecture
from fxdnat.ir import joins_of

GATEABLE = [n for n in CASES if n != "parameter_adds"]


def pipeline(name: str, dtype=torch.float64, granularity: str = "branch"):
    model = CASES[name]().to(dtype)
    inputs = inputs_for(model, dtype=dtype)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm, granularity)
    return model, gm, edges, passes.gate(gm, edges), inputs


def masked(gated, decisions):
    """A copy of ``gated`` with θ masked to ``decisions`` (gated has its own row per edge)."""
    return untied_masked(gated, gated, decisions)


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
    decisions = {e.name: "same" for e in dnat.edges}
    final = dnat.finalize(decisions)  # scale="keep": θ_same is no longer 1
    # a weight computed from other parameters takes no factor: the sum multiplies instead
    assert final.meta["fxdnat"]["folded"] == {}
    one = passes.finalize(dnat.module, decisions, scale="one")
    reference = masked(dnat.module, decisions).eval()  # deepcopy fails on this module
    final.eval(), one.eval()
    torch.testing.assert_close(final(x), reference(x))
    dnat.arch.assign({})
    torch.testing.assert_close(one(x), dnat.module.eval()(x))


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


# ------------------------------------------------- scale="keep": learned coefficients kept
class Residual(torch.nn.Module):
    """``x + tail(conv(x))``: the branch's last affine op, and what stands between it and the
    join, are the test's to choose."""

    def __init__(self, tail: torch.nn.Module, c: int = 4) -> None:
        super().__init__()
        self.conv, self.tail = torch.nn.Conv2d(c, c, 3, padding=1), tail

    def forward(self, x):
        return x + self.tail(self.conv(x))


def keep_pipeline(model, theta_rows, decisions, granularity="branch"):
    """(final with scale="keep", gated with θ set to ``theta_rows`` in edge order, inputs).
    Edge ":0" of ``Residual`` is the skip x, ":1" the branch."""
    model = model.double()
    inputs = inputs_for(model, dtype=torch.float64)
    gm = fxdnat.trace(model, inputs)
    gated = passes.gate(gm, passes.discover(gm, granularity))
    with torch.no_grad():
        gated.arch.theta.copy_(torch.tensor(theta_rows))
    return passes.finalize(gated, decisions), gated, inputs


def muls(final) -> list[tuple]:
    return [n.args for n in final.graph.nodes if n.target is operator.mul]


def test_keep_folds_the_coefficient_into_the_last_batchnorm():
    tail = torch.nn.BatchNorm2d(4)
    final, gated, inputs = keep_pipeline(Residual(tail), [[0, 0, 1], [0, 0, 1.25]], {})
    assert muls(final) == []
    assert op_signature(final) == op_signature(passes.finalize(gated, {}, scale="one"))
    assert final.meta["fxdnat"]["folded"] == {":1": "tail"}
    assert final.meta["fxdnat"]["coefficients"] == {":0": 1.0, ":1": 1.25}
    assert final.meta["fxdnat"]["scale"] == "keep"
    # new tensors, scaled; the gated module's own are as they were
    assert final.tail.weight is not gated.tail.weight
    torch.testing.assert_close(final.tail.weight, 1.25 * gated.tail.weight, rtol=0, atol=0)
    torch.testing.assert_close(final.tail.bias, 1.25 * gated.tail.bias, rtol=0, atol=0)
    assert torch.equal(gated.tail.weight, tail.weight.double())
    assert final.tail.weight.dtype == torch.float64 and final.tail.weight.requires_grad
    assert_same_function(final, masked(gated, {}), inputs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "tail",
    [
        lambda: torch.nn.Identity(),  # the conv itself
        lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.3)),
        lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(4), DropPath(0.3)),
        lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(4), StochasticDepth(0.3, "row")),
    ],
)
def test_keep_folds_through_ops_that_commute_with_a_factor(tail):
    final, gated, inputs = keep_pipeline(Residual(tail()), [[0, 0, 1], [0, 0, -0.75]], {})
    assert muls(final) == [] and ":1" in final.meta["fxdnat"]["folded"]
    assert_same_function(final, masked(gated, {}), inputs, rtol=1e-12, atol=1e-12)


class Views(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(32, 32)

    def forward(self, x):  # (2, 4, 8) -> (2, 32) -> (2, 4, 8)
        return x + self.fc(x.flatten(1)).view(-1, 4, 8)


def test_keep_folds_into_a_linear_layer_behind_a_view():
    model = Views().double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    gated = passes.gate(gm, passes.discover(gm))
    with torch.no_grad():
        gated.arch.theta.copy_(torch.tensor([[0, 0, 1], [0, 0, 1.5]]))
    final = passes.finalize(gated, {})
    assert muls(final) == [] and final.meta["fxdnat"]["folded"] == {":1": "fc"}
    assert_same_function(final, masked(gated, {}), (x,), rtol=1e-12, atol=1e-12)


class Shared(torch.nn.Module):
    """The branch's last op is called twice (and the second call's result is returned)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(x.relu()), self.bn(x)


class Tied(torch.nn.Module):
    """Two convolutions hold one weight."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(c, c, 1), torch.nn.Conv2d(c, c, 1)
        self.b.weight = self.a.weight

    def forward(self, x):
        return x + self.a(x.relu()) + self.b(x)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (lambda: CASES["escape"](), "the branch's output is returned too"),
        (lambda: Shared(), "the BatchNorm is called twice"),
        (lambda: Tied(), "the weight is tied"),
        (lambda: Residual(torch.nn.ReLU()), "no affine op at the end"),
        (lambda: Residual(BatchNormAct2d(4)), "timm's norm applies an activation after it"),
    ],
)
def test_keep_multiplies_where_folding_would_change_another_reader(model, why):
    model = model()
    rows = [[0, 0, 1.5]] * 3
    gm = fxdnat.trace(model.double(), inputs_for(model, dtype=torch.float64))
    edges = passes.discover(gm)
    final, gated, inputs = keep_pipeline(model, rows[: len(edges)], {})
    assert final.meta["fxdnat"]["folded"] == {}, why
    assert sorted(c for _, c in muls(final)) == [1.5] * len(edges), why
    assert [n for n, _ in final.named_parameters()] == [n for n, _ in gm.named_parameters()]
    assert all(torch.equal(p, gm.get_parameter(n)) for n, p in final.named_parameters())
    assert_same_function(final, masked(gated, {}), inputs, rtol=1e-12, atol=1e-12)


def test_keep_multiplies_an_identity_candidate_and_skips_factors_of_one():
    final, gated, inputs = keep_pipeline(
        Residual(torch.nn.BatchNorm2d(4)), [[0, 0, 1], [0, -0.5, 1]], {":1": "identity"}
    )
    x = next(n for n in final.graph.nodes if n.op == "placeholder")
    assert muls(final) == [(x, -0.5)]  # the skip's θ_same is 1: no multiply
    assert final.meta["fxdnat"]["folded"] == {}
    assert final.meta["fxdnat"]["coefficients"] == {":0": 1.0, ":1": -0.5}
    assert_same_function(final, masked(gated, {":1": "identity"}), inputs, rtol=0, atol=0)


def test_keep_multiplies_a_coefficient_of_zero_and_keeps_the_weights():
    tail = torch.nn.BatchNorm2d(4)
    final, gated, inputs = keep_pipeline(Residual(tail), [[0, 0, 1], [0, 0, 0.0]], {})
    assert [c for _, c in muls(final)] == [0.0]
    assert torch.equal(final.tail.weight, gated.tail.weight)
    assert_same_function(final, masked(gated, {}), inputs, rtol=0, atol=0)


def test_keep_folds_an_op_edge_and_its_join_into_the_same_batchnorm():
    final, gated, inputs = keep_pipeline(
        Residual(torch.nn.BatchNorm2d(4)), [[0, 0, 1.0]] * 4, {}, granularity="op"
    )
    edges = gated.arch.edges
    rows = {e.name: [0, 0.5, 1.0] for e in edges}
    rows[next(e.name for e in edges if e.kind == "op" and "tail" in e.operand)] = [0, 0.5, 2.0]
    rows[":1"] = [0, 0, -1.5]
    with torch.no_grad():
        gated.arch.theta.copy_(torch.tensor([rows[e.name] for e in edges]))
    final = passes.finalize(gated, {})
    assert muls(final) == []
    torch.testing.assert_close(final.tail.weight, -3.0 * gated.tail.weight, rtol=0, atol=0)
    assert_same_function(final, masked(gated, {}), inputs, rtol=1e-12, atol=1e-12)


def test_one_ignores_the_learned_coefficients():
    final, gated, inputs = keep_pipeline(Residual(torch.nn.BatchNorm2d(4)), [[0, 0, 1]] * 2, {})
    with torch.no_grad():
        gated.arch.theta.copy_(torch.tensor([[0.3, 0.2, 1.5], [0, 0.7, 0.9]]))
    one = passes.finalize(gated, {":1": "identity"}, scale="one")
    assert muls(one) == [] and one.meta["fxdnat"]["scale"] == "one"
    assert one.meta["fxdnat"]["coefficients"] == {":0": 1.0, ":1": 1.0}
    gated.arch.assign({":1": "identity"})
    assert_same_function(one, gated, inputs, rtol=1e-12, atol=1e-12)


def test_an_unknown_scale_is_refused():
    _, _, _, gated, _ = pipeline("chain")
    with pytest.raises(ValueError, match=r"^unknown scale 'learned'; expected one of \('keep'"):
        passes.finalize(gated, {}, scale="learned")


def test_a_keep_result_exports_with_torch_export():
    final, gated, inputs = keep_pipeline(
        Residual(torch.nn.BatchNorm2d(4)), [[0, 0, 1.5], [0, 0.5, 1.25]], {}
    )
    final.eval()
    assert final.meta["fxdnat"]["folded"] and muls(final)  # both kinds of factor
    program = torch.export.export(final, inputs)
    torch.testing.assert_close(program.module()(*inputs), final(*inputs))


def test_keep_adds_a_dropped_identity_to_the_skip_that_reads_the_same_tensor():
    # the branch keeps "same" but learned θ_identity 0.5 next to a skip at 1.25: the skip reads
    # the same x, so the finalized block is 1.75·x + 1.5·bn(conv(x)), exactly the trained one
    final, gated, inputs = keep_pipeline(
        Residual(torch.nn.BatchNorm2d(4)), [[0, 0, 1.25], [0, 0.5, 1.5]], {}
    )
    assert final.meta["fxdnat"]["coefficients"] == {":0": 1.75, ":1": 1.5}
    x = next(n for n in final.graph.nodes if n.op == "placeholder")
    assert muls(final) == [(x, 1.75)] and final.meta["fxdnat"]["folded"] == {":1": "tail"}
    assert_same_function(final, gated, inputs, rtol=1e-12, atol=1e-12)  # θ unmasked
    # where no kept candidate reads x (the skip chose none), the identity's share goes
    final, gated, inputs = keep_pipeline(
        Residual(torch.nn.BatchNorm2d(4)), [[0.9, 0, 0.2], [0, 0.5, 1.5]], {":0": "none"}
    )
    assert final.meta["fxdnat"]["coefficients"] == {":1": 1.5} and muls(final) == []
    assert_same_function(final, masked(gated, {":0": "none"}), inputs, rtol=1e-12, atol=1e-12)


class TwoJoins(torch.nn.Module):
    """``y = a(x) + b(x)``; ``(c(y) + d(x), y)``: edges ":0" a, ":1" b, ":2" c, ":3" d. Returning
    y makes it the source of c's edge (a branch that began at x would run through y)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (torch.nn.Conv2d(c, c, 3, padding=1) for _ in range(4))

    def forward(self, x):
        y = self.a(x) + self.b(x)
        return self.c(y) + self.d(x), y


def test_keep_merges_by_the_tensors_of_the_trained_network_not_of_the_finalized_one():
    # the first join keeps only b's identity at 1: finalized, y *is* x. c's dropped identity
    # read y in the trained network, so it is not d's identity (which reads x) to merge into
    rows = [[0.5, 0, 0.2], [0, 1.0, 0.3], [0, -1.2, -0.9], [0.7, 0.4, 0.6]]
    decisions = {":0": "none", ":1": "identity", ":2": "none", ":3": "identity"}
    final, gated, inputs = keep_pipeline(TwoJoins(), rows, decisions)
    assert final.meta["fxdnat"]["coefficients"] == pytest.approx({":1": 1.0, ":3": 0.4})
    assert_same_function(final, masked(gated, decisions), inputs, rtol=1e-12, atol=1e-12)


def dead_decisions(edges):
    """Valid decisions except that one join loses every operand (NAT's dead join)."""
    for join, members in joins_of(edges).items():
        if all("none" in e.choices for e in members):
            return join, {e.name: "none" for e in members}
    return None, None


@pytest.mark.parametrize("name", GATEABLE)
def test_a_dead_join_is_refused_by_default_and_becomes_zeros_when_allowed(name):
    _, _, edges, gated, inputs = pipeline(name)
    join, decisions = dead_decisions(edges)
    if join is None:
        pytest.skip("no join whose every edge may be removed")
    with pytest.raises(ValueError, match="remove every operand of join"):
        passes.finalize(gated, decisions)
    gated.arch.assign(decisions)
    final = passes.finalize(gated, decisions, allow_dead=True)
    assert_same_function(final, gated, inputs, rtol=1e-12, atol=1e-12)
    zeros = [n for n in final.graph.nodes if n.target in (torch.zeros_like, "new_zeros")]
    assert len(zeros) >= 1
