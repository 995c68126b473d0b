"""trace: traced ≡ eager in both modes (invariant 1), automatic leaves, clear errors."""

from __future__ import annotations

import copy
import logging
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
import torchvision
from messy import (
    CachesInput,
    CountsCalls,
    DictInput,
    FeatureList,
    FreshAccumulator,
    InplaceReluBlock,
    ToyDropPath,
)
from support import CASES, assert_same_function, inputs_for
from torch import nn

import fxdnat
from fxdnat import passes
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


def test_timm_no_trace_blocks_are_traced_inside_where_that_is_exact():
    from timm.layers import register_notrace_module

    @register_notrace_module
    class ListedBlock(nn.Module):  # a whole residual block on timm's list
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x).relu()

    @register_notrace_module
    class ListedOp(nn.Module):  # no parameterised children: opaque, as timm asks
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Conv2d(4, 4, 1), ListedBlock(), ListedOp())
    x = torch.randn(1, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "1.conv", "2"]
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert len(passes.discover(gm)) == 2

    @register_notrace_module
    class KnowsItIsTraced(nn.Module):  # code that behaves differently under FX stays opaque
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return y if torch.fx._symbolic_trace.is_fx_tracing() else y * 2

    model = nn.Sequential(nn.Conv2d(4, 4, 1), KnowsItIsTraced(), ListedBlock())
    gm = fxdnat.trace(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    reason = "timm lists it as not traceable (traced inside, it does not compute what the eager model does)"
    assert gm.meta["fxdnat"]["leaves"] == {"1": reason, "2": reason}
    assert_same_function(gm, model, (x,))


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
        match=r"^cannot trace DataDependent: its own forward cannot be traced \(TraceError: "
        r"symbolically traced variables cannot be used as inputs to control flow\); only "
        r"submodules can be made opaque, so make that code traceable \(no Python control flow "
        r"on tensor values, no .item\(\) or int\(\) of a tensor\)$",
    ):
        fxdnat.trace(DataDependent(), torch.randn(2, 3))


def test_a_root_that_branches_on_training_is_rejected():
    class Root(nn.Module):
        def forward(self, x):
            return x * 2 if self.training else x

    with pytest.raises(
        fxdnat.TraceError,
        match=r"^cannot trace Root: its own forward branches on train/eval mode \(self.training\)"
        r"; only submodules can be made opaque, so build the model without that train-only "
        r"feature \(a constructor flag, e.g. a drop or noise rate of 0\)$",
    ):
        fxdnat.trace(Root(), torch.randn(2, 3))

    class Host(nn.Module):  # the advice names the submodule that holds the blocks
        def __init__(self):
            super().__init__()
            self.stem, self.body = nn.Conv2d(3, 3, 1), nn.Sequential(nn.Conv2d(3, 3, 3))

        def forward(self, x):
            x = self.body(self.stem(x))
            return x * 2 if self.training else x

    with pytest.raises(
        fxdnat.TraceError,
        match=r", or trace the part that holds its blocks: `fxdnat.trace\(model.body, ...\)`$",
    ):
        fxdnat.trace(Host(), torch.randn(1, 3, 5, 5))


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


class ParameterFreeDrop(nn.Module):
    """Passes its own flag from a module with no parameters, which FX traces through (the
    shape of torchvision's StochasticDepth)."""

    def forward(self, x):
        return F.dropout(x, p=0.5, training=self.training)


def test_a_mode_flag_of_a_module_without_parameters_is_read_at_run_time():
    model = nn.Sequential(nn.Conv2d(4, 4, 1), ParameterFreeDrop(), nn.Conv2d(4, 4, 1))
    x = torch.randn(2, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert_same_function(gm, model, (x,))
    gm.eval()
    assert not gm.get_submodule("1").training  # the flag read is the module's own


class HalfByShape(nn.Module):
    """A slice whose bound is read from the input's shape (a node inside a slice), next to a
    mode flag: the two traces still differ in the flag only (timm's halo attention)."""

    def forward(self, x):
        x = F.dropout(x, p=0.5, training=self.training)
        return x[:, :, : x.size(2) // 2]


class TrainOnlyShift(nn.Module):
    """Mode-dependent, with size reads of its own in train mode only: the nodes after it are
    named differently in the two traces."""

    def forward(self, x):
        if self.training:
            x = x + (x.size(2) // 2) * 0.5
        return x


@pytest.mark.parametrize("before", [[], [TrainOnlyShift()]], ids=["alone", "after-a-leaf"])
def test_a_slice_bounded_by_a_size_read_does_not_make_a_mode_dependent_leaf(before):
    model = nn.Sequential(nn.Conv2d(4, 4, 1), *before, HalfByShape())
    x = torch.randn(2, 4, 6, 6)
    gm = fxdnat.trace(model, x)
    assert set(gm.meta["fxdnat"]["leaves"]) == ({"1"} if before else set())
    assert_same_function(gm, model, (x,))


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_torchvision_stochastic_depth_traces_through(name):
    model = getattr(torchvision.models, name)(num_classes=10, stochastic_depth_prob=0.2)
    x = torch.randn(2, 3, 64, 64)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert_same_function(gm, model, (x,), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- the model is left as it was
def test_tracing_leaves_every_parameter_buffer_and_attribute_as_it_found_them():
    model = nn.Sequential(nn.Conv2d(4, 4, 1), CountsCalls(), CachesInput())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 4, 5, 5)
    rng = torch.get_rng_state()
    gm = fxdnat.trace(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[1].bn.num_batches_tracked.item() == 0  # the increment ran while tracing
    assert (model[2].calls, model[2].seen, hasattr(model[2], "last")) == (0, [], False)
    assert torch.equal(torch.get_rng_state(), rng)
    # both modules change state in forward: as leaves they keep doing so when run
    assert gm.meta["fxdnat"]["leaves"] == {
        "1": "TraceError: symbolically traced variables cannot be used as inputs to control flow",
        "2": "changes its attribute calls (0 -> 1) in forward, which tracing cannot replay",
    }
    twin = copy.deepcopy(model)
    gm.train(), twin.train()
    for _ in range(2):
        torch.testing.assert_close(gm(x), twin(x))
    gm.eval(), twin.eval()
    torch.testing.assert_close(gm(x), twin(x))


def test_a_module_that_writes_its_own_state_in_place_while_tracing_becomes_a_leaf():
    class Counter(nn.Module):  # traces fine, but the traced graph would drop the increment
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            self.count += 1
            return x * self.count

    model = nn.Sequential(nn.Conv2d(4, 4, 1), Counter())
    x = torch.randn(1, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {
        "1": "writes '1.count' in place, which tracing cannot replay"
    }
    assert model[1].count.item() == 0
    twin = copy.deepcopy(model)
    for _ in range(3):  # eager and traced count alike, call after call
        torch.testing.assert_close(gm(x), twin(x))


def test_a_schedule_kept_in_a_python_attribute_keeps_its_module_opaque():
    class Annealed(nn.Module):  # a temperature or warm-up factor, as NAS code anneals it
        def __init__(self):
            super().__init__()
            self.step = 0

        def forward(self, x):
            self.step += 1
            return x * min(1.0, self.step / 3)

    model = nn.Sequential(nn.Conv2d(4, 4, 1), Annealed())
    x = torch.randn(1, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {
        "1": "changes its attribute step (0 -> 1) in forward, which tracing cannot replay"
    }
    twin = copy.deepcopy(model)
    for _ in range(4):
        torch.testing.assert_close(gm(x), twin(x))


def test_a_tensor_made_in_forward_and_written_in_place_is_fresh_on_every_call():
    model = FreshAccumulator()
    x = torch.randn(2, 4, 5, 5)
    gm = fxdnat.trace(model, x)
    for _ in range(3):  # FX bakes the zeros in as a constant; it must not accumulate
        torch.testing.assert_close(gm(x), model(x))


def test_a_random_tensor_drawn_in_forward_keeps_its_module_opaque():
    class Noise(nn.Module):
        def forward(self, x):
            return x + torch.randn(4, 1, 1)  # no tensor argument: FX would freeze one draw

    model = nn.Sequential(nn.Conv2d(4, 4, 1), Noise())
    gm = fxdnat.trace(model, torch.randn(1, 4, 3, 3))
    assert gm.meta["fxdnat"]["leaves"] == {
        "1": "draws a random tensor in forward, which tracing would freeze"
    }
    x = torch.randn(1, 4, 3, 3)
    assert not torch.equal(gm(x), gm(x))


# ------------------------------------------------------------- inputs that are not one tensor
def test_dict_inputs_and_arguments_left_at_their_defaults():
    model = DictInput().double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    batch = {"image": x, "scale": torch.tensor(2.0, dtype=torch.float64)}
    gm = fxdnat.trace(model, batch)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["batch_1", "batch_2"]
    assert_same_function(gm, model, (batch,))
    assert len(passes.discover(gm)) == 4
    gm.eval()
    with pytest.raises(TypeError):  # mask and gain were fixed at their defaults
        gm(batch, None)


def test_a_list_of_feature_maps_and_non_tensor_arguments():
    model = FeatureList().double()
    features = [torch.randn(2, 4, 5, 5, dtype=torch.float64) for _ in range(3)]
    gm = fxdnat.trace(model, (features,))
    assert_same_function(gm, model, (features,))
    assert [e.kind for e in passes.discover(gm)] == ["skip"] * 4 + ["branch", "skip", "branch"]

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x, scale, mode="sum"):
            y = self.conv(x) * scale  # a number fixed at trace time
            return x + y if mode == "sum" else y

    gm = fxdnat.trace(Scaled(), (torch.randn(1, 4, 3, 3), 0.5))
    assert "0.5" in gm.code and len(passes.discover(gm)) == 2


@pytest.mark.parametrize("structured", [False, True])
def test_keyword_only_and_var_keyword_arguments_keep_their_defaults(structured):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x, *, scale=2.0, **options):
            x = x["image"] if isinstance(x, dict) else x
            return (x + self.conv(x)) * scale * options.get("gain", 1.0)

    x = torch.randn(2, 3, 4, 4)
    example = {"image": x} if structured else x
    model = Net()
    gm = fxdnat.trace(model, example)
    torch.testing.assert_close(gm(example), model(example))
    assert len(passes.discover(gm)) == 2


def test_example_inputs_that_do_not_fit_forward_are_named():
    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(
        fxdnat.TraceError,
        match=r"^Two.forward needs the argument 'y', which the example inputs do not give; "
        r"pass a tuple of 2 example inputs$",
    ):
        fxdnat.trace(Two(), torch.randn(2, 3))
    with pytest.raises(
        fxdnat.TraceError,
        match=r"^Two.forward takes 2 positional inputs \(x, y\) but the example gives 3; pass a "
        r"tuple with one value per argument$",
    ):
        fxdnat.trace(Two(), (torch.randn(2, 3),) * 3)


# ------------------------------------------------------------- wrapped models
@pytest.mark.parametrize("wrap", ["data_parallel", "compile", "ddp"])
def test_wrapped_models_are_traced_as_the_module_inside(wrap, caplog):
    torch.manual_seed(0)
    bare = nn.Sequential(InplaceReluBlock(), InplaceReluBlock())
    x = torch.randn(2, 4, 5, 5)
    if wrap == "ddp":
        if not torch.distributed.is_available():
            pytest.skip("this torch build has no torch.distributed")
        torch.distributed.init_process_group(
            "gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1
        )
    try:
        wrapped = {
            "data_parallel": lambda: nn.DataParallel(bare),
            "compile": lambda: torch.compile(bare),
            "ddp": lambda: nn.parallel.DistributedDataParallel(bare),
        }[wrap]()
        with caplog.at_level(logging.INFO, logger="fxdnat.frontend.inputs"):
            gm = fxdnat.trace(wrapped, x)
    finally:
        if wrap == "ddp":
            torch.distributed.destroy_process_group()
    assert "tracing the Sequential inside" in caplog.text
    reference = fxdnat.trace(bare, x)
    assert [n for n, _ in gm.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert passes.discover(gm) == passes.discover(reference)


# ------------------------------------------------------------- leaves as small as they can be
def test_only_the_drop_path_module_is_opaque_and_train_mode_matches_eager():
    model = nn.Sequential(ToyDropPath(p=0.5), ToyDropPath(p=0.5)).double()
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    reason = "its traced form depends on train/eval mode"
    assert gm.meta["fxdnat"]["leaves"] == {"0.drop_path": reason, "1.drop_path": reason}
    assert len(passes.discover(gm)) == 4
    assert_same_function(gm, model, (x,))  # train mode: the same samples dropped, same seed
    gated = passes.gate(gm, passes.discover(gm))
    assert_same_function(gated, model, (x,), exact=True)


def test_the_share_of_parameters_inside_leaves_is_reported():
    model = Host()
    gm = fxdnat.trace(model, torch.randn(2, 4, 5, 5))
    meta = gm.meta["fxdnat"]
    assert meta["params"] == sum(p.numel() for p in model.parameters())
    assert meta["opaque_params"] == sum(p.numel() for p in model.b.parameters())


# ------------------------------------------------------------- errors name model, module, reason
def test_a_model_that_does_not_run_names_the_submodule_where_it_failed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Flatten(), nn.Linear(5, 2)))
    with pytest.raises(
        fxdnat.TraceError,
        match=r"^Sequential does not run on inputs of shapes \[\(2, 3, 8, 8\)\]: in submodule "
        r"'1.1' at _1_1: RuntimeError: mat1 and mat2 shapes cannot be multiplied .*; check "
        r"--input-size or the example inputs$",
    ):
        fxdnat.trace(model, torch.randn(2, 3, 8, 8))


def test_state_nested_in_plain_objects_and_class_attributes_is_restored():
    class Meter:
        def __init__(self):
            self.calls, self.last = 0, None

    class Logged(nn.Module):
        registry: ClassVar[list] = []  # a class-level list, shared by every instance

        def __init__(self):
            super().__init__()
            self.f = nn.Conv2d(3, 3, 1)
            self.log = {"acts": []}
            self.meter = Meter()

        def forward(self, x):
            y = self.f(x)
            self.log["acts"].append(y)
            self.meter.calls += 1
            self.meter.last = y
            Logged.registry.append(y)
            return x + y

    model = Logged()
    fxdnat.trace(model, torch.randn(2, 3, 5, 5))
    assert (model.log, model.meter.calls, model.meter.last, Logged.registry) == (
        {"acts": []},
        0,
        None,
        [],
    )


def test_submodules_in_another_mode_than_the_model_keep_their_own():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + F.dropout(self.f(x), 0.5, self.training)

    model = nn.Sequential(Block(), Block())
    x = torch.randn(2, 3, 5, 5)
    for frozen in (0, 1):  # a frozen part in eval mode; Monte-Carlo dropout in an eval model
        model.train(frozen == 0)
        model[frozen].train(frozen == 1)
        gm = fxdnat.trace(model, x)
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(gm(x), want)


def test_structured_inputs_with_a_first_argument_not_named_self_and_a_given_number():
    class Renamed(nn.Module):
        def __init__(this):
            super().__init__()
            this.f = nn.Conv2d(3, 3, 1)

        def forward(this, batch, scale: float = 1.0):
            x = batch["image"]
            return x + this.f(x) * scale

    model = Renamed()
    inputs = ({"image": torch.randn(2, 3, 5, 5)}, 0.5)
    gm = fxdnat.trace(model, inputs)
    torch.testing.assert_close(gm(*inputs), model(*inputs))  # called as the model was
    with pytest.raises(AssertionError, match="scale has been specialized to have value 0.5"):
        gm(inputs[0], 2.0)
