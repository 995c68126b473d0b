"""functionalize: in-place calls on activations become out-of-place, with the same function."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from messy import InplaceReluBlock, InplaceStyles
from support import assert_same_function
from torch import nn

import fxdnat
from fxdnat.frontend import memory

_IN_PLACE = re.compile(r"\.\w+_\(|inplace = True|torch\.\w+_\(")


def test_every_spelling_of_an_in_place_call_is_rewritten():
    model = InplaceStyles().double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    # the one write left copies the input's new value back into it, as eager mode wrote it
    assert _IN_PLACE.findall(gm.code) == [".copy_("]
    assert not [n for n in gm.graph.nodes if memory.written(n) is not None and n.target != "copy_"]
    assert_same_function(gm, model, (x,))


def test_the_input_is_written_as_eager_mode_writes_it():
    model = nn.Sequential(InplaceReluBlock(), InplaceReluBlock())
    x = torch.randn(2, 4, 5, 5)
    example = x.clone()
    gm = fxdnat.trace(model, example)
    torch.testing.assert_close(example, x)  # tracing ran the model on copies of the example
    eager_x, traced_x = x.clone(), x.clone()
    torch.testing.assert_close(gm(traced_x), model(eager_x))
    torch.testing.assert_close(traced_x, eager_x)  # the first ReLU rectified the caller's input
    assert model[0].body[0].inplace  # the user's module is untouched; the graph has its own copy
    assert not gm.get_submodule("0.body.0").inplace


def test_a_write_through_a_view_whose_base_is_read_later_stays_and_stays_exact():
    class ViewWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            y[:, :2].relu_()  # writes y through a view; y is read after
            return x + y

    model = ViewWrite().double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    assert ".relu_()" in gm.code
    assert_same_function(gm, model, (x,))


def test_writes_to_buffers_stay_in_place():
    class Running(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(4))

        def forward(self, x):
            self.mean.copy_(x.mean((0, 2, 3)))  # state, written on purpose on every call
            return x - self.mean.view(1, 4, 1, 1)

    model = nn.Sequential(nn.Conv2d(4, 4, 1), Running())
    x = torch.randn(1, 4, 3, 3)
    gm = fxdnat.trace(model, x)
    assert ".copy_(" in gm.code and gm.meta["fxdnat"]["leaves"] == {}
    assert model[1].mean.abs().sum() == 0  # tracing and recording facts wrote nothing
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))
        gm(x)  # the traced module writes the model's own buffer, as the model does
        torch.testing.assert_close(model[1].mean, model[0](x).mean((0, 2, 3)))


def test_functional_calls_with_inplace_flags_and_tensor_returning_writes():
    class Flags(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = F.relu(self.conv(x), True)  # positional inplace flag
            z = F.hardtanh(y, 0.0, 6.0, inplace=True)
            w = z.tanh()
            w.zero_()  # no out-of-place twin: the write goes to a private clone
            return z + y + w

    model = Flags().double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    assert "inplace = True" not in gm.code and ", True)" not in gm.code
    assert_same_function(gm, model, (x,))


class IaddInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        x += self.f(x)  # eager mode writes the caller's input
        return x


class IaddAliasedSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.f(x)
        shortcut = y  # the same tensor: it sees the write below
        y += self.g(y)
        return y + shortcut


class IaddView(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.f(x)
        head = y[:, :1]  # a view taken before the write sees it
        y += 1.0
        return head * 2


class SetItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.f(x)
        y[:, 0] = 0.0  # torch.fx cannot record this; fxdnat's tracer does
        return x + y


@pytest.mark.parametrize("model", [IaddInput, IaddAliasedSkip, IaddView, SetItem])
def test_augmented_assignment_and_setitem_keep_eager_semantics(model):
    """torch.fx records ``y += z`` as ``y + z``: a reader of y, of a view of y, or the caller
    holding y would then see another value. fxdnat records the in-place call."""
    model = model().double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    gm = fxdnat.trace(model, x)
    assert gm.meta["fxdnat"]["leaves"] == {}
    assert_same_function(gm, model, (x,), exact=True)  # outputs and the input afterwards
