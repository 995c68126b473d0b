"""Shared helpers for the zoo tests: an FX tracer that honours timm's no-trace registry."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from timm.layers import get_notrace_modules
from torch import fx, nn


class NoTraceTracer(fx.Tracer):
    """torch.fx's tracer plus timm's no-trace modules as leaves (as fxdnat's tracer does)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        leaves = tuple(get_notrace_modules())
        return isinstance(m, leaves) or super().is_leaf_module(m, module_qualified_name)


def fx_trace(model: nn.Module) -> fx.GraphModule:
    """Trace a deep copy of `model`, so the two never share BatchNorm statistics."""
    root = copy.deepcopy(model)
    return fx.GraphModule(root, NoTraceTracer().trace(root))


@pytest.fixture
def trace() -> Callable[[nn.Module], fx.GraphModule]:
    return fx_trace
