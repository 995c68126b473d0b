"""DARTS cell genotypes as data (quark0/darts `cnn/genotypes.py`), read by zoo/darts.py."""

from __future__ import annotations

from typing import NamedTuple

from ._registry import did_you_mean


class Genotype(NamedTuple):
    """A cell pair: per intermediate node two (op, input) pairs; inputs 0 = c_{k-2}, 1 = c_{k-1}."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]


PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

# first-order DARTS (Liu et al. 2019, Table 1: 3.00 % error, 3.3 M)
DARTS_V1 = Genotype(
    normal=(
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),  # node 2
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),  # node 3
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),  # node 4
        ("sep_conv_3x3", 0),
        ("skip_connect", 2),  # node 5
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)

# second-order DARTS (Liu et al. 2019, Table 1: 2.76 % error, 3.3 M); the reference's `DARTS`
DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),  # node 2
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),  # node 3
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),  # node 4
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),  # node 5
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)

GENOTYPES: dict[str, Genotype] = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}


def get_genotype(genotype: str | Genotype) -> Genotype:
    """A Genotype as given, or the one named in GENOTYPES."""
    if isinstance(genotype, Genotype):
        return genotype
    if genotype not in GENOTYPES:
        raise ValueError(
            f"unknown DARTS genotype {genotype!r}{did_you_mean(genotype, GENOTYPES)} "
            f"known: {', '.join(GENOTYPES)}"
        )
    return GENOTYPES[genotype]
