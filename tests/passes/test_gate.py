"""gate: starts as the original (invariant 2), one θ parameter, cell-mode sharing, retraceable."""

from __future__ import annotations

import pytest
import torch
from support import CASES, assert_same_function, inputs_for

import fxdnat
from fxdnat import passes
from fxdnat.arch import dnat_mix
from fxdnat.specs import build_model


def traced(name: str, dtype=torch.float32):
    model = CASES[name]().to(dtype)
    inputs = inputs_for(model, dtype=dtype)
    gm = fxdnat.trace(model, inputs)
    return model, gm, passes.discover(gm), inputs


@pytest.mark.parametrize("name", [n for n in CASES if n != "parameter_adds"])
def test_gate_at_init_is_the_original_bit_for_bit_in_float64(name):
    model, gm, edges, inputs = traced(name, torch.float64)
    gated = passes.gate(gm, edges)
    assert_same_function(gated, model, inputs, exact=True)


@pytest.mark.parametrize("name", ["nested", "method_adds", "builtin_sum"])
def test_gate_at_init_is_the_original_in_float32(name):
    model, gm, edges, inputs = traced(name)
    assert_same_function(passes.gate(gm, edges), model, inputs, atol=1e-6, rtol=0)


def test_theta_is_one_parameter_rows_by_group_columns_in_choices_order():
    _, gm, edges, _ = traced("nested")
    gated = passes.gate(gm, edges)
    arch = gated.arch
    assert isinstance(arch, fxdnat.Architecture)
    assert [n for n, _ in arch.named_parameters()] == ["theta"]
    assert arch.theta.shape == (len(edges), 3)
    torch.testing.assert_close(arch.theta[:, fxdnat.CHOICES.index("same")], torch.ones(len(edges)))
    allowed = [[c in e.choices for c in fxdnat.CHOICES] for e in edges]
    assert arch.mask.tolist() == allowed
    mixes = [n for n in gated.graph.nodes if n.target is dnat_mix]
    assert len(mixes) == len({e.join for e in edges})  # one per join
    leaves = [leaf.edge for n in mixes for leaf in n.meta["fxdnat_edges"].leaves]
    assert sorted(leaves) == sorted(e.name for e in edges)


def test_gate_copies_and_leaves_the_input_module_untouched():
    _, gm, edges, _ = traced("chain")
    code = gm.code
    gated = passes.gate(gm, edges)
    assert gm.code == code and not hasattr(gm, "arch")
    assert all(p is not q for p, q in zip(gm.parameters(), gated.parameters(), strict=False))


def test_theta_receives_gradients_only_on_allowed_choices():
    model, gm, edges, inputs = traced("downsample")
    gated = passes.gate(gm, edges)
    gated(*inputs).square().sum().backward()
    grad = gated.arch.theta.grad
    assert grad is not None
    assert torch.all(grad[~gated.arch.mask] == 0) and torch.all(grad[:, 2] != 0)


def test_cell_mode_shares_rows_between_cells_of_the_same_structure():
    model = torch.nn.Sequential(*(CASES["se_block"]() for _ in range(3)), CASES["inplace_add"]())
    inputs = inputs_for(model)
    gm = fxdnat.trace(model, inputs)
    edges = passes.discover(gm)
    full, cell = passes.gate(gm, edges, tie="full"), passes.gate(gm, edges, tie="cell")
    assert full.arch.num_groups == 8
    assert cell.arch.num_groups == 4  # three SE blocks share 2 rows; the last block has its own 2
    assert [cell.arch.group_of[e.name] for e in edges] == [0, 1, 0, 1, 0, 1, 2, 3]


def test_a_module_can_declare_its_cell_structure():
    blocks = [CASES["se_block"]() for _ in range(2)]
    for i, block in enumerate(blocks):
        block.fxdnat_cell = f"block{i}"
    model = torch.nn.Sequential(*blocks)
    gm = fxdnat.trace(model, inputs_for(model))
    gated = passes.gate(gm, passes.discover(gm), tie="cell")
    assert gated.arch.num_groups == 4


def test_gated_module_retraces_with_the_gate_as_one_call():
    _, gm, edges, inputs = traced("nested")
    gated = passes.gate(gm, edges)
    retraced = torch.fx.symbolic_trace(gated)
    calls = [n for n in retraced.graph.nodes if n.op == "call_function" and n.target is dnat_mix]
    assert len(calls) == len({e.join for e in edges})
    torch.testing.assert_close(retraced(*inputs), gated(*inputs))


def test_gated_module_compiles_with_dynamo():
    _, gm, edges, inputs = traced("se_block")
    gated = passes.gate(gm, edges).eval()
    compiled = torch.compile(gated, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), gated(*inputs))


def _grads(gated, inputs):
    gated.zero_grad(set_to_none=True)
    out = _flatten_outputs(gated(*inputs))
    sum(o.sum() * (i + 1) for i, o in enumerate(out)).backward()
    return out, {n: p.grad for n, p in gated.named_parameters() if p.grad is not None}


def _flatten_outputs(value):
    if isinstance(value, torch.Tensor):
        return [value]
    values = value.values() if isinstance(value, dict) else value
    return [t for v in values for t in _flatten_outputs(v)]


@pytest.mark.parametrize(
    ("name", "granularity"),
    [
        ("nested", "branch"),
        ("builtin_sum", "branch"),
        ("alpha_add", "branch"),
        ("method_adds", "op"),
        ("multi_input_dict", "branch"),
    ],
)
def test_cpu_mix_equals_the_plain_ops_it_stands_for(name, granularity, monkeypatch):
    """dnat_mix's CPU function (Python coefficients, dot products) against the composed ops
    that CUDA and torch.compile run: same outputs and gradients, at init and at random θ."""
    model = CASES[name]().double()
    inputs = inputs_for(model, dtype=torch.float64)
    gm = fxdnat.trace(model, inputs)
    gated = passes.gate(gm, passes.discover(gm, granularity)).double()  # θ too
    for theta in ("init", "random", "one-hot with zeros"):
        with torch.no_grad():
            if theta == "random":
                gated.arch.theta.copy_(torch.randn_like(gated.arch.theta))
            elif theta != "init":
                gated.arch.theta.copy_(torch.randint(0, 2, gated.arch.theta.shape))
        fast_out, fast = _grads(gated, inputs)
        with monkeypatch.context() as m:
            m.setattr(fxdnat.arch, "_reads_theta_as_numbers", lambda weights: False)
            plain_out, plain = _grads(gated, inputs)
        for a, b in zip(fast_out, plain_out, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert "arch.theta" in fast
        for key in fast.keys() | plain.keys():  # an edge weighted exactly 0 gives no gradient
            zero = torch.zeros_like(fast[key] if key in fast else plain[key])
            got, want = fast.get(key, zero), plain.get(key, zero)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["nested", "builtin_sum", "alpha_add", "multi_input_dict"])
def test_frozen_theta_keeps_nothing_for_its_gradient_and_leaves_the_weights_gradients(name):
    """ω's step runs with θ frozen: the gated forward is then plain ops with θ's values as
    numbers, computes the same outputs, saves exactly the tensors the original's does (none
    for θ), gives the same weight gradients, and θ none."""
    model = CASES[name]().double()
    inputs = inputs_for(model, dtype=torch.float64)
    gm = fxdnat.trace(model, inputs)
    gated = passes.gate(gm, passes.discover(gm)).double()
    with torch.no_grad():
        gated.arch.theta.copy_(torch.rand_like(gated.arch.theta))  # not at init: scaled terms

    def saved_count(module):
        count = 0

        def pack(tensor):
            nonlocal count
            count += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _flatten_outputs(module(*inputs))
        return count

    live_out, live = _grads(gated, inputs)
    with gated.arch.frozen():
        assert not gated.arch.theta.requires_grad
        frozen_out, frozen = _grads(gated, inputs)
        gated_saves = saved_count(gated)
    for a, b in zip(frozen_out, live_out, strict=True):  # the same ops, in the same order
        assert torch.equal(a, b)
    assert gated.arch.theta.requires_grad  # restored on leaving
    assert "arch.theta" in live and "arch.theta" not in frozen
    live.pop("arch.theta")
    assert live.keys() == frozen.keys()
    for key in live:
        torch.testing.assert_close(frozen[key], live[key], rtol=1e-12, atol=1e-12, msg=key)
    assert gated_saves == saved_count(gm)


def test_the_mix_never_hands_out_an_input_that_an_inplace_op_then_changes():
    """At init an op edge's mix equals op(x); were it op(x) itself, the in-place ReLU after it
    would overwrite the tensor θ's gradient needs."""

    class ConvReluInplace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu_(self.conv(x)) + x

    model = ConvReluInplace()
    inputs = inputs_for(model)
    gm = fxdnat.trace(model, inputs)
    gated = passes.gate(gm, passes.discover(gm, "op"))
    gated(*inputs).sum().backward()  # raises if a saved tensor was modified in place
    assert torch.isfinite(gated.arch.theta.grad).all()


def test_no_edge_and_bad_tie_are_rejected():
    _, gm, edges, _ = traced("parameter_adds")
    with pytest.raises(ValueError, match=r"has no eligible edge .* try granularity='op'"):
        passes.gate(gm, edges)
    _, gm, edges, _ = traced("chain")
    with pytest.raises(
        ValueError, match=r"unknown tie mode 'cells'; expected one of \('cell', 'full'\)"
    ):
        passes.gate(gm, edges, tie="cells")
    with pytest.raises(ValueError, match="already has an attribute 'arch'; is it gated already"):
        passes.gate(passes.gate(gm, edges), edges)


def test_a_gated_network_runs_under_inference_mode():
    """Lightning's test and predict loops run under torch.inference_mode, where tensors keep
    no version counter: the CPU mix reads θ without its cache there."""
    model = build_model("zoo:resnet20", num_classes=10, input_size=8).model
    gated = fxdnat.DNAT(model, torch.zeros(1, 3, 8, 8)).module.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        inferred = gated(x)
    with torch.no_grad():
        torch.testing.assert_close(inferred, gated(x), rtol=0, atol=0)
