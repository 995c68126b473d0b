"""trace: traced ≡ eager in both modes (invariant 1), automatic leaves, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import CASES, assert_same_function, inputs_for
from torch import nn

import fxdnat
from fxdnat.passes import _graph


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1  # control flow on a tensor value


class ModeDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if self.training:  # traces silently, baking in one mode
            return self.conv(x) * 0.5
        return self.conv(x)


class Host(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = DataDependent(), ModeDependent(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y) + self.c(y)


def test_untraceable_and_mode_dependent_submodules_become_leaves():
    model = Host()
    x = torch.randn(2, 4, 5, 5)
    gm = fxdnat.trace(model, x)
    leaves = gm.meta["fxdnat"]["leaves"]
    assert leaves == {
        "a": "TraceError: symbolically traced variables cannot be used as inputs to control flow",
        "b": "its traced form depends on train/eval mode",
    }
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["a", "b", "c"]
    assert_same_function(gm, model, (x,))
    assert_same_function(gm, model, (-x.abs(),))


def test_trace_restores_the_train_eval_flags():
    model = Host()
    model.b.eval()
    fxdnat.trace(model, torch.randn(1, 4, 3, 3))
    assert model.training and not model.b.training and model.a.training


def test_timm_no_trace_registry_is_honoured():
    from timm.layers import register_notrace_module

    @register_notrace_module
    class Opaque(nn.Module):
        def forward(self, x):
            return x.relu()

    model = nn.Sequential(nn.Conv2d(4, 4, 1), Opaque())
    gm = fxdnat.trace(model, torch.randn(1, 4, 3, 3))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
    assert gm.meta["fxdnat"]["leaves"] == {}


def test_user_leaves_by_path_and_type():
    model = CASES["nested"]()
    x = inputs_for(model)
    by_path = fxdnat.trace(model, x, leaves=["inner.0"])
    assert "inner.0" in [n.target for n in by_path.graph.nodes if n.op == "call_module"]
    by_type = fxdnat.trace(model, x, leaves=[type(model.inner[1])])
    assert "inner.1" in [n.target for n in by_type.graph.nodes if n.op == "call_module"]


def test_shapes_are_recorded_on_every_tensor_node():
    model = CASES["downsample"]()
    gm = fxdnat.trace(model, inputs_for(model, size=8))
    shapes = {n.name: _graph.shape(n) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["x"] == (2, 4, 8, 8)
    assert shapes["add"] == (2, 8, 4, 4)
    assert gm.meta["fxdnat"]["input_shapes"] == [(2, 4, 8, 8)]


def test_a_root_that_cannot_trace_names_the_model_and_the_reason():
    with pytest.raises(
        fxdnat.TraceError,
        match=r"cannot trace DataDependent.forward: TraceError: "
        r"symbolically traced variables cannot be used as inputs to control flow",
    ):
        fxdnat.trace(DataDependent(), torch.randn(2, 3))


def test_a_root_that_branches_on_training_is_rejected():
    class Root(nn.Module):
        def forward(self, x):
            return x * 2 if self.training else x

    with pytest.raises(fxdnat.TraceError, match=r"the model's own forward branches on train/eval"):
        fxdnat.trace(Root(), torch.randn(2, 3))


def test_inputs_the_model_cannot_run_on_are_reported():
    with pytest.raises(
        fxdnat.TraceError, match=r"Linear does not run on inputs of shapes \[\(2, 5\)\]"
    ):
        fxdnat.trace(nn.Linear(3, 3), torch.randn(2, 5))


@pytest.mark.parametrize("name", sorted(CASES))
def test_traced_equals_eager_on_the_edge_cases(name):
    model = CASES[name]()
    inputs = inputs_for(model)
    assert_same_function(fxdnat.trace(model, inputs), model, inputs)


class FunctionalDropout(nn.Module):
    """timm's heads: F.dropout(..., training=self.training) in the root's own forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        x = self.conv(x) * torch.tensor(2.0)  # a tensor constant: FX stores it on the root
        return F.dropout(x, p=0.5, training=self.training)


def test_a_mode_flag_passed_as_an_argument_is_read_at_run_time():
    model = FunctionalDropout()
    x = torch.randn(2, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert "training = self.training" in gm.code
    assert_same_function(gm, model, (x,))  # dropout active in train mode, identity in eval
    assert not [name for name in vars(model) if name.startswith("_tensor_constant")]
