"""fxdnat's model zoo: the paper's four model families and small GPTs, their registry and
training recipes."""

from __future__ import annotations

from . import darts, gpt, mobilenetv2, proxylessnas, resnet_cifar  # noqa: F401  (registers them)
from ._layers import DropPath, set_drop_path_prob
from ._registry import ModelInfo, create_model, list_models, model_info, register_model
from .genotypes import GENOTYPES, Genotype
from .recipes import Recipe, get_recipe, list_recipes

__all__ = [
    "GENOTYPES",
    "DropPath",
    "Genotype",
    "ModelInfo",
    "Recipe",
    "create_model",
    "get_recipe",
    "list_models",
    "list_recipes",
    "model_info",
    "register_model",
    "set_drop_path_prob",
]
