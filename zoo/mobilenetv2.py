"""MobileNetV2 for CIFAR (Sandler et al. 2018) as in kuangliu/pytorch-cifar, the paper's variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Identity
from ._registry import register_model

# (expansion t, out channels c, blocks n, first stride s): Sandler et al. 2018 Table 2 with
# kuangliu's CIFAR change — stride 1 in the stem and in stage 2 (ImageNet: 2), total stride 8.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),  # 32×32 maps at 32 px
    (6, 24, 2, 1),  # ImageNet stride 2, 1 for CIFAR
    (6, 32, 3, 2),  # 16×16
    (6, 64, 4, 2),  # 8×8
    (6, 96, 3, 1),
    (6, 160, 3, 2),  # 4×4
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """1×1 expand-BN-ReLU, 3×3 depthwise-BN-ReLU, 1×1 project-BN; residual at stride 1.

    As kuangliu's `Block`: the expand conv exists even at t = 1, and a stride-1 block whose
    channels change gets a 1×1 conv + BN projection shortcut; stride-2 blocks have none.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is None:  # fixed at construction: stride-2 block
            return out
        return out + self.shortcut(x)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride != 1:
        return None
    if in_planes == out_planes:
        return Identity()
    projection = nn.Conv2d(in_planes, out_planes, 1, bias=False)
    return nn.Sequential(projection, nn.BatchNorm2d(out_planes))


class MobileNetV2CIFAR(nn.Module):
    """Stem conv3×3 3→32 (stride 1), the STAGES, 1×1 conv 320→1280 + BN + ReLU, pool, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.layers = nn.Sequential(*_blocks(STEM_CHANNELS))
        self.conv2 = nn.Conv2d(STAGES[-1][1], HEAD_CHANNELS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS)
        # adaptive, so 64 px inputs (8×8 final maps) work; kuangliu pools a fixed 4×4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


def _blocks(in_planes: int) -> list[InvertedResidual]:
    blocks = []
    for expansion, out_planes, num_blocks, stride in STAGES:
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
            in_planes = out_planes
    return blocks


@register_model(
    family="mobilenetv2",
    description="MobileNetV2, CIFAR variant (stride 1 stem and stage 2, total stride 8), 2.30 M",
    reference="https://github.com/kuangliu/pytorch-cifar/blob/master/models/mobilenetv2.py",
    params=2_296_922,
    cell_mode=(
        "inverted-residual blocks of equal structure share θ rows by role; stride-2 blocks have "
        "no join and the first block of each stage differs in shape"
    ),
)
def mobilenetv2(num_classes: int = 10) -> nn.Module:
    return MobileNetV2CIFAR(num_classes)
