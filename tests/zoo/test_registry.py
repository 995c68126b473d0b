"""The zoo registry: names, facts, `create_model`'s argument checks and error texts."""

from __future__ import annotations

import re

import pytest
import torch

from fxdnat.zoo import create_model, list_models, model_info, register_model
from fxdnat.zoo.recipes import list_recipes

EXPECTED = {
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "mobilenetv2",
    "darts",
    "darts_v1",
    "darts_v2",
    "proxylessnas",
    "proxylessnas_gpu",
}
LANGUAGE_MODELS = {"gpt-micro", "gpt-mini", "gpt-small"}  # tests/zoo/test_gpt.py


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert set(names) == EXPECTED | LANGUAGE_MODELS
    assert {n for n in names if model_info(n).task == "causal-lm"} == LANGUAGE_MODELS


def test_unknown_model_error_suggests_the_closest_name():
    with pytest.raises(ValueError) as info:
        create_model("resnet2")
    expected = "unknown zoo model 'resnet2'; did you mean 'resnet20'? see `fxdnat zoo`"
    assert str(info.value) == expected


def test_unknown_model_error_without_a_close_name():
    with pytest.raises(ValueError) as info:
        model_info("vgg16")
    assert str(info.value) == "unknown zoo model 'vgg16'; see `fxdnat zoo`"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_info_is_complete(name):
    info = model_info(name)
    assert info.name == name
    assert info.family in {"resnet_cifar", "mobilenetv2", "darts", "proxylessnas"}
    assert info.reference.startswith("https://github.com/")
    assert info.default_recipe == "paper" and info.default_recipe in list_recipes()
    assert info.description and info.cell_mode and info.params > 0


def test_unknown_keyword_is_a_type_error_naming_what_is_accepted():
    with pytest.raises(TypeError) as info:
        create_model("resnet20", auxiliary=True)
    expected = "zoo model 'resnet20' does not accept 'auxiliary'; it accepts: no other arguments"
    assert str(info.value) == expected
    with pytest.raises(TypeError, match=re.escape("it accepts: auxiliary, drop_path_prob")):
        create_model("proxylessnas", genotype="DARTS_V2")


def test_input_size_is_checked_against_the_model():
    with pytest.raises(ValueError) as info:
        create_model("darts", input_size=30)
    assert str(info.value) == (
        "zoo model 'darts' needs an input_size that is a multiple of 4 and at least 20, got 30"
    )
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        create_model("resnet20", num_classes=0)


def test_darts_accepts_a_genotype_name():
    v1 = create_model("darts", genotype="DARTS_V1")
    assert sum(p.numel() for p in v1.parameters()) == model_info("darts_v1").params
    with pytest.raises(ValueError) as info:
        create_model("darts", genotype="DARTS_V3")
    assert str(info.value).startswith("unknown DARTS genotype 'DARTS_V3'; did you mean 'DARTS_V1'?")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="zoo model 'resnet20' is registered twice"):

        @register_model(family="x", description="x", reference="x", params=1, cell_mode="x")
        def resnet20(num_classes: int = 10) -> torch.nn.Module:
            return torch.nn.Linear(1, num_classes)

    assert model_info("resnet20").family == "resnet_cifar"


def test_only_proxylessnas_blocks_name_their_cells():
    blocks = create_model("proxylessnas").blocks
    cells = [getattr(block, "fxdnat_cell", None) for block in blocks]
    assert cells == [f"block{i}" for i in range(len(blocks))]
    for name in ("resnet20", "mobilenetv2", "darts"):
        model = create_model(name)
        assert not any(hasattr(m, "fxdnat_cell") for m in model.modules()), name
