"""Random residual networks with the patterns real models have: in-place calls on shared
activations (module, method and functional spellings, and writes through a view), drop-path
with p > 0, unused size reads, side inputs, dict inputs, returned intermediate features, and a
module called in several places or one whose weight another module holds too.

A network is a chain of steps over a growing list of states (state 0 is the input x):
("op", src, kind) appends op(states[src]); ("join", style, [(src, kind), ...]) appends the sum
of op(states[src]) over the operands, written in the given add style; ("write", src, kind)
writes states[src] in place and appends the result, so every later reader of states[src] sees
the write, as in eager PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from timm.layers import DropPath
from torch import nn

C, SIZE = 3, 5
OPS = (
    "conv",
    "conv_bn_relu",
    "bn",
    "relu",
    "identity",
    "avgpool",
    "se",
    "widen",
    "scale",
    "relu_inplace_conv",  # Sequential(ReLU(inplace=True), conv): writes its input
    "conv_relu_",  # y = conv(x); y.relu_()
    "drop_path",  # conv then DropPath(0.3)
    "se_unpacked",  # b, c, _, _ = x.size(): two reads nobody uses
    "raw",  # the state itself, no op: joins of states, the same state twice in one join
    "shared_conv",  # one conv module, called wherever a step names it
    "tied_conv",  # a conv of its own whose weight is shared_conv's
)
SIDE_OPS = ("side_gate",)  # reads the second input as well
WRITES = ("relu_", "relu_module", "mul_", "silu_function", "view_mul_", "setitem")
# iadd_operator writes its first term in place, which may be a state read later (eager semantics)
STYLES = ("add", "iadd_method", "iadd_operator", "torch_add", "sum", "chain")
INPUTS = ("tensor", "side", "dict")


class SE(nn.Module):
    def __init__(self, c: int, unpacked: bool = False) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.unpacked = unpacked

    def forward(self, x):
        if self.unpacked:
            b, c, _, _ = x.size()
            s = x.mean((2, 3)).view(b, c, 1, 1)
        else:
            s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc(s))


class ConvReluMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)

    def forward(self, x):
        y = self.conv(x)
        y.relu_()
        return y


class SideGate(nn.Module):
    """``conv(x) * sigmoid(side)``: a branch that also reads a second model input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.side = nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(1, C, 1)

    def forward(self, x, side):
        return self.conv(x) * torch.sigmoid(self.side(side))


class Write(nn.Module):
    """Writes its input in place and returns it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.kind == "relu_":
            return x.relu_()
        if self.kind == "relu_module":
            return self.act(x)
        if self.kind == "mul_":
            return x.mul_(0.5)
        if self.kind == "silu_function":
            return F.silu(x, inplace=True)
        if self.kind == "setitem":
            x[:, 0] = 0.5
            return x
        x[:, :1].mul_(2.0)  # through a view: the write stays in place, and x is read later
        return x


def make_op(kind: str) -> nn.Module | None:
    if kind == "raw":
        return None
    return {
        "conv": lambda: nn.Conv2d(C, C, 3, padding=1),
        "conv_bn_relu": lambda: nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C), nn.ReLU()),
        "bn": lambda: nn.BatchNorm2d(C),
        "relu": nn.ReLU,
        "identity": nn.Identity,
        "avgpool": lambda: nn.AvgPool2d(3, 1, 1),
        "se": lambda: SE(C),
        # changes the shape on the way and back: identity is allowed, shapes inside differ
        "widen": lambda: nn.Sequential(nn.Conv2d(C, 2 * C, 1), nn.Conv2d(2 * C, C, 1)),
        "scale": lambda: nn.Conv2d(C, C, 1, bias=False),
        "relu_inplace_conv": lambda: nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 1)),
        "conv_relu_": ConvReluMethod,
        "drop_path": lambda: nn.Sequential(nn.Conv2d(C, C, 1), DropPath(0.3)),
        "se_unpacked": lambda: SE(C, unpacked=True),
        "side_gate": SideGate,
    }[kind]()


class RandomNet(nn.Module):
    def __init__(self, steps: list, returns: list[int]) -> None:
        super().__init__()
        self.steps, self.returns = steps, returns
        self.ops = nn.ModuleList()
        self._shared: list[nn.Conv2d] = []  # a list: registered only where a step uses it
        for step in steps:
            if step[0] == "write":
                self.ops.append(nn.ModuleList([Write(step[2])]))
                continue
            kinds = [step[2]] if step[0] == "op" else [k for _, k in step[2]]
            self.ops.append(nn.ModuleList(self._op(k) for k in kinds))
        self.raw = [
            [kind == "raw" for kind in ([s[2]] if s[0] == "op" else [k for _, k in s[2]])]
            if s[0] != "write"
            else [False]
            for s in steps
        ]

    def _op(self, kind: str) -> nn.Module:
        if kind not in ("shared_conv", "tied_conv"):
            return make_op(kind) or nn.Identity()
        if not self._shared:
            self._shared.append(nn.Conv2d(C, C, 1))
        if kind == "shared_conv":
            return self._shared[0]
        tied = nn.Conv2d(C, C, 1)
        tied.weight = self._shared[0].weight
        return tied

    def extra_repr(self) -> str:
        return f"steps={self.steps}, returns={self.returns}"

    def forward(self, x, side=None):
        states = [x]
        for step, ops in zip(self.steps, self.ops, strict=True):
            if step[0] in ("op", "write"):
                states.append(_apply(ops[0], states[step[1]], side))
                continue
            terms = [
                _apply(op, states[src], side) for op, (src, _) in zip(ops, step[2], strict=True)
            ]
            states.append(_sum(step[1], terms))
        # the last state, and intermediate features a detection or distillation model returns
        return (F.relu(states[-1]) + 0.0, *(states[i] for i in self.returns))


class DictRandomNet(RandomNet):
    def forward(self, batch):
        return super().forward(batch["x"], batch["side"])


def _apply(op: nn.Module, x, side):
    return op(x, side) if isinstance(op, SideGate) else op(x)


def _sum(style: str, terms: list):
    if style == "sum":
        return sum(terms)
    total = terms[0]
    for term in terms[1:]:
        if style == "iadd_method":
            total = total.clone() if total is terms[0] else total
            total.add_(term)
        elif style == "iadd_operator":
            total += term  # no clone: writes the first term, as `out += x` does
        elif style == "torch_add":
            total = torch.add(total, term)
        else:
            total = total + term
    return total


@st.composite
def networks(draw, inputs: tuple[str, ...] = INPUTS) -> tuple[RandomNet, tuple]:
    """A random network and example inputs for it (float64)."""
    kind = draw(st.sampled_from(inputs))
    ops = OPS + (SIDE_OPS if kind != "tensor" else ())
    steps: list = []
    for i in range(draw(st.integers(1, 6))):
        source = st.integers(0, i)
        step = draw(st.sampled_from(["op", "join", "join", "write"]))
        if step == "join":
            operands = draw(
                st.lists(st.tuples(source, st.sampled_from(ops)), min_size=2, max_size=3)
            )
            steps.append(("join", draw(st.sampled_from(STYLES)), operands))
        elif step == "write":
            steps.append(("write", draw(source), draw(st.sampled_from(WRITES))))
        else:
            steps.append(("op", draw(source), draw(st.sampled_from(ops))))
    returns = draw(st.lists(st.integers(0, len(steps)), max_size=2, unique=True))
    net = (DictRandomNet if kind == "dict" else RandomNet)(steps, returns)
    torch.manual_seed(0)
    net = net.double()
    x = torch.randn(4, C, SIZE, SIZE, dtype=torch.float64)
    side = torch.randn(4, 1, SIZE, SIZE, dtype=torch.float64)
    example = {"tensor": (x,), "side": (x, side), "dict": ({"x": x, "side": side},)}[kind]
    return net, example
