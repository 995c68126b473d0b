"""Shared test support: hand-written edge-case models and equivalence assertions."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from fxdnat.ir import CHOICES, IDENTITY, NONE, SAME
from fxdnat.passes._graph import copy_module


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class InplaceAdd(nn.Module):
    """torchvision-style ``out += identity`` (FX records it as an out-of-place add), then ReLU."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.body = conv_bn(c, c)

    def forward(self, x):
        out = self.body(x)
        out += x
        return F.relu(out)


class MethodAdds(nn.Module):
    """``torch.add``, ``Tensor.add`` and ``Tensor.add_`` joins."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(c, c), conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        x = torch.add(self.a(x), x)
        x = self.b(x).add(x)
        y = self.c(x)
        y.add_(x)
        return y


class BuiltinSum(nn.Module):
    """``sum([...])`` of three operands: one join (FX traces it as ``0 + a + b + c``)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.a, self.b = conv_bn(c, c), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return sum([self.a(x), self.b(x), x])


class Chain(nn.Module):
    """``a + b + c``: a chain of adds is one join with three operands."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.a, self.b = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        return self.a(x) + self.b(x) + x


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class SEBlock(nn.Module):
    """A residual branch with an inner fork (squeeze-excite) and a layer-scale parameter."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv, self.se = conv_bn(c, c), SqueezeExcite(c)
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 0.5))

    def forward(self, x):
        return x + self.se(self.conv(x)) * self.gamma


class ParameterAdds(nn.Module):
    """Adds with a parameter, a buffer, a constant and a broadcast: none of them is a join."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, c, 1, 1))
        self.register_buffer("offset", torch.ones(1, c, 1, 1))
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        x = x + self.pos
        x = x + self.offset
        x = x + 1.0
        x = x + x.mean(1, keepdim=True)
        return self.conv(x)


class MultiInputDictOutput(nn.Module):
    """Two inputs, a join across them, and a dict output."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.f, self.g = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x, y):
        a = self.f(x) + y
        return {"a": a, "b": self.g(a) + a}


class Escape(nn.Module):
    """A branch whose output is also returned: the edge gates only the join's use of it."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.f = conv_bn(c, c)

    def forward(self, x):
        y = self.f(x)
        return x + y, y


class Downsample(nn.Module):
    """A join whose operands change shape: identity is not allowed on either edge."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.body = conv_bn(c, 2 * c, stride=2)
        self.short = nn.Sequential(nn.Conv2d(c, 2 * c, 1, 2), nn.BatchNorm2d(2 * c))

    def forward(self, x):
        return self.body(x) + self.short(x)


class Nested(nn.Module):
    """An outer residual around two inner residual blocks."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.inner = nn.ModuleList([SEBlock(c), InplaceAdd(c)])

    def forward(self, x):
        y = x
        for block in self.inner:
            y = block(y)
        return x + y


class AlphaAdd(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.f = conv_bn(c, c)

    def forward(self, x):
        return torch.add(x, self.f(x), alpha=0.5)


CASES: dict[str, Callable[[], nn.Module]] = {
    "inplace_add": InplaceAdd,
    "method_adds": MethodAdds,
    "builtin_sum": BuiltinSum,
    "chain": Chain,
    "se_block": SEBlock,
    "parameter_adds": ParameterAdds,
    "multi_input_dict": MultiInputDictOutput,
    "escape": Escape,
    "downsample": Downsample,
    "nested": Nested,
    "alpha_add": AlphaAdd,
}


def inputs_for(model: nn.Module, size: int = 8, c: int = 4, dtype=torch.float32) -> tuple:
    shape = (2, c, size, size)
    if isinstance(model, MultiInputDictOutput):
        return (torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype))
    return (torch.randn(shape, dtype=dtype),)


def outputs(module: nn.Module, inputs: tuple, train: bool, seed: int = 0):
    """Run a deep copy (so BatchNorm statistics do not drift) under a fixed RNG seed, on a copy
    of the inputs (a model may write them in place); returns the outputs and that copy."""
    module = copy.deepcopy(module).train(train)
    inputs = copy.deepcopy(inputs)
    torch.manual_seed(seed)
    with torch.no_grad():
        return module(*inputs), inputs


def assert_same_function(
    a: nn.Module,
    b: nn.Module,
    inputs: tuple,
    *,
    exact: bool = False,
    modes: tuple[bool, ...] = (False, True),
    **tolerances,
) -> None:
    """``a`` and ``b`` compute the same function in each train/eval mode of ``modes``: the same
    outputs, and the same inputs afterwards (a model may write its inputs in place)."""
    for train in modes:
        got, want = outputs(a, inputs, train), outputs(b, inputs, train)
        if exact:
            flat_got, flat_want = _flatten(got), _flatten(want)
            assert len(flat_got) == len(flat_want)
            for g, w in zip(flat_got, flat_want, strict=True):
                assert torch.equal(g, w), f"outputs differ (train={train})"
        else:
            torch.testing.assert_close(got, want, **tolerances, msg=f"train={train}")


def assert_same_buffers_after_training(a: nn.Module, b: nn.Module, inputs: tuple, **tolerances):
    """One train-mode forward of each (copies, the same RNG seed) leaves every buffer of ``a``
    (BatchNorm's running statistics) as it leaves the buffer of that name in ``b``."""
    a, b = copy.deepcopy(a).train(), copy.deepcopy(b).train()
    for module in (a, b):
        torch.manual_seed(0)
        with torch.no_grad():
            module(*copy.deepcopy(inputs))
    theirs = dict(b.named_buffers())
    for name, buffer in a.named_buffers():
        torch.testing.assert_close(buffer, theirs[name], **tolerances, msg=name)


def random_theta(shape: torch.Size, seed: int) -> torch.Tensor:
    """θ as training leaves it, and then some: entries in [-1.5, 1.5], a few exactly 1 or 0."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.rand(shape, generator=generator) * 3 - 1.5
    kind = torch.randint(0, 6, shape, generator=generator)
    return theta.masked_fill(kind == 0, 1.0).masked_fill(kind == 1, 0.0)


def untied_masked(gated: fx.GraphModule, full: fx.GraphModule, decisions: dict) -> fx.GraphModule:
    """A copy of ``full`` (the same network gated with one θ row per edge) computing what
    ``gated`` computes with θ masked to ``decisions``: each edge's row keeps only its decided
    entry, at the value it has in ``gated`` (DESIGN.md invariant 3, scale="keep"). Rows that
    ``gated`` shares between edges are untied first, so edges of one row may decide apart."""
    reference = copy_module(full)  # deepcopy fails on hook-based weight_norm
    arch, theta = gated.arch, gated.arch().detach().double()
    kept = {}  # edge name -> (choice, coefficient)
    for edge in arch.edges:
        choice = decisions.get(edge.name, SAME)
        if choice != NONE:
            kept[edge.name] = [choice, theta[arch.group_of[edge.name], CHOICES.index(choice)]]
    for edges in _plain_joins(gated).values():  # dropped candidates on a kept one's tensor
        _merge_into_kept(edges, decisions, theta, arch, kept)
    # float64: a merged coefficient is a sum, which finalize adds up as a Python number
    reference.arch.to(torch.float64)
    masked = torch.zeros_like(reference.arch.theta)
    for name, (choice, coefficient) in kept.items():
        masked[reference.arch.group_of[name], CHOICES.index(choice)] = coefficient
    with torch.no_grad():
        reference.arch.theta.copy_(masked)
    return reference


def _plain_joins(gated: fx.GraphModule) -> dict[str, list]:
    """The edges of each join whose adds scale no operand (no ``alpha``), by join."""
    from fxdnat.passes.finalize import is_mix
    from fxdnat.passes.gate import EDGES_META

    by_name = {edge.name: edge for edge in gated.arch.edges}
    joins = {}
    for node in gated.graph.nodes:
        if is_mix(node) and all(scale == 1 for _, _, scale in node.args[1][1]):
            joins[node.name] = [by_name[name] for name, _, _ in node.meta[EDGES_META].leaves]
    return joins


def _merge_into_kept(edges, decisions, theta, arch, kept) -> None:
    """finalize(scale="keep") adds a dropped candidate's θ entry to a kept candidate of the
    same join that reads the same value: "same" reads the edge's operand, "identity" its
    source (for a skip, operand and source are one value)."""
    reads = {SAME: lambda e: e.operand, IDENTITY: lambda e: e.source}
    owners = {}
    for edge in edges:
        if edge.name in kept:
            owners.setdefault(reads[kept[edge.name][0]](edge), edge.name)
    for edge in edges:
        choice = decisions.get(edge.name, SAME)
        for dropped in (c for c in (SAME, IDENTITY) if c in edge.choices and c != choice):
            owner = owners.get(reads[dropped](edge))
            if owner is not None:
                kept[owner][1] = (
                    kept[owner][1] + theta[arch.group_of[edge.name], CHOICES.index(dropped)]
                )


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    return [t for v in value for t in _flatten(v)]


_INPLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul"}


def op_signature(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """The sequence of ops of a graph, each in-place call written as its out-of-place form
    (``relu_`` as ``relu``, ``iadd`` as ``add``): finalize writes some back in place."""
    sig = []
    for node in gm.graph.nodes:
        target = node.target if isinstance(node.target, str) else node.target.__name__
        if node.op == "call_function" and target in _INPLACE_OPERATORS:
            target = target[1:]  # operator.iadd -> add
        sig.append((node.op, target.rstrip("_") if node.op != "placeholder" else target))
    return sig
