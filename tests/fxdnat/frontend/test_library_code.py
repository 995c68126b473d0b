"""trace on the habits of library model code (transformers' among them): decorated forwards that
call mask builders, config dataclasses passed to functions, branches on a tensor's dtype."""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

import fxdnat
from fxdnat import passes


def _decorated(forward):
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)

    return wrapper


def build_mask(x: torch.Tensor, width: int) -> torch.Tensor:
    if x.shape[1] > width:  # control flow on a shape: untraceable, kept as one call
        return torch.zeros(x.shape[1], x.shape[1])
    return torch.ones(x.shape[1], x.shape[1]).tril()


@dataclasses.dataclass
class Settings:
    scale: float
    names: dict


def scaled(x: torch.Tensor, settings: Settings) -> torch.Tensor:
    return x * settings.scale


class Block(nn.Module):
    """x + f(x, mask(x)), its forward decorated, as a transformer block."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.settings = Settings(0.5, {"a": 1})  # a constructor that could not be replayed

    @_decorated
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = build_mask(x, width=100)
        mixed = torch.einsum("st,btc->bsc", mask, self.proj(x))
        return x + scaled(mixed, self.settings)


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.fxdnat_autowrap = (build_mask, scaled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_a_declared_function_called_from_a_decorated_forward_stays_one_call():
    model = Wrapper()
    x = torch.randn(2, 5, 8)
    gm = fxdnat.trace(model, (x,))
    assert gm.meta["fxdnat"]["leaves"] == {}  # the block is traced through, not a leaf
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(build_mask) == targets.count(scaled) == 1
    longer = torch.randn(3, 7, 8)  # the mask follows the input: nothing baked for one length
    torch.testing.assert_close(gm(longer), model(longer))
    (edge,) = [e for e in passes.discover(gm) if e.kind == "branch"]
    assert edge.source == "x"  # the block input, not the mask built from it


def test_a_dataclass_argument_is_passed_as_the_object_itself():
    model = Wrapper()
    gm = fxdnat.trace(model, (torch.randn(2, 5, 8),))
    call = next(n for n in gm.graph.nodes if n.target is scaled)
    settings = call.args[1]
    assert settings.op == "get_attr" and getattr(gm, settings.target) is model.block.settings
    model.block.settings.scale = 2.0  # the same object: eager and traced read the same value
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(gm(x), model(x))


class GuardedNorm(nn.Module):
    """Branches on dtypes only, as T5's layer norm and blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            x = x.clamp(-100, 100)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        return self.weight * y


class ShapeGuarded(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[0] > 1 else x  # a shape branch: must not be decided at trace


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = GuardedNorm()
        self.guard = ShapeGuarded()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.guard(self.norm(x)))


def test_a_branch_on_dtypes_is_decided_and_one_on_shapes_still_makes_a_leaf():
    model = Residual()
    x = torch.randn(2, 4, 8)
    gm = fxdnat.trace(model, (x,))
    assert set(gm.meta["fxdnat"]["leaves"]) == {"guard"}  # the norm is traced through
    assert not any(n.target == "clamp" for n in gm.graph.nodes)  # float32: no clamp
    one = torch.randn(1, 4, 8)
    torch.testing.assert_close(gm(one), model(one))
    torch.testing.assert_close(gm(x), model(x))
