"""Small models written the way people write them: in-place activations, drop-path, stateful
modules, structured inputs, side inputs, unused size reads. Each is one instance of a kind of
model that broke the compiler once (issue 13); the tests build on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


class InplaceReluBlock(nn.Module):
    """``out = Sequential(ReLU(inplace), conv, ReLU(inplace), conv)(x); out += x``: the branch's
    first ReLU rewrites x before the skip reads it."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
        )

    def forward(self, x):
        out = self.body(x)
        out += x
        return out


class InplaceStyles(nn.Module):
    """Every spelling of an in-place call on an activation, one block each; the last returns a
    feature map that an in-place call after the join would otherwise alias."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(6))
        self.silu = nn.SiLU(inplace=True)
        self.drop = nn.Dropout(0.0, inplace=True)

    def forward(self, x):
        a, b, c, d, e, f = self.convs
        x = x + a(F.relu(x, inplace=True))
        x = x + b(self.silu(x))
        x = x + c(x.relu_())
        y = d(x)
        y.mul_(0.5)
        x = x + y
        x = x + e(self.drop(torch.sigmoid_(x)))
        feature = x + f(x)
        out = feature.clone()
        feature.relu_()  # after the join: must not reach what a decision substitutes
        return out, feature


class ToyDropPath(nn.Module):
    """``x + DropPath(p)(f(x))`` with timm's DropPath."""

    def __init__(self, c: int = 4, p: float = 0.1) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.drop_path = DropPath(p)

    def forward(self, x):
        return x + self.drop_path(self.f(x))


class InlineDropPath(nn.Module):
    """Stochastic depth written in the block's own forward, as some papers' code does."""

    def __init__(self, c: int = 4, p: float = 0.2) -> None:
        super().__init__()
        self.f = nn.Conv2d(c, c, 3, padding=1)
        self.p = p

    def forward(self, x):
        y = self.f(x)
        if self.training:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
            y = y * keep / (1 - self.p)
        return y


class CountsCalls(nn.Module):
    """Increments a BatchNorm's counter in place, then fails to trace (control flow on a
    tensor): tracing must leave the counter alone."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, momentum=None)  # momentum None: the counter sets the average

    def forward(self, x):
        self.bn.num_batches_tracked += 1
        if x.sum() > 0:
            return self.bn(x)
        return self.bn(-x)


class FreshAccumulator(nn.Module):
    """Makes a zero tensor in forward and adds activations into it in place: FX bakes the tensor
    in as a constant, and every call would keep accumulating into the same one."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.c = c
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        acc = torch.zeros(1, self.c, 1, 1)
        acc.add_(x.mean((0, 2, 3), keepdim=True))
        return self.conv(x) + acc


class CachesInput(nn.Module):
    """Stores its input on itself (a Proxy, while tracing) and counts its calls."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.calls = 0
        self.seen: list = []

    def forward(self, x):
        self.calls += 1
        self.last = x
        self.seen.append(x)
        return x + self.conv(x)


class DictInput(nn.Module):
    """``forward(batch)`` with ``batch = {"image": x, "scale": s}``, and an optional argument."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.g = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, batch, mask=None, gain: float = 1.0):
        x = batch["image"] * batch["scale"]
        if mask is not None:
            x = x * mask
        x = x + self.f(x)
        return {"out": (x + self.g(x)) * gain}


class FeatureList(nn.Module):
    """A list of feature maps in, fused by residual blocks."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.f, self.g = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, features):
        total = features[0]
        for x in features[1:]:
            total = total + x
        total = total + self.f(total)
        return total + self.g(total)


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE, with the size read the way many implementations write it."""

    def __init__(self, c: int, unpack: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c // 2), nn.Linear(c // 2, c)
        self.unpack = unpack

    def forward(self, x):
        if self.unpack:
            b, c, _, _ = x.size()  # two of the four reads are never used
        else:
            b, c = x.size(0), x.size(1)
        s = x.mean((2, 3)).view(b, c)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.view(b, c, 1, 1)


class MBConvSE(nn.Module):
    """Inverted residual with squeeze-excite: expand, depthwise, SE, project, add."""

    def __init__(self, c: int = 8, unpack: bool = True) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c), nn.ReLU())
        self.se = SqueezeExcite(2 * c, unpack)
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block; the attention reads a padding mask, a second model input."""

    def __init__(self, d: int = 8, masked: bool = True) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mha = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.masked = masked

    def forward(self, x, pad):
        h = self.ln1(x)
        if self.masked:
            x = x + self.mha(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        else:
            x = x + self.mha(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, d: int = 8, depth: int = 2, masked: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(d, masked) for _ in range(depth))

    def forward(self, x, pad):
        for block in self.blocks:
            x = block(x, pad)
        return x


def transformer_inputs(batch: int = 2, length: int = 5, d: int = 8) -> tuple:
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, -2:] = True
    return torch.randn(batch, length, d), pad


def drop_path_net(num_classes: int = 10) -> nn.Module:
    """A small classifier of ToyDropPath blocks, for ``module:messy:drop_path_net`` specs."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        ToyDropPath(p=0.1),
        ToyDropPath(p=0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, num_classes),
    )
    net.input_size = 16
    return net
