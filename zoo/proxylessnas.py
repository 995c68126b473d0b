"""ProxylessNAS-GPU (Cai et al. 2019) from mit-han-lab/proxylessnas's proxyless_gpu config."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ._layers import AuxiliaryHeadCIFAR, DropPath, set_drop_path_prob
from ._registry import register_model

# mit-han-lab `proxyless_gpu.config`: "bn": {"momentum": 0.1, "eps": 0.001}
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-3


class BlockSpec(NamedTuple):
    in_channels: int
    out_channels: int
    kernel: int
    stride: int  # ImageNet stride; see _UNSTRIDED_BLOCK
    expansion: int
    shortcut: bool  # identity shortcut (stride 1, equal channels)


# The searched GPU network, blocks in order; the supernet's zero layers (skipped blocks) are left
# out, which is exact: a zero-layer block returns its input. One comment per supernet stage.
GPU_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(40, 24, 3, 1, 1, False),  # fixed first block, no expansion
    BlockSpec(24, 32, 5, 2, 3, False),  # stage 32 ch: 1 of 4 blocks kept
    BlockSpec(32, 56, 7, 2, 3, False),  # stage 56 ch: 2 of 4
    BlockSpec(56, 56, 3, 1, 3, True),
    BlockSpec(56, 112, 7, 2, 6, False),  # stage 112 ch: 2 of 4
    BlockSpec(112, 112, 5, 1, 3, True),
    BlockSpec(112, 128, 5, 1, 6, False),  # stage 128 ch: 3 of 4
    BlockSpec(128, 128, 3, 1, 3, True),
    BlockSpec(128, 128, 5, 1, 3, True),
    BlockSpec(128, 256, 7, 2, 6, False),  # stage 256 ch: 4 of 4
    BlockSpec(256, 256, 7, 1, 6, True),
    BlockSpec(256, 256, 7, 1, 6, True),
    BlockSpec(256, 256, 5, 1, 6, True),
    BlockSpec(256, 432, 7, 1, 6, False),  # stage 432 ch: the single last block
)
STEM_CHANNELS = 40
FEATURE_MIX_CHANNELS = 1728

# Small inputs (32 px CIFAR, and 64 px Tiny ImageNet alike): stride 1 in the stem and in the first
# stride-2 block (24→32), total stride 8 instead of 32 — the adaptation kuangliu's MobileNetV2
# makes for CIFAR.
_STEM_STRIDE = 1  # ImageNet: 2
_STRIDE_TWO = [i for i, spec in enumerate(GPU_BLOCKS) if spec.stride == 2]  # [1, 2, 4, 9]
_UNSTRIDED_BLOCK = _STRIDE_TWO[0]  # block 1 runs at stride 1
# the DARTS-style auxiliary head reads the input of the last stride-2 block (8×8 maps at 32 px)
_AUX_BEFORE = _STRIDE_TWO[-1]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _conv_bn_relu6(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1
) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, _bn(c_out), nn.ReLU6()]


class MBConvBlock(nn.Module):
    """MBConv: [1×1 expand-BN-ReLU6 if expansion > 1], k×k depthwise-BN-ReLU6, 1×1-BN.

    With an identity shortcut the branch is followed by a DropPath and added to the input. Each
    block is its own cell for DNAT (`fxdnat_cell`): no two ProxylessNAS blocks share a structure.
    """

    def __init__(self, spec: BlockSpec, stride: int, index: int) -> None:
        super().__init__()
        self.fxdnat_cell = f"block{index}"
        mid = spec.in_channels * spec.expansion
        layers = []
        if spec.expansion > 1:
            layers += _conv_bn_relu6(spec.in_channels, mid, 1, 1)
        layers += _conv_bn_relu6(mid, mid, spec.kernel, stride, groups=mid)
        layers += [nn.Conv2d(mid, spec.out_channels, 1, bias=False), _bn(spec.out_channels)]
        self.conv = nn.Sequential(*layers)
        self.drop_path = DropPath() if spec.shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_path is None:  # fixed at construction: no shortcut
            return self.conv(x)
        return x + self.drop_path(self.conv(x))


class ProxylessNAS(nn.Module):
    """Stem conv3×3 3→40, the MBConv blocks, 1×1 432→1728-BN-ReLU6, pool, Linear."""

    def __init__(
        self, num_classes: int = 10, auxiliary: bool = False, drop_path_prob: float = 0.0
    ) -> None:
        super().__init__()
        self.first_conv = nn.Sequential(*_conv_bn_relu6(3, STEM_CHANNELS, 3, _STEM_STRIDE))
        self.blocks = nn.ModuleList(
            MBConvBlock(spec, 1 if i == _UNSTRIDED_BLOCK else spec.stride, i)
            for i, spec in enumerate(GPU_BLOCKS)
        )
        aux_channels = GPU_BLOCKS[_AUX_BEFORE].in_channels
        self.auxiliary_head = AuxiliaryHeadCIFAR(aux_channels, num_classes) if auxiliary else None
        last = GPU_BLOCKS[-1].out_channels
        self.feature_mix_layer = nn.Sequential(*_conv_bn_relu6(last, FEATURE_MIX_CHANNELS, 1, 1))
        self.global_avg_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(FEATURE_MIX_CHANNELS, num_classes)
        self.apply(_he_fout_init)
        set_drop_path_prob(self, drop_path_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.first_conv(x)
        aux_logits = None
        for i, block in enumerate(self.blocks):
            if i == _AUX_BEFORE and self.auxiliary_head is not None:
                aux_logits = self.auxiliary_head(x)
            x = block(x)
        x = self.global_avg_pooling(self.feature_mix_layer(x))
        logits = self.classifier(torch.flatten(x, 1))
        if self.auxiliary_head is None:  # fixed at construction
            return logits
        return logits, aux_logits


def _he_fout_init(module: nn.Module) -> None:
    # mit-han-lab `init_model("he_fout")`: N(0, 2 / (k·k·out / groups)), BN (1, 0), Linear bias 0
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 * module.groups / fan_out))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


_FACTS = {
    "family": "proxylessnas",
    "reference": "https://github.com/mit-han-lab/proxylessnas",
    # mit-han-lab ImageNet model 7,119,848 − Linear(1728, 1000) 1,729,000 + Linear(1728, 10) 17,290
    "params": 5_408_138,
    "cell_mode": "full only: each block is its own cell (`fxdnat_cell`), so cell mode is full mode",
    "min_input_size": 20,  # the auxiliary head pools 5×5 at 1/4 of the input side
}


@register_model(description="ProxylessNAS-GPU, stride-8 small-input variant, 5.4 M", **_FACTS)
def proxylessnas(
    num_classes: int = 10, auxiliary: bool = False, drop_path_prob: float = 0.0
) -> nn.Module:
    return ProxylessNAS(num_classes, auxiliary, drop_path_prob)


@register_model(description="ProxylessNAS-GPU (alias of `proxylessnas`), 5.4 M", **_FACTS)
def proxylessnas_gpu(
    num_classes: int = 10, auxiliary: bool = False, drop_path_prob: float = 0.0
) -> nn.Module:
    return ProxylessNAS(num_classes, auxiliary, drop_path_prob)
