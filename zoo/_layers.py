"""Layers shared by the zoo families: drop-path, a traceable identity, the DARTS auxiliary head."""

from __future__ import annotations

import torch
from timm.layers import register_notrace_module
from torch import nn


@register_notrace_module  # an FX leaf: its train/eval branch and RNG stay inside one call_module
class DropPath(nn.Module):
    """Drop whole samples of a residual branch (Larsson et al. 2017, as quark0/darts `drop_path`).

    The probability is the attribute `p`, read at every call, so a training loop can ramp it per
    epoch with `set_drop_path_prob` — also on a traced GraphModule, which keeps this module as a
    leaf submodule. Models build one even at p = 0, so their graph never depends on p.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = _check_prob(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # one Bernoulli draw per sample, broadcast over (C, H, W): (N, 1, 1, 1)
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def set_drop_path_prob(model: nn.Module, p: float) -> int:
    """Set `p` on every DropPath inside `model`; return how many were set."""
    p = _check_prob(p)
    count = 0
    for module in model.modules():
        if isinstance(module, DropPath):
            module.p = p
            count += 1
    return count


def _check_prob(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop-path probability must be in [0, 1), got {p!r}")
    return float(p)


class Identity(nn.Module):
    """The identity, traced through by torch.fx (nn.Identity is a leaf and would leave a node).

    A skip written with this module is an empty branch in the graph, as in the references
    (akamaster's empty `nn.Sequential`, quark0/darts' own `Identity`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier for 8×8 maps (quark0/darts `AuxiliaryHeadCIFAR`).

    Adaptation: an AdaptiveAvgPool2d(2) after the 5×5/3 pool, so 16×16 maps (64 px inputs) also
    end at 2×2; on 8×8 maps the pool already yields 2×2 and the adaptive pool is a no-op. ReLUs
    are out of place (the reference's in-place first ReLU would rewrite the trunk's tensor).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(in_channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),  # 2×2 → 1×1
            nn.BatchNorm2d(768),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
