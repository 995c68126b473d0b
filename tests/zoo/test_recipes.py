"""Recipes: the paper's protocol, the CPU recipe, per-family and per-dataset overrides."""

from __future__ import annotations

import dataclasses

import pytest

from fxdnat.zoo import Recipe, get_recipe, list_recipes
from fxdnat.zoo.recipes import NatSchedule

NAS_EXTRAS = {"cutout": 16, "auxiliary_weight": 0.4, "drop_path_prob": 0.2}


def _fields(recipe: Recipe, names) -> dict:
    return {name: getattr(recipe, name) for name in names}


def test_list_recipes():
    assert list_recipes() == ["paper", "quick"]


def test_paper_recipe_is_the_darts_protocol():
    paper = get_recipe("paper")
    assert paper == Recipe(
        name="paper",
        epochs=600,
        arch_epochs=300,
        batch_size=96,
        lr=0.025,
        momentum=0.9,
        weight_decay=3e-4,
        grad_clip=5.0,
        theta_reach=46.8,
    )
    theta = (paper.theta_lr, paper.theta_betas, paper.theta_weight_decay)
    assert theta == (3e-4, (0.5, 0.999), 1e-3)
    assert _fields(paper, NAS_EXTRAS) == dict.fromkeys(NAS_EXTRAS, 0)


@pytest.mark.parametrize("model", ["darts", "darts_v1", "zoo:darts_v2", "proxylessnas"])
def test_nas_models_get_cutout_auxiliary_and_drop_path(model):
    recipe = get_recipe("paper", model=model)
    assert _fields(recipe, NAS_EXTRAS) == NAS_EXTRAS
    assert (recipe.epochs, recipe.arch_epochs) == (600, 300)


@pytest.mark.parametrize(
    "model,dataset,epochs",
    [
        ("mobilenetv2", "tinyimagenet", (300, 150)),
        ("darts", "Tiny-ImageNet", (300, 150)),
        ("resnet20", "tinyimagenet", (600, 300)),
        ("proxylessnas", "tiny_imagenet", (600, 300)),
        ("darts", "cifar10", (600, 300)),
    ],
)
def test_tiny_imagenet_epochs(model, dataset, epochs):
    recipe = get_recipe("paper", model=model, dataset=dataset)
    assert (recipe.epochs, recipe.arch_epochs) == epochs


def test_plain_models_and_foreign_specs_get_the_base_recipe():
    assert get_recipe("paper", model="resnet20") == get_recipe("paper")
    assert get_recipe("paper", model="mobilenetv2", dataset="cifar10") == get_recipe("paper")
    assert get_recipe("paper", model="timm:resnet18", dataset="cifar10") == get_recipe("paper")


def test_quick_recipe():
    quick = get_recipe("quick", model="darts", dataset="tinyimagenet")  # no overrides apply
    assert quick == Recipe(
        name="quick",
        epochs=120,
        arch_epochs=80,
        batch_size=16,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        grad_clip=5.0,
        theta_lr=0.01,
        warmup_epochs=10,
        theta_reach=30.0,
        nat=NatSchedule(search_epochs=80, batch_size=16),
    )
    # on 32-px digits the earlier quick run, whose θ cannot reach a change (lr·T 1.3)
    digits = get_recipe("quick", dataset="digits")
    assert (digits.epochs, digits.arch_epochs, digits.batch_size) == (15, 6, 64)
    assert (digits.warmup_epochs, digits.theta_lr, digits.theta_reach) == (0, 0.01, None)
    assert (digits.nat.search_epochs, digits.nat.batch_size) == (6, 64)


def test_the_quick_recipe_of_the_gpts_is_adamw_for_minutes_on_a_cpu():
    recipe = get_recipe("quick", model="zoo:gpt-mini", dataset="text:pydoc")
    assert (recipe.optimizer, recipe.lr, recipe.betas, recipe.weight_decay) == (
        "adamw",
        3e-3,
        (0.9, 0.95),
        0.01,
    )
    assert (recipe.epochs, recipe.arch_epochs, recipe.warmup_epochs) == (3, 2, 1)
    assert (recipe.batch_size, recipe.grad_clip, recipe.theta_reach) == (16, 1.0, 10.0)
    assert get_recipe("quick", model="resnet20").optimizer == "sgd"


def test_an_unknown_optimizer_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="optimizer 'adam' is not one of sgd, adamw"):
        dataclasses.replace(get_recipe("quick"), optimizer="adam")


def test_the_paper_recipe_states_nats_reference_search():
    nat = get_recipe("paper").nat
    assert (nat.search_epochs, nat.batch_size, nat.weight_split, nat.derive_samples) == (
        100,
        64,
        0.4,
        10,
    )
    assert (nat.lr, nat.momentum, nat.weight_decay) == (0.01, 0.9, 3e-4)
    assert (nat.policy_lr, nat.policy_betas, nat.policy_weight_decay) == (3e-4, (0.5, 0.999), 5e-4)
    assert (nat.entropy_weight, nat.baseline_decay, nat.policy_grad_clip) == (0.003, 0.99, 5.0)


def test_the_paper_recipe_keeps_the_papers_theta_reach_on_cifar10():
    from fxdnat.reach import plan

    paper = get_recipe("paper", dataset="cifar10")
    reach = plan(50_000 // 96, paper.arch_epochs, 0, paper.theta_lr, paper.theta_reach)
    assert reach.theta_lr == pytest.approx(3e-4)  # Kim & Lee 2020 §4, the DARTS value
    assert reach.lr_sqrt_T == pytest.approx(0.118, abs=1e-3)


def test_unknown_recipe_and_model():
    with pytest.raises(ValueError) as info:
        get_recipe("papr")
    assert str(info.value) == "unknown recipe 'papr'; did you mean 'paper'? known: paper, quick"
    with pytest.raises(ValueError, match=r"unknown zoo model 'dartz'; did you mean 'darts'\?"):
        get_recipe("paper", model="dartz")


def test_recipes_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_recipe("paper").epochs = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="needs 0 <= arch_epochs <= epochs"):
        Recipe(
            name="x",
            epochs=5,
            arch_epochs=6,
            batch_size=1,
            lr=0.1,
            momentum=0.9,
            weight_decay=0.0,
            grad_clip=None,
        )


@pytest.mark.parametrize(("lr", "theta_lr"), [(float("nan"), 3e-4), (0.1, float("inf")), (0, 1)])
def test_learning_rates_must_be_finite_and_positive(lr, theta_lr):
    with pytest.raises(ValueError) as error:
        dataclasses.replace(get_recipe("paper"), lr=lr, theta_lr=theta_lr)
    assert str(error.value) == (
        f"recipe 'paper' got lr={lr}, theta_lr={theta_lr}; learning rates (--lr, --theta-lr) "
        "must be finite positive numbers"
    )
