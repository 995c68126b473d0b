"""cost: parameters and FLOPs (torch's counter: a multiply-add is 2) of modules, nodes and edges."""

from __future__ import annotations

import pytest
import torch
from support import InplaceAdd
from torch import nn

from fxdnat.cost import EdgeCost, branch_params, count_flops, count_params, edge_costs, node_flops
from fxdnat.frontend import trace
from fxdnat.passes import discover

# InplaceAdd (c=4) on a batch of 2 at 8x8: the conv3x3 of its branch is 2·(2·8·8)·4·4·9 FLOPs;
# its BatchNorm, ReLU and the add count 0
X = torch.randn(2, 4, 8, 8)
CONV_FLOPS = 2 * 2 * 8 * 8 * 4 * 4 * 9


def test_count_params_counts_a_shared_parameter_once():
    linear = nn.Linear(4, 3)
    assert count_params(linear) == 4 * 3 + 3
    assert count_params(nn.Sequential(linear, nn.ReLU(), linear)) == 15


def test_count_flops_is_for_the_whole_batch_and_a_multiply_add_is_two():
    linear = nn.Linear(4, 3)
    assert count_flops(linear, torch.randn(2, 4)) == 2 * 2 * 4 * 3  # the bias add counts 0
    assert count_flops(linear, (torch.randn(5, 4),)) == 5 * 2 * 4 * 3
    assert count_flops(InplaceAdd(), X) == CONV_FLOPS


def test_count_flops_restores_the_mode_even_when_the_module_fails():
    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError(f"eval mode: {not self.training}")

    module = Fails().train()
    with pytest.raises(RuntimeError, match="eval mode: True"):
        count_flops(module, X)
    assert module.training


def test_node_flops_has_every_node_and_adds_up_to_the_module():
    gm = trace(InplaceAdd(), X)
    flops = node_flops(gm, X)
    assert list(flops) == [node.name for node in gm.graph.nodes]
    assert flops["body_0"] == CONV_FLOPS and flops["body_1"] == flops["body_2"] == 0
    assert sum(flops.values()) == count_flops(gm, X)
    assert gm.training  # as it was


def test_edge_costs_are_what_each_same_candidate_computes():
    gm = trace(InplaceAdd(), X)
    edges = discover(gm)
    costs = edge_costs(gm, edges, X)
    # the branch conv3x3-bn-relu: 4·4·9 conv weights (no bias) and BatchNorm's weight and bias
    assert costs == {":0": EdgeCost(params=144 + 8, flops=CONV_FLOPS), ":1": EdgeCost(0, 0)}
    assert [branch_params(gm, e) for e in edges] == [152, 0]
