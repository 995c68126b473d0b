"""CIFAR ResNets (He et al. 2016 §4.2) as akamaster/pytorch_resnet_cifar10: the paper's ResNet20."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Identity
from ._registry import EntryPoint, register_model

_REFERENCE = "https://github.com/akamaster/pytorch_resnet_cifar10"

# (channels, first stride) per stage; each stage holds n BasicBlocks, depth = 6n + 2 (He et al.
# 2016 §4.2: 16/32/64 filters on 32/16/8 maps, subsampling by the first conv of stages 2 and 3).
STAGES: tuple[tuple[int, int], ...] = (
    (16, 1),  # stage 1: 32×32 maps
    (32, 2),  # stage 2: 16×16
    (64, 2),  # stage 3: 8×8
)

_CELL_MODE = (
    "BasicBlocks of equal structure share θ rows by role; the first block of stages 2 and 3 "
    "(strided, with the option-A shortcut) differs from the others"
)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the channels, without parameters.

    As akamaster's `LambdaLayer`: x[:, :, ::2, ::2] then F.pad by planes // 4 on each side of
    the channel axis. The pad is fixed here, at construction, so the graph holds constants.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) → (N, C + 2·pad, ⌈H/2⌉, ⌈W/2⌉)
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, add the shortcut, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes // 4) if needs_projection else Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """Stem conv3×3 3→16, three stages of `blocks_per_stage` BasicBlocks, global pool, Linear."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in STAGES:
            strides = [stride] + [1] * (blocks_per_stage - 1)
            blocks = []
            for s in strides:
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        # adaptive (the reference pools by the map's side): 64 px inputs end at 16×16
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        self.apply(_kaiming_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(self.pool(out), 1))


def _kaiming_init(module: nn.Module) -> None:
    # akamaster `_weights_init`: kaiming-normal weights for every conv and linear layer
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def _register(depth: int, params: int, published: str) -> Callable[[EntryPoint], EntryPoint]:
    return register_model(
        family="resnet_cifar",
        description=f"ResNet{depth} for CIFAR, option-A shortcuts ({published} parameters)",
        reference=_REFERENCE,
        params=params,
        cell_mode=_CELL_MODE,
    )


# parameter counts at 10 classes as akamaster's README lists them
@_register(20, 269_722, "0.27 M")
def resnet20(num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(3, num_classes)


@_register(32, 464_154, "0.46 M")
def resnet32(num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(5, num_classes)


@_register(44, 658_586, "0.66 M")
def resnet44(num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(7, num_classes)


@_register(56, 853_018, "0.85 M")
def resnet56(num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(9, num_classes)


@_register(110, 1_727_962, "1.7 M")
def resnet110(num_classes: int = 10) -> nn.Module:
    return ResNetCIFAR(18, num_classes)
