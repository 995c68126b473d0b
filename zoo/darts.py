"""DARTS NetworkCIFAR (Liu et al. 2019) as in quark0/darts `cnn/model.py`, with its cell ops."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._layers import AuxiliaryHeadCIFAR, DropPath, Identity, set_drop_path_prob
from ._registry import register_model
from .genotypes import Genotype, get_genotype

_REFERENCE = "https://github.com/quark0/darts/blob/master/cnn/model.py"
_STEM_MULTIPLIER = 3  # stem conv 3 → 3C (quark0/darts `stem_multiplier`)


class ReLUConvBN(nn.Sequential):
    """ReLU → conv → BN: the cell preprocessing (quark0/darts `ReLUConvBN`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out),
        )


class DilConv(nn.Sequential):
    """ReLU → dilated depthwise k×k → 1×1 → BN (quark0/darts `DilConv`)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int
    ) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                c_in,
                c_in,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )


class SepConv(nn.Sequential):
    """Two ReLU → depthwise → 1×1 → BN stacks; only the first depthwise conv is strided."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, dilation=1),
            DilConv(c_in, c_out, kernel, 1, padding, dilation=1),
        )


class Zero(nn.Module):
    """The `none` op: a zero tensor of the (strided) output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:  # fixed at construction
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU, two 1×1 stride-2 convs on x and on x shifted by one pixel, concat, BN.

    Needs even maps: on odd ones the two halves differ in size (quark0/darts asserts the same).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {c_out}")
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


# op name → builder(channels, stride); quark0/darts `operations.OPS` (affine BN: the eval network)
OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda c, stride: Zero(stride),
    "avg_pool_3x3": lambda c, stride: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, stride: nn.MaxPool2d(3, stride, padding=1),
    "skip_connect": lambda c, stride: Identity() if stride == 1 else FactorizedReduce(c, c),
    "sep_conv_3x3": lambda c, stride: SepConv(c, c, 3, stride, 1),
    "sep_conv_5x5": lambda c, stride: SepConv(c, c, 5, stride, 2),
    "dil_conv_3x3": lambda c, stride: DilConv(c, c, 3, stride, 2, dilation=2),
    "dil_conv_5x5": lambda c, stride: DilConv(c, c, 5, stride, 4, dilation=2),
}


class Cell(nn.Module):
    """A DARTS cell: each intermediate node sums two ops on earlier states; output concatenates.

    Drop-path follows every op but the identity, as the reference. The DropPaths live in
    `drop_paths`, keyed by op index, so the ops keep the reference's module structure.
    """

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        if reduction_prev:  # c_{k-2} is twice c_{k-1}'s resolution
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        _check_cell(pairs, concat)
        self._indices = tuple(index for _, index in pairs)
        self._concat = tuple(concat)
        self.multiplier = len(concat)
        # in a reduction cell, only the edges from the two inputs are strided
        self.ops = nn.ModuleList(
            OPS[name](c, 2 if reduction and index < 2 else 1) for name, index in pairs
        )
        self.drop_paths = nn.ModuleDict(
            {str(j): DropPath() for j, op in enumerate(self.ops) if not isinstance(op, Identity)}
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            states.append(self._op(2 * node, states) + self._op(2 * node + 1, states))
        return torch.cat([states[i] for i in self._concat], dim=1)

    def _op(self, j: int, states: list[torch.Tensor]) -> torch.Tensor:
        h = self.ops[j](states[self._indices[j]])
        key = str(j)
        return self.drop_paths[key](h) if key in self.drop_paths else h


def _check_cell(pairs: tuple[tuple[str, int], ...], concat: tuple[int, ...]) -> None:
    if len(pairs) % 2:
        raise ValueError(f"a DARTS cell needs two (op, input) pairs per node, got {len(pairs)}")
    for j, (name, index) in enumerate(pairs):
        if name not in OPS:
            raise ValueError(f"unknown DARTS op {name!r}; known: {', '.join(OPS)}")
        if not 0 <= index < 2 + j // 2:
            raise ValueError(f"DARTS op {j} ({name!r}) reads state {index}, not yet computed")
    n_states = 2 + len(pairs) // 2
    if not concat or any(not 0 <= i < n_states for i in concat):
        raise ValueError(f"DARTS cell concat {concat!r} must name states 0..{n_states - 1}")


class NetworkCIFAR(nn.Module):
    """Stem, `layers` cells (reductions at layers//3 and 2·layers//3), pool, Linear.

    With `auxiliary`, the auxiliary head reads the output of cell 2·layers//3 and `forward`
    returns (logits, aux_logits) in train and eval mode alike; otherwise the logits.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 10,
        channels: int = 36,
        layers: int = 20,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        c_stem = _STEM_MULTIPLIER * channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self._aux_index = 2 * layers // 3
        c_prev_prev, c_prev, c = c_stem, c_stem, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c = 2 * c if reduction else c
            cell = Cell(genotype, c_prev_prev, c_prev, c, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c
            if i == self._aux_index:
                c_aux = c_prev
        self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        set_drop_path_prob(self, drop_path_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self._aux_index and self.auxiliary_head is not None:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        if self.auxiliary_head is None:  # fixed at construction
            return logits
        return logits, aux_logits


def _build(
    genotype: str | Genotype,
    num_classes: int,
    channels: int,
    layers: int,
    auxiliary: bool,
    drop_path_prob: float,
) -> NetworkCIFAR:
    if channels < 2 or channels % 2 or layers < 3:
        raise ValueError(
            f"DARTS needs an even channels >= 2 and layers >= 3, got channels={channels!r}, "
            f"layers={layers!r} (the paper's network: channels=36, layers=20)"
        )
    return NetworkCIFAR(
        get_genotype(genotype), num_classes, channels, layers, auxiliary, drop_path_prob
    )


_CELL_MODE = (
    "normal cells share one θ row per edge role, reduction cells another: 18 normal and 2 "
    "reduction cells of 8 ops each (the normal cells after a reduction preprocess c_{k-2} with "
    "FactorizedReduce)"
)
_FACTS = {
    "family": "darts",
    "reference": _REFERENCE,
    "cell_mode": _CELL_MODE,
    "input_multiple": 4,  # FactorizedReduce needs even maps before both reductions
    "min_input_size": 20,  # the auxiliary head pools 5×5 at 1/4 of the input side
}


@register_model(
    description="DARTS (V2 genotype) NetworkCIFAR, C=36, 20 cells, 3.3 M",
    params=3_349_342,
    **_FACTS,
)
def darts(
    num_classes: int = 10,
    genotype: str | Genotype = "DARTS_V2",
    auxiliary: bool = False,
    drop_path_prob: float = 0.0,
    channels: int = 36,
    layers: int = 20,
) -> nn.Module:
    return _build(genotype, num_classes, channels, layers, auxiliary, drop_path_prob)


@register_model(
    description="DARTS_V2 (second-order) NetworkCIFAR, C=36, 20 cells, 3.3 M",
    params=3_349_342,
    **_FACTS,
)
def darts_v2(
    num_classes: int = 10,
    auxiliary: bool = False,
    drop_path_prob: float = 0.0,
    channels: int = 36,
    layers: int = 20,
) -> nn.Module:
    return _build("DARTS_V2", num_classes, channels, layers, auxiliary, drop_path_prob)


# the paper's Table 1 lists 3.3 M for both searches; the released V1 genotype counts 3.17 M
@register_model(
    description="DARTS_V1 (first-order) NetworkCIFAR, C=36, 20 cells, 3.2 M",
    params=3_169_414,
    **_FACTS,
)
def darts_v1(
    num_classes: int = 10,
    auxiliary: bool = False,
    drop_path_prob: float = 0.0,
    channels: int = 36,
    layers: int = 20,
) -> nn.Module:
    return _build("DARTS_V1", num_classes, channels, layers, auxiliary, drop_path_prob)
