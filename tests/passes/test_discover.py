"""discover: which adds are joins, what each edge's branch and source are, names and choices."""

from __future__ import annotations

import pytest
import torch
from messy import DictInput, MBConvSE, ToyDropPath, Transformer, transformer_inputs
from support import CASES, inputs_for

import fxdnat
from fxdnat import passes


def edges_of(name: str, granularity: str = "branch"):
    model = CASES[name]().eval()
    gm = fxdnat.trace(model, inputs_for(model))
    return gm, passes.discover(gm, granularity)


def table(edges):
    return [(e.name, e.kind, e.source, e.operand, e.join, e.choices) for e in edges]


def test_inplace_add_is_one_join_with_branch_and_skip():
    _, edges = edges_of("inplace_add")
    assert table(edges) == [
        (":0", "branch", "x", "body_2", "add", ("none", "identity", "same")),
        (":1", "skip", "x", "x", "add", ("none", "same")),
    ]
    assert edges[0].nodes == ("body_0", "body_1", "body_2")
    assert edges[1].nodes == ()


def test_torch_add_and_tensor_add_methods_are_joins():
    gm, edges = edges_of("method_adds")
    assert [e.join for e in edges] == ["add", "add", "add_1", "add_1", "add_", "add_"]
    assert [e.kind for e in edges] == ["branch", "skip"] * 3
    # y.add_(x); return y  became  y2 = y.add(x); return y2: the join can be gated
    assert "add_ = c_2.add(add_1)" in gm.code and "return add_" in gm.code


def test_builtin_sum_is_one_join_of_three_operands():
    _, edges = edges_of("builtin_sum")
    assert len({e.join for e in edges}) == 1
    assert [(e.kind, e.source, e.operand) for e in edges] == [
        ("branch", "x", "a_2"),
        ("branch", "x", "b"),
        ("skip", "x", "x"),
    ]
    # FX traces sum([a, b, x]) as ((0 + a) + b) + x: each operand is read by its own add.
    assert len({e.user for e in edges}) == 3


def test_chain_of_adds_is_one_join():
    _, edges = edges_of("chain")
    assert [e.role for e in edges] == ["0", "1", "2"]
    assert len({e.join for e in edges}) == 1


def test_branch_contains_inner_forks_and_starts_at_block_input():
    gm, edges = edges_of("se_block")
    skip, branch = edges
    assert (branch.source, skip.source) == ("x", "x")
    assert branch.kind == "branch" and skip.kind == "skip"
    inner = {"mean", "se_reduce", "se_expand", "sigmoid", "mul", "mul_1", "conv_0"}
    assert inner <= set(branch.nodes)
    assert branch.operand == "mul_1"  # (... * sigmoid) * gamma; gamma is a parameter, not a fork


def test_adds_with_parameters_buffers_constants_or_broadcast_are_not_joins():
    _, edges = edges_of("parameter_adds")
    assert edges == []


def test_multi_input_join_across_inputs_and_dict_output():
    _, edges = edges_of("multi_input_dict")
    assert table(edges)[:2] == [
        (":0", "branch", "x", "f_2", "add", ("none", "identity", "same")),
        (":1", "skip", "y", "y", "add", ("none", "same")),
    ]
    assert table(edges)[2:] == [
        (":2", "branch", "add", "g_2", "add_1", ("none", "identity", "same")),
        (":3", "skip", "add", "add", "add_1", ("none", "same")),
    ]


def test_escaping_operand_is_a_state_and_its_edge_a_skip():
    _, edges = edges_of("escape")
    assert table(edges) == [
        (":0", "skip", "x", "x", "add", ("none", "same")),
        (":1", "skip", "f_2", "f_2", "add", ("none", "same")),
    ]


def test_identity_only_where_shapes_match():
    _, edges = edges_of("downsample")
    assert [e.choices for e in edges] == [("none", "same"), ("none", "same")]
    assert [e.kind for e in edges] == ["branch", "branch"]


def test_nested_edges_and_cells():
    _, edges = edges_of("nested")
    assert [e.name for e in edges] == [
        "inner.0:0",
        "inner.0:1",
        "inner.1:0",
        "inner.1:1",
        ":0",
        ":1",
    ]
    outer = edges[5]
    assert outer.source == "x" and {"inner_0_conv_0", "add", "add_1", "relu_1"} <= set(outer.nodes)


def test_alpha_add_is_a_join():
    _, edges = edges_of("alpha_add")
    assert [(e.kind, e.index) for e in edges] == [("skip", 0), ("branch", 1)]


def test_op_granularity_adds_identity_only_edges_for_parametric_shape_preserving_calls():
    _, edges = edges_of("se_block", granularity="op")
    ops = [e for e in edges if e.kind == "op"]
    assert [e.name for e in ops] == ["conv:0", "conv:1"]  # cell: the Sequential that calls them
    assert all(e.choices == ("identity", "same") for e in ops)
    # se.reduce/expand change the shape; the ReLU has no parameters
    assert [e.source for e in ops] == ["x", "conv_0"]


def test_discover_is_deterministic_across_traces():
    torch.manual_seed(0)
    first = edges_of("nested")[1]
    assert edges_of("nested")[1] == first


def test_unknown_granularity_and_untraced_graph_are_rejected():
    gm, _ = edges_of("chain")
    with pytest.raises(
        ValueError, match=r"unknown granularity 'ops'; expected one of \('branch', 'op'\)"
    ):
        passes.discover(gm, "ops")
    plain = torch.fx.symbolic_trace(CASES["chain"]())
    with pytest.raises(
        ValueError,
        match=r"no input of the graph carries a shape \(node.meta\[.tensor_meta.\]\); trace the model with `fxdnat.trace\(model, example_inputs\)`",
    ):
        passes.discover(plain)


# --------------------------------------------------------- models as people write them (#13)
def test_size_reads_nobody_uses_never_shape_an_edge():
    """``b, c, _, _ = x.size()`` leaves two unused reads: the same edges as ``x.size(0)``."""
    found = {}
    for unpack in (True, False):
        model = MBConvSE(unpack=unpack)
        gm = fxdnat.trace(model, torch.randn(2, 8, 5, 5))
        found[unpack] = [(e.kind, e.source, e.choices, e.nodes) for e in passes.discover(gm)]
    assert found[True] == found[False]
    assert [edge[:3] for edge in found[True]] == [
        ("skip", "x", ("none", "same")),
        ("branch", "x", ("none", "identity", "same")),
    ]
    assert found[True][1][3][:3] == ("expand_0", "expand_1", "expand_2")  # from the block input


def test_a_branch_that_reads_a_side_input_keeps_the_block_input_as_its_source():
    edges = {}
    for masked in (True, False):
        gm = fxdnat.trace(Transformer(masked=masked), transformer_inputs())
        edges[masked] = passes.discover(gm)
    strip = [(e.name, e.kind, e.source, e.choices) for e in edges[True]]
    assert strip == [(e.name, e.kind, e.source, e.choices) for e in edges[False]]
    attention = edges[True][1]
    assert (attention.name, attention.source) == ("blocks.0:1", "x")
    assert attention.choices == ("none", "identity", "same")
    assert "blocks_0_mha" in attention.nodes and "blocks_0_ln1" in attention.nodes


def test_structured_inputs_give_the_edges_of_the_plain_model():
    class Plain(DictInput):
        def forward(self, x):
            return super().forward({"image": x, "scale": torch.tensor(1.0)})

    x = torch.randn(2, 4, 5, 5)
    plain = passes.discover(fxdnat.trace(Plain(), x))
    structured = passes.discover(
        fxdnat.trace(DictInput(), {"image": x, "scale": torch.tensor(1.0)})
    )
    assert [(e.name, e.kind, e.choices, len(e.nodes)) for e in structured] == [
        (e.name, e.kind, e.choices, len(e.nodes)) for e in plain
    ]


@pytest.mark.parametrize("name, count", [("resnet18", 16), ("convnext_atto", 24)])
def test_drop_path_hides_no_block(name, count):
    import timm

    found = []
    for rate in (0.0, 0.1):
        model = timm.create_model(name, num_classes=10, drop_path_rate=rate)
        gm = fxdnat.trace(model, torch.randn(2, 3, 64, 64))
        found.append([(e.name, e.kind, e.choices) for e in passes.discover(gm)])
        leaves = gm.meta["fxdnat"]["leaves"]
        assert all(path.endswith("drop_path") for path in leaves), leaves
    assert len(found[0]) == count and found[1] == found[0]


def test_a_toy_drop_path_residual_is_one_join():
    gm = fxdnat.trace(ToyDropPath(p=0.1), torch.randn(2, 4, 5, 5))
    edges = passes.discover(gm)
    assert [(e.kind, e.source) for e in edges] == [("skip", "x"), ("branch", "x")]
    assert edges[1].nodes == ("f_0", "f_1", "drop_path")
