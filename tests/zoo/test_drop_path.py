"""DropPath: identity in eval, drops whole samples in train, its p can change after tracing."""

from __future__ import annotations

import pytest
import torch
from timm.layers import get_notrace_modules
from torch import nn

from fxdnat.zoo import DropPath, create_model, set_drop_path_prob


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop_path = DropPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv(x))


def test_is_a_timm_notrace_leaf():
    assert DropPath in get_notrace_modules()


def test_identity_in_eval_and_at_zero():
    x = torch.randn(8, 3, 4, 4)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x


def test_drops_whole_samples_in_train():
    x = torch.randn(64, 3, 4, 4)
    torch.manual_seed(0)
    y = DropPath(0.5).train()(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = torch.isclose(y, x / 0.5).flatten(1).all(1)
    assert bool((dropped ^ kept).all())  # every sample is either all dropped or all kept, scaled
    assert 16 < int(dropped.sum()) < 48


def test_probability_is_checked():
    with pytest.raises(ValueError, match=r"drop-path probability must be in \[0, 1\), got 1.0"):
        DropPath(1.0)
    with pytest.raises(ValueError, match=r"got -0\.1"):
        set_drop_path_prob(nn.Identity(), -0.1)


def test_set_drop_path_prob_reaches_every_instance():
    model = nn.Sequential(_Residual(), nn.Sequential(_Residual(), nn.ReLU()), DropPath())
    assert set_drop_path_prob(model, 0.3) == 3
    assert [m.p for m in model.modules() if isinstance(m, DropPath)] == [0.3, 0.3, 0.3]
    darts = create_model("darts", drop_path_prob=0.2)
    assert {m.p for m in darts.modules() if isinstance(m, DropPath)} == {0.2}


@pytest.mark.parametrize("make", [_Residual, lambda: create_model("proxylessnas")])
def test_changing_p_after_tracing_changes_the_traced_module(make, trace):
    model = make().train()
    traced = trace(model).train()
    x = torch.randn(4, 4, 8, 8) if isinstance(model, _Residual) else torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    at_zero = traced(x)
    torch.testing.assert_close(at_zero, model(x))
    assert set_drop_path_prob(traced, 0.5) > 0
    set_drop_path_prob(model, 0.5)
    torch.manual_seed(1)
    dropped = traced(x)
    assert not torch.allclose(dropped, at_zero)
    torch.manual_seed(1)
    torch.testing.assert_close(dropped, model(x))
